"""Several workers on one storage, and the faults they meet: killed, interrupted, out of memory.

The runs are real ``python -m lrsearch run`` processes on the digits task, so spawning,
signals and SQLite locking are the real ones."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
import real_runs
import torch
from digits_study import DIGITS_STUDY_FILE, digits_study

from lrsearch import runner as runner_module
from lrsearch.baselines import BASELINE_ATTR, baselines_for
from lrsearch.runner import run_study
from lrsearch.storage import RETRY_ATTR
from lrsearch.training import TrainConfig

State = optuna.trial.TrialState

STUDY = '[study]\nname = "w"\nn_trials = 6\n' + DIGITS_STUDY_FILE


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "study.toml").write_text(STUDY)
    return tmp_path


def start(workdir: Path, *args: str) -> subprocess.Popen[str]:
    """``run`` in the background; the test watches the study it creates."""
    return real_runs.start(workdir, "--study", "study.toml", *args)


def trials(workdir: Path) -> list[optuna.trial.FrozenTrial]:
    return real_runs.trials(storage(workdir), "w")


def storage(workdir: Path) -> str:
    return f"sqlite:///{workdir / '.lrsearch' / 'w.db'}"


def running_trial(workdir: Path, run: subprocess.Popen[str]) -> optuna.trial.FrozenTrial:
    """The first trial seen training: RUNNING with its schedule sampled (its process is
    recorded from its creation)."""
    return real_runs.wait_for(run, real_runs.training(storage(workdir), "w"), "a trial training")


def test_two_workers_add_exactly_n_trials_to_the_default_storage(workdir: Path) -> None:
    run = start(workdir, "--workers", "2")
    out, err = real_runs.finish(run)
    assert run.returncode == 0, err
    assert "optuna-dashboard sqlite:///.lrsearch/w.db" in out
    done = trials(workdir)
    assert sorted(t.number for t in done) == list(range(6))
    assert {t.state for t in done} == {State.COMPLETE}
    assert all({"schedule", "val_accuracy", "test_accuracy"} <= t.user_attrs.keys() for t in done)
    assert len({t.user_attrs["pid"] for t in done}) == 2


def test_a_killed_worker_is_replaced_and_its_trial_failed_and_retried(workdir: Path) -> None:
    run = start(workdir, "--workers", "2", "--n-trials", "3", "--epochs", "25")
    victim = running_trial(workdir, run)
    os.kill(victim.user_attrs["pid"], signal.SIGKILL)
    _, err = real_runs.finish(run)
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
    running_trial(workdir, run)
    run.send_signal(signal.SIGINT)
    _, err = real_runs.finish(run)
    assert run.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("lrsearch: interrupted")
    states = [t.state for t in trials(workdir)]
    assert State.RUNNING not in states and State.FAIL in states

    again = start(workdir, "--n-trials", "1", "--epochs", "40")  # the study's own settings
    assert again.wait(timeout=real_runs.SAFETY) == 0
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

    def two_training() -> set[int] | None:
        pids = {t.user_attrs["pid"] for t in running(workdir)}
        return pids if len(pids) == 2 else None

    pids = real_runs.wait_for(run, two_training, "two workers training")
    run.kill()
    run.communicate()
    # Each checks its parent every second; a busy machine may take longer, never forever.
    deadline = time.monotonic() + real_runs.SAFETY
    while any(alive(pid) for pid in pids):
        assert time.monotonic() < deadline, f"workers {pids} outlived their parent"
        time.sleep(0.2)
    orphaned = {t.number for t in running(workdir)}
    assert orphaned, "the workers stopped between trials"

    again = start(workdir, "--n-trials", "1", "--epochs", "10")
    _, err = real_runs.finish(again)
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


# --- Several processes on one new study, as on several machines, and stop signals with workers.

FAULTY_STUDY = STUDY.replace("examples.custom_task:build", "faulty_task:build")


def baseline_count() -> int:
    """The baselines of the digits study's space (constant, cosine, step)."""
    from digits_study import digits_study

    return len(baselines_for(digits_study(Path("unused.db")).space))


def assert_exact(workdir: Path, expected: int) -> None:
    """``expected`` trials, all complete, each baseline once."""
    done = trials(workdir)
    assert sorted(t.number for t in done) == list(range(expected))
    assert {t.state for t in done} == {State.COMPLETE}
    names = [t.user_attrs[BASELINE_ATTR] for t in done if BASELINE_ATTR in t.user_attrs]
    assert len(names) == len(set(names)) == baseline_count()


@pytest.mark.slow
def test_processes_started_together_on_a_new_study_add_the_baselines_once_and_their_trials(
    tmp_path: Path,
) -> None:
    for repetition in range(4):
        workdir = tmp_path / str(repetition)
        workdir.mkdir()
        (workdir / "study.toml").write_text(STUDY)
        runs = [start(workdir, "--n-trials", "2", "--baselines") for _ in range(3)]
        for run in runs:
            _, err = real_runs.finish(run)
            assert run.returncode == 0, err
            assert "Traceback" not in err
        assert_exact(workdir, baseline_count() + 3 * 2)


@pytest.mark.slow
def test_four_workers_on_a_new_study_with_baselines_run_each_trial_once(tmp_path: Path) -> None:
    for repetition in range(2):
        workdir = tmp_path / str(repetition)
        workdir.mkdir()
        (workdir / "study.toml").write_text(STUDY)
        run = start(workdir, "--workers", "4", "--n-trials", "4", "--baselines")
        _, err = real_runs.finish(run)
        assert run.returncode == 0, err
        assert_exact(workdir, baseline_count() + 4)


@pytest.mark.slow
def test_sigterm_stops_the_workers_and_exits_143_with_nothing_running(workdir: Path) -> None:
    run = start(workdir, "--workers", "2", "--n-trials", "20", "--epochs", "200")
    running_trial(workdir, run)
    run.send_signal(signal.SIGTERM)
    _, err = real_runs.finish(run)
    assert run.returncode == 143, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("lrsearch: stopped by SIGTERM")
    assert State.RUNNING not in {t.state for t in trials(workdir)}


@pytest.mark.slow
def test_a_second_ctrl_c_stops_workers_whose_forward_pass_hangs(workdir: Path) -> None:
    (workdir / "study.toml").write_text(FAULTY_STUDY)
    go = workdir / "go"
    run = real_runs.start(
        workdir,
        "--study",
        "study.toml",
        "--workers",
        "2",
        env={"LRSEARCH_TEST_FAULT": "hang", "LRSEARCH_TEST_TRIGGER": str(go)},
    )
    running_trial(workdir, run)
    go.touch()  # every forward pass from now on hangs
    while run.poll() is None:  # signals that arrive together count as one
        run.send_signal(signal.SIGINT)
        time.sleep(0.5)
    _, err = real_runs.finish(run)
    assert run.returncode == 130, err
    assert "database is locked" not in err and "Traceback" not in err
    done = trials(workdir)
    assert State.RUNNING not in {t.state for t in done} and State.FAIL in {t.state for t in done}
