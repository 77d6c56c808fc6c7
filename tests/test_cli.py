"""The command line end to end, in subprocesses, on Fashion-MNIST files in the real IDX format."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from idx_files import write_mnist_like

from lrsearch import Schedule
from lrsearch.cli import main

REPO = Path(__file__).resolve().parents[1]

STUDY = """
[study]
name = "cli"
n_trials = 2
[task]
name = "fashion-mnist"
val_size = 60
download = false
[training]
epochs = 2
batch_size = 32
[space]
families = ["cosine", "cosine_restarts", "step"]
lr = [0.01, 0.2]
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    write_mnist_like(root / "data", "FashionMNIST", n_train=300, n_test=100)
    (root / "study.toml").write_text(STUDY)
    return root


def lrsearch(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lrsearch", *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_run_trains_records_resumes_and_the_best_schedule_reloads(workdir: Path) -> None:
    storage = f"sqlite:///{workdir / 'e2e.db'}"
    common = ["run", "--study", "study.toml", "--storage", storage, "--data-dir", "data"]
    first = lrsearch(workdir, *common)
    assert first.returncode == 0, first.stderr
    assert "best trial" in first.stdout and "val accuracy" in first.stdout
    assert f"optuna-dashboard {storage}" in first.stderr
    second = lrsearch(workdir, *common, "--n-trials", "1")
    assert second.returncode == 0, second.stderr

    study = optuna.load_study(study_name="cli", storage=storage)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    best = study.best_trial
    assert best.user_attrs["task"] == "fashion-mnist" and best.user_attrs["model"] == "lenet"
    assert best.user_attrs["steps"] == 2 * (240 // 32)
    schedule = Schedule.from_dict(best.user_attrs["schedule"])
    assert schedule.params() == best.user_attrs["schedule"]["params"]
    assert schedule.curve(best.user_attrs["steps"])[0] == Schedule.from_dict(
        best.user_attrs["schedule"]
    )(0, best.user_attrs["steps"])


def test_the_default_storage_is_a_sqlite_file_named_after_the_study(workdir: Path) -> None:
    result = lrsearch(
        workdir,
        "run",
        "--study",
        "study.toml",
        "--data-dir",
        "data",
        "--n-trials",
        "1",
        "--study-name",
        "named",
        "--epochs",
        "1",
    )
    assert result.returncode == 0, result.stderr
    assert (workdir / ".lrsearch" / "named.db").is_file()
    assert "sqlite:///.lrsearch/named.db" in result.stderr


def test_a_bad_option_in_a_subprocess_is_one_line_and_exit_2(workdir: Path) -> None:
    result = lrsearch(
        workdir,
        "run",
        "--study",
        "study.toml",
        "--n-trials",
        "0",
        "--storage",
        f"sqlite:///{workdir / 'never.db'}",
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "n_trials=0" in result.stderr and "Traceback" not in result.stderr
    assert not (workdir / "never.db").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--study", "missing.toml"], "cannot read study file"),
        (["run", "--n-trials", "0"], "n_trials=0"),
        (["run", "--n-trials", "-3"], "n_trials=-3"),
        (["run", "--n-trials", "many"], "invalid int value"),
        (["run", "--epochs", "0"], "epochs=0"),
        (["run", "--timeout", "-1"], "timeout=-1.0"),
        (["run", "--device", "cuda:7"], "does not exist here"),
        (["run", "--device", "mps"], "not supported"),
        (["run", "--device", "tpu"], "is not a device"),
        (["run", "--device", "gpu!"], "is not a device"),
        (["run", "--task", "no-such-task"], "unknown task 'no-such-task'"),
        (["run", "--task", "nomodule_xyz:build"], "nomodule_xyz"),
        (["run", "--model", "vgg"], "vgg"),
        (["run", "--data-dir", "empty"], "--data-dir"),
        (["run", "--study-name", "bad name"], "study name 'bad name'"),
        (["run", "--storage", "nosuchdb://x"], "cannot open storage"),
        (["run", "--bogus"], "unrecognized arguments"),
        (["fly"], "invalid choice"),
        (["run", "--workers", "0"], "--workers 0 is not allowed; it must be >= 1"),
        (["run", "--workers", "-1"], "--workers -1 is not allowed"),
        (["run", "--workers", "two"], "invalid int value"),
        (["run", "--workers", "2", "--devices", "cpu,cuda:9"], "'cuda:9' does not exist here"),
        (["run", "--devices", "cuda:9"], "'cuda:9' does not exist here"),
        (["run", "--workers", "2", "--devices", "gpu!"], "is not a device"),
        (
            ["run", "--workers", "2", "--storage", "postgresql+psycopg://me:secret@127.0.0.1:1/db"],
            "cannot open storage postgresql+psycopg://me:***@127.0.0.1:1/db",
        ),
        (
            ["run", "--storage", "mysql://me:secret@127.0.0.1:1/db"],
            "cannot open storage mysql://me:***@",
        ),
        (["run", "--storage", "postgresql+nodriver://h/db"], "cannot open storage"),
        (["run", "--storage", "not a url"], "cannot open storage"),
        (["confirm"], "the following arguments are required: --epochs"),
        (["confirm", "--epochs", "0"], "--epochs 0"),
        (["confirm", "--epochs", "3", "--top", "-1"], "--top -1"),
        (["confirm", "--epochs", "3"], "untouched.db' does not exist"),
        (
            ["best", "--confirmed", "--study-name", "cli", "--storage", "sqlite:///untouched.db"],
            "does not exist",
        ),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    workdir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(workdir)
    (workdir / "empty").mkdir(exist_ok=True)
    before = sorted(p.name for p in workdir.rglob("*"))
    # The case's own options come last, and argparse keeps the last occurrence.
    defaults = [
        "--study",
        "study.toml",
        "--data-dir",
        "data",
        "--storage",
        "sqlite:///untouched.db",
    ]
    code = main([args[0], *defaults, *args[1:]] if args[0] in ("run", "confirm") else args)
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("lrsearch: error: ") and err.count("\n") == 1
    assert message in err and "secret" not in err
    assert sorted(p.name for p in workdir.rglob("*")) == before
