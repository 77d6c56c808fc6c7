"""The command line's own options: --val-size and the defaults --help shows."""

from __future__ import annotations

from pathlib import Path

import pytest
from idx_files import write_mnist_like

from lrsearch.cli import _study_config, build_parser, main

REPO = Path(__file__).resolve().parents[1]

STUDY = """
[study]
name = "options"
[task]
name = "fashion-mnist"
download = false
"""


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    write_mnist_like(tmp_path / "data", "FashionMNIST", n_train=300, n_test=100)
    (tmp_path / "study.toml").write_text(STUDY)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("command", [["run"], ["confirm", "--epochs", "2"]])
@pytest.mark.parametrize(("text", "value"), [("500", 500), ("1", 1), ("0.25", 0.25), ("1e-1", 0.1)])
def test_val_size_overrides_the_study_file_and_keeps_count_and_fraction_apart(
    command: list[str], text: str, value: int | float
) -> None:
    study = str(REPO / "studies" / "fashion_mnist.toml")
    args = build_parser().parse_args([*command, "--study", study, "--val-size", text])

    config = _study_config(args)

    assert config.task.val_size == value and type(config.task.val_size) is type(value)
    assert _study_config(build_parser().parse_args([*command, "--study", study])).task.val_size == (
        10_000
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("many", "--val-size: 'many' is not allowed; give a count of images"),
        ("", "--val-size: '' is not allowed"),
        ("0", "val_size=0 is not allowed; it must be an integer >= 1 (examples) or a fraction"),
        ("300", "val_size 300 gives 300 validation images; it must leave between 1 and 299"),
        ("-5", "val_size=-5 is not allowed"),
        ("0.0", "val_size=0.0 is not allowed"),
        ("1.0", "val_size=1.0 is not allowed"),
        ("nan", "val_size=nan"),
    ],
)
def test_a_bad_val_size_is_one_line_exit_2_and_writes_nothing(
    workdir: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    before = sorted(workdir.rglob("*"))

    code = main(
        ["run", "--study", "study.toml", "--storage", "sqlite:///s.db", f"--val-size={text}"]
    )

    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("lrsearch: error: ") and err.count("\n") == 1
    assert message in err
    assert sorted(workdir.rglob("*")) == before


def help_text(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--help"])
    assert exited.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines anywhere


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        ("confirm", ["(K) (default: 3)", "seeds per schedule (default: 3)"]),
        ("run", ["worker processes on this machine (default: 1)"]),
        ("plot", ["LR curves of the K best trials (default: 5)"]),
        ("best", ["(default: best_schedule.json)"]),
        ("bench", ["(default: 128)", "(default: 60000)", "(default: auto)"]),
    ],
)
def test_help_shows_the_defaults(
    capsys: pytest.CaptureFixture[str], command: str, shown: list[str]
) -> None:
    text = help_text(capsys, command)

    for default in shown:
        assert default in text
    assert "(default: None)" not in text and "(default: False)" not in text
    assert "(default: ())" not in text
