"""Synthetic data sets written in the IDX format torchvision's MNIST-style classes read.

The benchmark and the tests load them through the real torchvision classes, so the on-disk
path is exercised without internet. Each class gets its own fixed pattern plus noise, so a
short training run can beat chance.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import numpy.typing as npt

__all__ = ["NUM_CLASSES", "learnable_splits", "write_idx", "write_mnist_like"]

NUM_CLASSES = 10

Split = tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]


def learnable_splits(shape: tuple[int, ...], n_train: int, n_test: int, seed: int) -> list[Split]:
    """(images, labels) for train and test, drawn from the same class prototypes."""
    rng = np.random.default_rng(seed)
    prototypes = rng.uniform(0, 255, size=(NUM_CLASSES, *shape)).astype(np.float32)
    splits = []
    for n in (n_train, n_test):
        labels = rng.permutation(np.arange(n) % NUM_CLASSES).astype(np.uint8)
        noisy = prototypes[labels] + rng.normal(0, 40, size=(n, *shape)).astype(np.float32)
        splits.append((noisy.clip(0, 255).astype(np.uint8), labels))
    return splits


def write_idx(path: Path, array: npt.NDArray[np.uint8]) -> None:
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
    splits = learnable_splits((28, 28), n_train, n_test, seed)
    for prefix, (images, labels) in zip(("train", "t10k"), splits, strict=True):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
