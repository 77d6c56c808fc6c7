"""A regression task: an MLP on scikit-learn's bundled diabetes data, trained on squared error.

Run from the repository root: ``python -m lrsearch run --study studies/regression.toml``.

The targets are real values, so the task says ``num_classes=None`` and ``loss="mse"``; the
study's objective is ``val_loss`` (the mean squared error on the validation split), and each
trial's per-example squared errors pair two trials' verdicts as correctness pairs a classifier's.
"""

from __future__ import annotations

from pathlib import Path

import torch
from sklearn.datasets import load_diabetes
from sklearn.model_selection import train_test_split
from torch import nn

from lrsearch.tasks import TaskSource


def mlp() -> nn.Module:
    """Outputs ``[B, 1]``, the targets' shape: a ``[B]`` output would broadcast against
    ``[B, 1]`` targets into a ``[B, B]`` loss, which the task's model check refuses."""
    return nn.Sequential(
        nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1)
    )


def build(data_dir: Path) -> TaskSource:
    """442 patients, 10 features, a disease progression score; ``data_dir`` is not needed.

    The score is standardised with the training split's mean and spread, so a loss of 1 is
    what predicting the mean scores, and the features (already centred by scikit-learn) are
    standardised by lrsearch at the task's request."""
    features, target = load_diabetes(return_X_y=True)
    inputs = torch.from_numpy(features).float()
    targets = torch.from_numpy(target).float().unsqueeze(1)
    train_x, test_x, train_y, test_y = train_test_split(
        inputs, targets, test_size=0.2, random_state=0
    )
    mean, std = train_y.mean(), train_y.std()
    return TaskSource(
        train_images=train_x,
        train_labels=(train_y - mean) / std,
        test_images=test_x,
        test_labels=(test_y - mean) / std,
        num_classes=None,
        models={"mlp": mlp},
        loss="mse",
        standardize=True,
    )
