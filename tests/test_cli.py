"""The command line end to end, in subprocesses, on Fashion-MNIST files in the real IDX format."""

from __future__ import annotations

import os
import re
import shlex
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import real_runs
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


BAD_TASKS = """
import torch

from lrsearch.tasks import TaskSource, lenet


def raises(data_dir):
    raise ValueError("no images here")


def no_argument():
    raise AssertionError("never called")


class NanLogits(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(784, 10)

    def forward(self, x):
        return self.linear(x.flatten(1)) * float("nan")


def nan_model(data_dir):
    images = torch.zeros(128, 1, 28, 28, dtype=torch.uint8)
    labels = torch.arange(128) % 10
    return TaskSource(images, labels, images, labels, num_classes=10, models={"nan": NanLogits})


def bad_stream(data_dir):  # streamed batches of 8, the third with a class 7 of 2
    x = torch.randn(56, 4, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0] > 0).long()
    batches = [(x[8 * i : 8 * i + 8], y[8 * i : 8 * i + 8].clone()) for i in range(5)]
    batches[2][1][4] = 7
    linear = {"linear": lambda: torch.nn.Linear(4, 2)}
    return TaskSource(
        None, None, x[40:], y[40:], 2, linear, val_images=x[:16], val_labels=y[:16],
        batches=batches, steps=6,
    )


def string_classes(data_dir):
    return TaskSource(
        train_images=torch.zeros(4, 1, 28, 28, dtype=torch.uint8),
        train_labels=torch.zeros(4, dtype=torch.int64),
        test_images=torch.zeros(4, 1, 28, 28, dtype=torch.uint8),
        test_labels=torch.zeros(4, dtype=torch.int64),
        num_classes="10",
        models={"lenet": lenet},
    )
"""


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    write_mnist_like(root / "data", "FashionMNIST", n_train=300, n_test=100)
    (root / "study.toml").write_text(STUDY)
    (root / "bad_tasks.py").write_text(BAD_TASKS)
    (root / "import_fails.py").write_text("raise RuntimeError('needs a GPU')\n")
    (root / "syntax_error.py").write_text("def build(data_dir)\n")
    (root / "empty.db").touch()
    other = sqlite3.connect(root / "other.db")  # another application's database
    other.execute("CREATE TABLE notes (text TEXT)")
    other.commit()
    other.close()
    return root


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (None for a folder), to compare before/after."""
    return {
        str(path.relative_to(root)): path.read_bytes() if path.is_file() else None
        for path in root.rglob("*")
    }


def lrsearch(workdir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lrsearch", *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=real_runs.SAFETY,
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
        (["run", "--workers", "2", "--devices", "cpu,cuda:9"], "--devices 'cuda:9' does not exist"),
        (["run", "--devices", "cuda:9"], "--devices 'cuda:9' does not exist here"),
        (["run", "--workers", "2", "--devices", "gpu!"], "--devices 'gpu!' is not a device"),
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
        # Values: checked in the config before the storage is created, naming what is allowed.
        (["run", "--seed", "-1"], "seed=-1 is not allowed; it must be in [0, 4294967295]"),
        (["run", "--seed", str(2**40)], f"seed={2**40} is not allowed; it must be in [0, "),
        (["run", "--timeout", "nan"], "timeout=nan is not allowed; it must be a finite number"),
        (["run", "--timeout", "inf"], "timeout=inf is not allowed"),
        (["run", "--timeout=-inf"], "timeout=-inf is not allowed"),
        (["run", "--n-trials", str(2**70)], f"n_trials={2**70} is not allowed; it must fit in 64"),
        (["run", "--epochs", "-1"], "epochs=-1"),
        (["run", "--epochs", str(2**64)], f"epochs={2**64} is not allowed"),
        (["confirm", "--epochs", "3", "--seeds", "0"], "--seeds=0 is not allowed"),
        (["confirm", "--epochs", "3", "--seeds", str(2**32)], "--seeds=4294967296 is not allowed"),
        (["run", "--seeds", str(2**32)], "seeds=4294967296 is not allowed; it must be in [1, "),
        (["run", "--seed", str(2**32 - 1), "--seeds", "2"], "seed + seeds - 1 must be <="),
        (["run", "--threads", str(2**40)], f"threads={2**40} is not allowed; it must be <="),
        (["run", "--study-name", "s" * 300], "(300 characters) is not allowed; it must be at"),
        (["find-lr", "--steps", str(10**7)], "steps=10000000 is not allowed; it must be in"),
        (["run", "--study", "/dev/zero"], "'/dev/zero' is not a regular file"),
        (["run", "--study", "/dev/urandom"], "'/dev/urandom' is not a regular file"),
        (["decompose", "--seeds", "0"], "--seeds=0 is not allowed"),
        (["decompose", "--around", "-1"], "--around -1 is not allowed"),
        (["decompose", "--epochs", "0"], "--epochs 0 is not allowed"),
        (["decompose"], "untouched.db' does not exist"),
        (["plot", "--study-name", "cli", "--out", "o", "--top", "0"], "--top 0 is not allowed"),
        # Output paths: checked before the study is opened.
        (["run", "--artifact-dir", "study.toml"], "--artifact-dir 'study.toml' is a file; it must"),
        (["run", "--artifact-dir", "study.toml/a"], "cannot be created: 'study.toml' is a file"),
        (
            ["run", "--storage", "sqlite:///study.toml/sub/s.db"],
            "its folder 'study.toml/sub' cannot be created: 'study.toml' is a file",
        ),
        (["run", "--storage", "sqlite:///data"], "the SQLite storage 'data' is a folder"),
        (
            ["export", "--study-name", "cli", "--storage", "sqlite:///e.db", "--out", "study.toml"],
            "--out 'study.toml' is a file; it must be a folder",
        ),
        (
            ["plot", "--study-name", "cli", "--storage", "sqlite:///e.db", "--out", "study.toml/p"],
            "--out 'study.toml/p' cannot be created: 'study.toml' is a file",
        ),
        (
            ["best", "--study-name", "cli", "--storage", "sqlite:///e.db", "--out", "data"],
            "--out 'data' is a folder; it must be a file name",
        ),
        (
            ["best", "--study-name", "cli", "--storage", "sqlite:///e.db", "--out", "study.toml/b"],
            "its folder 'study.toml' is a file",
        ),
        # Reading commands never turn a file into an Optuna storage.
        *(
            ([command, "--study-name", "cli", "--storage", storage, "--out", "out"], message)
            for command in ("export", "plot", "best")
            for storage, message in (
                ("sqlite:///empty.db", "'empty.db' is empty"),
                ("sqlite:///other.db", "is not an Optuna storage: it has no table"),
                ("sqlite:///study.toml", "file is not a database"),
            )
        ),
        (["confirm", "--epochs", "3", "--storage", "sqlite:///empty.db"], "'empty.db' is empty"),
        (["confirm", "--epochs", "3", "--storage", "sqlite:///other.db"], "not an Optuna storage"),
        # A user's task that is broken.
        (
            ["run", "--task", "import_fails:build"],
            "task 'import_fails:build': importing 'import_fails' raised RuntimeError: needs a GPU",
        ),
        (["run", "--task", "syntax_error:build"], "raised SyntaxError"),
        (["run", "--task", "bad_tasks:raises"], "raises raised ValueError: no images here"),
        (["run", "--task", "bad_tasks:no_argument"], "no_argument raised TypeError"),
        (["run", "--task", "bad_tasks:string_classes"], "num_classes must be an int or None"),
        # The range test: its span and plot checked before the task is loaded.
        (["find-lr", "--start", "0"], "span [0.0, 10.0] is not allowed; it needs finite 0 <"),
        (["find-lr", "--start", "1", "--end", "0.1"], "span [1.0, 0.1] is not allowed"),
        (["find-lr", "--end", "inf"], "span [1e-07, inf] is not allowed"),
        (["find-lr", "--start", "nan"], "span [nan, 10.0] is not allowed"),
        (["find-lr", "--steps", "3"], "steps=3 is not allowed; it must be in [17, "),
        (["find-lr", "--steps", "x"], "invalid int value"),
        (["find-lr", "--out", "data"], "--out 'data' is a folder; it must be a file name"),
        (["find-lr", "--out", "plot.jpg"], "--out 'plot.jpg' is not allowed; the plot is a .png"),
        (["find-lr", "--out", "study.toml/p.png"], "its folder 'study.toml' is a file"),
        (["find-lr", "--task", "no-such-task"], "unknown task 'no-such-task'"),
        (["find-lr", "--task", "bad_tasks:raises"], "raises raised ValueError: no images here"),
        (
            ["find-lr", "--task", "bad_tasks:nan_model"],
            "the range test's loss is nan from its first step",
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
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # importing a task module writes none
    monkeypatch.delenv("LRSEARCH_DEBUG", raising=False)
    (workdir / "empty").mkdir(exist_ok=True)
    before = snapshot(workdir)
    # The case's own options come last, and argparse keeps the last occurrence.
    defaults = ["--study", "study.toml", "--data-dir", "data"]
    if args[0] != "find-lr":  # it reads no storage, and takes no --storage
        defaults += ["--storage", "sqlite:///untouched.db"]
    with_study = ("run", "confirm", "decompose", "find-lr")
    code = main([args[0], *defaults, *args[1:]] if args[0] in with_study else args)
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("lrsearch: error: ") and err.count("\n") == 1
    assert message in err and "secret" not in err and "Traceback" not in err
    assert snapshot(workdir) == before


def test_a_bad_target_in_a_later_streamed_batch_ends_the_run_in_one_line_exit_2(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(workdir)
    storage = "sqlite:///stream.db"
    options = ["--storage", storage, "--n-trials", "2", "--no-baselines"]
    code = main(["run", "--study", "study.toml", "--task", "bad_tasks:bad_stream", *options])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.splitlines()[-1] == (
        "lrsearch: error: task 'bad_tasks:bad_stream': the targets of batch 3 must lie in "
        "[0, 1], got values from 0 to 7"
    )
    trials = optuna.load_study(study_name="cli", storage=storage).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.FAIL] * 2
    assert all("the targets of batch 3" in t.user_attrs["error"] for t in trials)


@pytest.mark.parametrize("option", [["--seed", "-1"], ["--seed", str(2**40)], ["--timeout", "nan"]])
def test_a_bad_value_is_refused_before_the_default_storage_is_created(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    option: list[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "study.toml").write_text(STUDY)
    assert main(["run", "--study", "study.toml", *option]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{option[0].lstrip('-')}={option[1]} is not allowed" in err
    assert "storage" not in err
    assert [p.name for p in tmp_path.iterdir()] == ["study.toml"]


@pytest.fixture
def unwritable(tmp_path: Path) -> Iterator[Path]:
    """A folder nobody here may write into (root ignores permissions, not a read-only mount)."""
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    if os.access(folder, os.W_OK):
        folder = Path("/proc/sys")  # read-only in containers, for root too
    if os.access(folder, os.W_OK):
        pytest.skip("no unwritable folder here")
    yield folder
    (tmp_path / "locked").chmod(0o700)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--artifact-dir", "{locked}/art"], "--artifact-dir '{locked}/art' cannot be"),
        (["run", "--artifact-dir", "{locked}"], "--artifact-dir '{locked}' is not writable"),
        (["run", "--storage", "sqlite:///{locked}/s.db"], "its folder '{locked}' is not writable"),
        (["export", "--out", "{locked}/out"], "--out '{locked}/out' cannot be created"),
        (["plot", "--out", "{locked}"], "--out '{locked}' is not writable"),
        (["best", "--out", "{locked}/best.json"], "its folder '{locked}' is not writable"),
    ],
)
def test_an_unwritable_output_is_one_line_before_anything_is_written(
    workdir: Path,
    unwritable: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    monkeypatch.chdir(workdir)
    before = snapshot(workdir)
    args = [arg.format(locked=unwritable) for arg in args]
    common = ["--study", "study.toml", "--data-dir", "data", "--storage", "sqlite:///untouched.db"]
    if args[0] != "run":
        common = ["--study-name", "cli", "--storage", "sqlite:///untouched.db"]
    assert main([args[0], *common, *args[1:]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lrsearch: error: ") and err.count("\n") == 1
    assert message.format(locked=unwritable) in err
    assert snapshot(workdir) == before


@pytest.mark.parametrize("switch", [["--debug"], []])
def test_debug_prints_the_causes_traceback_before_the_one_line(
    workdir: Path, switch: list[str]
) -> None:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("LRSEARCH_DEBUG", None)
    if not switch:
        env["LRSEARCH_DEBUG"] = "1"
    argv = [*switch, "run", "--study", "study.toml", "--task", "bad_tasks:raises"]
    result = subprocess.run(
        [sys.executable, "-m", "lrsearch", *argv, "--storage", "sqlite:///untouched.db"],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=real_runs.SAFETY,
        check=False,
        env=env,
    )
    lines = result.stderr.splitlines()
    assert result.returncode == 2
    assert lines[0] == "Traceback (most recent call last):"
    assert 'raise ValueError("no images here")' in result.stderr
    assert (
        lines[-1]
        == "lrsearch: error: task 'bad_tasks:raises': raises raised ValueError: no images here"
    )
    assert not (workdir / "untouched.db").exists()


DIGITS_AUTO = """
[study]
name = "digits-auto"
n_trials = 2
baselines = true
[task]
name = "examples.custom_task:build"
val_size = 0.2
[training]
epochs = 1
batch_size = 32
[space]
families = ["constant", "cosine"]
lr = "auto"
"""


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("digits")
    (root / "examples").symlink_to(REPO / "examples")
    (root / "auto.toml").write_text(DIGITS_AUTO)
    return root


def test_find_lr_prints_the_range_and_writes_the_plot(digits_dir: Path) -> None:
    result = lrsearch(digits_dir, "find-lr", "--study", "auto.toml", "--out", "lr.png")
    assert result.returncode == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert first.startswith("lr range [") and "steepest descent at" in first and " s)" in first
    assert 'lr = "auto"' in result.stdout
    assert (digits_dir / "lr.png").read_bytes()[:4] == b"\x89PNG"


def test_run_with_auto_tests_once_and_a_resume_searches_the_stored_range(digits_dir: Path) -> None:
    storage = f"sqlite:///{digits_dir / 'auto.db'}"
    first = lrsearch(digits_dir, "run", "--study", "auto.toml", "--storage", storage)
    assert first.returncode == 0, first.stderr
    assert first.stderr.count("running the learning-rate range test") == 1
    second = lrsearch(digits_dir, "run", "--study", "auto.toml", "--storage", storage)
    assert second.returncode == 0, second.stderr
    assert "range test" not in second.stderr

    study = optuna.load_study(study_name="digits-auto", storage=storage)
    found = study.user_attrs["lr_range"]
    assert study.user_attrs["definition"]["space"]["settings"]["cosine"]["lr"]["auto"] is True
    baselines = [t for t in study.trials if "baseline" in t.user_attrs]
    assert {t.user_attrs["baseline"] for t in baselines} == {
        "constant",
        "cosine-warmup-004",
        "cosine-warmup10",
        "constant-warmup10",
    }
    for trial in study.trials:
        lr = Schedule.from_dict(trial.user_attrs["schedule"]).lr
        assert found["low"] <= lr <= found["high"]
    for trial in baselines:
        assert Schedule.from_dict(trial.user_attrs["schedule"]).lr == pytest.approx(
            found["suggested"]
        )


TIED = """
[study]
name = "tied"
n_trials = 3
baselines = true
[task]
name = "examples.custom_task:build"
val_size = 0.2
[training]
epochs = 1
batch_size = 64
[space]
families = ["constant"]
lr = [0.1, 0.11]
"""


def test_the_confirm_command_the_summary_prints_runs_as_printed(digits_dir: Path) -> None:
    """Near-equal schedules tie, and the summary's advice is pasted in the same directory:
    it must reach this study (not the default one) with the default storage."""
    (digits_dir / "tied.toml").write_text(TIED)
    result = lrsearch(digits_dir, "run", "--study", "tied.toml")
    assert result.returncode == 0, result.stderr
    commands = re.findall(r"— run (lrsearch confirm .*) to separate them", result.stdout)
    assert commands, result.stdout
    argv = shlex.split(commands[0])
    assert argv[:4] == ["lrsearch", "confirm", "--study", "tied.toml"]
    pasted = lrsearch(digits_dir, *argv[1:])
    assert pasted.returncode == 0, pasted.stderr
    assert "lrsearch best --confirmed writes" in pasted.stdout


def test_the_confirm_command_carries_the_storage_and_name_a_run_was_given(
    digits_dir: Path,
) -> None:
    storage = f"sqlite:///{digits_dir / 'elsewhere.db'}"
    (digits_dir / "tied.toml").write_text(TIED)
    result = lrsearch(
        digits_dir,
        "run",
        "--study",
        "tied.toml",
        "--storage",
        storage,
        "--study-name",
        "renamed",
        "--epochs",
        "1",
    )
    assert result.returncode == 0, result.stderr
    (command,) = set(re.findall(r"— run (lrsearch confirm .*) to separate them", result.stdout))
    argv = shlex.split(command)
    assert argv[argv.index("--storage") + 1] == storage
    assert argv[argv.index("--study-name") + 1] == "renamed"
    pasted = lrsearch(digits_dir, *argv[1:])
    assert pasted.returncode == 0, pasted.stderr


def test_find_lr_help_lists_only_the_options_it_uses(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["find-lr", "--help"])
    text = capsys.readouterr().out
    assert "--study FILE" in text and "--out" in text
    assert "--storage" not in text and "--study-name" not in text  # it reads no storage
