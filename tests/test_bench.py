"""The benchmark end to end at a tiny size: it runs and prints its one table."""

from __future__ import annotations

import re

import pytest
import torch

from lrsearch.bench import machine_busy
from lrsearch.cli import main
from lrsearch.training import uses_bf16


def test_bench_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        *("bench", "--images", "1024", "--epochs", "2", "--trials", "1", "--trial-epochs", "2"),
        *("--model-steps", "1"),
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "command   python -m lrsearch bench --images 1024" in out
    assert "torch     " in out and "machine   " in out
    assert f"torch     {torch.__version__}, {torch.get_num_threads()} threads" in out
    assert re.search(r"^load      1-minute load average [\d.]+ before, [\d.]+ after", out, re.M)
    header = next(line for line in out.splitlines() if line.startswith("loop"))
    assert header.split("  ")[0] == "loop"
    for column in ("epoch s", "images/s", "speedup", "peak RSS MiB", "peak device MiB"):
        assert column in header
    rows = [
        re.split(r"\s{2,}", line)
        for line in out.splitlines()
        if line.startswith(("classic", "lrsearch", "quick MLP"))
    ]
    default = "bf16" if uses_bf16(None, torch.device("cpu")) else "fp32"
    assert [row[0].removesuffix(" (default)") for row in rows] == [
        "classic",
        "lrsearch fp32",
        "lrsearch bf16",
        *(f"lrsearch {default} population {k}" for k in (2, 4, 8, 16)),
        # The quick study's task is importable: pytest runs from the repository root.
        *(f"quick MLP {default} population {k}" for k in (1, 2, 4, 8, 16)),
    ]
    quick_base = next(row for row in rows if row[0].startswith("quick MLP"))
    assert quick_base[3] == "1.00x"  # the MLP rows' speedups are against one MLP at a time
    assert [row[0] for row in rows if row[0].endswith(" (default)")] == [
        f"lrsearch {default} (default)"
    ]
    assert all(len(row) == 6 for row in rows)
    assert rows[0][3] == "1.00x"
    overhead = re.search(r"Optuna \+ storage overhead: ([\d.]+) s per trial.*: ([\d.]+)%\n", out)
    assert overhead is not None and float(overhead[1]) > 0 and 0 < float(overhead[2]) < 100
    assert "measured over 1 2-epoch trials of a default study" in out
    assert "x its uint8 images" in out
    models = [
        re.split(r"\s{2,}", line)
        for line in out.splitlines()
        if line.startswith(("char GPT", "ResNet digits"))
    ]
    assert [row[0] for row in models] == [
        f"{name} population {k}" for name in ("char GPT", "ResNet digits") for k in (1, 2, 4, 8, 16)
    ]
    assert all(row[1] == "stacked" and float(row[2]) > 0 for row in models)
    assert models[0][3] == models[5][3] == "1.00x"  # each model against its own population 1
    assert "1 steps x 1 rounds" in out


def test_bench_rejects_a_zero_size(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--images", "0"]) == 2
    assert "--images must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("before", "after", "threads", "busy"),
    [
        (0.1, 2.2, 2, False),  # only the bench's own threads
        (1.0, 2.0, 2, True),  # a core's worth of other work before it started
        (0.1, 9.0, 2, True),  # other work started during it
    ],
)
def test_a_busy_machine_is_told_apart_from_the_bench_itself(
    before: float, after: float, threads: int, busy: bool
) -> None:
    assert machine_busy(before, after, threads) is busy


def test_bench_help_describes_what_it_measures(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "classic training loop" in text and "load average" in text
