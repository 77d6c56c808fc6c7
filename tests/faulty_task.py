"""The digits task with user code that misbehaves on request, for the fault tests.

``LRSEARCH_TEST_FAULT`` picks the fault: ``exit-at-import`` and ``exit-in-build`` call
``sys.exit`` while the task loads; ``exit``, ``interrupt``, ``value-error`` and ``hang``
happen in a training forward pass once the file named by ``LRSEARCH_TEST_TRIGGER`` exists
(at once when unset).
The model is a module of its own, not a Sequential, so its ``forward`` runs in every way a
population trains."""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

from examples.custom_task import build as build_digits
from lrsearch.tasks import TaskSource

FAULT = os.environ.get("LRSEARCH_TEST_FAULT", "")
if FAULT == "exit-at-import":
    sys.exit(3)


def _triggered() -> bool:
    trigger = os.environ.get("LRSEARCH_TEST_TRIGGER")
    return trigger is None or Path(trigger).exists()


class Faulty(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.training and _triggered():
            if FAULT == "exit":
                sys.exit(0)
            if FAULT == "interrupt":
                raise KeyboardInterrupt
            if FAULT == "value-error":
                raise ValueError("a model's own complaint")
            while FAULT == "hang":
                time.sleep(0.05)
        return self.body(images)


def build(data_dir: Path) -> TaskSource:
    if FAULT == "exit-in-build":
        sys.exit(4)
    return dataclasses.replace(build_digits(data_dir), models={"faulty": Faulty})
