"""Running a study: ask Optuna for K trials at once, train them as one population, tell each.

A population's trials are asked in a row (TPE's constant liar spreads them apart), trained in
lockstep on one device with the study's seeds (lrsearch.training), and told one by one when
it ends. Each trial records everything needed to understand it later as user attributes: the
schedule as its JSON dict, its accuracies with their standard errors, each seed's figures and
per-example correctness, so optuna-dashboard, the exporter and ``lrsearch best`` read results
from the storage alone.
"""

from __future__ import annotations

import contextlib
import math
import signal
import statistics
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, TextIO

import numpy as np
import numpy.typing as npt
import optuna
import torch
from tqdm import tqdm

from lrsearch.baselines import BASELINE_ATTR, DECOMPOSITION_ATTR, enqueue_baselines
from lrsearch.config import StudyConfig, default_storage
from lrsearch.errors import LrsearchError
from lrsearch.schedules import Schedule
from lrsearch.space import suggest_schedule
from lrsearch.stats import mean_se, pack_correct, pack_figures
from lrsearch.storage import (
    FAILING_STORAGE,
    STORAGE_ERRORS,
    claim_once,
    database_of,
    fail_dead_trials,
    first_line,
    heartbeat,
    owner,
    redact,
    set_user_attrs,
    storage_failure,
)
from lrsearch.study import (
    CONFIRM_SUFFIX,
    HIGHER_IS_BETTER_ATTR,
    MAXIMIZE,
    MINIMIZE,
    OBJECTIVES,
    best_trial,
    dashboard_command,
    default_artifact_dir,
    objective_of,
    open_study,
    quiet_optuna,
    training_seeds,
)
from lrsearch.tasks import Metric, Task, load_task
from lrsearch.thumbnail import attach_lr_curve
from lrsearch.training import (
    PRECISION_NAMES,
    EpochMetrics,
    Member,
    TrainResult,
    autocast_dtype,
    population_size,
    resolve_device,
    steps_per_epoch,
    train_population,
)
from lrsearch.verdict import verdict_rows

__all__ = [
    "STOP_SIGNALS",
    "Interrupted",
    "Progress",
    "Run",
    "StopFlag",
    "Stopped",
    "StudyReport",
    "TrialError",
    "fail_if_all_failed",
    "load_study_task",
    "metric_attrs",
    "objective_metric",
    "run_study",
    "run_trials",
    "start_run",
    "stop_requests",
]


class TrialError(Exception):
    """The task failed in one trial (out of memory, a bug in a model): that trial fails, the
    study goes on, and the reason is the trial's ``error`` user attribute."""


class Interrupted(Exception):
    """A stop was requested: the trial fails at its next epoch boundary and the run ends."""


# What asks a run to stop: Ctrl-C, a batch scheduler or `kill`, a closed terminal. The process
# exits with 128 + the signal's number (130, 143, 129), the shell's convention.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Stopped(KeyboardInterrupt):
    """A stop signal ended the run; ``signum`` makes the exit code 128 + signum."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopFlag(threading.Event):
    """Set by the first stop signal, which it remembers; ``hard`` once a second one came."""

    def __init__(self) -> None:
        super().__init__()
        self.signum: int = signal.SIGINT
        self.hard = False

    def stopped(self) -> Stopped:
        return Stopped(self.signum)


class _HardTimeout(BaseException):
    """Raised in the main thread when a population still trains at twice ``--timeout``: a
    forward pass that hangs never reaches the epoch boundary where the run could stop."""


@contextlib.contextmanager
def stop_requests(
    signals: tuple[signal.Signals, ...], *, second_raises: bool = True
) -> Iterator[StopFlag]:
    """The first of ``signals`` asks the run to stop at the next epoch boundary; a second one
    interrupts at once (``second_raises``) or only sets ``hard`` for the caller to act on.

    Raising KeyboardInterrupt wherever the signal lands could cut a storage commit in half;
    a flag read between epochs fails the trial through Optuna's normal path instead. The
    second signal is for code that never gets there (a forward pass that hangs): the
    population's trials are then failed on the way out (``run_trials``)."""
    stop = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield stop  # only the main thread may install handlers; the caller's stay
        return

    def request(number: int, _frame: FrameType | None) -> None:
        if stop.hard:
            return  # a third one would cut short the failing of the trials
        if stop.is_set():
            stop.hard = True
            if second_raises:
                raise Stopped(number)
            return
        stop.signum = number
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
    decomposition: dict[str, Any] | None = None  # the latest lrsearch decompose's, if any

    @property
    def best(self) -> optuna.trial.FrozenTrial | None:
        return best_trial(self.trials)

    def lines(self, confirm: str = "lrsearch confirm") -> list[str]:
        """The end-of-run summary, one fact per line; ``confirm`` is the command that reaches
        this study (the options it was run with), for the advice to work when pasted."""
        rows = [
            ("study", self.study_name),
            ("storage", self.storage),
            ("trials this run", str(self.trials_run)),
        ]
        if self.best is None:
            rows.append(("best", "no trial has completed yet"))
        else:
            attrs = self.best.user_attrs
            metric = objective_of(self.best).removeprefix("val_")
            label = metric.replace("_", " ")
            baseline = attrs.get(BASELINE_ATTR)
            rows += [
                # A baseline ahead of every searched trial is said so, not called a trial.
                ("best trial", str(self.best.number))
                if baseline is None
                else ("best overall", f"trial {self.best.number}, the baseline {baseline}"),
                ("schedule", Schedule.from_dict(attrs["schedule"]).describe()),
                (f"val {label}", _with_se(attrs, f"val_{metric}") + " (the objective)"),
                (f"test {label}", _with_se(attrs, f"test_{metric}")),
            ]
            if metric != "accuracy" and attrs.get("val_accuracy") is not None:
                rows += [
                    (f"{split} accuracy", _with_se(attrs, f"{split}_accuracy"))
                    for split in ("val", "test")
                ]
        rows += verdict_rows(self.trials, confirm)
        searched = best_trial(self.trials, baseline=False)
        if searched is not None:
            rows.append(("peak or shape?", self._peak_or_shape(searched.number, confirm)))
        rows.append(("dashboard", dashboard_command(self.storage, self.artifact_dir)))
        width = max(len(key) for key, _ in rows)
        return [f"{key:<{width}}  {value}" for key, value in rows]

    def _peak_or_shape(self, best: int, confirm: str) -> str:
        """The stored decomposition's one sentence while its trial is still the best searched
        one; otherwise the command that makes one."""
        stored = self.decomposition or {}
        if stored.get("trial") == best and stored.get("advice"):
            return (
                f"{stored['advice']} (lrsearch decompose of trial {best}: "
                f"{stored.get('epochs')} epochs x {stored.get('seeds')} seeds)"
            )
        decompose = confirm.replace("lrsearch confirm", "lrsearch decompose", 1)
        return f"run {decompose} to tell what to change"


def _with_se(attrs: dict[str, Any], name: str) -> str:
    """``0.9756 ± 0.0091 (287 examples x 1 seed)`` for ``name`` (``val_accuracy``), or the
    bare figure of an older trial."""
    value, se = attrs.get(name), attrs.get(f"{name}_se")
    if value is None:
        return "-"
    if se is None:
        return f"{value:.4f}"
    seeds = len(attrs.get("seeds", [0]))
    split = name.split("_", 1)[0]
    return (
        f"{value:.4f} ± {se:.4f} s.e. ({attrs.get(f'{split}_examples')} examples x "
        f"{seeds} seed{'s' * (seeds > 1)})"
    )


@dataclass(frozen=True)
class Run:
    """An open study about to get this run's trials, from one process or from several."""

    study: optuna.Study
    storage: str
    artifact_dir: Path
    n_trials: int  # this run's trials, queued baselines included
    before: int  # trials the study had when the run started

    def report(self) -> StudyReport:
        return StudyReport(
            self.study.study_name,
            redact(self.storage),
            len(self.study.trials) - self.before,
            self.study.get_trials(deepcopy=False),
            self.artifact_dir,
            self.study.user_attrs.get(DECOMPOSITION_ATTR),
        )


BASELINES_CLAIM = "lrsearch:baselines"  # study system attribute: who queued the baselines

HOW = {
    "stacked": "as one wide network",
    "vmap": "through torch.func.vmap (the model cannot be stacked wide)",
    "loop": "one member after another (the model runs neither stacked nor under vmap)",
}


class Progress:
    """On a terminal, a bar whose postfix shows the best so far; in a log file, one line per
    finished trial (a bar there is one long line of carriage returns)."""

    def __init__(self, total: int, out: TextIO, trials: Sequence[optuna.trial.FrozenTrial]) -> None:
        self.out = out
        self.best = best_trial(trials)
        self.path: str | None = None  # how the last population ran (lrsearch.stacking)
        self.bar: tqdm | None = None
        if out.isatty():
            self.bar = tqdm(total=total, desc="trials", unit="trial", file=out, dynamic_ncols=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.bar is not None:
            self.bar.close()

    def status(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(text)

    def note(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.out)
        else:
            print(text, file=self.out, flush=True)

    def trial_done(self, trial: optuna.trial.FrozenTrial) -> None:
        path = trial.user_attrs.get("population_path")
        if path is not None and path != self.path:
            self.path = path
            size = trial.user_attrs.get("population")
            seeds = len(trial.user_attrs.get("seeds", [0]))
            who = "one trial at a time" if size == 1 else f"populations of up to {size} trials"
            self.note(f"{who}, {seeds} seed{'s' * (seeds != 1)} each, run {HOW[path]}")
        self.best = best_trial([t for t in (self.best, trial) if t is not None])
        best = (
            "none yet" if self.best is None else f"{self.best.value:.4f} (trial {self.best.number})"
        )
        if self.bar is not None:
            self.bar.update()
            self.bar.set_postfix_str(f"best {best}")
            if "error" in trial.user_attrs:
                self.bar.write(f"trial {trial.number} failed: {trial.user_attrs['error']}")
            return
        print(f"trial {trial.number} {_outcome(trial)}  best {best}", file=self.out, flush=True)


def _outcome(trial: optuna.trial.FrozenTrial) -> str:
    attrs = trial.user_attrs
    family = attrs.get("family", "?")
    seconds = attrs.get("train_seconds")
    took = "" if seconds is None else f"  {seconds:.{2 if seconds < 10 else 0}f} s"
    if trial.state == optuna.trial.TrialState.FAIL:
        return f"{family} failed: {attrs.get('error', 'its process was lost')}"
    if attrs.get("diverged"):
        return f"{family} diverged at step {attrs.get('diverged_step')}{took}"
    if trial.state == optuna.trial.TrialState.PRUNED:
        return f"{family} pruned at epoch {attrs.get('pruned_epoch')}{took}"
    return f"{family} {objective_of(trial)} {trial.value:.4f}{took}"


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
    objective_metric(config, task)
    autocast_dtype(config.training, task.device)  # fp16 off CUDA fails here
    return task


def objective_metric(config: StudyConfig, task: Task) -> Metric:
    """The task's metric that ``[study] objective`` names; one that it lacks fails here."""
    metric = task.metrics.get(config.objective.removeprefix("val_"))
    if metric is None:
        raise LrsearchError(
            f"objective {config.objective!r} is not a metric of task {task.name!r}; it "
            f"reports {', '.join(f'val_{name}' for name in task.metrics)}"
        )
    return metric


def start_run(config: StudyConfig, out: TextIO, artifact_dir: Path | None) -> Run:
    """Open the storage, fail the trials of dead processes, say where to watch, and queue
    the baselines (once per study, on top of the searched trials)."""
    if config.name.endswith(CONFIRM_SUFFIX):
        raise LrsearchError(
            f"study name {config.name!r} ends with {CONFIRM_SUFFIX!r}, which names the study "
            "where lrsearch confirm records its runs; pick another name"
        )
    storage = config.storage or default_storage(config.name)
    quiet_optuna()
    direction = None
    if config.objective not in OBJECTIVES:  # a task's own metric: the task says which way
        higher = objective_metric(config, load_study_task(config)).higher_is_better
        direction = MAXIMIZE if higher else MINIMIZE
    study = open_study(config, storage, direction=direction)
    artifact_dir = artifact_dir or default_artifact_dir(storage, config.name)
    artifact_dir.mkdir(parents=True, exist_ok=True)
    print(f"study {config.name!r} in {redact(storage)}", file=out)
    print(f"watch it live: {dashboard_command(redact(storage), artifact_dir)}", file=out)
    for trial in fail_dead_trials(study):
        print(f"trial {trial.number} had lost its process; failed it and queued it again", file=out)
    before = len(study.trials)
    if before:
        best = best_trial(study.get_trials(deepcopy=False))
        print(
            f"resuming study {config.name!r}: {before} trials, best "
            + ("none yet" if best is None else f"{best.value:.4f} (trial {best.number})"),
            file=out,
        )
    if config.space.auto_lr:  # the range test, once per study, before the first trial
        from lrsearch.lr_find import auto_lr_range

        auto_lr_range(study, config, load_study_task(config), out)
    # Processes started together on one study queue the baselines once: the first to claim.
    baselines = config.baselines and claim_once(study, BASELINES_CLAIM)
    queued = enqueue_baselines(study, config.space, out) if baselines else []
    if queued:
        print(f"baselines first: {', '.join(queued)}", file=out)
    return Run(study, storage, artifact_dir, config.n_trials + len(queued), before)


def run_study(
    config: StudyConfig, *, out: TextIO | None = None, artifact_dir: Path | None = None
) -> StudyReport:
    """Load the task, open the storage, run ``config.n_trials`` trials, summarise."""
    out = out or sys.stderr
    task = load_study_task(config)
    run = start_run(config, out, artifact_dir)
    with (
        Progress(run.n_trials, out, run.study.get_trials(deepcopy=False)) as progress,
        stop_requests(STOP_SIGNALS) as stop,
    ):
        run_trials(run, config, task, stop=stop, progress=progress)
    if stop.is_set():
        raise stop.stopped()
    report = run.report()
    fail_if_all_failed(report.trials[run.before :])
    return report


def fail_if_all_failed(trials: Sequence[optuna.trial.FrozenTrial]) -> None:
    """A run whose every trial failed found nothing: it ends as an error naming the first
    cause, not as a success with an empty summary."""
    if trials and all(t.state == optuna.trial.TrialState.FAIL for t in trials):
        first = trials[0]
        raise LrsearchError(
            f"every trial of this run failed; the first, trial {first.number}: "
            f"{first.user_attrs.get('error', 'no reason recorded')}"
        )


def run_trials(
    run: Run,
    config: StudyConfig,
    task: Task,
    *,
    stop: threading.Event,
    progress: Progress | None = None,
) -> None:
    """``run.n_trials`` trials, a population at a time, until done, timed out or stopped.

    A storage that fails mid-run ends the run with one line; the trials it left RUNNING
    belong to this process, so the next run fails and re-queues them."""
    artifacts = optuna.artifacts.FileSystemArtifactStore(run.artifact_dir)
    size = population_size(config.training.population, task.device)
    deadline = None if config.timeout is None else time.monotonic() + config.timeout
    done = 0
    try:
        seeds = training_seeds(run.study)
        with _hard_timeout(config.timeout):
            while done < run.n_trials and not stop.is_set():
                if deadline is not None and time.monotonic() >= deadline:
                    break
                fail_dead_trials(run.study)
                trials = [run.study.ask() for _ in range(min(size, run.n_trials - done))]
                for trial in trials:  # first, so a process that dies now leaves a pid to check
                    set_user_attrs(trial, owner())
                with _failed_on_the_way_out(run, task, trials), heartbeat(run.study, trials):
                    finished = _run_population(
                        config, task, trials, seeds, artifacts, stop, progress
                    )
                done += len(trials)
                if progress is not None:
                    for frozen in finished:
                        progress.trial_done(frozen)
    except Interrupted:
        return  # the stop flag is set; the caller ends the run with its exit code
    except _HardTimeout:
        if progress is not None:
            progress.note(f"the population still trained at twice --timeout {config.timeout:g} s")
        return
    except FAILING_STORAGE as error:  # a ValueError here is a bug, not the storage's doing
        raise storage_failure(run.storage, error) from None


@contextlib.contextmanager
def _hard_timeout(timeout: float | None) -> Iterator[None]:
    """``--timeout`` stops starting populations; one still training at twice the timeout hangs
    (no epoch boundary where it could stop) and is interrupted: SIGALRM in the main thread."""
    if timeout is None or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(_signal: int, _frame: FrameType | None) -> None:
        raise _HardTimeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, 2 * timeout)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def _failed_on_the_way_out(run: Run, task: Task, trials: list[optuna.Trial]) -> Iterator[None]:
    """Whatever ends a population early (a second stop signal, a hang past the timeout, the
    user's code calling ``sys.exit`` or raising KeyboardInterrupt, the artifact folder failing,
    a bug) leaves none of its trials RUNNING; a failing storage alone leaves them for the next
    run to fail and re-queue. An interrupt can land inside a storage call and leave its
    transaction open, holding SQLite's lock against every other process: it is rolled back
    first."""
    try:
        yield
    except (Interrupted, *FAILING_STORAGE):
        raise  # the trials are failed already; or left, with the storage that failed
    except Exception as error:  # the artifact folder failed, say (an LrsearchError), or a bug
        _fail(run, trials, f"{type(error).__name__}: {first_line(error)}")
        raise
    except (Stopped, _HardTimeout, SystemExit, KeyboardInterrupt) as error:
        user = not isinstance(error, (Stopped, _HardTimeout))
        if isinstance(error, Stopped):
            reason = f"interrupted ({error})"
        elif isinstance(error, _HardTimeout):
            reason = "still training at twice --timeout"
        else:
            reason = f"the task's code raised {type(error).__name__}({_code(error)})"
        _fail(run, trials, reason)
        if user:
            raise LrsearchError(
                f"task {task.name!r} raised {type(error).__name__}({_code(error)}) in trials "
                f"{[t.number for t in trials]}; they are failed. Code a trial runs may raise an "
                "exception (the trial fails), but not end the run"
            ) from error
        raise


def _code(error: BaseException) -> str:
    return "" if not isinstance(error, SystemExit) or error.code is None else repr(error.code)


def _fail(run: Run, trials: Sequence[optuna.Trial], reason: str) -> None:
    """Mark ``trials`` FAIL with ``reason``, unless another process finished them already."""
    storage = database_of(run.study)
    if storage is not None:
        storage.scoped_session.remove()  # drops a transaction an interrupt left open
    for trial in trials:
        with contextlib.suppress(*STORAGE_ERRORS, optuna.exceptions.UpdateFinishedTrialError):
            trial.set_user_attr("error", reason)
            run.study.tell(trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)


def _run_population(
    config: StudyConfig,
    task: Task,
    trials: list[optuna.Trial],
    seeds: list[int],
    artifacts: optuna.artifacts.FileSystemArtifactStore,
    stop: threading.Event,
    progress: Progress | None,
) -> list[optuna.trial.FrozenTrial]:
    """Sample each trial's schedule, train them all with every seed, record and tell each."""
    training = config.training
    per_epoch = steps_per_epoch(task, training)
    device = task.device
    schedules = [suggest_schedule(trial, config.space) for trial in trials]
    metric = objective_metric(config, task)
    for trial, schedule in zip(trials, schedules, strict=True):
        set_user_attrs(
            trial,
            {
                "schedule": schedule.to_dict(),
                "family": schedule.family,
                "task": task.name,
                "model": task.model_name,
                "epochs": training.epochs,
                "steps_per_epoch": per_epoch,
                "steps": training.epochs * per_epoch,
                "batch_size": training.batch_size,
                "optimizer": training.optimizer,
                "device": str(device),
                "precision": PRECISION_NAMES[autocast_dtype(training, device)],
                "seeds": seeds,
                "objective": config.objective,
                HIGHER_IS_BETTER_ATTR: metric.higher_is_better,
                "population": len(trials),
                "split_seed": config.task.split_seed,
            },
        )
        attach_lr_curve(trial, schedule, training.epochs * per_epoch, artifacts)
    width = len(seeds)
    stopped: set[int] = set()  # trials pruned or with a diverged seed

    def on_epoch(metrics: EpochMetrics) -> list[int]:
        if stop.is_set():
            raise Interrupted("interrupted")
        members: list[int] = []
        for index, trial in enumerate(trials):
            if index in stopped:
                continue
            mine = range(index * width, (index + 1) * width)
            if not all(metrics.training[k] for k in mine):  # a seed diverged: the trial did
                stopped.add(index)
                members += mine
                continue
            value = statistics.mean(metrics.val[metric.name][k] for k in mine)
            trial.report(value, metrics.epoch)
            if trial.should_prune():
                trial.set_user_attr("pruned_epoch", metrics.epoch)
                stopped.add(index)
                members += mine
        if progress is not None:
            progress.status(f"population of {len(trials)}: epoch {metrics.epoch}/{training.epochs}")
        return members

    population = [Member(schedule, seed) for schedule in schedules for seed in seeds]
    try:
        result = train_population(task, population, training, data_seed=seeds[0], on_epoch=on_epoch)
    except Interrupted:
        for trial in trials:
            trial.set_user_attr("error", "interrupted")
            trial.study.tell(trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        raise
    except (LrsearchError, *FAILING_STORAGE):
        raise
    except Exception as error:  # the model's, a ValueError included: the trials fail
        reason = f"{type(error).__name__}: {first_line(error)}"
        if isinstance(error, torch.OutOfMemoryError) and torch.cuda.is_available():
            torch.cuda.empty_cache()  # so the next population on this device starts with room
        failed = []
        for trial in trials:
            trial.set_user_attr("error", reason)
            failed.append(
                trial.study.tell(trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
            )
        return failed
    finished = []
    for index, trial in enumerate(trials):
        mine = result.members[index * width : (index + 1) * width]
        seconds = result.seconds / len(trials)
        state, value = _record(trial, mine, task, seconds, result.path, metric)
        finished.append(trial.study.tell(trial, value, state=state))
    return finished


def _record(
    trial: optuna.Trial,
    runs: Sequence[TrainResult],
    task: Task,
    seconds: float,
    path: str,
    objective: Metric,
) -> tuple[optuna.trial.TrialState, float | None]:
    """Write one trial's results over its seeds; return the state and value to tell.

    Every metric of the task gets its mean, standard error and per-seed values on val and
    test (``val_accuracy``, ``test_loss_se``, ...); the objective's per-example figures are kept
    so that verdicts pair: correctness as bits (``val_correct``), other figures as floats."""
    diverged = next((run for run in runs if run.diverged_step is not None), None)
    epochs = min(len(run.epoch_val_loss) for run in runs)
    attrs: dict[str, Any] = {
        "train_seconds": seconds,  # this trial's share of its population's training time
        "population_path": path,
        **metric_attrs(task, runs, objective),
    }
    for name in task.metrics:
        attrs[f"epoch_val_{name}"] = [
            _finite_mean([r.epoch_val[name][e] for r in runs]) for e in range(epochs)
        ]
    attrs["epoch_train_loss"] = [
        _finite_mean([r.epoch_train_loss[e] for r in runs]) for e in range(epochs)
    ]
    attrs["diverged"] = diverged is not None
    if diverged is not None:
        attrs["diverged_step"] = diverged.diverged_step
        attrs["diverged_reason"] = diverged.diverged_reason
    set_user_attrs(trial, attrs)
    if diverged is not None or any(run.stopped_epoch is not None for run in runs):
        return optuna.trial.TrialState.PRUNED, None
    value = attrs[f"val_{objective.name}"]
    if value is None:  # a figure that is not finite, short of divergence
        return optuna.trial.TrialState.FAIL, None
    return optuna.trial.TrialState.COMPLETE, value


def metric_attrs(task: Task, runs: Sequence[TrainResult], objective: Metric) -> dict[str, Any]:
    """One schedule's results over its seeds (``runs``) as user attributes.

    Every metric of the task gets its mean, standard error and per-seed values on val and
    test (``val_accuracy``, ``test_loss_se``, ...); the objective's per-example figures are kept
    so that verdicts pair: correctness as bits (``val_correct``), other figures as floats."""
    examples = {"val": len(task.val_labels), "test": len(task.test_labels)}
    attrs: dict[str, Any] = {"val_examples": examples["val"], "test_examples": examples["test"]}
    for name, metric in task.metrics.items():
        for split in ("val", "test"):
            per_seed = [getattr(run, split)[name] for run in runs]
            figures = [getattr(run, f"{split}_figures")[name] for run in runs]
            attrs[f"{split}_{name}"] = _finite_mean(per_seed)
            attrs[f"{split}_{name}_se"] = _se(metric, per_seed, figures, examples[split])
            attrs[f"{split}_{name}_per_seed"] = [v if math.isfinite(v) else None for v in per_seed]
    if objective.name == "accuracy":
        attrs["val_correct"] = [pack_correct(run.val_correct) for run in runs]
        return attrs
    # Any other mean of per-example figures pairs example by example; a function of the mean
    # (perplexity) pairs its figures too, and its slope there turns the paired difference of
    # means into the metric's own units (lrsearch.stats).
    figures = [run.val_figures[objective.name] for run in runs]
    attrs[f"val_{objective.name}_figures"] = [pack_figures(f) for f in figures]
    if objective.of_mean is not None:
        attrs[f"val_{objective.name}_slope"] = _slope(objective, float(np.mean(figures)))
    return attrs


def _slope(metric: Metric, mean: float) -> float | None:
    """The metric's derivative at ``mean``, by a central difference."""
    step = 1e-6 * max(1.0, abs(mean))
    slope = (metric.value(mean + step) - metric.value(mean - step)) / (2 * step)
    return slope if math.isfinite(slope) else None


def _se(
    metric: Metric, per_seed: list[float], figures: list[npt.NDArray[np.float64]], examples: int
) -> float | None:
    """The standard error of a metric's mean over seeds; in the metric's own units when it is
    a function of a mean (perplexity), through its slope there."""
    if not all(math.isfinite(v) for v in per_seed):
        return None
    example_means = np.mean(figures, axis=0)
    binary = metric.name == "accuracy"
    spread = None if binary else float(example_means.std(ddof=1)) if examples > 1 else 0.0
    raw = [float(np.mean(f)) for f in figures]
    se = mean_se(raw, examples, spread)
    if metric.of_mean is not None:
        centre = statistics.mean(raw)
        se = abs(metric.value(centre + se) - metric.value(centre - se)) / 2
    return se if math.isfinite(se) else None


def _finite_mean(values: Sequence[float]) -> float | None:
    """The storage keeps JSON, which has no NaN: an undefined mean is None."""
    mean = statistics.mean(values) if values else math.nan
    return mean if math.isfinite(mean) else None
