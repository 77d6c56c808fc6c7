"""Does the shape matter? The search's gain split into what the peak LR and the shape bring.

"Searched beats baseline" mixes two changes: the baselines sit at the study's
default peak (the centre of its lr range, or the range test's suggestion),
the searched schedule at the peak the search found. Where a search wins, the
peak often wins it, and a user who only needs a new peak LR should be told so.

So the reference shapes (lrsearch.baselines.REFERENCE_SHAPES) are trained at
the study's default peak and at the best trial's own peak (and, with
``around``, at peaks a factor of 2 either side of it), in one population with
the best trial retrained beside them: same seeds, same batches, so each
comparison pairs example by example (and seed by seed with several seeds).
Beside them, in a second population with the same seeds and data seed (a
member trains exactly as it would alone, so the pairing holds across the
two), the schedule-free counterpart of the study's optimizer (sgd:
sgd-schedulefree, adam and adamw: adamw-schedulefree) trains with no schedule
at all, constant after the reference warmup as schedule-free recommends, at
the same peaks in its own units (SGD's divided by ``1 - momentum``: heavy-ball
SGD steps that much further than schedule-free SGD at one LR), and is
evaluated on its averaged weights. Three gains come out, each with its 95%
interval and verdict:

- the **peak gain**: the best reference shape at its best peak minus the same
  shape at the default peak (what changing only the peak LR buys);
- the **shape gain**: the searched schedule minus the best reference shape at
  the searched peak (what the searched shape buys once the peak is right);
- the **schedule gain**: the searched schedule minus the best schedule-free
  run at its best peak (what any schedule buys over none). A study that is
  already schedule-free, or SGD without momentum (schedule-free SGD needs
  some), has none, and says why.

The advice is the one change a measured gain supports, in this order:

1. no schedule, when the peak or the shape gain is ahead (something beats the
   default), the schedule gain is not ahead and the schedule-free run scores at
   least as well as the best reference shape at its best peak: no schedule does
   as well as any schedule here;
2. the searched schedule, when the shape gain is ahead;
3. only the peak LR, when the peak gain is ahead;
4. else nothing beats the default beyond noise.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import optuna

from lrsearch.baselines import DECOMPOSITION_ATTR, REFERENCE_SHAPES, peak_for, with_peak
from lrsearch.config import OptimizerName, StudyConfig, TrainConfig
from lrsearch.errors import LrsearchError
from lrsearch.export import load_study, storage_url
from lrsearch.schedules import Schedule
from lrsearch.space import LR_RANGE_ATTR, study_space
from lrsearch.stats import AHEAD, Comparison, Scores, compare_across_seeds
from lrsearch.study import HIGHER_IS_BETTER_ATTR, best_trial, check_definition
from lrsearch.verdict import difference, number, run_scores

__all__ = ["Decomposition", "Gain", "advise", "decompose", "peaks_around"]

# The study's optimizer -> the schedule-free one that answers "do I need a schedule?".
SCHEDULE_FREE: dict[str, OptimizerName] = {
    "sgd": "sgd-schedulefree",
    "adam": "adamw-schedulefree",
    "adamw": "adamw-schedulefree",
}
# Schedule-free's own recommendation: a warmup, then constant.
NO_SCHEDULE = "constant-warmup10"


@dataclass(frozen=True)
class Gain:
    """One of the gains: ``a`` minus ``b`` on the objective, with its interval."""

    name: str  # "peak gain", "shape gain" or "schedule gain"
    a: str
    b: str
    comparison: Comparison
    metric: str  # the objective without its ``val_``

    def line(self) -> str:
        c = self.comparison
        low, high = (number(value, self.metric) for value in (c.low, c.high))
        seeds = f"{c.seeds} seed" + ("s" if c.seeds != 1 else "")
        return (
            f"{self.name}: {self.a} vs {self.b}: {difference(c.difference, self.metric)} "
            f"[95% {low}, {high}] on {c.examples} examples x {seeds}: {c.verdict}"
        )

    def as_dict(self) -> dict[str, Any]:
        c = self.comparison
        return {
            "a": self.a,
            "b": self.b,
            "metric": f"val_{self.metric}",
            "difference": _finite(c.difference),
            "low": _finite(c.low),
            "high": _finite(c.high),
            "examples": c.examples,
            "seeds": c.seeds,
            "method": c.method,
            "verdict": c.verdict,
        }


@dataclass(frozen=True)
class Decomposition:
    """The gains, every trained schedule's score, and the one change to make."""

    peak: float  # the best searched trial's
    default_peak: float  # the study's, where its baselines sit
    values: dict[str, float]  # label -> mean validation figure over the seeds
    peak_gain: Gain
    shape_gain: Gain
    schedule_gain: Gain | None  # None: no schedule-free run, for the reason in ``skipped``
    advice: str
    skipped: str | None = None

    def lines(self) -> list[str]:
        schedule = (
            self.schedule_gain.line()
            if self.schedule_gain is not None
            else f"schedule gain: not measured: {self.skipped}"
        )
        return [
            f"searched peak {self.peak:.3g}, default peak {self.default_peak:.3g}",
            *(f"  {label}: {value:.4f}" for label, value in self.values.items()),
            self.peak_gain.line(),
            self.shape_gain.line(),
            schedule,
            f"advice: {self.advice}",
        ]

    def as_dict(self) -> dict[str, Any]:
        return {
            "peak": self.peak,
            "default_peak": self.default_peak,
            "values": {label: _finite(value) for label, value in self.values.items()},
            "peak_gain": self.peak_gain.as_dict(),
            "shape_gain": self.shape_gain.as_dict(),
            "schedule_gain": None if self.schedule_gain is None else self.schedule_gain.as_dict(),
            "schedule_gain_skipped": self.skipped,
            "advice": self.advice,
        }


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None  # JSON has no NaN


def peaks_around(peak: float, around: int) -> list[float]:
    """``peak`` and ``around`` factors of 2 either side of it, lowest first."""
    return [peak * 2.0**k for k in range(-around, around + 1)]


def decompose(
    config: StudyConfig,
    *,
    epochs: int | None = None,
    seeds: int = 1,
    around: int = 0,
    out: TextIO,
) -> Decomposition:
    """Train the best searched schedule beside the reference shapes at the default peak and at
    its own (``epochs`` long: the study's by default, longer for production length); the
    result is kept on the study for ``summary.json``."""
    for option, given, least in (("--seeds", seeds, 1), ("--around", around, 0)):
        if given < least:
            raise LrsearchError(f"{option} {given} is not allowed; it must be >= {least}")
    if epochs is not None and epochs < 1:
        raise LrsearchError(f"--epochs {epochs} is not allowed; it must be >= 1")
    storage = storage_url(config.storage, config.name)
    search = load_study(storage, config.name)
    check_definition(search, config, storage, any_epochs=True)
    best = best_trial(search.get_trials(deepcopy=False), baseline=False)
    if best is None:
        raise LrsearchError(f"study {config.name!r} has no complete searched trial to decompose")
    searched = Schedule.from_dict(best.user_attrs["schedule"])
    found = search.user_attrs.get(LR_RANGE_ATTR) if config.space.auto_lr else None
    space = study_space(search, config.space)
    default = peak_for(space, searched.family, None if found is None else found["suggested"])
    tuned = peaks_around(searched.lr, around)
    candidates: dict[str, Schedule] = {f"trial {best.number}": searched}
    for name, shape in REFERENCE_SHAPES.items():
        candidates[_label(name, default)] = with_peak(shape, default)
        for peak in tuned:
            candidates[_label(name, peak)] = with_peak(shape, peak)
    training = dataclasses.replace(config.training, epochs=epochs or config.training.epochs)
    populations = [(training, candidates)]
    free, skipped = _schedule_free(training)
    free_peaks: list[float] = []
    if free is not None:
        # Heavy-ball SGD steps lr / (1 - momentum) once its buffer fills, schedule-free SGD's
        # z steps lr: the same peaks in schedule-free's units (the package's "10x-50x
        # larger"). Adam's step is lr either way.
        factor = 1 / (1 - training.momentum) if training.optimizer == "sgd" else 1.0
        free_peaks = [p * factor for p in [default, *tuned]]
        constant = REFERENCE_SHAPES[NO_SCHEDULE]
        populations.append(
            (free, {_label(free.optimizer, p): with_peak(constant, p) for p in free_peaks})
        )
    scores = _train(config, populations, seeds, out)

    def value(label: str) -> float:
        s = scores[label]
        signed = s.value if s.higher_is_better else -s.value
        return signed if math.isfinite(signed) else -math.inf

    best_shape, best_peak = max(
        ((name, peak) for name in REFERENCE_SHAPES for peak in tuned),
        key=lambda pair: value(_label(*pair)),
    )
    at_searched_peak = max(REFERENCE_SHAPES, key=lambda name: value(_label(name, searched.lr)))
    trial = f"trial {best.number}"
    metric = scores[trial].metric

    def gain(name: str, a: str, b: str) -> Gain:
        return Gain(name, a, b, compare_across_seeds(scores[a], scores[b]), metric)

    peak_gain = gain("peak gain", _label(best_shape, best_peak), _label(best_shape, default))
    shape_gain = gain("shape gain", trial, _label(at_searched_peak, searched.lr))
    schedule_gain, free_as_good, no_schedule = None, False, ""
    if free is not None:
        free_peak = max(free_peaks, key=lambda p: value(_label(free.optimizer, p)))
        free_label = _label(free.optimizer, free_peak)
        schedule_gain = gain("schedule gain", trial, free_label)
        free_as_good = value(free_label) >= value(_label(best_shape, best_peak))
        warmup = REFERENCE_SHAPES[NO_SCHEDULE].warmup
        no_schedule = (
            f"{free.optimizer} at a constant LR {free_peak:.3g} (after a {warmup:.0%} warmup)"
        )
    advice = advise(
        peak_gain.comparison,
        shape_gain.comparison,
        None if schedule_gain is None else schedule_gain.comparison,
        free_as_good=free_as_good,
        searched=searched.describe(),
        new_peak=f"{best_peak:.3g} (shape {best_shape})",
        no_schedule=no_schedule,
    )
    decomposition = Decomposition(
        peak=searched.lr,
        default_peak=default,
        values={label: s.value for label, s in scores.items()},
        peak_gain=peak_gain,
        shape_gain=shape_gain,
        schedule_gain=schedule_gain,
        advice=advice,
        skipped=skipped,
    )
    length = {"trial": best.number, "epochs": training.epochs, "seeds": seeds}
    search.set_user_attr(DECOMPOSITION_ATTR, {**length, **decomposition.as_dict()})
    return decomposition


def advise(
    peak_gain: Comparison,
    shape_gain: Comparison,
    schedule_gain: Comparison | None,
    *,
    free_as_good: bool,
    searched: str,
    new_peak: str,
    no_schedule: str,
) -> str:
    """The one change the gains support, in one sentence, in the module docstring's order.

    ``free_as_good``: the schedule-free run scored at least as well as the best reference
    shape at its best peak. ``searched``, ``new_peak`` and ``no_schedule`` say what each change
    is, for the sentence. No schedule comes first: where it does as well, it is the change
    that needs neither a shape nor the run's length."""
    something_ahead = AHEAD in (peak_gain.verdict, shape_gain.verdict)
    if (
        something_ahead
        and free_as_good
        and schedule_gain is not None
        and schedule_gain.verdict != AHEAD
    ):
        return f"no schedule needed: {no_schedule} does as well"
    if shape_gain.verdict == AHEAD:
        return f"use the searched schedule: {searched}"
    if peak_gain.verdict == AHEAD:
        return f"change only your peak LR to {new_peak}"
    return "nothing beats your default beyond noise"


def _schedule_free(training: TrainConfig) -> tuple[TrainConfig | None, str | None]:
    """The study's training with its schedule-free counterpart, or why there is none."""
    if training.schedule_free_beta is not None:
        return None, f"the study's optimizer, {training.optimizer}, is already schedule-free"
    if training.optimizer == "sgd" and training.momentum == 0:
        return None, "schedule-free SGD needs momentum > 0, and the study's SGD has none"
    optimizer = SCHEDULE_FREE[training.optimizer]
    return dataclasses.replace(training, optimizer=optimizer, nesterov=False), None


def _label(name: str, peak: float) -> str:
    return f"{name} at {peak:.3g}"


def _train(
    config: StudyConfig,
    populations: Sequence[tuple[TrainConfig, dict[str, Schedule]]],
    seeds: int,
    out: TextIO,
) -> dict[str, Scores]:
    """Each population's candidates on every seed, trained together with its optimizer: the
    same batches for all, and the same seeds and data seed across populations."""
    from lrsearch.runner import load_study_task, metric_attrs, objective_metric
    from lrsearch.training import Member, train_population

    task = load_study_task(config)
    metric = objective_metric(config, task)
    seed_range = range(config.seed, config.seed + seeds)
    scores = {}
    for training, candidates in populations:
        members = [Member(s, seed) for s in candidates.values() for seed in seed_range]
        print(
            f"decompose: {len(candidates)} schedules x {seeds} seeds, {training.epochs} epochs, "
            f"{training.optimizer}",
            file=out,
            flush=True,
        )
        result = train_population(task, members, training, data_seed=config.seed)
        for index, label in enumerate(candidates):
            runs: Sequence[Any] = result.members[index * seeds : (index + 1) * seeds]
            attrs = {
                **metric_attrs(task, runs, metric),
                "objective": config.objective,
                HIGHER_IS_BETTER_ATTR: metric.higher_is_better,
            }
            scores[label] = run_scores([optuna.trial.create_trial(value=0.0, user_attrs=attrs)])
    return scores
