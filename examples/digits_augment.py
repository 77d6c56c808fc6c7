"""A CNN on scikit-learn's bundled 8x8 digits with on-device crop-and-flip augmentation.

Run from the repository root: ``python -m lrsearch run --study studies/digits_augment.toml``.

The augmentation is the task's ``transform``: lrsearch draws it once per batch on the device
and every member of a population sees that same draw, so trials stay paired, and a member
trains exactly as it would alone with the same seeds.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from examples import custom_task
from lrsearch.models import resnet_digits
from lrsearch.tasks import TaskSource
from lrsearch.transforms import random_crop_flip


def build(data_dir: Path) -> TaskSource:
    """The digits of examples/custom_task.py, with a ResNet. Random crops of one pixel of
    padding and left-right flips, as airbench augments CIFAR-10 (a flipped digit is still
    mostly itself, and the flip makes the augmentation the one practitioners reach for first)."""
    return dataclasses.replace(
        custom_task.build(data_dir),
        models={"resnet": resnet_digits},
        transform=random_crop_flip(pad=1),
    )
