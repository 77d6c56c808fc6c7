"""ScheduleTrainer: the schedule over the Trainer's own step count, with a real Trainer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # the Trainer needs it

from lrsearch.hf import ScheduleTrainer  # noqa: E402
from lrsearch.schedules import Cosine  # noqa: E402
from lrsearch.torch_scheduler import ScheduleLR  # noqa: E402

SCHEDULE = Cosine(lr=0.1, warmup=0.2, min_lr=1e-3)


class Linear(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": torch.nn.functional.cross_entropy(self.layer(x), labels)}


class RecordLR(transformers.TrainerCallback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.lrs.append(kwargs["optimizer"].param_groups[0]["lr"])


def test_the_schedule_spans_every_step_the_trainer_takes(tmp_path: Path) -> None:
    """100 examples, batches of 8, accumulation 3, 2 epochs: 13 batches give 5 optimizer steps
    an epoch (the last one short), where counting N // (batch * accumulation) gives 4."""
    torch.manual_seed(0)
    examples = [{"x": torch.randn(4), "labels": torch.tensor(i % 2)} for i in range(100)]
    record = RecordLR()
    trainer = ScheduleTrainer(
        model=Linear(),
        args=transformers.TrainingArguments(
            output_dir=str(tmp_path),
            learning_rate=SCHEDULE.lr,
            num_train_epochs=2,
            per_device_train_batch_size=8,
            gradient_accumulation_steps=3,
            use_cpu=True,
            report_to="none",
            save_strategy="no",
            logging_strategy="no",
            disable_tqdm=True,
        ),
        train_dataset=examples,
        callbacks=[record],
        schedule=SCHEDULE,
    )
    trainer.train()
    steps = trainer.state.max_steps
    assert isinstance(trainer.lr_scheduler, ScheduleLR)
    assert trainer.lr_scheduler.total_steps == steps == len(record.lrs)
    assert steps != 100 // (8 * 3) * 2  # what a count by hand gives
    assert record.lrs == pytest.approx([SCHEDULE(k, steps) for k in range(steps)], rel=1e-9)
