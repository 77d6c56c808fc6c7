"""Running a study: Optuna storage, sampler and pruner around one training run per trial.

Everything a trial needs to be understood later is written on the trial as
user attributes, the schedule as its JSON dict first, so optuna-dashboard,
the exporter and ``lrsearch best`` read results from the storage alone.
"""

from __future__ import annotations

import math
import re
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import optuna
import sqlalchemy.exc
from tqdm import tqdm

from lrsearch.config import StudyConfig, default_storage
from lrsearch.errors import LrsearchError
from lrsearch.schedules import Schedule
from lrsearch.space import suggest_schedule
from lrsearch.tasks import Task, load_task
from lrsearch.training import resolve_device, steps_per_epoch, train

__all__ = [
    "METRIC_NAME",
    "StudyReport",
    "make_pruner",
    "make_sampler",
    "open_study",
    "redact",
    "run_study",
]

METRIC_NAME = "val_accuracy"


@dataclass(frozen=True)
class StudyReport:
    study_name: str
    storage: str  # password redacted
    trials_run: int
    best: optuna.trial.FrozenTrial | None

    def lines(self) -> list[str]:
        """The end-of-run summary, one fact per line."""
        rows = [
            ("study", self.study_name),
            ("storage", self.storage),
            ("trials this run", str(self.trials_run)),
        ]
        if self.best is None:
            rows.append(("best", "no trial has completed yet"))
        else:
            attrs = self.best.user_attrs
            rows += [
                ("best trial", str(self.best.number)),
                ("schedule", Schedule.from_dict(attrs["schedule"]).describe()),
                ("val accuracy", f"{attrs['val_accuracy']:.4f}"),
                ("test accuracy", f"{attrs['test_accuracy']:.4f}"),
            ]
        rows.append(("dashboard", dashboard_command(self.storage)))
        width = max(len(key) for key, _ in rows)
        return [f"{key:<{width}}  {value}" for key, value in rows]


def redact(url: str) -> str:
    """The storage URL with any password replaced, for logs and messages."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def dashboard_command(storage: str) -> str:
    return f"optuna-dashboard {storage}"


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """``tpe``: multivariate TPE grouped per family (see lrsearch.space).

    The other two are there to measure that choice against."""
    if name == "tpe":
        return optuna.samplers.TPESampler(
            multivariate=True, group=True, constant_liar=True, seed=seed
        )
    if name == "tpe-independent":
        return optuna.samplers.TPESampler(multivariate=False, constant_liar=True, seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    """``none`` by default: an LR schedule that anneals late looks worse mid-run, and pruning it
    would teach the sampler to prefer early decay (short-horizon bias). The others start
    judging only in the second half of the run."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=epochs // 2)
    if name == "percentile":
        return optuna.pruners.PercentilePruner(25.0, n_startup_trials=5, n_warmup_steps=epochs // 2)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, epochs // 3), max_resource=epochs)
    return optuna.pruners.NopPruner()


def open_study(config: StudyConfig, storage: str) -> optuna.Study:
    """Create the study or load it to add trials; storage problems become one-line errors."""
    # group=True and set_metric_names are marked experimental; they are chosen deliberately.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if storage.startswith("sqlite:///"):
        Path(storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        study = optuna.create_study(
            study_name=config.name,
            storage=storage,
            sampler=make_sampler(config.sampler, config.seed),
            pruner=make_pruner(config.pruner, config.training.epochs),
            direction="maximize",
            load_if_exists=True,
        )
    except (sqlalchemy.exc.SQLAlchemyError, ValueError, ImportError) as error:
        first_line = (
            str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        )
        raise LrsearchError(
            f"cannot open storage {redact(storage)}: {redact(first_line)}"
        ) from None
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise LrsearchError(
            f"study {config.name!r} in {redact(storage)} exists and does not maximize"
        )
    study.set_metric_names([METRIC_NAME])
    return study


def run_study(config: StudyConfig, *, out: TextIO = sys.stderr) -> StudyReport:
    """Load the task, open the storage, run ``config.n_trials`` trials, summarise."""
    device = resolve_device(config.device)
    task = load_task(
        config.task.name,
        model=config.task.model,
        data_dir=config.task.data_dir,
        val_size=config.task.val_size,
        split_seed=config.task.split_seed,
        device=device,
        download=config.task.download,
    )
    steps_per_epoch(task, config.training)  # a batch larger than the data fails here, not per trial
    storage = config.storage or default_storage(config.name)
    print(f"study {config.name!r} in {redact(storage)}", file=out)
    print(f"watch it live: {dashboard_command(redact(storage))}", file=out)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(config, storage)
    before = len(study.trials)
    with tqdm(
        total=config.n_trials, desc="trials", unit="trial", file=out, dynamic_ncols=True
    ) as bar:
        study.optimize(
            make_objective(config, task, progress=bar.set_postfix_str),
            n_trials=config.n_trials,
            timeout=config.timeout,
            callbacks=[lambda _study, _trial: bar.update()],
        )
    best = _best_trial(study)
    return StudyReport(config.name, redact(storage), len(study.trials) - before, best)


def make_objective(
    config: StudyConfig, task: Task, *, progress: Callable[[str], Any] | None = None
) -> Callable[[optuna.Trial], float]:
    """The Optuna objective: sample a schedule, train with it, record everything on the trial."""
    training = config.training

    def objective(trial: optuna.Trial) -> float:
        schedule = suggest_schedule(trial, config.space)
        seed = config.seed + trial.number
        per_epoch = steps_per_epoch(task, training)
        for key, value in {
            "schedule": schedule.to_dict(),
            "family": schedule.family,
            "task": task.name,
            "model": task.model_name,
            "epochs": training.epochs,
            "steps_per_epoch": per_epoch,
            "steps": training.epochs * per_epoch,
            "batch_size": training.batch_size,
            "optimizer": training.optimizer,
            "device": str(task.train_labels.device),
            "seed": seed,
            "split_seed": config.task.split_seed,
        }.items():
            trial.set_user_attr(key, value)

        def report(epoch: int, val_accuracy: float) -> None:
            trial.report(val_accuracy, epoch)
            if progress is not None:
                progress(
                    f"#{trial.number} {schedule.family} "
                    f"epoch {epoch}/{training.epochs} val={val_accuracy:.4f}"
                )
            if trial.should_prune():
                trial.set_user_attr("pruned_epoch", epoch)
                raise optuna.TrialPruned(f"val_accuracy {val_accuracy:.4f} at epoch {epoch}")

        result = train(task, schedule, training, seed=seed, report=report)
        trial.set_user_attr("train_seconds", result.seconds)
        trial.set_user_attr("val_accuracy", result.val_accuracy)
        trial.set_user_attr(
            "test_accuracy", None if math.isnan(result.test_accuracy) else result.test_accuracy
        )
        trial.set_user_attr("diverged", result.diverged_step is not None)
        if result.diverged_step is not None:
            trial.set_user_attr("diverged_step", result.diverged_step)
            trial.set_user_attr("diverged_reason", result.diverged_reason)
            raise optuna.TrialPruned(
                f"diverged at step {result.diverged_step}: {result.diverged_reason}"
            )
        return result.val_accuracy

    return objective


def _best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    try:
        return study.best_trial
    except ValueError:  # no completed trial
        return None
