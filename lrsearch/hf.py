"""The schedule inside Hugging Face's ``Trainer``, over the step count the Trainer computes.

The Trainer knows its number of optimizer steps only inside ``train()`` (from
epochs, batch size, gradient accumulation, the number of processes and a last
partial accumulation), and a count made by hand beforehand is easily a few
steps short, which silently compresses the schedule. ``create_scheduler`` is
the Trainer's own hook that receives that count: ``ScheduleTrainer`` builds
the schedule's ``ScheduleLR`` there. Needs ``transformers`` (the ``examples``
extra).
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler
from transformers import Trainer

from lrsearch.schedules import Schedule

__all__ = ["ScheduleTrainer"]


class ScheduleTrainer(Trainer):
    """A ``Trainer`` whose LR follows ``schedule`` over every optimizer step of ``train()``.

    The optimizer's LR (``TrainingArguments(learning_rate=schedule.lr)``, or the
    optimizer passed in ``optimizers``) is each group's base, multiplied by the
    schedule's factor; ``lr_scheduler_type`` and warmup arguments are not used.
    """

    def __init__(self, *args: Any, schedule: Schedule, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.schedule = schedule

    def create_scheduler(
        self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None
    ) -> LRScheduler:
        if self.lr_scheduler is not None:  # given in ``optimizers``, or made before
            return self.lr_scheduler
        # ``train()`` has created the optimizer by now; ``optimizer`` is the unwrapped one.
        scheduler = self.schedule.torch_scheduler(
            cast(torch.optim.Optimizer, optimizer or self.optimizer), num_training_steps
        )
        # The Trainer annotates LambdaLR, and takes any LRScheduler.
        self.lr_scheduler = cast(LambdaLR, scheduler)
        self._created_lr_scheduler = True  # the Trainer's flag for a scheduler it made
        return scheduler
