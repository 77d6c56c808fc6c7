"""Whether the best searched schedule really beats what it is compared with, or is noise.

A study ends with two comparisons a reader acts on: the best searched trial
against the best baseline (is searching worth it?) and against the runner-up
searched trial (is the winner the winner?). Each is a difference with its
95% interval and a verdict, and a tie comes with the confirm command that
would separate the two. Trials from before per-example correctness was
recorded fall back to what they carry (see :mod:`lrsearch.stats`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna

from lrsearch.baselines import BASELINE_ATTR
from lrsearch.stats import (
    UNKNOWN,
    WITHIN_NOISE,
    Comparison,
    Scores,
    binomial_se,
    compare,
    unpack_correct,
    unpack_figures,
)
from lrsearch.study import higher_is_better, objective_of, score

__all__ = [
    "CONFIRM_SEEDS",
    "CONFIRM_TOP",
    "Versus",
    "run_scores",
    "trial_family",
    "trial_label",
    "trial_scores",
    "verdict_rows",
    "verdict_summary",
    "versus",
]

CONFIRM_TOP = 3
CONFIRM_SEEDS = 3


def trial_scores(trial: optuna.trial.FrozenTrial) -> Scores:
    """A trial's validation results on its objective from its user attributes, old trials
    included."""
    return run_scores([trial])


def run_scores(runs: Sequence[optuna.trial.FrozenTrial], split: str = "val") -> Scores:
    """The results of one schedule's runs on ``split`` ("val" or "test"), seeds in run order,
    for the metric the runs' objective names.

    One run's standard error is the one it recorded (over its examples, combined over its
    seeds), else binomial from its example count; over several runs it is the spread of the
    seeds. Old runs lack everything but the accuracy.
    """
    metric = objective_of(runs[0]).removeprefix("val_") if runs else "accuracy"
    name = f"{split}_{metric}"
    per_seed = tuple(
        _accuracy(value)
        for run in runs
        for value in run.user_attrs.get(f"{name}_per_seed", [run.user_attrs.get(name)])
    )
    finite = [v for v in per_seed if math.isfinite(v)]
    value = statistics.mean(finite) if finite else math.nan
    examples = int(runs[0].user_attrs.get(f"{split}_examples", 0)) if runs else 0
    if len(runs) == 1:
        recorded = runs[0].user_attrs.get(f"{name}_se")
        se = binomial_se(value, examples) if recorded is None else float(recorded)
    else:
        se = statistics.stdev(finite) / math.sqrt(len(finite)) if len(finite) > 1 else math.nan
    key, unpack = (
        (f"{split}_correct", unpack_correct)
        if metric == "accuracy"
        else (f"{name}_figures", unpack_figures)
    )
    packed: list[Any] = [run.user_attrs.get(key) for run in runs]
    figures = (
        np.stack([unpack(text, examples) for bits in packed for text in bits])
        if examples and packed and all(isinstance(bits, list) and bits for bits in packed)
        else None
    )
    higher = higher_is_better(runs[0]) if runs else True
    slopes = [float(s) for run in runs if (s := run.user_attrs.get(f"{name}_slope")) is not None]
    slope = statistics.mean(slopes) if runs and len(slopes) == len(runs) else None
    return Scores(value, per_seed, examples, se, figures, metric, higher, slope)


def _accuracy(value: Any) -> float:
    return math.nan if value is None else float(value)


def trial_family(trial: optuna.trial.FrozenTrial) -> str | None:
    """The schedule family: recorded on the trial, else read from its schedule (the confirm
    trials of older versions carry only the schedule)."""
    family = trial.user_attrs.get("family")
    schedule = trial.user_attrs.get("schedule")
    if family is None and isinstance(schedule, dict):
        family = schedule.get("family")
    return None if family is None else str(family)


def trial_label(trial: optuna.trial.FrozenTrial) -> str:
    """``trial 12``, or ``baseline cosine-warmup-004`` for a baseline."""
    name = trial.user_attrs.get(BASELINE_ATTR)
    return f"baseline {name}" if name is not None else f"trial {trial.number}"


@dataclass(frozen=True)
class Versus:
    """One trial against another: the comparison and the sentence a reader acts on."""

    name: str  # the summary row's label
    a: optuna.trial.FrozenTrial
    b: optuna.trial.FrozenTrial
    comparison: Comparison
    # The command that runs confirm on this study: the caller adds the options it was run with.
    confirm: str = "lrsearch confirm"

    @property
    def advice(self) -> str | None:
        """The confirm run that separates a tie: longer (twice the trials'), three seeds."""
        if self.comparison.verdict not in (WITHIN_NOISE, UNKNOWN):
            return None
        epochs = self.a.user_attrs.get("epochs")
        length = f" --epochs {2 * int(epochs)}" if epochs else ""
        return (
            f"run {self.confirm} --top {CONFIRM_TOP}{length} --seeds {CONFIRM_SEEDS} "
            "to separate them"
        )

    def line(self) -> str:
        c = self.comparison
        metric = objective_of(self.a).removeprefix("val_")
        text = f"{trial_label(self.a)} vs {trial_label(self.b)}: {difference(c.difference, metric)}"
        if c.verdict == UNKNOWN:
            text += " (no standard error recorded: trials from an older lrsearch)"
        else:
            seeds = f"{c.seeds} seed" + ("s" if c.seeds != 1 else "")
            low, high = (number(value, metric) for value in (c.low, c.high))
            text += f" [95% {low}, {high}] on {c.examples} examples x {seeds}"
            if c.method.startswith("unpaired"):
                text += " (unpaired)"
        text += f": {c.verdict}"
        advice = self.advice
        return text + (f" — {advice}" if advice else "")

    def as_dict(self) -> dict[str, Any]:
        c = self.comparison
        metric = objective_of(self.a).removeprefix("val_")
        # Accuracies in points as they always were; any other metric in its own units.
        scale, unit = (100.0, "_points") if in_points(metric) else (1.0, "")
        return {
            "a": trial_label(self.a),
            "b": trial_label(self.b),
            "metric": f"val_{metric}",
            f"difference{unit}": scale * c.difference,
            f"low{unit}": _finite(scale * c.low),
            f"high{unit}": _finite(scale * c.high),
            "examples": c.examples,
            "seeds": c.seeds,
            "method": c.method,
            "mcnemar_p": c.p_value,
            "verdict": c.verdict,
            "advice": self.advice,
        }


def versus(
    trials: Sequence[optuna.trial.FrozenTrial], confirm: str = "lrsearch confirm"
) -> list[Versus]:
    """Best searched vs best baseline, and best searched vs runner-up, where both exist."""
    complete = sorted(
        (t for t in trials if t.state == optuna.trial.TrialState.COMPLETE),
        key=lambda t: -score(t),
    )
    searched = [t for t in complete if BASELINE_ATTR not in t.user_attrs]
    baselines = [t for t in complete if BASELINE_ATTR in t.user_attrs]
    pairs = []
    if searched and baselines:
        pairs.append(("searched vs baseline", searched[0], baselines[0]))
    if len(searched) > 1:
        pairs.append(("best vs runner-up", searched[0], searched[1]))
    return [
        Versus(name, a, b, compare(trial_scores(a), trial_scores(b)), confirm)
        for name, a, b in pairs
    ]


def verdict_rows(
    trials: Sequence[optuna.trial.FrozenTrial], confirm: str = "lrsearch confirm"
) -> list[tuple[str, str]]:
    """``(label, line)`` rows for the end-of-run summary (``StudyReport.lines``); ``confirm``
    is the command that reaches this study, so the advice works when pasted."""
    return [(pair.name, pair.line()) for pair in versus(trials, confirm)]


def verdict_summary(trials: Sequence[optuna.trial.FrozenTrial]) -> dict[str, dict[str, Any]]:
    """The same comparisons for ``summary.json``, keyed like the summary rows."""
    return {
        pair.name.replace(" ", "_").replace("-", "_"): pair.as_dict() for pair in versus(trials)
    }


def in_points(metric: str) -> bool:
    """Accuracies are differences of fractions, said in percentage points."""
    return metric.endswith("accuracy")


def number(value: float, metric: str) -> str:
    """A difference in ``metric``'s units, signed: ``+1.25`` points, ``-0.0123`` of a loss."""
    return f"{100 * value:+.2f}" if in_points(metric) else f"{value:+.4f}"


def difference(value: float, metric: str) -> str:
    """``+1.25 points val accuracy``, ``-0.0123 val loss``."""
    unit = " points" if in_points(metric) else ""
    return f"{number(value, metric)}{unit} val {metric.replace('_', ' ')}"


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None  # JSON has no NaN
