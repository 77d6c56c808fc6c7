"""The examples run as documented, and the schedule they carry is the one they train with."""

from __future__ import annotations

import importlib
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

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


def test_the_lightning_example_steps_the_schedule_once_per_optimizer_step(
    tmp_path: Path,
) -> None:
    pytest.importorskip("lightning")
    module = importlib.import_module("examples.lightning_training")
    schedule = schedules.CosineRestarts(lr=0.1, first_cycle=0.3, warmup=0.1)
    steps = 40

    lrs = module.train(schedule, steps, tmp_path)

    assert len(lrs) == steps
    assert lrs == pytest.approx([schedule(step, steps) for step in range(steps)], rel=1e-9)
    assert len(set(lrs)) > steps // 2  # per step, not per epoch: the LR keeps changing


def test_a_lengthened_lightning_resume_follows_the_new_length_and_warns(tmp_path: Path) -> None:
    """Resumed with max_epochs raised, Lightning rebuilds the scheduler for the new length and
    loads the checkpoint into it: the added epoch follows the schedule, with a warning."""
    lightning = pytest.importorskip("lightning")
    module = importlib.import_module("examples.lightning_training")
    schedule = schedules.Cosine(lr=0.1, warmup=0.1, min_lr=1e-3)
    digits = module.load_digits()
    data = torch.utils.data.TensorDataset(
        torch.tensor(digits.data, dtype=torch.float32) / 16, torch.tensor(digits.target)
    )

    def fit(epochs: int, checkpoint: str | None = None) -> tuple[Any, list[float]]:
        record = module.RecordLR()
        trainer = lightning.Trainer(
            max_epochs=epochs,
            accelerator="cpu",
            devices=1,
            callbacks=[record],
            default_root_dir=tmp_path,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        loader = torch.utils.data.DataLoader(data, batch_size=128)
        trainer.fit(module.DigitsMLP(schedule), loader, ckpt_path=checkpoint)
        return trainer, record.lrs

    first, _ = fit(1)
    per_epoch = first.global_step
    first.save_checkpoint(tmp_path / "one.ckpt")
    with pytest.warns(UserWarning, match=f"total_steps={2 * per_epoch}, the checkpoint's was"):
        _, lrs = fit(2, str(tmp_path / "one.ckpt"))
    total = 2 * per_epoch
    expected = [schedule(step, total) for step in range(per_epoch, total)]
    assert lrs == pytest.approx(expected, rel=1e-9)


def test_the_hf_example_runs_the_schedule_over_the_trainers_own_step_count(
    tmp_path: Path,
) -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")  # the Trainer needs it on torch
    module = importlib.import_module("examples.hf_trainer")
    schedule = schedules.CosineRestarts(lr=0.1, first_cycle=0.3, warmup=0.1)

    lrs, steps = module.train(schedule, 1, tmp_path)

    assert steps == len(lrs) > 1
    assert lrs == pytest.approx([schedule(step, steps) for step in range(steps)], rel=1e-9)


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


def run_shipped_study(
    study: str, tmp_path: Path, *overrides: str
) -> subprocess.CompletedProcess[str]:
    """``python -m lrsearch run`` on a shipped study from the repository root, without
    baselines, in a storage of the test's own; it must succeed."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lrsearch",
            "run",
            "--study",
            f"studies/{study}.toml",
            *overrides,
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
    return result


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
    result = run_shipped_study(study, tmp_path, "--n-trials=1", "--epochs=1")
    assert "trial 0 " in result.stderr and f" {objective} " in result.stderr  # the log
    summary = result.stdout.splitlines()
    label = objective.replace("_", " ")
    assert any(line.startswith(label) and "(the objective)" in line for line in summary)


def test_mnist1d_is_generated_without_the_network_from_a_fixed_seed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from examples import mnist1d

    reached: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        """Recorded as well as raised: the package's downloading path swallows exceptions."""
        reached.append(args)
        raise OSError("no network in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    first, second = mnist1d.build(REPO), mnist1d.build(REPO)

    assert reached == []
    assert first.train_images is not None and first.train_labels is not None
    assert first.train_images.shape == (4000, 1, 40) and first.test_images.shape == (1000, 1, 40)
    assert torch.equal(first.train_labels.unique(), torch.arange(10))
    assert second.train_images is not None
    assert torch.equal(first.train_images, second.train_images)  # the same data every time
    assert torch.equal(first.test_images, second.test_images)


def test_the_mnist1d_study_learns_the_digits_in_two_epochs(tmp_path: Path) -> None:
    """Chance is 10%; the paper's CNN passes half within two epochs at a fitting peak LR."""
    result = run_shipped_study("mnist1d", tmp_path, "--n-trials=2", "--epochs=2")
    line = next(line for line in result.stdout.splitlines() if line.startswith("test accuracy"))
    assert float(line.split()[2]) > 0.5, line


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


def test_own_objective_example_keeps_an_existing_schedule_file(tmp_path: Path) -> None:
    out = tmp_path / "best_schedule.json"
    out.write_text("written by lrsearch best")
    result = subprocess.run(
        [sys.executable, "examples/own_objective.py", "--trials=1", "--epochs=1", f"--out={out}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2 and "exists; pass --force to replace it" in result.stderr
    assert out.read_text() == "written by lrsearch best"
