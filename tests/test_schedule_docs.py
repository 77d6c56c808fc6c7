"""docs/schedules.md says what every family computes: its Python blocks, evaluated here at
sample steps inside and past the run, must give the LRs ``lrsearch.schedules`` gives."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest

from lrsearch.schedules import FAMILIES, Schedule, make_schedule

DOC = Path(__file__).resolve().parents[1] / "docs" / "schedules.md"


def blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def sections() -> dict[str, str]:
    """The page's text by heading: ``time`` (before Families) and one per family."""
    text = DOC.read_text(encoding="utf-8")
    before, families = text.split("\n## Families\n", 1)
    families = families.split("\n## ", 1)[0]
    parts = re.split(r"^### (\w+)\n", families, flags=re.MULTILINE)
    return {"time": before, **dict(zip(parts[1::2], parts[2::2], strict=True))}


SECTIONS = sections()
CLOCK, HELPERS, WARMUP = blocks(SECTIONS["time"])


def documented(schedule: Schedule, t: int, total: int) -> float:
    """The LR the page gives at step ``t`` of a ``total``-step run."""
    (formula,) = blocks(SECTIONS[schedule.family])
    names: dict[str, Any] = {"math": math}
    exec(HELPERS, names)
    names.update({"min_lr": 0.0, **schedule.params(), "t": t, "T": total})
    exec(CLOCK, names)

    def family(tp: float) -> float:
        scope = {**names, "tp": tp}
        exec(formula, scope)
        return float(scope["lr_t"])

    if t >= names["W"]:
        return family(names["tp"])
    names["target"] = family(0.0)
    exec(WARMUP, names)
    return float(names["lr_t"])


EXAMPLES: list[tuple[str, dict[str, Any]]] = [
    ("constant", {}),
    ("constant", {"warmup": 0.1, "warmup_start": 0.01}),
    ("step", {"milestones": [0.3, 0.6], "gamma": 0.2}),
    ("step", {"milestones": [0.5, 1.0], "warmup": 0.1, "warmup_mode": "burnin"}),
    ("piecewise", {"boundaries": [0.25, 0.5], "values": [1.0, 0.5, 0.2]}),
    ("exponential", {"decay_rate": 0.5, "decay_steps": 0.25, "min_lr": 0.01}),
    ("exponential", {"decay_rate": 0.5, "decay_steps": 0.25, "staircase": True, "warmup": 0.1}),
    ("inverse_time", {"decay_rate": 3.0, "decay_steps": 0.2, "staircase": True}),
    ("inverse_time", {"decay_rate": 3.0}),
    ("inverse_sqrt", {"tau": 0.05, "warmup": 0.2}),
    ("polynomial", {"power": 2.0, "min_lr": 0.001, "decay_period": 0.7}),
    ("polynomial", {"power": 0.5, "decay_period": 0.3, "cycle": True}),
    ("cosine", {"min_lr": 0.001, "decay_period": 0.8, "warmup": 0.1}),
    ("cosine_restarts", {"first_cycle": 0.2, "min_lr": 0.001}),
    (
        "cosine_restarts",
        {"first_cycle": 0.1, "multiplier": 1.5, "peak_decay": 0.7, "cycle_warmup": 0.2},
    ),
    ("cyclic", {"step_size": 0.1, "min_lr": 0.01}),
    ("cyclic", {"step_size": 0.15, "mode": "triangular2", "warmup": 0.1}),
    ("cyclic", {"step_size": 0.1, "mode": "exp_range", "gamma": 0.99}),
    ("one_cycle", {"pct_start": 0.25}),
    ("one_cycle", {"pct_start": 0.4, "anneal": "linear", "div_factor": 10.0}),
    ("linear", {"min_lr": 0.002, "warmup": 0.05}),
    ("wsd", {"decay_fraction": 0.3, "decay": "1-sqrt", "min_lr": 0.001}),
    ("wsd", {"decay_fraction": 0.3, "decay": "cosine"}),
    ("wsd", {"decay": "linear", "warmup": 0.1, "warmup_mode": "burnin"}),
]


def test_the_page_documents_every_family_and_the_examples_cover_them() -> None:
    assert set(SECTIONS) - {"time"} == set(FAMILIES)
    assert {family for family, _ in EXAMPLES} == set(FAMILIES)


@pytest.mark.parametrize(("family", "params"), EXAMPLES)
@pytest.mark.parametrize("total", [40, 97])
def test_the_documented_formula_gives_the_codes_lr_inside_and_past_the_run(
    family: str, params: dict[str, Any], total: int
) -> None:
    schedule = make_schedule(family, {"lr": 0.1, **params})
    for t in range(0, 2 * total):
        assert documented(schedule, t, total) == pytest.approx(
            schedule(t, total), rel=1e-9, abs=1e-15
        ), f"{family} at step {t} of {total}"
