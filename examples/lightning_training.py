"""A searched schedule in PyTorch Lightning: step it every optimizer step, not every epoch.

    python examples/lightning_training.py [best_schedule.json] [--steps 200]

Without a file a demo schedule is written first. ``configure_optimizers`` returns the
schedule's torch scheduler with ``"interval": "step"``; Lightning's default, ``"epoch"``,
would step it once per epoch and stretch the curve over epochs-many steps. The run's
length comes from the Trainer (``estimated_stepping_batches``), a callback records the
LR of every optimizer step, and the run checks it against ``schedule(step, total_steps)``.
Data: scikit-learn's bundled digits, nothing to download. Needs
``pip install -e ".[examples]"`` in a clone of lrsearch.

Resuming from a checkpoint with a longer run (``max_epochs`` raised) rebuilds the scheduler
for the new length in ``configure_optimizers``; loading the checkpoint then continues the
schedule from its step over the new length and warns once about the change of length
(``lrsearch.ScheduleLR.load_state_dict``).
"""

from __future__ import annotations

import argparse
import logging
import math
import tempfile
from pathlib import Path
from typing import Any

import lightning
import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

import lrsearch
from lrsearch import schedules


class DigitsMLP(lightning.LightningModule):
    def __init__(self, schedule: lrsearch.Schedule) -> None:
        super().__init__()
        self.schedule = schedule
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)
        )

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        pixels, labels = batch
        return torch.nn.functional.cross_entropy(self.layers(pixels), labels)

    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = torch.optim.SGD(self.parameters(), lr=self.schedule.lr, momentum=0.9)
        total_steps = int(self.trainer.estimated_stepping_batches)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": self.schedule.torch_scheduler(optimizer, total_steps),
                "interval": "step",
            },
        }


class RecordLR(lightning.Callback):
    """The LR each optimizer step uses, read just before the step."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_before_optimizer_step(
        self, trainer: Any, pl_module: Any, optimizer: torch.optim.Optimizer
    ) -> None:
        self.lrs.append(optimizer.param_groups[0]["lr"])


def train(schedule: lrsearch.Schedule, steps: int, root: Path) -> list[float]:
    """Train ``steps`` optimizer steps with Lightning; return the LR of each."""
    digits = load_digits()
    pixels = torch.tensor(digits.data, dtype=torch.float32) / 16
    labels = torch.tensor(digits.target)
    lightning.seed_everything(0, verbose=False)
    loader = DataLoader(TensorDataset(pixels, labels), batch_size=64, shuffle=True)
    model = DigitsMLP(schedule)
    record = RecordLR()
    trainer = lightning.Trainer(
        max_steps=steps,
        accelerator="cpu",
        devices=1,
        callbacks=[record],
        default_root_dir=root,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, loader)
    accuracy = (model.layers(pixels).argmax(1) == labels).float().mean()
    print(f"trained {trainer.global_step} steps, train accuracy {accuracy:.4f}")
    return record.lrs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("schedule", nargs="?", type=Path, help="a file from `lrsearch best`")
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps of this run")
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no banner per run
    with tempfile.TemporaryDirectory() as folder:
        path = args.schedule
        if path is None:
            path = Path(folder) / "best_schedule.json"
            schedules.Cosine(lr=0.2, warmup=0.1, min_lr=1e-3).save(path)
            print(f"no schedule given; using a demo one: {path}")
        schedule = lrsearch.load_schedule(path)
        print(f"schedule: {schedule.describe()}")
        lrs = train(schedule, args.steps, Path(folder))
    expected = [schedule(step, args.steps) for step in range(args.steps)]
    assert len(lrs) == args.steps, f"{len(lrs)} optimizer steps, expected {args.steps}"
    for step, (seen, wanted) in enumerate(zip(lrs, expected, strict=True)):
        assert math.isclose(seen, wanted, rel_tol=1e-9), f"step {step}: LR {seen}, not {wanted}"
    print(f"all {len(lrs)} optimizer steps used schedule(step, {args.steps})")


if __name__ == "__main__":
    main()
