"""Real ``python -m lrsearch run`` processes for the fault tests, and waiting on them.

A test waits for the event it needs (a trial seen training, a process gone), never for a
wall-clock deadline that a busy machine could trip: the only time limit is SAFETY, which
turns a hang into a failure and is far beyond any slow run."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import optuna
import sqlalchemy.exc

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
SAFETY = 1800.0  # seconds: a hang, not a slow machine
State = optuna.trial.TrialState
Found = TypeVar("Found")


def start(workdir: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """``python -m lrsearch run *args`` in ``workdir``, importing this checkout (and the tests'
    task modules)."""
    return subprocess.Popen(
        [sys.executable, "-m", "lrsearch", "run", *args],
        cwd=workdir,
        env={**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{TESTS}", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def trials(storage: str, name: str) -> list[optuna.trial.FrozenTrial]:
    """The study's trials; none while the run has not created it yet (looking creates
    nothing: no file, no tables)."""
    database = storage.removeprefix("sqlite:///")
    if database != storage and not Path(database).is_file():
        return []
    try:
        rdb = optuna.storages.RDBStorage(
            storage,
            skip_table_creation=True,
            engine_kwargs={"connect_args": {"timeout": SAFETY}} if database != storage else {},
        )
        return optuna.load_study(study_name=name, storage=rdb).trials
    except (KeyError, sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError):
        return []  # not created yet; or caught mid-creation


def wait_for(run: subprocess.Popen[str], look: Callable[[], Found | None], what: str) -> Found:
    """What ``look`` finds, polled while ``run`` lives; fails if the run ends first."""
    deadline = time.monotonic() + SAFETY
    while time.monotonic() < deadline:
        found = look()
        if found is not None:
            return found
        if run.poll() is not None:
            _, err = run.communicate()
            raise AssertionError(f"{what}: the run ended first (exit {run.returncode}): {err}")
        time.sleep(0.1)
    raise AssertionError(f"{what}: nothing after {SAFETY} s")


def training(storage: str, name: str) -> Callable[[], optuna.trial.FrozenTrial | None]:
    """A look for a trial training: RUNNING with its schedule sampled."""

    def look() -> optuna.trial.FrozenTrial | None:
        return next(
            (
                t
                for t in trials(storage, name)
                if t.state == State.RUNNING and "schedule" in t.user_attrs
            ),
            None,
        )

    return look


def finish(run: subprocess.Popen[str]) -> tuple[str, str]:
    """The run's stdout and stderr once it has exited."""
    return run.communicate(timeout=SAFETY)
