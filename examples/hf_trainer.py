"""A searched schedule in Hugging Face's Trainer: ``lrsearch.hf.ScheduleTrainer``.

    python examples/hf_trainer.py [best_schedule.json] [--epochs 3]

Without a file a demo schedule is written first. ``ScheduleTrainer(..., schedule=...)`` is
a ``Trainer`` that builds the schedule's scheduler in ``create_scheduler``, with the number
of optimizer steps the Trainer computes itself inside ``train()`` (epochs, batch size,
gradient accumulation, processes): no step count to get wrong by hand. A callback records
the LR of every optimizer step and the run checks it against ``schedule(step, steps)``.
The model (a small MLP) and the data (scikit-learn's bundled digits) are built here:
nothing is downloaded. Needs ``pip install -e ".[examples]"`` in a clone of lrsearch.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path
from typing import Any

import torch
from sklearn.datasets import load_digits
from transformers import TrainerCallback, TrainingArguments

import lrsearch
from lrsearch import schedules
from lrsearch.hf import ScheduleTrainer


class DigitsMLP(torch.nn.Module):
    """Any ``nn.Module`` whose forward returns the loss when given labels suits the Trainer."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)
        )

    def forward(self, pixels: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.layers(pixels)
        return {"loss": torch.nn.functional.cross_entropy(logits, labels), "logits": logits}


class RecordLR(TrainerCallback):
    """The LR each optimizer step uses, read just before the step."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.lrs.append(kwargs["optimizer"].param_groups[0]["lr"])


def train(schedule: lrsearch.Schedule, epochs: int, output_dir: Path) -> tuple[list[float], int]:
    """Train ``epochs`` epochs with the Trainer; return the LR of each optimizer step and the
    run's length in steps, as the Trainer counted it."""
    digits = load_digits()
    pixels = torch.tensor(digits.data, dtype=torch.float32) / 16
    examples = [
        {"pixels": image, "labels": torch.tensor(label)}
        for image, label in zip(pixels, digits.target, strict=True)
    ]
    torch.manual_seed(0)
    model = DigitsMLP()
    record = RecordLR()
    trainer = ScheduleTrainer(
        model=model,
        args=TrainingArguments(
            output_dir=str(output_dir),
            learning_rate=schedule.lr,  # the peak: the schedule multiplies it by its factor
            optim="sgd",
            num_train_epochs=epochs,
            per_device_train_batch_size=64,
            gradient_accumulation_steps=2,
            use_cpu=True,
            report_to="none",
            save_strategy="no",
            logging_strategy="no",
            disable_tqdm=True,
            seed=0,
        ),
        train_dataset=examples,
        callbacks=[record],
        schedule=schedule,
    )
    result = trainer.train()
    steps = trainer.state.max_steps
    accuracy = (model.layers(pixels).argmax(1) == torch.tensor(digits.target)).float().mean()
    print(f"trained {steps} steps, loss {result.training_loss:.4f}, accuracy {accuracy:.4f}")
    return record.lrs, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("schedule", nargs="?", type=Path, help="a file from `lrsearch best`")
    parser.add_argument("--epochs", type=int, default=3, help="epochs of this run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = args.schedule
        if path is None:
            path = Path(folder) / "best_schedule.json"
            schedules.Cosine(lr=0.2, warmup=0.1, min_lr=1e-3).save(path)
            print(f"no schedule given; using a demo one: {path}")
        schedule = lrsearch.load_schedule(path)
        print(f"schedule: {schedule.describe()}")
        lrs, steps = train(schedule, args.epochs, Path(folder) / "trainer")
    expected = [schedule(step, steps) for step in range(steps)]
    assert len(lrs) == steps, f"{len(lrs)} optimizer steps, expected {steps}"
    for step, (seen, wanted) in enumerate(zip(lrs, expected, strict=True)):
        assert math.isclose(seen, wanted, rel_tol=1e-9), f"step {step}: LR {seen}, not {wanted}"
    print(f"all {len(lrs)} optimizer steps used schedule(step, {steps})")


if __name__ == "__main__":
    main()
