"""Tiny data sets written in the on-disk formats torchvision reads.

Tests load them through the real torchvision classes, so the builtin loading code is exercised
without internet. The IDX writer lives in the package (the benchmark uses it too); CIFAR-10's
format is only needed here.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torchvision

from lrsearch.idx import NUM_CLASSES, learnable_splits, write_mnist_like

__all__ = ["accept_cifar10_files", "write_cifar10_like", "write_mnist_like"]


def write_cifar10_like(root: Path, n_train: int = 100, n_test: int = 50, seed: int = 0) -> None:
    """Write CIFAR-10's python batches: rows of 3072 bytes (R, G, B planes), int labels.

    torchvision checks these files against the real data's md5 sums, which written files can't
    match: use ``accept_cifar10_files`` in the test as well.
    """
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    (train_images, train_labels), (test_images, test_labels) = learnable_splits(
        (3, 32, 32), n_train, n_test, seed
    )
    train_parts = zip(np.array_split(train_images, 5), np.array_split(train_labels, 5), strict=True)
    batches = {f"data_batch_{i}": part for i, part in enumerate(train_parts, start=1)}
    batches["test_batch"] = (test_images, test_labels)
    for name, (images, labels) in batches.items():
        entry = {"data": images.reshape(len(images), -1), "labels": labels.tolist()}
        (folder / name).write_bytes(pickle.dumps(entry))
    meta = {"label_names": [f"class {i}" for i in range(NUM_CLASSES)]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))


def accept_cifar10_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make torchvision's CIFAR10 accept files written by ``write_cifar10_like``.

    Its md5 checks (data batches and ``batches.meta``) can't pass for written files, so only
    for this test they check that the file exists: a missing data set is still reported.
    """
    monkeypatch.setattr(
        torchvision.datasets.cifar,
        "check_integrity",
        lambda fpath, md5=None: os.path.isfile(fpath),
    )
