"""Running a study: Optuna storage, sampler and pruner around one training run per trial.

Everything a trial needs to be understood later is written on the trial as
user attributes, the schedule as its JSON dict first, so optuna-dashboard,
the exporter and ``lrsearch best`` read results from the storage alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import signal
import socket
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import optuna
import sqlalchemy.exc
import torch
from tqdm import tqdm

from lrsearch.baselines import BASELINE_ATTR, enqueue_baselines
from lrsearch.config import StudyConfig, default_storage
from lrsearch.errors import LrsearchError
from lrsearch.schedules import Schedule
from lrsearch.space import suggest_schedule
from lrsearch.tasks import Task, load_task
from lrsearch.training import resolve_device, steps_per_epoch, train, uses_bf16

__all__ = [
    "METRIC_NAME",
    "Run",
    "StudyReport",
    "TrialError",
    "best_trial",
    "check_definition",
    "default_artifact_dir",
    "fail_dead_trials",
    "make_pruner",
    "make_sampler",
    "open_study",
    "redact",
    "retry_trial",
    "run_study",
    "start_run",
    "storage_error",
    "study_definition",
]

METRIC_NAME = "val_accuracy"
# The study's task, training and space, set when it is created; a run that differs is refused.
DEFINITION_ATTR = "definition"
RETRY_ATTR = "retry_of"  # on a trial that re-runs the parameters of one whose process died
# A live trial's process writes a heartbeat this often; one silent for GRACE_SECONDS is failed
# and retried by the next trial to start anywhere. Local deaths are caught at once by PID.
HEARTBEAT_SECONDS = 10
GRACE_SECONDS = 60
# SQLite lets one writer in at a time; the others wait this long instead of failing at once.
SQLITE_BUSY_SECONDS = 60


class TrialError(Exception):
    """The task failed in one trial (out of memory, a bug in a model): that trial fails, the
    study goes on, and the reason is the trial's ``error`` user attribute."""


class Interrupted(Exception):
    """A stop was requested: the trial fails at its next epoch boundary and the run ends."""


@contextlib.contextmanager
def stop_requests(signals: tuple[signal.Signals, ...]) -> Iterator[threading.Event]:
    """The first of ``signals`` asks the run to stop at the next epoch boundary; a second one
    interrupts at once.

    Raising KeyboardInterrupt wherever the signal lands could cut a storage commit in half;
    a flag read between epochs fails the trial through Optuna's normal path instead."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop  # only the main thread may install handlers; the caller's stay
        return

    def request(_signal: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = {number: signal.signal(number, request) for number in signals}
    try:
        yield stop
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


@dataclass(frozen=True)
class StudyReport:
    study_name: str
    storage: str  # password redacted
    trials_run: int
    trials: list[optuna.trial.FrozenTrial]  # all of the study's, this run's and earlier
    artifact_dir: Path

    @property
    def best(self) -> optuna.trial.FrozenTrial | None:
        return best_trial(self.trials)

    @property
    def best_searched(self) -> optuna.trial.FrozenTrial | None:
        return best_trial(self.trials, baseline=False)

    @property
    def best_baseline(self) -> optuna.trial.FrozenTrial | None:
        return best_trial(self.trials, baseline=True)

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
        searched, baseline = self.best_searched, self.best_baseline
        if searched is not None and baseline is not None:
            rows.append(("searched vs baseline", _versus(searched, baseline)))
        rows.append(("dashboard", dashboard_command(self.storage, self.artifact_dir)))
        width = max(len(key) for key, _ in rows)
        return [f"{key:<{width}}  {value}" for key, value in rows]


def redact(url: str) -> str:
    """The storage URL with any password replaced, for logs and messages."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


# What a bad URL, an unreachable server or a file that is no database raises, whatever the driver.
STORAGE_ERRORS = (sqlalchemy.exc.SQLAlchemyError, ValueError, ImportError)


def storage_error(storage: str, error: Exception) -> LrsearchError:
    """One line: the storage (password hidden) and the first line of the driver's complaint."""
    return LrsearchError(f"cannot open storage {redact(storage)}: {redact(_first_line(error))}")


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def dashboard_command(storage: str, artifact_dir: Path) -> str:
    return f"optuna-dashboard {storage} --artifact-dir {artifact_dir}"


def default_artifact_dir(storage: str, study_name: str) -> Path:
    """Beside the SQLite file (``.lrsearch/<study>-artifacts``), else under ``.lrsearch/``."""
    if storage.startswith("sqlite:///"):
        database = Path(storage.removeprefix("sqlite:///").split("?", 1)[0])
        return database.parent / f"{study_name}-artifacts"
    return Path(".lrsearch") / f"{study_name}-artifacts"


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


def rdb_storage(url: str) -> optuna.storages.RDBStorage:
    """The URL's database, safe for several writing processes and for processes that die."""
    connect_args = {"timeout": SQLITE_BUSY_SECONDS} if url.startswith("sqlite") else {}
    attempts = 3
    while True:
        try:
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs={"connect_args": connect_args},
                heartbeat_interval=HEARTBEAT_SECONDS,
                grace_period=GRACE_SECONDS,
                heartbeat_stale_trial_callback=retry_trial,
            )
        except sqlalchemy.exc.IntegrityError:
            attempts -= 1
            if not attempts:
                raise
            time.sleep(1)  # processes started together on a new database race to create tables


def retry_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Queue a dead process's trial again with its parameters, so no sampled point is lost."""
    study.enqueue_trial(trial.params, user_attrs={RETRY_ATTR: trial.number})


def fail_dead_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Fail and retry the RUNNING trials of processes on this host that no longer exist.

    A killed process leaves its trial RUNNING; left so, the study never counts it and
    constant-liar TPE keeps avoiding its parameters (Optuna issue #2742). The heartbeat
    catches this too, but only after GRACE_SECONDS."""
    host = socket.gethostname()
    dead = [
        trial
        for trial in study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.RUNNING])
        if trial.user_attrs.get("host") == host and not _alive(trial.user_attrs.get("pid"))
    ]
    for trial in dead:
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        retry_trial(study, trial)
    return dead


def _alive(pid: object) -> bool:
    if not isinstance(pid, int):
        return True  # not yet recorded: its process is still starting the trial
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def open_study(
    config: StudyConfig, storage: str, *, worker: int = 0, any_epochs: bool = False
) -> optuna.Study:
    """Create the study or load it to add trials; storage problems become one-line errors.

    Each ``worker`` of one run samples from its own seed, or they would propose the same points.
    ``any_epochs`` as for :func:`check_definition`."""
    # group=True and set_metric_names are marked experimental; they are chosen deliberately.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    if storage.startswith("sqlite:///"):
        Path(storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        study = optuna.create_study(
            study_name=config.name,
            storage=rdb_storage(storage),
            sampler=make_sampler(config.sampler, config.seed + 7919 * worker),
            pruner=make_pruner(config.pruner, config.training.epochs),
            direction="maximize",
            load_if_exists=True,
        )
    except STORAGE_ERRORS as error:
        raise storage_error(storage, error) from None
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise LrsearchError(
            f"study {config.name!r} in {redact(storage)} exists and does not maximize"
        )
    if not check_definition(study, config, storage, any_epochs=any_epochs):
        study.set_user_attr(DEFINITION_ATTR, study_definition(config))
    study.set_metric_names([METRIC_NAME])
    return study


def check_definition(
    study: optuna.Study, config: StudyConfig, storage: str, *, any_epochs: bool = False
) -> bool:
    """Refuse a study created with other settings than ``config``'s; False if it has none yet.

    ``any_epochs`` is for retraining at a length of one's own (``confirm``): the trials' length
    may then differ, since it may have come from ``run --epochs`` rather than the study file.
    """
    stored = study.user_attrs.get(DEFINITION_ATTR)
    definition = study_definition(config)
    if any_epochs and stored is not None:
        definition["training"]["epochs"] = stored.get("training", {}).get("epochs")
    if stored is not None and stored != definition:
        changed = ", ".join(_changed_keys(stored, definition)[:3])
        raise LrsearchError(
            f"study {study.study_name!r} in {redact(storage)} was created with other settings "
            f"({changed}); use its own study file and options, or pass a new --study-name"
        )
    return stored is not None


def study_definition(config: StudyConfig) -> dict[str, Any]:
    """What makes one trial's value comparable with another's: the task, the training that
    changes results, and the search space. Trial counts, storage, device, sampler and seed may
    change between runs of one study; these may not, or TPE and ``best`` would mix two studies.
    """
    training = config.training
    definition: dict[str, Any] = _plain(
        {
            "task": {
                "name": config.task.name,
                "model": config.task.model,
                "val_size": config.task.val_size,
                "split_seed": config.task.split_seed,
            },
            "training": {
                name: getattr(training, name)
                for name in (
                    "epochs",
                    "batch_size",
                    "optimizer",
                    "momentum",
                    "nesterov",
                    "weight_decay",
                    "divergence_factor",
                )
            },
            "space": config.space,
        }
    )
    return definition


def _plain(value: Any) -> Any:
    """JSON-compatible, as the storage keeps it (tuples become lists)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ, as ``key: old -> new``."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [
            change
            for key in sorted(old.keys() | new.keys())
            for change in _changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")
        ]
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} -> {new!r}"]


def load_study_task(config: StudyConfig) -> Task:
    """The study's task on its device, loaded once per process; a bad batch size fails here."""
    task = load_task(
        config.task.name,
        model=config.task.model,
        data_dir=config.task.data_dir,
        val_size=config.task.val_size,
        split_seed=config.task.split_seed,
        device=resolve_device(config.device),
        download=config.task.download,
    )
    steps_per_epoch(task, config.training)
    return task


def run_study(
    config: StudyConfig, *, out: TextIO | None = None, artifact_dir: Path | None = None
) -> StudyReport:
    """Load the task, open the storage, run ``config.n_trials`` trials, summarise."""
    out = out or sys.stderr
    task = load_study_task(config)
    run = start_run(config, out, artifact_dir)
    artifacts = optuna.artifacts.FileSystemArtifactStore(run.artifact_dir)
    with run.progress(out) as bar, stop_requests((signal.SIGINT,)) as stop:

        def finished(_study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            bar.update()
            if "error" in trial.user_attrs:
                bar.write(f"trial {trial.number} failed: {trial.user_attrs['error']}", file=out)

        objective = make_objective(
            config, task, progress=bar.set_postfix_str, artifacts=artifacts, stop=stop
        )
        optimize(run, objective, config.timeout, callbacks=[finished])
    if stop.is_set():
        raise KeyboardInterrupt
    return run.report()


def optimize(
    run: Run,
    objective: Callable[[optuna.Trial], float],
    timeout: float | None,
    callbacks: list[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]] | None = None,
    n_trials: int | None = None,
) -> None:
    """``study.optimize`` with trial failures caught and a failing storage made one line."""
    try:
        run.study.optimize(
            objective,
            n_trials=run.n_trials if n_trials is None else n_trials,
            timeout=timeout,
            callbacks=callbacks,
            catch=(TrialError, Interrupted),
        )
    except STORAGE_ERRORS as error:
        raise LrsearchError(
            f"storage {redact(run.storage)} failed during the run: {redact(_first_line(error))}"
        ) from None


@dataclass(frozen=True)
class Run:
    """An open study about to get this run's trials, from one process or from several."""

    study: optuna.Study
    storage: str
    artifact_dir: Path
    n_trials: int  # this run's trials, queued baselines included
    before: int  # trials the study had when the run started

    def progress(self, out: TextIO) -> tqdm:
        return tqdm(total=self.n_trials, desc="trials", unit="trial", file=out, dynamic_ncols=True)

    def report(self) -> StudyReport:
        return StudyReport(
            self.study.study_name,
            redact(self.storage),
            len(self.study.trials) - self.before,
            self.study.get_trials(deepcopy=False),
            self.artifact_dir,
        )


def quiet_optuna() -> None:
    """Errors only: lrsearch prints its own progress, and Optuna would print a traceback for
    every failed trial, whose reason is already the trial's ``error`` attribute."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)


def start_run(config: StudyConfig, out: TextIO, artifact_dir: Path | None) -> Run:
    """Open the storage, fail the trials of dead local processes, say where to watch, and queue
    the baselines (once per study, on top of the searched trials)."""
    storage = config.storage or default_storage(config.name)
    quiet_optuna()
    study = open_study(config, storage)
    artifact_dir = artifact_dir or default_artifact_dir(storage, config.name)
    artifact_dir.mkdir(parents=True, exist_ok=True)
    print(f"study {config.name!r} in {redact(storage)}", file=out)
    print(f"watch it live: {dashboard_command(redact(storage), artifact_dir)}", file=out)
    for trial in fail_dead_trials(study):
        print(f"trial {trial.number} had lost its process; failed it and queued it again", file=out)
    before = len(study.trials)
    queued = enqueue_baselines(study, config.space, out) if config.baselines else []
    if queued:
        print(f"baselines first: {', '.join(queued)}", file=out)
    return Run(study, storage, artifact_dir, config.n_trials + len(queued), before)


def make_objective(
    config: StudyConfig,
    task: Task,
    *,
    progress: Callable[[str], Any] | None = None,
    artifacts: optuna.artifacts.FileSystemArtifactStore | None = None,
    stop: threading.Event | None = None,
) -> Callable[[optuna.Trial], float]:
    """The Optuna objective: sample a schedule, train with it, record everything on the trial.

    With ``artifacts`` each trial also carries a PNG of its LR curve, attached before training
    so optuna-dashboard shows it while the trial runs and after it fails or is pruned."""
    training = config.training

    def check_stop(trial: optuna.Trial) -> None:
        if stop is not None and stop.is_set():
            trial.set_user_attr("error", "interrupted")
            trial.study.stop()  # no trial after this one
            raise Interrupted("interrupted")

    def objective(trial: optuna.Trial) -> float:
        check_stop(trial)
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
            "precision": "bf16" if uses_bf16(training.bf16, task.train_labels.device) else "fp32",
            "seed": seed,
            "split_seed": config.task.split_seed,
            "host": socket.gethostname(),  # with pid: which process to ask whether it still runs
            "pid": os.getpid(),
        }.items():
            trial.set_user_attr(key, value)
        if artifacts is not None:
            _attach_lr_curve(trial, schedule, training.epochs * per_epoch, artifacts)

        def report(epoch: int, val_accuracy: float) -> None:
            check_stop(trial)
            trial.report(val_accuracy, epoch)
            if progress is not None:
                progress(
                    f"#{trial.number} {schedule.family} "
                    f"epoch {epoch}/{training.epochs} val={val_accuracy:.4f}"
                )
            if trial.should_prune():
                trial.set_user_attr("pruned_epoch", epoch)
                raise optuna.TrialPruned(f"val_accuracy {val_accuracy:.4f} at epoch {epoch}")

        try:
            result = train(task, schedule, training, seed=seed, report=report)
        except (optuna.TrialPruned, Interrupted):
            raise
        except Exception as error:
            reason = f"{type(error).__name__}: {_first_line(error)}"
            trial.set_user_attr("error", reason)
            if isinstance(error, torch.OutOfMemoryError) and torch.cuda.is_available():
                torch.cuda.empty_cache()  # so the next trial on this device starts with room
            raise TrialError(reason) from error
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


def _attach_lr_curve(
    trial: optuna.Trial,
    schedule: Schedule,
    steps: int,
    artifacts: optuna.artifacts.FileSystemArtifactStore,
) -> None:
    from lrsearch.plots import save_lr_curve  # imports this module; and matplotlib is heavy

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"lr_curve_trial_{trial.number}.png"
        save_lr_curve(schedule, steps, path)
        optuna.artifacts.upload_artifact(
            artifact_store=artifacts,
            file_path=str(path),
            study_or_trial=trial,
            mimetype="image/png",
        )


def best_trial(
    trials: Iterable[optuna.trial.FrozenTrial], *, baseline: bool | None = None
) -> optuna.trial.FrozenTrial | None:
    """The best COMPLETE trial: of all (``baseline=None``), of the baselines, or of the rest."""
    return max(
        (
            t
            for t in trials
            if t.state == optuna.trial.TrialState.COMPLETE
            and (baseline is None or (BASELINE_ATTR in t.user_attrs) == baseline)
        ),
        key=lambda t: float(t.value or 0.0),
        default=None,
    )


def _versus(searched: optuna.trial.FrozenTrial, baseline: optuna.trial.FrozenTrial) -> str:
    """How far the best searched schedule is ahead of the best baseline, in accuracy points."""
    val = 100 * (searched.user_attrs["val_accuracy"] - baseline.user_attrs["val_accuracy"])
    test = 100 * (searched.user_attrs["test_accuracy"] - baseline.user_attrs["test_accuracy"])
    return (
        f"best searched vs best baseline ({baseline.user_attrs[BASELINE_ATTR]}): "
        f"{val:+.2f} points val accuracy (test: {test:+.2f})"
    )
