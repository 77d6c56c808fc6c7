"""Tiny data sets written in the on-disk formats torchvision reads.

Tests load them through the real torchvision classes, so the builtin loading code is exercised
without internet. Each class gets its own fixed pattern plus noise, so a short training run
can beat chance.
"""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torchvision

NUM_CLASSES = 10


def _learnable_splits(
    shape: tuple[int, ...], n_train: int, n_test: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(images, labels) for train and test, drawn from the same class prototypes."""
    rng = np.random.default_rng(seed)
    prototypes = rng.uniform(0, 255, size=(NUM_CLASSES, *shape))
    splits = []
    for n in (n_train, n_test):
        labels = rng.permutation(np.arange(n) % NUM_CLASSES).astype(np.uint8)
        noisy = prototypes[labels] + rng.normal(0, 40, size=(n, *shape))
        splits.append((noisy.clip(0, 255).astype(np.uint8), labels))
    return splits


def _write_idx(path: Path, array: np.ndarray) -> None:
    # Magic: two zero bytes, 0x08 for unsigned bytes, then the number of dimensions.
    header = struct.pack(f">{1 + array.ndim}I", 0x0800 | array.ndim, *array.shape)
    path.write_bytes(header + array.tobytes())


def write_mnist_like(
    root: Path, dataset: str = "FashionMNIST", n_train: int = 200, n_test: int = 100, seed: int = 0
) -> None:
    """Write the four uncompressed IDX files torchvision's MNIST-style classes check for.

    torchvision downloads .gz files but only looks for the extracted ones, in
    ``root/<class name>/raw/``; with those present it skips the download.
    """
    raw = root / dataset / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    splits = _learnable_splits((28, 28), n_train, n_test, seed)
    for prefix, (images, labels) in zip(("train", "t10k"), splits, strict=True):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)


def write_cifar10_like(root: Path, n_train: int = 100, n_test: int = 50, seed: int = 0) -> None:
    """Write CIFAR-10's python batches: rows of 3072 bytes (R, G, B planes), int labels.

    torchvision checks these files against the real data's md5 sums, which written files can't
    match: use ``accept_cifar10_files`` in the test as well.
    """
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    (train_images, train_labels), (test_images, test_labels) = _learnable_splits(
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
