"""A user task: scikit-learn's bundled 8x8 digits, with a small MLP.

Run from the repository root (the CLI puts the working directory on ``sys.path``)::

    python -m lrsearch run --task examples.custom_task:build --study studies/quick.toml

A task is any ``module:function`` whose function takes the ``--data-dir`` path and returns a
``TaskSource``; lrsearch then carves the validation split and normalizes the images itself.
"""

from __future__ import annotations

from pathlib import Path

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from lrsearch.tasks import TaskSource


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def build(data_dir: Path) -> TaskSource:
    """The digits ship with scikit-learn, so ``data_dir`` is not needed."""
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
        models={"mlp": mlp},
    )
