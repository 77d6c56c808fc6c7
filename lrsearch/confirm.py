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
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import optuna
import pandas as pd

from lrsearch.baselines import BASELINE_ATTR
from lrsearch.config import StudyConfig
from lrsearch.errors import LrsearchError
from lrsearch.export import load_study, storage_url
from lrsearch.schedules import Schedule
from lrsearch.storage import redact
from lrsearch.study import check_definition, load_study_task, open_study
from lrsearch.training import steps_per_epoch, train

__all__ = [
    "CONFIRM_SUFFIX",
    "ConfirmReport",
    "Confirmed",
    "best_confirmed",
    "confirm",
    "save_best_confirmed",
    "spearman",
]

CONFIRM_SUFFIX = ".confirm"


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation: Pearson's on ranks, ties sharing their average rank."""
    if len(a) != len(b) or len(a) < 2:
        raise LrsearchError(
            f"rank correlation needs two equal-length lists of 2+ values, got {len(a)}, {len(b)}"
        )
    return float(pd.Series(a).rank().corr(pd.Series(b).rank()))


@dataclass(frozen=True)
class Confirmed:
    """One schedule's record at both lengths."""

    label: str  # "trial 12" or "baseline cosine-warmup-004"
    trial: int  # the searched trial it comes from
    schedule: Schedule
    search_val: float  # validation accuracy at trial length
    val: tuple[float, ...]  # one per seed, at confirm length
    test: tuple[float, ...]

    @property
    def is_baseline(self) -> bool:
        return self.label.startswith("baseline")


@dataclass(frozen=True)
class ConfirmReport:
    rows: tuple[Confirmed, ...]  # ranked at confirm length, best first
    epochs: int
    seeds: int
    rank_correlation: float

    def lines(self) -> list[str]:
        by_search = sorted(self.rows, key=lambda r: -r.search_val)
        header = (
            f"{'schedule':<32} {'trial-length val':>16} {'rank':>4}  "
            f"{'val mean ± std':>16}  {'test mean ± std':>16} {'rank':>4}"
        )
        lines = [f"confirmed at {self.epochs} epochs, {self.seeds} seed(s) each", header]
        for rank, row in enumerate(self.rows, 1):
            lines.append(
                f"{row.label:<32} {row.search_val:>16.4f} {by_search.index(row) + 1:>4}  "
                f"{_spread(row.val):>16}  {_spread(row.test):>16} {rank:>4}"
            )
        lines.append(
            "Spearman rank correlation, trial length vs confirm length: "
            f"{self.rank_correlation:.3f}"
        )
        return lines


def _spread(values: Sequence[float]) -> str:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return "diverged"
    std = statistics.stdev(finite) if len(finite) > 1 else 0.0
    return f"{statistics.mean(finite):.4f} ± {std:.4f}"


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
    task = load_study_task(config)
    training = dataclasses.replace(config.training, epochs=epochs)
    per_epoch = steps_per_epoch(task, training)
    record = open_study(
        dataclasses.replace(config, name=config.name + CONFIRM_SUFFIX), storage, any_epochs=True
    )
    record.set_user_attr("search_study", config.name)
    done = {
        (t.user_attrs["trial"], t.user_attrs["seed"], t.user_attrs["epochs"])
        for t in record.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE])
    }
    for label, trial in candidates:
        schedule = Schedule.from_dict(trial.user_attrs["schedule"])
        for seed in range(config.seed, config.seed + seeds):
            if (trial.number, seed, epochs) in done:
                continue
            print(f"confirm {label}: seed {seed}, {epochs} epochs", file=out)
            result = train(task, schedule, training, seed=seed)
            attrs = {
                "trial": trial.number,
                "label": label,
                "seed": seed,
                "epochs": epochs,
                "steps": epochs * per_epoch,
                "schedule": schedule.to_dict(),
                "val_accuracy": result.val_accuracy,
                "test_accuracy": None if math.isnan(result.test_accuracy) else result.test_accuracy,
                "diverged": result.diverged_step is not None,
                "train_seconds": result.seconds,
            }
            record.add_trial(optuna.trial.create_trial(value=result.val_accuracy, user_attrs=attrs))
    return _report(record, candidates, epochs, seeds, config.seed)


def _candidates(search: optuna.Study, top: int) -> list[tuple[str, optuna.trial.FrozenTrial]]:
    complete = sorted(
        search.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE]),
        key=lambda t: -float(t.value or 0.0),
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
    test = [t.user_attrs["test_accuracy"] for t in runs]
    return Confirmed(
        label=label,
        trial=trial,
        schedule=schedule,
        search_val=search_val,
        val=tuple(t.user_attrs["val_accuracy"] for t in runs),
        test=tuple(math.nan if value is None else value for value in test),
    )


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
    rows = sorted(
        (
            _confirmed(
                label,
                trial.number,
                Schedule.from_dict(trial.user_attrs["schedule"]),
                float(trial.value or 0.0),
                [t for t in runs if t.user_attrs["trial"] == trial.number],
            )
            for label, trial in candidates
        ),
        key=lambda row: -statistics.mean(row.val),
    )
    correlation = (
        spearman([r.search_val for r in rows], [statistics.mean(r.val) for r in rows])
        if len(rows) > 1
        else math.nan
    )
    return ConfirmReport(tuple(rows), epochs, seeds, correlation)


def save_best_confirmed(storage: str | None, study_name: str, path: Path) -> tuple[Confirmed, int]:
    """Write the confirm step's winner as the schedule file production training loads."""
    url = storage_url(storage, study_name)
    winner, epochs = best_confirmed(url, study_name)
    winner.schedule.save(
        path,
        source={
            "study": study_name,
            "trial": winner.trial,
            "label": winner.label,
            "confirmed_epochs": epochs,
            "seeds": len(winner.val),
            "val_accuracy_mean": statistics.mean(winner.val),
            "test_accuracy_mean": statistics.mean(winner.test),
            "storage": redact(url),
        },
    )
    return winner, epochs


def best_confirmed(storage: str, study_name: str) -> tuple[Confirmed, int]:
    """The schedule with the best mean validation accuracy at the longest confirmed length."""
    record = load_study(storage, study_name + CONFIRM_SUFFIX)
    runs = record.get_trials(deepcopy=False, states=[optuna.trial.TrialState.COMPLETE])
    if not runs:
        raise LrsearchError(f"study {study_name!r} has no confirm runs; run lrsearch confirm first")
    epochs = max(t.user_attrs["epochs"] for t in runs)
    by_trial: dict[int, list[optuna.trial.FrozenTrial]] = {}
    for t in runs:
        if t.user_attrs["epochs"] == epochs:
            by_trial.setdefault(t.user_attrs["trial"], []).append(t)
    rows = [
        _confirmed(
            mine[0].user_attrs["label"],
            number,
            Schedule.from_dict(mine[0].user_attrs["schedule"]),
            math.nan,
            mine,
        )
        for number, mine in by_trial.items()
    ]
    return max(rows, key=lambda row: statistics.mean(row.val)), epochs
