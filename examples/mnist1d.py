"""A signal task: MNIST-1D (Greydanus and Kobak, 2020), ten digits drawn as 1-D signals of 40
points, classified by a small 1-D CNN.

Run from the repository root: ``python -m lrsearch run --study studies/mnist1d.toml``.

The signals are generated here by the ``mnist1d`` package's own generator (``pip install -e
".[examples]"``), from a fixed seed, so the data set is the same on every machine and nothing
is downloaded: ``make_dataset`` only draws and interpolates (the package's ``get_dataset`` is
the function that downloads, and is not used). Small enough that an MLP and a CNN differ
clearly, and that a schedule search over it takes minutes on a laptop's CPU.
"""

from __future__ import annotations

from pathlib import Path

import torch
from mnist1d.data import get_dataset_args, make_dataset
from torch import nn

from lrsearch.tasks import TaskSource

# The generator's settings are the package's defaults (5,000 signals, 4,000 for training and
# 1,000 for test); its default seed is pinned here, so a new package default cannot change
# the data.
DATA_SEED = 42
CLASSES = 10


def cnn(channels: int = 25) -> nn.Module:
    """The reference CNN of the MNIST-1D paper: three strided convolutions take the 40 points
    to 5, then one linear layer; about 5,000 parameters."""
    return nn.Sequential(
        nn.Conv1d(1, channels, 5, stride=2, padding=1),  # 40 -> 19 points
        nn.ReLU(),
        nn.Conv1d(channels, channels, 3, stride=2, padding=1),  # 19 -> 10
        nn.ReLU(),
        nn.Conv1d(channels, channels, 3, stride=2, padding=1),  # 10 -> 5
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(channels * 5, CLASSES),
    )


def build(data_dir: Path) -> TaskSource:
    """Signals ``[N, 1, 40]`` and their digits; ``data_dir`` is not needed.

    The generator already centres the signals and scales them to unit spread, so they are
    not standardised again. It seeds NumPy's and Python's global random state, which
    lrsearch does not draw from."""
    args = get_dataset_args()
    args.seed = DATA_SEED
    data = make_dataset(args)

    def signals(key: str) -> torch.Tensor:
        return torch.from_numpy(data[key]).float().unsqueeze(1)

    return TaskSource(
        train_images=signals("x"),
        train_labels=torch.from_numpy(data["y"]).long(),
        test_images=signals("x_test"),
        test_labels=torch.from_numpy(data["y_test"]).long(),
        num_classes=CLASSES,
        models={"cnn": cnn},
    )
