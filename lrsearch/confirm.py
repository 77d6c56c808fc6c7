"""Confirm at production length: does the search's winner still win when the run is longer?

The top searched schedules and the best baseline are retrained at a longer
budget, each replayed at the new length (its times are fractions of the
run), with several seeds shared by every schedule so they meet the same
initialisations and shuffles. Each (schedule, seed) run is one trial of a
second study, ``<study>.confirm``, in the same storage, so export and the
dashboard see it; it carries the searched trial's number, the seed and the
epochs, and a re-run skips what is already recorded.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import optuna
import pandas as pd

from lrsearch.baselines import BASELINE_ATTR
from lrsearch.config import StudyConfig
from lrsearch.errors import LrsearchError
from lrsearch.export import load_study, storage_url, study_names
from lrsearch.schedules import Schedule
from lrsearch.stats import Comparison, Scores, compare_across_seeds
from lrsearch.storage import redact
from lrsearch.study import (
    CONFIRM_SUFFIX,
    HIGHER_IS_BETTER_ATTR,
    MAXIMIZE,
    MINIMIZE,
    check_definition,
    objective_of,
    open_study,
    score,
)
from lrsearch.verdict import number, run_scores

__all__ = [
    "CONFIRM_SUFFIX",
    "ConfirmReport",
    "Confirmed",
    "best_confirmed",
    "confirm",
    "decision",
    "save_best_confirmed",
    "spearman",
]


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation: Pearson's on ranks, ties sharing their average rank."""
    if len(a) != len(b) or len(a) < 2:
        raise LrsearchError(
            f"rank correlation needs two equal-length lists of 2+ values, got {len(a)}, {len(b)}"
        )
    return float(pd.Series(a).rank().corr(pd.Series(b).rank()))


@dataclass(frozen=True)
class Confirmed:
    """One schedule's record at both lengths, and how it stands against the best baseline."""

    label: str  # "trial 12" or "baseline cosine-warmup-004"
    trial: int  # the searched trial it comes from
    schedule: Schedule
    search_val: float  # the objective at trial length
    val: tuple[float, ...]  # one per seed, at confirm length
    test: tuple[float, ...]
    scores: Scores  # the validation results the comparisons read
    test_scores: Scores
    versus_baseline: Comparison | None = None  # None for the baseline itself, or without one

    @property
    def is_baseline(self) -> bool:
        return self.label.startswith("baseline")

    @property
    def val_mean(self) -> float:
        return self.scores.value

    def better_first(self, value: float) -> float:
        """``value`` with higher better, whatever way the objective goes."""
        return value if self.scores.higher_is_better else -value


@dataclass(frozen=True)
class ConfirmReport:
    rows: tuple[Confirmed, ...]  # ranked at confirm length, best first
    epochs: int
    seeds: int
    rank_correlation: float
    trial_epochs: int | None = None  # the searched trials' length, where they recorded it

    def lines(self) -> list[str]:
        """The table (each rank beside the value it ranks, ties as ``2=``), then the notes."""
        search_ranks = _ranks([r.better_first(r.search_val) for r in self.rows])
        confirm_ranks = _ranks([r.better_first(r.val_mean) for r in self.rows])
        metric = self.rows[0].scores.metric if self.rows else "accuracy"
        unit = "points" if metric.endswith("accuracy") else metric.replace("_", " ")
        columns = [
            ("schedule", 32),
            ("search val", 10),
            ("rank", 5),
            ("confirm val ± se", 17),
            ("rank", 5),
            ("test ± se", 17),
            (f"vs baseline, {unit} [95%]", 26),
            ("verdict", 0),
        ]
        lines = [
            f"confirmed at {self.epochs} epochs, {self.seeds} seed(s) each, on val "
            f"{metric.replace('_', ' ')}; ± is the standard error of the mean",
        ]
        if self.trial_epochs is not None and self.epochs < self.trial_epochs:
            lines.append(
                f"note: the confirm runs ({self.epochs} epochs) are shorter than the searched "
                f"trials ({self.trial_epochs} epochs); allowed, but confirm usually runs longer"
            )
        lines.append("  ".join(f"{name:<{width}}" for name, width in columns).rstrip())
        for row, search_rank, rank in zip(self.rows, search_ranks, confirm_ranks, strict=True):
            versus = row.versus_baseline
            cells = [
                row.label,
                _value(row.search_val),
                search_rank,
                _spread(row.scores),
                rank,
                _spread(row.test_scores),
                "(the baseline)" if row.is_baseline else _interval(versus, metric),
                "" if versus is None else versus.verdict,
            ]
            lines.append(
                "  ".join(
                    f"{cell:<{width}}" for cell, (_, width) in zip(cells, columns, strict=True)
                ).rstrip()
            )
        lines.append(
            "Spearman rank correlation, trial length vs confirm length: "
            f"{self.rank_correlation:.3f}"
        )
        if self.rows:
            lines.append(decision(self.rows[0], self.epochs))
        return lines


def decision(winner: Confirmed, epochs: int) -> str:
    """Which schedule ``best --confirmed`` writes, and why, in one line."""
    metric = winner.scores.metric.replace("_", " ")
    why = f"the best mean validation {metric} at {epochs} epochs ({winner.val_mean:.4f})"
    versus = winner.versus_baseline
    if winner.is_baseline:
        why += "; the best baseline beat every searched schedule"
    elif versus is not None:
        why += f"; against the best baseline it is {versus.verdict}"
    return f"lrsearch best --confirmed writes {winner.label}: {why}"


def _ranks(values: Sequence[float], digits: int = 4) -> list[str]:
    """Competition ranks, best first; values equal to the printed ``digits`` share a rank."""
    shown = [round(v, digits) if math.isfinite(v) else -math.inf for v in values]
    ranks = []
    for value in shown:
        rank = 1 + sum(other > value for other in shown)
        ranks.append(f"{rank}=" if shown.count(value) > 1 else str(rank))
    return ranks


def _value(value: float) -> str:
    return f"{value:.4f}" if math.isfinite(value) else "-"


def _spread(scores: Scores) -> str:
    if not math.isfinite(scores.value):
        return "diverged" if scores.per_seed else "-"
    se = f" ± {scores.se:.4f}" if math.isfinite(scores.se) else ""
    return f"{scores.value:.4f}{se}"


def _interval(comparison: Comparison | None, metric: str) -> str:
    if comparison is None:
        return "-"
    c = comparison
    if not (math.isfinite(c.low) and math.isfinite(c.high)):
        return number(c.difference, metric)
    return f"{number(c.difference, metric)} [{number(c.low, metric)}, {number(c.high, metric)}]"


def confirm(
    config: StudyConfig, *, top: int, epochs: int, seeds: int, out: TextIO
) -> ConfirmReport:
    """Retrain the ``top`` best searched trials and the best baseline; record and rank them."""
    for name, value in (("--top", top), ("--epochs", epochs), ("--seeds", seeds)):
        if value < 1:
            raise LrsearchError(f"{name} {value} is not allowed; it must be >= 1")
    storage = storage_url(config.storage, config.name)
    search = load_study(storage, config.name)
    # Retraining on another task or space would mean nothing; at another length is the point.
    check_definition(search, config, storage, any_epochs=True)
    candidates = _candidates(search, top)
    # torch only now: a mistyped option or study is reported without its seconds of start-up.
    from lrsearch.runner import load_study_task, metric_attrs, objective_metric
    from lrsearch.training import (
        EpochMetrics,
        Member,
        population_size,
        steps_per_epoch,
        train_population,
    )

    task = load_study_task(config)
    training = dataclasses.replace(config.training, epochs=epochs)
    per_epoch = steps_per_epoch(task, training)
    metric = objective_metric(config, task)
    record = open_study(
        dataclasses.replace(config, name=config.name + CONFIRM_SUFFIX),
        storage,
        any_epochs=True,
        direction=MAXIMIZE if metric.higher_is_better else MINIMIZE,
    )
    record.set_user_attr("search_study", config.name)
    done = {
        (t.user_attrs["trial"], t.user_attrs["seed"], t.user_attrs["epochs"])
        for t in record.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE])
    }
    pending = [
        (label, trial, seed)
        for label, trial in candidates
        for seed in range(config.seed, config.seed + seeds)
        if (trial.number, seed, epochs) not in done
    ]
    size = population_size(training.population, task.device)
    starts = range(0, len(pending), size)
    for batch, start in enumerate(starts, 1):
        runs = pending[start : start + size]
        # One line as each population starts and one per epoch: steady news of a long run.
        named = ", ".join(f"{label} seed {seed}" for label, _trial, seed in runs)
        print(f"confirm {batch}/{len(starts)}: {named}; {epochs} epochs", file=out, flush=True)

        def on_epoch(metrics: EpochMetrics, batch: int = batch) -> list[int]:
            print(f"confirm {batch}/{len(starts)}: epoch {metrics.epoch}/{epochs}", file=out)
            out.flush()
            return []

        members = [Member(_schedule(trial), seed) for _label, trial, seed in runs]
        result = train_population(task, members, training, data_seed=config.seed, on_epoch=on_epoch)
        for (label, trial, seed), run in zip(runs, result.members, strict=True):
            schedule = _schedule(trial)
            attrs = {
                "trial": trial.number,
                "label": label,
                "seed": seed,
                "epochs": epochs,
                "steps": epochs * per_epoch,
                "schedule": schedule.to_dict(),
                "family": schedule.family,  # so export and plots group confirm runs too
                "objective": config.objective,
                HIGHER_IS_BETTER_ATTR: metric.higher_is_better,
                **metric_attrs(task, [run], metric),
                "diverged": run.diverged_step is not None,
                "train_seconds": result.seconds / len(runs),
                "population_path": result.path,
            }
            value = attrs[config.objective]
            worst = -math.inf if metric.higher_is_better else math.inf
            record.add_trial(
                optuna.trial.create_trial(value=worst if value is None else value, user_attrs=attrs)
            )
            shown = "nothing (diverged)" if value is None else f"{value:.4f}"
            print(f"confirmed {label} seed {seed}: {config.objective} {shown}", file=out)
    return _report(record, candidates, epochs, seeds, config.seed)


def _schedule(trial: optuna.trial.FrozenTrial) -> Schedule:
    return Schedule.from_dict(trial.user_attrs["schedule"])


def _candidates(search: optuna.Study, top: int) -> list[tuple[str, optuna.trial.FrozenTrial]]:
    complete = sorted(
        search.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE]),
        key=lambda t: -score(t),
    )
    searched = [t for t in complete if BASELINE_ATTR not in t.user_attrs][:top]
    baselines = [t for t in complete if BASELINE_ATTR in t.user_attrs][:1]
    if not searched:
        raise LrsearchError(
            f"study {search.study_name!r} has no complete searched trial to confirm"
        )
    return [(f"trial {t.number}", t) for t in searched] + [
        (f"baseline {t.user_attrs[BASELINE_ATTR]}", t) for t in baselines
    ]


def _confirmed(
    label: str,
    trial: int,
    schedule: Schedule,
    search_val: float,
    runs: list[optuna.trial.FrozenTrial],
) -> Confirmed:
    runs = sorted(runs, key=lambda t: t.user_attrs["seed"])
    scores, test = run_scores(runs), run_scores(runs, "test")
    return Confirmed(
        label=label,
        trial=trial,
        schedule=schedule,
        search_val=search_val,
        val=scores.per_seed,
        test=test.per_seed,
        scores=scores,
        test_scores=test,
    )


def _ranked(rows: Iterable[Confirmed]) -> list[Confirmed]:
    """Best mean first, each searched schedule compared with the best baseline across seeds."""
    ranked = sorted(rows, key=lambda row: -_finite_or_worst(row.better_first(row.val_mean)))
    baseline = next((row for row in ranked if row.is_baseline), None)
    if baseline is None:
        return ranked
    return [
        row
        if row.is_baseline
        else dataclasses.replace(
            row, versus_baseline=compare_across_seeds(row.scores, baseline.scores)
        )
        for row in ranked
    ]


def _finite_or_worst(value: float) -> float:
    return value if math.isfinite(value) else -math.inf


def _report(
    record: optuna.Study,
    candidates: list[tuple[str, optuna.trial.FrozenTrial]],
    epochs: int,
    seeds: int,
    first_seed: int,
) -> ConfirmReport:
    runs = [
        t
        for t in record.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE])
        if t.user_attrs["epochs"] == epochs
        and first_seed <= t.user_attrs["seed"] < first_seed + seeds
    ]
    rows = _ranked(
        _confirmed(
            label,
            trial.number,
            Schedule.from_dict(trial.user_attrs["schedule"]),
            float(trial.user_attrs.get(objective_of(trial), trial.value or 0.0)),
            [t for t in runs if t.user_attrs["trial"] == trial.number],
        )
        for label, trial in candidates
    )
    correlation = (
        spearman([r.search_val for r in rows], [r.val_mean for r in rows])
        if len(rows) > 1
        else math.nan
    )
    trial_epochs = max(
        (int(t.user_attrs["epochs"]) for _, t in candidates if "epochs" in t.user_attrs),
        default=None,
    )
    return ConfirmReport(tuple(rows), epochs, seeds, correlation, trial_epochs)


def save_best_confirmed(storage: str | None, study_name: str, path: Path) -> tuple[Confirmed, int]:
    """Write the confirm step's winner as the schedule file production training loads."""
    url = storage_url(storage, study_name)
    winner, epochs = best_confirmed(url, study_name)
    versus = winner.versus_baseline
    winner.schedule.save(
        path,
        source={
            "study": study_name,
            "trial": winner.trial,
            "label": winner.label,
            "confirmed_epochs": epochs,
            "seeds": len(winner.val),
            "objective": f"val_{winner.scores.metric}",
            f"val_{winner.scores.metric}_mean": winner.val_mean,
            f"val_{winner.scores.metric}_se": _json_number(winner.scores.se),
            f"test_{winner.scores.metric}_mean": _json_number(winner.test_scores.value),
            "versus_baseline": None if versus is None else versus.verdict,
            "why": decision(winner, epochs),
            "storage": redact(url),
        },
    )
    return winner, epochs


def _json_number(value: float) -> float | None:
    return value if math.isfinite(value) else None


def best_confirmed(storage: str, study_name: str) -> tuple[Confirmed, int]:
    """The schedule with the best mean validation objective at the longest confirmed length."""
    load_study(storage, study_name)  # a mistyped name is told the studies that are there
    names = study_names(storage)
    runs = (
        load_study(storage, study_name + CONFIRM_SUFFIX).get_trials(
            deepcopy=False, states=[optuna.trial.TrialState.COMPLETE]
        )
        if study_name + CONFIRM_SUFFIX in names
        else []
    )
    if not runs:
        raise LrsearchError(
            f"study {study_name!r} has no confirm runs yet; run `lrsearch confirm --study FILE "
            f"--epochs N` (FILE: the study's file) first, then best --confirmed"
        )
    epochs = max(t.user_attrs["epochs"] for t in runs)
    by_trial: dict[int, list[optuna.trial.FrozenTrial]] = {}
    for t in runs:
        if t.user_attrs["epochs"] == epochs:
            by_trial.setdefault(t.user_attrs["trial"], []).append(t)
    rows = _ranked(
        _confirmed(
            mine[0].user_attrs["label"],
            number,
            Schedule.from_dict(mine[0].user_attrs["schedule"]),
            math.nan,
            mine,
        )
        for number, mine in by_trial.items()
    )
    return rows[0], epochs
