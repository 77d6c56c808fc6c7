"""examples/production_training.py runs as documented and its resume check holds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from lrsearch import schedules

REPO = Path(__file__).resolve().parents[1]


def test_production_example_resumes_with_identical_lrs(tmp_path: Path) -> None:
    path = tmp_path / "best_schedule.json"
    schedules.CosineRestarts(lr=0.1, first_cycle=0.3, warmup=0.05).save(path)
    result = subprocess.run(
        [sys.executable, "examples/production_training.py", str(path), "--steps", "250"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "resumed at step 125: all 250 LRs equal the uninterrupted run" in result.stdout
    assert "cosine_restarts" in result.stdout
    for line in (
        "uninterrupted run: trained 250 steps",
        "interrupted run: stopped at step 125",
        "resumed run: trained 250 steps",
    ):
        assert result.stdout.count(line) == 1  # each line says which run it reports
