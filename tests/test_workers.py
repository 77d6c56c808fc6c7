"""Several workers on one storage, and the faults they meet: killed, interrupted, out of memory.

The runs are real ``python -m lrsearch run`` processes on the digits task, so spawning,
signals and SQLite locking are the real ones."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from digits_study import DIGITS_STUDY_FILE, digits_study

from lrsearch import runner as runner_module
from lrsearch import workers as workers_module
from lrsearch.runner import run_study
from lrsearch.storage import RETRY_ATTR
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
    """The first trial seen training: RUNNING with its schedule sampled (its process is
    recorded from its creation)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for trial in trials(workdir):
            if trial.state == State.RUNNING and "schedule" in trial.user_attrs:
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


def alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie nobody has reaped (in a container, perhaps nobody
    ever will)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.slow
def test_workers_whose_parent_is_killed_stop_and_the_next_run_retries_their_trials(
    workdir: Path,
) -> None:
    """Trials one at a time, many of them: both workers are surely training at once."""
    (workdir / "study.toml").write_text(
        STUDY.replace("[training]\n", "[training]\npopulation = 1\n")
    )
    run = start(workdir, "--workers", "2", "--n-trials", "20", "--epochs", "10")
    deadline = time.monotonic() + 120
    while len(pids := {t.user_attrs["pid"] for t in running(workdir)}) < 2:
        assert time.monotonic() < deadline and run.poll() is None, "two workers never ran"
        time.sleep(0.1)
    run.kill()
    run.communicate()
    deadline = time.monotonic() + workers_module.STOP_SECONDS
    while any(alive(pid) for pid in pids):
        assert time.monotonic() < deadline, f"workers {pids} outlived their parent"
        time.sleep(0.2)
    orphaned = {t.number for t in running(workdir)}
    assert orphaned, "the workers stopped between trials"

    again = start(workdir, "--n-trials", "1", "--epochs", "10")
    _, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    done = {t.number: t for t in trials(workdir)}
    assert State.RUNNING not in {t.state for t in done.values()}
    retried = {t.user_attrs.get(RETRY_ATTR) for t in done.values()}
    for number in orphaned:
        assert done[number].state == State.FAIL
        assert f"trial {number} had lost its process; failed it and queued it again" in err
        assert number in retried


def running(workdir: Path) -> list[optuna.trial.FrozenTrial]:
    return [t for t in trials(workdir) if t.state == State.RUNNING and "pid" in t.user_attrs]


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
