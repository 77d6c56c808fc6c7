"""A CNN on scikit-learn's bundled 8x8 digits with on-device crop-and-flip augmentation.

Run from the repository root: ``python -m lrsearch run --study studies/digits_augment.toml``.

The augmentation is the task's ``transform``: lrsearch draws it once per batch on the device
and every member of a population sees that same draw, so trials stay paired, and a member
trains exactly as it would alone with the same seeds.
"""

from __future__ import annotations

from pathlib import Path

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from lrsearch.models import resnet_digits
from lrsearch.tasks import TaskSource
from lrsearch.transforms import random_crop_flip


def build(data_dir: Path) -> TaskSource:
    """1,797 digits; ``data_dir`` is not needed. Random crops of one pixel of padding and
    left-right flips, as airbench augments CIFAR-10 (a flipped digit is still mostly itself,
    and the flip makes the augmentation the one practitioners reach for first)."""
    digits = load_digits()
    # Pixel values are 0..16; scaled to 0..255 they fit uint8, stored at one byte per pixel.
    images = torch.from_numpy(digits.images * (255 / 16)).round().to(torch.uint8).unsqueeze(1)
    labels = torch.from_numpy(digits.target).to(torch.int64)
    train_images, test_images, train_labels, test_labels = train_test_split(
        images, labels, test_size=0.2, random_state=0, stratify=labels
    )
    return TaskSource(
        train_images=train_images,
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        num_classes=10,
        models={"resnet": resnet_digits},
        transform=random_crop_flip(pad=1),
    )
