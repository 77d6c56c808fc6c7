"""Several worker processes on this machine, one study, one storage.

The parent validates everything, opens the study and queues the baselines, then splits
this run's trials between spawned workers; each worker loads the task once on its device
and runs its share a population at a time (``lrsearch.runner.run_trials``), so the run
adds exactly ``n_trials`` trials. A worker killed by a signal has its RUNNING trials failed
and retried, and a replacement runs what it had left. Ctrl-C asks every worker to stop at
its next epoch boundary, where its trials are marked FAIL, so the next run resumes; a
worker whose parent dies exits at once. Other machines join by running the
same command against the same server storage (see README, "Many workers and machines").
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TextIO

import optuna
import torch

from lrsearch.config import StudyConfig
from lrsearch.errors import LrsearchError
from lrsearch.runner import (
    STOP_SIGNALS,
    Progress,
    Run,
    StopFlag,
    StudyReport,
    fail_if_all_failed,
    load_study_task,
    run_study,
    run_trials,
    start_run,
    stop_requests,
)
from lrsearch.storage import STORAGE_ERRORS, fail_dead_trials, first_line, storage_failure
from lrsearch.study import open_study, quiet_optuna
from lrsearch.training import resolve_device, thread_count

__all__ = ["run", "run_workers"]

FINISHED = (
    optuna.trial.TrialState.COMPLETE,
    optuna.trial.TrialState.PRUNED,
    optuna.trial.TrialState.FAIL,
)
STOP_SECONDS = 60  # a stopped worker's last trial may take this long to be marked failed
HURRY_SECONDS = 10  # after a second stop signal, a worker has this long to fail its trials


def run(
    config: StudyConfig,
    *,
    workers: int = 1,
    devices: Sequence[str] = (),
    out: TextIO | None = None,
    artifact_dir: Path | None = None,
) -> StudyReport:
    """One worker runs in this process, as before; more are spawned."""
    if workers < 1:
        raise LrsearchError(f"--workers {workers} is not allowed; it must be >= 1")
    for device in devices:
        resolve_device(device, "--devices")
    if workers == 1 and len(devices) <= 1:
        torch.set_num_threads(thread_count(config.training.threads))
        device = devices[0] if devices else config.device
        return run_study(
            dataclasses.replace(config, device=device), out=out, artifact_dir=artifact_dir
        )
    return run_workers(config, workers, devices, out=out, artifact_dir=artifact_dir)


def run_workers(
    config: StudyConfig,
    workers: int,
    devices: Sequence[str] = (),
    *,
    out: TextIO | None = None,
    artifact_dir: Path | None = None,
) -> StudyReport:
    """Spread ``workers`` processes round-robin over ``devices`` (default: the study's device)."""
    out = out or sys.stderr
    devices = list(devices) or [config.device]
    for device in devices:
        resolve_device(device)
    load_study_task(dataclasses.replace(config, device="cpu"))  # bad task: error, nothing written
    started = start_run(config, out, artifact_dir)
    pool = _Pool(config, started, devices, threads=thread_count(config.training.threads, workers))
    # Ctrl-C (and SIGTERM, SIGHUP) is a flag read in this loop, never an exception inside a
    # storage call: one landing in a SQLite read could keep its lock and stall every worker's
    # commit. A second one stops the workers at once. A storage that fails stops every worker
    # and is the run's one error line.
    try:
        with stop_requests(STOP_SIGNALS, second_raises=False) as stop:
            try:
                for share in _shares(started.n_trials, workers):
                    pool.spawn(share)
                trials = started.study.get_trials(deepcopy=False)
                with Progress(started.n_trials, out, trials) as progress:
                    seen = {t.number for t in trials if t.state in FINISHED}
                    while pool.processes and not stop.is_set():
                        time.sleep(0.5)
                        for process in pool.exited():
                            pool.handle_exit(process, out)
                        for trial in _finished(started.study, started.before):
                            if trial.number not in seen:
                                seen.add(trial.number)
                                progress.trial_done(trial)
            finally:
                pool.stop(stop)
                fail_dead_trials(started.study)
    except STORAGE_ERRORS as error:
        raise storage_failure(started.storage, error) from None
    if stop.is_set():
        raise stop.stopped()
    report = started.report()
    fail_if_all_failed(report.trials[started.before :])
    return report


def _shares(n_trials: int, workers: int) -> list[int]:
    """``n_trials`` split as evenly as possible; a worker with no share is not started."""
    return [
        n for n in (n_trials // workers + (i < n_trials % workers) for i in range(workers)) if n
    ]


def _finished(study: optuna.Study, before: int) -> list[optuna.trial.FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False, states=FINISHED) if t.number >= before]


class _Pool:
    """The live workers and each one's share of this run's trials."""

    def __init__(self, config: StudyConfig, started: Run, devices: list[str], threads: int) -> None:
        self.config, self.started, self.devices, self.threads = config, started, devices, threads
        self.processes: dict[BaseProcess, int] = {}
        self.spawned = 0
        self.deadline = None if config.timeout is None else time.monotonic() + config.timeout

    def spawn(self, share: int) -> None:
        """A worker for ``share`` trials; a replacement gets what is left of the run's timeout."""
        config = dataclasses.replace(
            self.config,
            device=self.devices[self.spawned % len(self.devices)],
            storage=self.started.storage,
            timeout=None if self.deadline is None else max(1e-3, self.deadline - time.monotonic()),
        )
        process = multiprocessing.get_context("spawn").Process(
            target=_work,
            args=(
                config,
                share,
                self.started.artifact_dir,
                self.spawned,
                self.threads,
                os.getpid(),
            ),
        )
        process.start()
        self.processes[process] = share
        self.spawned += 1

    def exited(self) -> list[BaseProcess]:
        return [p for p in self.processes if not p.is_alive()]  # is_alive reaps the dead

    def handle_exit(self, process: BaseProcess, out: TextIO) -> None:
        """A worker killed by a signal is replaced; one that failed stops the run."""
        share = self.processes.pop(process)
        code = process.exitcode
        if code == 0:
            return
        if code is None or code > 0:
            raise LrsearchError(f"worker {process.pid} stopped with exit code {code} (see above)")
        lost = {t.number for t in fail_dead_trials(self.started.study)}
        ran = [
            t
            for t in self.started.study.get_trials(deepcopy=False, states=FINISHED)
            if t.user_attrs.get("pid") == process.pid
            and t.user_attrs.get("host") == socket.gethostname()
            and t.number not in lost
        ]
        print(
            f"worker {process.pid} was killed ({signal.Signals(-code).name}); "
            f"trials {sorted(lost) or 'none'} failed and queued again",
            file=out,
        )
        if share > len(ran):
            self.spawn(share - len(ran))

    def stop(self, flag: StopFlag) -> None:
        """Ask each worker to stop at its next epoch boundary (its trial is marked FAIL); on a
        second stop signal ask again, which interrupts it at once; kill any that hangs."""
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        hurried = False
        while self._alive() and time.monotonic() < deadline:
            if flag.hard and not hurried:
                hurried = True
                self._signal_all(signal.SIGTERM)
                deadline = min(deadline, time.monotonic() + HURRY_SECONDS)
            for process in self._alive():
                process.join(0.2)
        for process in self._alive():
            process.kill()
            process.join()
        self.processes.clear()

    def _alive(self) -> list[BaseProcess]:
        return [p for p in self.processes if p.is_alive()]

    def _signal_all(self, number: signal.Signals) -> None:
        for process in self._alive():
            if process.pid is not None:
                with contextlib.suppress(ProcessLookupError):  # exited since
                    os.kill(process.pid, number)


def _work(
    config: StudyConfig, n_trials: int, artifact_dir: Path, worker: int, threads: int, parent: int
) -> None:
    """A worker process: the parent alone takes Ctrl-C, and stops workers with SIGTERM.

    Each takes its share of the CPU cores: every worker spinning on all of them ran 2 workers
    at a third of one worker's speed on 2 cores (BENCHMARKS.md). A worker whose parent dies
    stops too, or a restarted run would have two sets of workers."""
    for number in (signal.SIGINT, signal.SIGHUP):  # the terminal's; the parent answers them
        signal.signal(number, signal.SIG_IGN)
    _stop_with_parent(parent)
    torch.set_num_threads(threads)
    try:
        quiet_optuna()
        task = load_study_task(config)
        assert config.storage is not None  # the parent passes the resolved storage
        run = Run(
            open_study(config, config.storage, worker=worker),
            config.storage,
            artifact_dir,
            n_trials,
            before=0,
        )
        with stop_requests((signal.SIGTERM,)) as stop:
            run_trials(run, config, task, stop=stop)
        if stop.is_set():
            sys.exit(130)
    except KeyboardInterrupt:  # a second SIGTERM
        sys.exit(130)
    except LrsearchError as error:  # why, in a line; the parent's error line refers to it
        print(f"worker {os.getpid()} stopped: {error}", file=sys.stderr)
        sys.exit(2)
    except Exception as error:  # a bug, or a model failing outside a trial
        print(
            f"worker {os.getpid()} stopped: {type(error).__name__}: {first_line(error)}",
            file=sys.stderr,
        )
        sys.exit(1)


def _stop_with_parent(parent: int) -> None:
    """End this worker the moment ``parent`` is gone, as a kill would: its trials stay RUNNING
    under a dead pid, so the next run fails them and queues them again. Stopping at the next
    epoch instead failed them as if interrupted on purpose, and their parameters were lost."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(1)

    threading.Thread(target=watch, name="lrsearch-parent-watch", daemon=True).start()
