"""Several ``lrsearch run`` processes, as on several machines, against a real PostgreSQL server.

``.ci/run`` starts the server and sets LRSEARCH_TEST_POSTGRES_URL; without it these skip."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import optuna
import pytest
import real_runs
from digits_study import DIGITS_STUDY_FILE

REPO = Path(__file__).resolve().parents[1]
URL = os.environ.get("LRSEARCH_TEST_POSTGRES_URL", "")
pytestmark = pytest.mark.skipif(
    not URL, reason="LRSEARCH_TEST_POSTGRES_URL is not set (.ci/run starts a server and sets it)"
)

STUDY = DIGITS_STUDY_FILE


def start(workdir: Path, storage: str, name: str, *args: str) -> subprocess.Popen[str]:
    (workdir / "study.toml").write_text(STUDY)
    command = ["run", "--study", "study.toml", "--storage", storage, "--study-name", name]
    return subprocess.Popen(
        [sys.executable, "-m", "lrsearch", *command, "--device", "cpu", *args],
        cwd=workdir,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_machines_share_one_study_exactly(tmp_path: Path) -> None:
    name = f"pg-{uuid.uuid4().hex[:8]}"
    runs = [start(tmp_path, URL, name, "--n-trials", "3") for _ in range(2)]
    for run in runs:
        out, err = run.communicate(timeout=real_runs.SAFETY)
        assert run.returncode == 0, err
        assert URL not in out + err  # the password is never printed
    trials = optuna.load_study(study_name=name, storage=URL).trials
    assert sorted(t.number for t in trials) == list(range(6))
    assert {t.state for t in trials} == {optuna.trial.TrialState.COMPLETE}
    assert all({"schedule", "val_accuracy", "pid"} <= t.user_attrs.keys() for t in trials)
    assert len({t.user_attrs["pid"] for t in trials}) == 2


def test_wrong_credentials_are_one_line_exit_2_without_the_password(tmp_path: Path) -> None:
    wrong = re.sub(r"://([^:/@]+):[^@]*@", r"://\1:not-the-password@", URL)
    run = start(tmp_path, wrong, "never", "--workers", "2")
    _, err = run.communicate(timeout=real_runs.SAFETY)
    assert run.returncode == 2
    assert err.startswith("lrsearch: error: cannot open storage") and err.count("\n") == 1
    assert "not-the-password" not in err and "***" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.toml"]


def test_processes_started_together_on_a_new_study_add_the_baselines_once(
    tmp_path: Path,
) -> None:
    """Each repetition a new study, three processes started at once with the baselines on:
    the baselines once, plus each process's trials, every time."""
    for _ in range(3):
        name = f"pg-{uuid.uuid4().hex[:8]}"
        runs = [start(tmp_path, URL, name, "--n-trials", "2", "--baselines") for _ in range(3)]
        for run in runs:
            _, err = run.communicate(timeout=real_runs.SAFETY)
            assert run.returncode == 0, err
            assert "Traceback" not in err
        trials = optuna.load_study(study_name=name, storage=URL).trials
        names = [t.user_attrs["baseline"] for t in trials if "baseline" in t.user_attrs]
        assert len(names) == len(set(names)) and names
        assert len(trials) == len(names) + 3 * 2
        assert {t.state for t in trials} == {optuna.trial.TrialState.COMPLETE}
