"""Start-up stays light: parsing and help import neither torch, Optuna nor pandas.

A structural check, in a fresh interpreter with ``-X importtime``, rather than a timing:
a heavy import slipping back in fails here on any machine, however fast.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import real_runs

import lrsearch
from lrsearch.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
HEAVY = {"torch", "torchvision", "optuna", "pandas", "matplotlib", "sklearn"}


def imported_modules(*args: str) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """Run ``python -X importtime`` and return the result and every top-level package imported."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=real_runs.SAFETY,
        check=False,
    )
    # Lines read "import time: self [us] | cumulative | <indent>package.module".
    names = {
        line.rsplit("|", 1)[1].strip().split(".")[0]
        for line in result.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    return result, names


@pytest.mark.parametrize(
    ("argv", "code"),
    [
        (["--help"], 0),
        (["run", "--help"], 0),
        (["confirm", "--help"], 0),
        (["export", "--help"], 0),
        (["plot", "--help"], 0),
        (["best", "--help"], 0),
        (["bench", "--help"], 0),
        (["run", "--val-size", "many"], 2),
        (["best", "--bogus"], 2),
        (["fly"], 2),
    ],
)
def test_help_and_argument_errors_import_nothing_heavy(argv: list[str], code: int) -> None:
    result, names = imported_modules("-m", "lrsearch", *argv)
    assert result.returncode == code, result.stderr[-2000:]
    assert "lrsearch" in names  # the parse did go through lrsearch's own modules
    assert names & HEAVY == set()


def test_importing_the_package_is_light_and_its_names_load_on_first_use() -> None:
    result, names = imported_modules(
        "-c", "import lrsearch, sys; assert 'lrsearch.schedules' not in sys.modules"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert names & HEAVY == set()
    for name in lrsearch.__all__:
        value = getattr(lrsearch, name)
        assert value.__name__ == name and value.__module__.startswith("lrsearch.")
    assert set(lrsearch.__all__) <= set(dir(lrsearch))
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        _ = lrsearch.nonexistent


def test_the_bench_options_are_bench_configs_fields_with_its_defaults() -> None:
    from lrsearch.bench import BenchConfig

    bench = build_parser().parse_args(["bench"])
    expected = {
        field.name: getattr(BenchConfig(), field.name) for field in dataclasses.fields(BenchConfig)
    }
    assert {name: getattr(bench, name) for name in expected} == expected
    assert set(vars(bench)) == {"command", "debug", *expected}


@pytest.mark.parametrize(
    "argv",
    [
        ["export", "--study-name", "s", "--out", "{tmp}/out"],
        ["best", "--study-name", "s", "--out", "{tmp}/best.json"],
        ["plot", "--study-name", "s", "--out", "{tmp}/plots"],
    ],
)
def test_the_commands_that_read_a_study_import_no_torch(argv: list[str], tmp_path: Path) -> None:
    """They read Optuna's storage with pandas; torch (2 s of start-up) is for training."""
    storage = f"sqlite:///{tmp_path / 'none.db'}"
    args = [arg.format(tmp=tmp_path) for arg in argv]
    result, names = imported_modules("-m", "lrsearch", *args, "--storage", storage)
    assert result.returncode == 2 and "no storage at" in result.stderr  # it got to reading
    assert not names & {"torch", "torchvision"}


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--study", "{tmp}/typo.toml"],
        ["run", "--study", "{tmp}/good.toml", "--epochs", "0"],
        ["run", "--study", "{tmp}/good.toml", "--storage", "sqlite:///{tmp}"],
        ["confirm", "--study", "{tmp}/typo.toml", "--epochs", "2"],
        ["confirm", "--study", "{tmp}/good.toml", "--epochs", "2", "--top", "0"],
        ["find-lr", "--study", "{tmp}/typo.toml"],
        ["find-lr", "--study", "{tmp}/good.toml", "--out", "{tmp}/plot.jpg"],
    ],
)
def test_study_file_and_argument_errors_come_before_torch(argv: list[str], tmp_path: Path) -> None:
    """torch takes seconds to import on a loaded machine: a typo is reported without it."""
    (tmp_path / "typo.toml").write_text("[training]\nepoch = 3\n")
    (tmp_path / "good.toml").write_text("[training]\nepochs = 3\n")
    args = [arg.format(tmp=tmp_path) for arg in argv]
    result, names = imported_modules("-m", "lrsearch", *args)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    assert len(errors) == 1 and errors[0].startswith("lrsearch: error: ")
    assert not names & {"torch", "torchvision"}
