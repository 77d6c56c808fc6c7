"""Several workers on one storage, and the faults they meet: killed, interrupted, out of memory.

The runs are real ``python -m lrsearch run`` processes on the digits task, so spawning,
signals and SQLite locking are the real ones."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from digits_study import DIGITS_STUDY_FILE, digits_study

from lrsearch import runner as runner_module
from lrsearch import storage as storage_module
from lrsearch.runner import run_study
from lrsearch.storage import RETRY_ATTR, fail_dead_trials
from lrsearch.study import open_study
from lrsearch.training import TrainConfig

REPO = Path(__file__).resolve().parents[1]
State = optuna.trial.TrialState

STUDY = '[study]\nname = "w"\nn_trials = 6\n' + DIGITS_STUDY_FILE


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "study.toml").write_text(STUDY)
    return tmp_path


def start(workdir: Path, *args: str) -> subprocess.Popen[str]:
    """``run`` in the background, on a study created here first so the test can watch it."""
    (workdir / ".lrsearch").mkdir(exist_ok=True)
    optuna.create_study(
        study_name="w", storage=storage(workdir), direction="maximize", load_if_exists=True
    )
    return subprocess.Popen(
        [sys.executable, "-m", "lrsearch", "run", "--study", "study.toml", *args],
        cwd=workdir,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def trials(workdir: Path) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="w", storage=storage(workdir)).trials


def storage(workdir: Path) -> str:
    return f"sqlite:///{workdir / '.lrsearch' / 'w.db'}"


def running_trial(workdir: Path, timeout: float = 120) -> optuna.trial.FrozenTrial:
    """The first trial seen RUNNING with its process recorded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for trial in trials(workdir):
            if trial.state == State.RUNNING and "pid" in trial.user_attrs:
                return trial
        time.sleep(0.1)
    raise AssertionError("no trial started running")


def test_two_workers_add_exactly_n_trials_to_the_default_storage(workdir: Path) -> None:
    run = start(workdir, "--workers", "2")
    out, err = run.communicate(timeout=240)
    assert run.returncode == 0, err
    assert "optuna-dashboard sqlite:///.lrsearch/w.db" in out
    done = trials(workdir)
    assert sorted(t.number for t in done) == list(range(6))
    assert {t.state for t in done} == {State.COMPLETE}
    assert all({"schedule", "val_accuracy", "test_accuracy"} <= t.user_attrs.keys() for t in done)
    assert len({t.user_attrs["pid"] for t in done}) == 2


def test_a_killed_worker_is_replaced_and_its_trial_failed_and_retried(workdir: Path) -> None:
    run = start(workdir, "--workers", "2", "--n-trials", "3", "--epochs", "25")
    victim = running_trial(workdir)
    os.kill(victim.user_attrs["pid"], signal.SIGKILL)
    _, err = run.communicate(timeout=300)
    assert run.returncode == 0, err
    assert "was killed (SIGKILL)" in err
    done = {t.number: t for t in trials(workdir)}
    assert done[victim.number].state == State.FAIL
    retries = [t for t in done.values() if t.user_attrs.get(RETRY_ATTR) == victim.number]
    assert [(t.state, t.params) for t in retries] == [(State.COMPLETE, victim.params)]
    assert [t.state for t in done.values()].count(State.COMPLETE) == 3
    assert State.RUNNING not in {t.state for t in done.values()}


def test_ctrl_c_stops_the_workers_leaves_nothing_running_and_the_next_run_resumes(
    workdir: Path,
) -> None:
    run = start(workdir, "--workers", "2", "--n-trials", "20", "--epochs", "40")
    running_trial(workdir)
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("lrsearch: interrupted")
    states = [t.state for t in trials(workdir)]
    assert State.RUNNING not in states and State.FAIL in states

    again = start(workdir, "--n-trials", "1", "--epochs", "40")  # the study's own settings
    assert again.wait(timeout=120) == 0
    assert [t.state for t in trials(workdir)][len(states) :] == [State.COMPLETE]


def test_a_trial_that_runs_out_of_memory_fails_with_its_reason_and_the_study_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    train = runner_module.train_population

    def second_runs_out_of_memory(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return train(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(runner_module, "train_population", second_runs_out_of_memory)
    config = digits_study(tmp_path / "oom.db", training=TrainConfig(epochs=1, population=1))
    report = run_study(config, out=open(os.devnull, "w"))  # noqa: SIM115
    assert [t.state for t in report.trials] == [State.COMPLETE, State.FAIL, State.COMPLETE]
    assert report.trials[1].user_attrs["error"] == (
        "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    )


@pytest.mark.filterwarnings("ignore:Heartbeat")  # study.ask outside optimize
def test_trials_of_dead_local_processes_are_failed_and_queued_again(tmp_path: Path) -> None:
    study = open_study(digits_study(tmp_path / "dead.db"), f"sqlite:///{tmp_path / 'dead.db'}")
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()
    orphan, alive = study.ask(), study.ask()
    for trial, pid in ((orphan, gone.pid), (alive, os.getpid())):
        trial.suggest_float("x", 0.0, 1.0)
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", pid)
    assert [t.number for t in fail_dead_trials(study)] == [orphan.number]
    states = {t.number: t for t in study.trials}
    assert states[orphan.number].state == State.FAIL
    assert states[alive.number].state == State.RUNNING
    (retry,) = study.get_trials(states=[State.WAITING])
    assert retry.user_attrs[RETRY_ATTR] == orphan.number
    assert retry.system_attrs["fixed_params"] == {"x": orphan.params["x"]}


@pytest.mark.filterwarnings("ignore:Heartbeat")  # study.ask outside optimize
def test_a_trial_whose_heartbeat_stops_is_failed_and_retried_by_the_next_trial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What catches a worker lost on another machine: Optuna's heartbeat, wired to the retry."""
    monkeypatch.setattr(storage_module, "HEARTBEAT_SECONDS", 1)
    monkeypatch.setattr(storage_module, "GRACE_SECONDS", 1)
    study = open_study(digits_study(tmp_path / "hb.db"), f"sqlite:///{tmp_path / 'hb.db'}")
    trial = study.ask()
    trial.suggest_float("x", 0.0, 1.0)
    study._storage.record_heartbeat(trial._trial_id)
    time.sleep(2.5)
    optuna.storages.fail_stale_trials(study)
    assert study.trials[trial.number].state == State.FAIL
    (retry,) = study.get_trials(states=[State.WAITING])
    assert retry.user_attrs[RETRY_ATTR] == trial.number
