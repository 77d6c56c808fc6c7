"""The examples run as documented, and the schedule they carry is the one they train with."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lrsearch
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


@pytest.mark.parametrize(
    ("library", "example"),
    [("lightning", "lightning_training"), ("transformers", "hf_trainer")],
)
def test_a_trainer_example_steps_the_schedule_once_per_optimizer_step(
    library: str, example: str, tmp_path: Path
) -> None:
    pytest.importorskip(library)
    if library == "transformers":
        pytest.importorskip("accelerate")  # the Trainer needs it on torch
    module = importlib.import_module(f"examples.{example}")
    schedule = schedules.CosineRestarts(lr=0.1, first_cycle=0.3, warmup=0.1)
    steps = 40

    lrs = module.train(schedule, steps, tmp_path)

    assert len(lrs) == steps
    assert lrs == pytest.approx([schedule(step, steps) for step in range(steps)], rel=1e-9)
    assert len(set(lrs)) > steps // 2  # per step, not per epoch: the LR keeps changing


def test_own_objective_example_searches_and_saves_a_loadable_schedule(tmp_path: Path) -> None:
    out = tmp_path / "best.json"
    result = subprocess.run(
        [sys.executable, "examples/own_objective.py", "--trials=3", "--epochs=1", f"--out={out}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("3 trials; best trial ")
    schedule = lrsearch.load_schedule(out)
    assert schedule.family in ("cosine", "one_cycle", "step", "wsd")
    assert f"schedule: {schedule.describe()}\n" in result.stdout


@pytest.mark.parametrize(
    ("study", "objective"),
    [
        pytest.param("char_gpt", "val_loss", marks=pytest.mark.slow),
        ("regression", "val_loss"),
        ("digits_augment", "val_accuracy"),
    ],
)
def test_each_shipped_study_runs_offline_as_documented(
    study: str, objective: str, tmp_path: Path
) -> None:
    """``python -m lrsearch run --study studies/<name>.toml``, with tiny overrides: one trial
    of one epoch, no baselines, in a storage of the test's own."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lrsearch",
            "run",
            "--study",
            f"studies/{study}.toml",
            "--n-trials=1",
            "--epochs=1",
            "--no-baselines",
            f"--storage=sqlite:///{tmp_path / 'study.db'}",
            f"--artifact-dir={tmp_path / 'artifacts'}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "trial 0 " in result.stderr and f" {objective} " in result.stderr  # the log
    summary = result.stdout.splitlines()
    label = objective.replace("_", " ")
    assert any(line.startswith(label) and "(the objective)" in line for line in summary)


def test_char_gpt_reads_another_text_and_validates_on_held_out_text(tmp_path: Path) -> None:
    from examples import char_gpt

    text = "".join(chr(97 + (i * 7) % 26) for i in range(20_000))
    path = tmp_path / "book.txt"
    path.write_text(text, encoding="utf-8")
    source = char_gpt.build(path)

    assert source.num_classes == 26 and source.val_images is not None
    first, second = (int(f * len(text)) for f in char_gpt.SPLITS)

    def decoded(ids: torch.Tensor) -> str:
        vocabulary = sorted(set(text))
        return "".join(vocabulary[i] for i in ids.tolist())

    # Validation windows lie in their own contiguous piece of the text, after all training.
    assert decoded(source.val_images.flatten()) in text[first:second]
    assert decoded(source.train_images[-1]) in text[:first]
    assert torch.equal(source.train_labels[:, :-1], source.train_images[:, 1:])  # next chars

    (tmp_path / "short.txt").write_text("ab", encoding="utf-8")
    with pytest.raises(lrsearch.LrsearchError, match="needs at least"):
        char_gpt.build(tmp_path / "short.txt")
