"""The reference articles' hand-picked schedules and the shapes practitioners pick, as
the first trials of a study.

A search earns trust only by beating what a practitioner would have used
anyway. Each baseline below is built with the article's own constructor and
numbers on the article's own run length, so it is already in fractions of
the run; ``baselines_for`` then moves its peak to the centre of the study's
lr range (for ``lr = "auto"``, to the range test's suggestion), keeping every
ratio (``min_lr / lr``...). That is the whole translation, and it happens here
only.

Choices the articles leave open, stated:
- Article 004's cosine is ``CosineScheduler(max_update=20, base_lr=0.3,
  final_lr=0.01)`` on 30 epochs; its text describes warmup, and its source
  (d2l) uses ``warmup_steps=5``, so that is used. The ramp starts at
  ``final_lr`` rather than 0 (the search space ramps from ``min_lr``); the
  difference is 3% of the peak over the first sixth of the run.
- Article 000 shows its polynomial decay only in figures: its experiment's
  1e-3 to 1e-7 range is used, decaying over the whole run, power 1 (Keras's
  default), no cycle.
- Article 002 cites Smith's CLR without numbers: Smith's advice, a half-cycle
  of 2 epochs of article 000's 15-epoch run and a base of a quarter of the peak.
- Article 004's ``MultiStepLR(milestones=[15, 30], gamma=0.5)`` on 30 epochs:
  the second milestone falls on the run's end.

The reference shapes (``REFERENCE_SHAPES``) are what a practitioner picks
without reading any article here: cosine to zero, linear decay to zero
("Straight to Zero", 2025), warmup-stable-decay with a 20% cooldown
(Hägele et al. 2024) and a constant LR, each after the same linear warmup
over the first 10% of the run from 0, so that they differ only in shape.
The cooldown is 20% of the whole run, hence 0.2 / 0.9 of the post-warmup
part the ``wsd`` family counts in; it is linear (the paper's 1-sqrt
variant is one of the space's choices, not a default anyone picks).

A study records which baselines it offers (``OFFERED_ATTR``) when it first
queues any, so a study begun before the reference shapes existed resumes
with the article baselines only: resuming never adds trials of a new kind.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, TextIO

import optuna

from lrsearch.errors import LrsearchError
from lrsearch.schedules import (
    Constant,
    Cosine,
    Linear,
    Schedule,
    Wsd,
    cosine_scheduler,
    cosine_warmup_decay,
    cyclic_lr,
    exponential_decay_with_burnin,
    multistep_lr,
    polynomial_decay,
)
from lrsearch.space import LR_RANGE_ATTR, FloatRange, SearchSpace, params_for, study_space

__all__ = [
    "ARTICLE_BASELINES",
    "BASELINES",
    "BASELINE_ATTR",
    "DECOMPOSITION_ATTR",
    "OFFERED_ATTR",
    "REFERENCE_SHAPES",
    "baselines_for",
    "enqueue_baselines",
    "peak_for",
    "with_peak",
]

BASELINE_ATTR = "baseline"  # user attribute naming the baseline a trial is
OFFERED_ATTR = "baselines_offered"  # study attribute: the baseline names this study queues
# Study attribute: the latest lrsearch.decompose result, which export puts in summary.json.
DECOMPOSITION_ATTR = "decomposition"

_ARTICLE_000_STEPS = 15 * 1875  # 15 epochs of 60,000 images in batches of 32
_ARTICLE_001_STEPS = 10 * (60_000 // 32)
_ARTICLE_004_EPOCHS = 30

ARTICLE_BASELINES: dict[str, Schedule] = {
    "constant": Constant(lr=0.3),  # article 004's first run: SGD at 0.3 throughout
    "cosine-warmup-004": dataclasses.replace(
        cosine_scheduler(
            max_update=20,
            base_lr=0.3,
            final_lr=0.01,
            warmup_steps=5,
            total_steps=_ARTICLE_004_EPOCHS,
        ),
        warmup_start=None,
    ),
    "cosine-restarts-000": cosine_warmup_decay(
        initial_lr=1e-3,
        min_lr=1e-7,
        warmup_step=int(3 * 1875 * 0.25),
        total_step=3 * 1875,
        multi=0.25,
        total_steps=_ARTICLE_000_STEPS,
    ),
    "polynomial-000": polynomial_decay(
        initial_lr=1e-3,
        decay_period=_ARTICLE_000_STEPS,
        power=1.0,
        min_lr=1e-7,
        cycle=False,
        total_steps=_ARTICLE_000_STEPS,
    ),
    "exponential-burnin-001": exponential_decay_with_burnin(
        lr=0.01, decay_steps=1000, decay_rate=0.96, burnin_steps=500, total_steps=_ARTICLE_001_STEPS
    ),
    "triangular-002": cyclic_lr(
        base_lr=0.25e-3, max_lr=1e-3, step_size=2 * 1875, total_steps=_ARTICLE_000_STEPS
    ),
    "multistep-004": multistep_lr(
        lr=0.3, milestones=[15, 30], gamma=0.5, total_steps=_ARTICLE_004_EPOCHS
    ),
}


_REFERENCE_WARMUP = 0.1
REFERENCE_SHAPES: dict[str, Schedule] = {
    "cosine-warmup10": Cosine(lr=1.0, warmup=_REFERENCE_WARMUP),
    "linear-to-zero": Linear(lr=1.0, warmup=_REFERENCE_WARMUP),
    "wsd-cooldown20": Wsd(
        lr=1.0, warmup=_REFERENCE_WARMUP, decay_fraction=0.2 / (1 - _REFERENCE_WARMUP)
    ),
    "constant-warmup10": Constant(lr=1.0, warmup=_REFERENCE_WARMUP),
}
BASELINES: dict[str, Schedule] = {**ARTICLE_BASELINES, **REFERENCE_SHAPES}


def with_peak(schedule: Schedule, peak: float) -> Schedule:
    """The same schedule with every LR-valued parameter scaled so that ``lr == peak``."""
    scale = peak / schedule.lr
    changes: dict[str, Any] = {"lr": peak}
    for name in ("min_lr", "warmup_start"):
        value = getattr(schedule, name, None)
        if value is not None:
            changes[name] = value * scale
    return dataclasses.replace(schedule, **changes)


def peak_for(space: SearchSpace, family: str, peak: float | None) -> float:
    """``peak`` where the family's lr is searched, else the centre of its lr range
    (geometric on a log scale); or its fixed value."""
    setting: Any = space.settings[family]["lr"]
    if isinstance(setting, FloatRange):
        if peak is not None:
            return peak
        return (
            math.sqrt(setting.low * setting.high)
            if setting.log
            else (setting.low + setting.high) / 2
        )
    return float(setting)  # a fixed lr


def baselines_for(space: SearchSpace, peak: float | None = None) -> dict[str, Schedule]:
    """Every baseline whose family the space searches, at the space's peak, or at
    ``peak`` (the range test's suggestion for ``lr = "auto"``) where the lr is searched."""
    return {
        name: with_peak(schedule, peak_for(space, schedule.family, peak))
        for name, schedule in BASELINES.items()
        if schedule.family in space.families
    }


def _offered(study: optuna.Study, queued: set[str]) -> set[str]:
    """The baselines this study queues: recorded on first use; a study that queued
    baselines before the record existed keeps the article ones."""
    recorded = study.user_attrs.get(OFFERED_ATTR)
    if recorded is not None:
        return set(recorded)
    offered = ARTICLE_BASELINES if queued else BASELINES
    study.set_user_attr(OFFERED_ATTR, sorted(offered))
    return set(offered)


def enqueue_baselines(study: optuna.Study, space: SearchSpace, out: TextIO) -> list[str]:
    """Queue each baseline once per study (a resumed study does not queue them again).

    A baseline the study's space cannot produce (a value outside a range the
    study file narrowed, say) is skipped with a note naming why. With ``lr = "auto"`` the
    study's range test must have run (lrsearch.lr_find.auto_lr_range); they then peak at
    its suggested LR.
    """
    found = study.user_attrs.get(LR_RANGE_ATTR) if space.auto_lr else None
    peak = None if found is None else float(found["suggested"])
    space = study_space(study, space)
    queued = {
        name
        for t in study.get_trials(deepcopy=False)
        if (name := t.user_attrs.get(BASELINE_ATTR)) is not None
    }
    offered = _offered(study, queued)
    added = []
    for name, schedule in baselines_for(space, peak).items():
        if name in queued or name not in offered:
            continue
        try:
            params = params_for(schedule, space)
        except LrsearchError as error:
            print(f"baseline {name} skipped: {error}", file=out)
            continue
        study.enqueue_trial(params, user_attrs={BASELINE_ATTR: name})
        added.append(name)
    return added
