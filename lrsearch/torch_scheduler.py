"""The bridge to PyTorch: a schedule as an ``LRScheduler`` stepped once per optimizer step.

Apart from lrsearch.schedules so that reading schedules (``lrsearch best``, ``export``) does
not import torch.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch.optim.lr_scheduler import LRScheduler

from lrsearch.schedules import Array, Schedule, ScheduleError, _check_total_steps

__all__ = ["ScheduleLR"]


class ScheduleLR(LRScheduler):
    """A PyTorch LRScheduler whose LR at step ``k`` is the schedule's closed form at ``k``.

    The run's factors are evaluated once, vectorised, at construction, so a
    ``step()`` is a table look-up; steps past ``total_steps`` use the closed
    form. ``state_dict()`` carries the schedule as its JSON dict (no pickled
    objects: it loads with ``torch.load(weights_only=True)``), and a restored
    scheduler continues exactly where the saved one stood.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        schedule: Schedule,
        total_steps: int,
        last_epoch: int = -1,
    ) -> None:
        self.schedule = schedule
        self.total_steps = _check_total_steps(total_steps)
        self._factors = self._table()
        super().__init__(optimizer, last_epoch)

    def _table(self) -> Array:
        return np.asarray(self.schedule.factor(np.arange(self.total_steps + 1), self.total_steps))

    def _factor(self, step: int) -> float:
        if step < 0:  # indexing the table from its end would give the end of the run
            raise ScheduleError(
                f"{self.schedule.family}: step {step} is not allowed; it must be >= 0"
            )
        if step < len(self._factors):
            return float(self._factors[step])
        return float(self.schedule.factor(step, self.total_steps))

    def get_lr(self) -> list[float | torch.Tensor]:
        factor = self._factor(self.last_epoch)
        return [base * factor for base in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float | torch.Tensor]:
        return self.get_lr()

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        del state["_factors"]
        state["schedule"] = self.schedule.to_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the checkpoint's schedule from its step, over the length this scheduler
        was built with: a run resumed with more epochs (Lightning's ``max_epochs`` raised)
        stretches the rest of the schedule over them instead of running the added steps past
        the end. A change of length is warned about here, with the LR's jump."""
        state = dict(state_dict)
        schedule = Schedule.from_dict(state.pop("schedule"))
        length = self.total_steps
        super().load_state_dict(state)
        self.schedule = schedule
        saved, self.total_steps = self.total_steps, length
        self._factors = self._table()
        if saved != length:
            before = schedule(self.last_epoch, saved)
            after = schedule(self.last_epoch, length)
            warnings.warn(
                f"ScheduleLR resumed at step {self.last_epoch} with total_steps={length}, "
                f"the checkpoint's was {saved}: the schedule now follows the new length, "
                f"the schedule's LR at this step {before:.6g} -> {after:.6g}",
                stacklevel=2,
            )
            for group, lr in zip(self.optimizer.param_groups, self.get_lr(), strict=True):
                group["lr"] = lr
            self._last_lr = [group["lr"] for group in self.optimizer.param_groups]
