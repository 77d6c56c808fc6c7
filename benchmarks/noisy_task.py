"""A task of our own for measurements: 20,000 examples of 64 noisy features in 10 classes
(scikit-learn's ``make_classification``), shaped as 1x8x8 images for a small MLP, with a
5,000-example validation split (benchmarks/noisy_task.toml). Unlike the bundled digits it is
hard enough (about 80% accuracy) that schedules differ, and its validation split is large
enough that a point of accuracy is 50 examples, not three.

    python -m lrsearch run --study benchmarks/noisy_task.toml     # from the repository root
"""

from __future__ import annotations

from pathlib import Path

import torch
from sklearn.datasets import make_classification
from torch import nn

from lrsearch.tasks import TaskSource


def mlp() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 256),
        nn.ReLU(),
        nn.Linear(256, 128),
        nn.ReLU(),
        nn.Linear(128, 10),
    )


def build(data_dir: Path) -> TaskSource:
    """Generated, so ``data_dir`` is not needed; seeded, so every run sees the same data."""
    features, labels = make_classification(
        n_samples=25_000,
        n_features=64,
        n_informative=24,
        n_redundant=8,
        n_classes=10,
        n_clusters_per_class=2,
        class_sep=1.0,
        flip_y=0.05,
        random_state=0,
    )
    images = torch.from_numpy(features).float().view(-1, 1, 8, 8)
    targets = torch.from_numpy(labels).long()
    return TaskSource(
        train_images=images[:20_000],
        train_labels=targets[:20_000],
        test_images=images[20_000:],
        test_labels=targets[20_000:],
        num_classes=10,
        models={"mlp": mlp},
    )
