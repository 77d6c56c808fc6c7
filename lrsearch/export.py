"""Results out of a storage: tables for pandas, a summary, and the best schedule as a file.

Reading must never change what it reads: a study is only ever loaded, a
SQLite file that does not exist, is empty or holds another program's tables is
refused instead of made an Optuna one, and every table is built from what the
trials recorded on themselves (lrsearch.study).
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import sqlalchemy
from optuna.storages._rdb.models import BaseModel

from lrsearch.baselines import BASELINE_ATTR, DECOMPOSITION_ATTR
from lrsearch.config import default_storage
from lrsearch.errors import LrsearchError
from lrsearch.paths import sqlite_file, write_outputs
from lrsearch.schedules import Schedule
from lrsearch.storage import STORAGE_ERRORS, redact, storage_error
from lrsearch.study import best_trial, objective_of
from lrsearch.verdict import in_points, trial_family, verdict_summary

__all__ = [
    "export_study",
    "intermediate_table",
    "load_results",
    "load_study",
    "save_best",
    "storage_url",
    "study_names",
    "summary",
    "trials_table",
]

SCHEDULE_PREFIX = "schedule."
_LEADING = ["number", "state", "value", "duration", "datetime_start", "datetime_complete"]
_RESULTS = ["val_accuracy", "test_accuracy", "diverged"]
# Per-epoch columns and the trial attribute each comes from.
_EPOCH_SERIES = {
    "val_accuracy": "epoch_val_accuracy",
    "val_loss": "epoch_val_loss",
    "train_loss": "epoch_train_loss",
}


def storage_url(storage: str | None, study_name: str) -> str:
    """The URL given, or the one ``lrsearch run`` uses by default for this study."""
    return storage or default_storage(study_name)


def load_study(storage: str, study_name: str) -> optuna.Study:
    """An existing study; nothing is created or changed, and bad input is one line naming the fix.

    SQLite creates a missing file and Optuna's RDBStorage its tables on open: either would turn
    a mistyped path or another program's database into an Optuna one. So the file and the
    tables are looked at first, read-only, and the storage is opened without creating tables.
    """
    rdb, names = _open_read_only(storage)
    if study_name not in names:
        known = ", ".join(sorted(names)) or "none"
        raise LrsearchError(f"no study {study_name!r} in {redact(storage)}; studies there: {known}")
    return optuna.load_study(study_name=study_name, storage=rdb)


def study_names(storage: str) -> list[str]:
    """The studies in an existing storage, read as ``load_study`` reads it."""
    return _open_read_only(storage)[1]


def _open_read_only(storage: str) -> tuple[optuna.storages.RDBStorage, list[str]]:
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _check_optuna_tables(storage)
    try:
        rdb = optuna.storages.RDBStorage(storage, skip_table_creation=True)
        return rdb, optuna.study.get_all_study_names(rdb)
    except (*STORAGE_ERRORS, RuntimeError) as error:  # RuntimeError: a schema to upgrade
        raise storage_error(storage, error) from None


# Every table of Optuna's schema, and alembic's record of its version: opening a database that
# lacks one of them would create it.
_OPTUNA_TABLES = {*BaseModel.metadata.tables, "alembic_version"}


def _check_optuna_tables(storage: str) -> None:
    fix = "pass --storage with the URL the study was run with"
    database = sqlite_file(storage)
    if database is not None and not database.is_file():
        raise LrsearchError(
            f"no storage at {redact(storage)}: {str(database)!r} does not exist; {fix}"
            + _studies_beside(database)
        )
    if database is not None and database.stat().st_size == 0:
        raise LrsearchError(f"no storage at {redact(storage)}: {str(database)!r} is empty; {fix}")
    try:
        engine = sqlalchemy.create_engine(storage)
        try:
            tables = set(sqlalchemy.inspect(engine).get_table_names())
        finally:
            engine.dispose()
    except STORAGE_ERRORS as error:
        raise storage_error(storage, error) from None
    missing = sorted(_OPTUNA_TABLES - tables)
    if missing:
        raise LrsearchError(
            f"{redact(storage)} is not an Optuna storage: it has no table {missing[0]!r}; {fix}"
        )


def _studies_beside(database: Path) -> str:
    """The SQLite files beside a missing one: ``run`` names each after its study, so a mistyped
    ``--study-name`` is told the names it can choose from."""
    folder = database.parent
    names = sorted(path.stem for path in folder.glob("*.db")) if folder.is_dir() else []
    return f", or one of the studies in {folder}/: {', '.join(names)}" if names else ""


def load_results(storage: str | None, study_name: str) -> pd.DataFrame:
    """The trials table of a study (see ``trials_table``), for analysis in pandas.

    ``storage=None`` reads the default storage of ``lrsearch run``."""
    return trials_table(load_study(storage_url(storage, study_name), study_name))


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial, any state: Optuna's bookkeeping, the schedule, then every user attr.

    Each schedule parameter is a ``schedule.<name>`` column (defaults included,
    so fixed knobs show too); tuples and other non-scalars are JSON strings so
    CSV and Parquet hold the same values.
    """
    rows = [_trial_row(trial) for trial in study.get_trials(deepcopy=False)]
    table = pd.DataFrame(rows)
    for column in [*_LEADING, "family", *_RESULTS]:
        if column not in table:
            table[column] = None  # a study whose trials have not recorded anything yet
    schedule = [c for c in table.columns if c.startswith(SCHEDULE_PREFIX)]
    first = [*_LEADING, "family", *schedule, *_RESULTS]
    table = table[first + [c for c in table.columns if c not in first]]
    for column in ("datetime_start", "datetime_complete"):
        table[column] = pd.to_datetime(table[column])
    return table


def _trial_row(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    duration = trial.duration
    row: dict[str, Any] = {
        "number": trial.number,
        "state": trial.state.name,
        "value": trial.value,
        "duration": None if duration is None else duration.total_seconds(),
        "datetime_start": trial.datetime_start,
        "datetime_complete": trial.datetime_complete,
    }
    attrs = dict(trial.user_attrs)
    schedule = attrs.get("schedule")
    if isinstance(schedule, dict):
        for name, value in schedule.get("params", {}).items():
            row[SCHEDULE_PREFIX + name] = _scalar(value)
    for name, value in attrs.items():
        row[name] = json.dumps(value) if name == "schedule" else _scalar(value)
    return row


def _scalar(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, (list, tuple, dict)) else value


def intermediate_table(study: optuna.Study) -> pd.DataFrame:
    """Every epoch of every trial, one row each (long format): the objective as reported to
    Optuna, and the other validation and training figures where the trial recorded them
    (empty for older ones): every metric of the task gets a ``val_<metric>`` column."""
    metric = (study.metric_names or ["val_accuracy"])[0]
    trials = study.get_trials(deepcopy=False)
    series = dict(_EPOCH_SERIES)
    for trial in trials:
        for attr in trial.user_attrs:
            if attr.startswith("epoch_val_"):
                series.setdefault(attr.removeprefix("epoch_"), attr)
    series.setdefault(metric, f"epoch_{metric}")
    rows = [
        {
            "number": trial.number,
            "epoch": epoch,
            **{
                column: value
                if column == metric
                else _epoch_value(trial.user_attrs.get(attr), epoch)
                for column, attr in series.items()
            },
        }
        for trial in trials
        for epoch, value in sorted(trial.intermediate_values.items())
    ]
    return pd.DataFrame(rows, columns=["number", "epoch", *series])


def _epoch_value(values: Any, epoch: int) -> float | None:
    """Epochs are reported from 1; the per-epoch lists start at epoch 1."""
    if isinstance(values, list) and 1 <= epoch <= len(values):
        return float(values[epoch - 1])
    return None


def summary(study: optuna.Study, storage: str) -> dict[str, Any]:
    """What a reader wants first: the best schedule, whether its lead is more than noise
    (``verdicts``, see lrsearch.verdict), and how many trials ended how."""
    trials = study.get_trials(deepcopy=False)
    searched = best_trial(trials, baseline=False)
    baseline = best_trial(trials, baseline=True)
    metric = (study.metric_names or ["val_accuracy"])[0].removeprefix("val_")
    # Accuracies in points, as summaries always had them; any other metric in its own units.
    scale, key = (100.0, "searched_minus_baseline_points")
    if not in_points(metric):
        scale, key = (1.0, "searched_minus_baseline")
    return {
        "study": study.study_name,
        "storage": redact(storage),
        "objective": f"val_{metric}",
        "trials": len(trials),
        "best": _brief(best_trial(trials)),
        "best_searched": _brief(searched),
        "best_baseline": _brief(baseline),
        key: None
        if searched is None or baseline is None
        else {
            name: _difference(searched.user_attrs.get(name), baseline.user_attrs.get(name), scale)
            for name in (f"val_{metric}", f"test_{metric}")
        },
        "verdicts": verdict_summary(trials),
        "decomposition": study.user_attrs.get(DECOMPOSITION_ATTR),  # from lrsearch decompose
        "states": dict(Counter(trial.state.name for trial in trials)),
        "families": dict(Counter(str(trial_family(trial)) for trial in trials)),
    }


def _difference(a: Any, b: Any, scale: float) -> float | None:
    return None if a is None or b is None else scale * (a - b)


def export_study(storage: str | None, study_name: str, out: Path) -> list[Path]:
    """``trials`` and ``intermediate`` as CSV and Parquet, plus ``summary.json``, into ``out``."""
    url = storage_url(storage, study_name)
    study = load_study(url, study_name)
    tables = {"trials": trials_table(study), "intermediate": intermediate_table(study)}
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(summary(study, url), indent=2) + "\n"
    files: dict[Path, Callable[[Path], object]] = {}
    for name, table in tables.items():
        files[out / f"{name}.csv"] = partial(table.to_csv, index=False)
        files[out / f"{name}.parquet"] = partial(table.to_parquet, index=False)
    files[out / "summary.json"] = partial(Path.write_text, data=text, encoding="utf-8")
    return write_outputs(files, "--out")


def save_best(storage: str | None, study_name: str, path: Path) -> optuna.trial.FrozenTrial:
    """The best complete trial's schedule as a file production training loads, with its origin."""
    url = storage_url(storage, study_name)
    study = load_study(url, study_name)
    best = best_trial(study.get_trials(deepcopy=False))
    if best is None:
        raise LrsearchError(
            f"study {study.study_name!r} has no complete trial yet; run more trials first"
        )
    attrs = best.user_attrs
    objective = objective_of(best)
    test = objective.replace("val_", "test_", 1)
    source = {
        "study": study.study_name,
        "trial": best.number,
        "objective": objective,
        objective: attrs.get(objective, best.value),
        test: attrs.get(test),
        "storage": redact(url),
        **{key: attrs.get(key) for key in ("task", "model", "epochs", "steps")},
    }
    Schedule.from_dict(attrs["schedule"]).save(path, source=source)
    return best


def _brief(trial: optuna.trial.FrozenTrial | None) -> dict[str, Any] | None:
    if trial is None:
        return None
    return {
        "number": trial.number,
        "value": trial.value,
        "baseline": trial.user_attrs.get(BASELINE_ATTR),
        "schedule": trial.user_attrs.get("schedule"),
    }
