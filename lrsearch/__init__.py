"""lrsearch: search learning-rate schedules with Optuna, carry the best one into PyTorch.

The public API; everything else is reachable through the modules.
"""

from __future__ import annotations

from lrsearch.errors import LrsearchError
from lrsearch.export import load_results
from lrsearch.schedules import Schedule, load_schedule, make_schedule
from lrsearch.space import SearchSpace, default_space, suggest_schedule

__all__ = [
    "LrsearchError",
    "Schedule",
    "SearchSpace",
    "default_space",
    "load_results",
    "load_schedule",
    "make_schedule",
    "suggest_schedule",
]
