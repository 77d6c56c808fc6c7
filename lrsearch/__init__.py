"""lrsearch: search learning-rate schedules with Optuna, carry the best one into PyTorch.

The public API; everything else is reachable through the modules. The names are
imported on first use (PEP 562), so ``python -m lrsearch --help`` and the other
commands do not pay for torch, Optuna and pandas before they need them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lrsearch.errors import LrsearchError
    from lrsearch.export import load_results
    from lrsearch.schedules import Schedule, load_schedule, make_schedule
    from lrsearch.space import SearchSpace, default_space, suggest_schedule
    from lrsearch.torch_scheduler import ScheduleLR

_MODULES = {
    "LrsearchError": "lrsearch.errors",
    "Schedule": "lrsearch.schedules",
    "ScheduleLR": "lrsearch.torch_scheduler",
    "SearchSpace": "lrsearch.space",
    "default_space": "lrsearch.space",
    "load_results": "lrsearch.export",
    "load_schedule": "lrsearch.schedules",
    "make_schedule": "lrsearch.schedules",
    "suggest_schedule": "lrsearch.space",
}

__all__ = [
    "LrsearchError",
    "Schedule",
    "ScheduleLR",
    "SearchSpace",
    "default_space",
    "load_results",
    "load_schedule",
    "make_schedule",
    "suggest_schedule",
]


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULES[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
