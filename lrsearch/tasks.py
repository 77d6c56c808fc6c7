"""Data sets and the models trained on them.

A task is loaded once per process and kept on the device as it came from disk (uint8 stays
uint8), so that many short trials can share it without reloading or a 4x larger float copy.
"""

from __future__ import annotations

import functools
import importlib
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from lrsearch.errors import LrsearchError

ModelFactory = Callable[[], nn.Module]

# Images per chunk when computing channel statistics, to bound the float64 working copy.
_STATS_CHUNK = 4096


@dataclass(frozen=True, eq=False)
class TaskSource:
    """What a task builder returns: raw tensors on the CPU and the models it offers.

    Validated on construction so that a user's own task fails with a readable message here
    rather than with a shape error deep inside training. ``eq=False`` because comparing
    tensors field by field has no single truth value.
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int
    models: Mapping[str, ModelFactory]

    def __post_init__(self) -> None:
        for name in ("train_images", "train_labels", "test_images", "test_labels"):
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor):
                raise LrsearchError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int):
            raise LrsearchError(f"num_classes must be an int, got {self.num_classes!r}")
        if not isinstance(self.models, Mapping) or not all(
            isinstance(name, str) and callable(factory) for name, factory in self.models.items()
        ):
            raise LrsearchError(
                f"models must map names (str) to functions that build a model, got {self.models!r}"
            )
        if self.num_classes < 2:
            raise LrsearchError(f"num_classes must be at least 2, got {self.num_classes}")
        _check_split("train", self.train_images, self.train_labels, self.num_classes)
        _check_split("test", self.test_images, self.test_labels, self.num_classes)
        train_layout = (self.train_images.dtype, tuple(self.train_images.shape[1:]))
        test_layout = (self.test_images.dtype, tuple(self.test_images.shape[1:]))
        if train_layout != test_layout:
            raise LrsearchError(
                "train and test images differ in dtype or [C, H, W]: "
                f"{train_layout} vs {test_layout}"
            )
        if not self.models:
            raise LrsearchError("a task must offer at least one model")


def _check_split(split: str, images: torch.Tensor, labels: torch.Tensor, num_classes: int) -> None:
    if images.dim() != 4 or len(images) == 0:
        raise LrsearchError(
            f"{split}_images must be a non-empty [N, C, H, W] tensor, got shape "
            f"{tuple(images.shape)}"
        )
    if images.dtype not in (torch.uint8, torch.float32):
        raise LrsearchError(f"{split}_images must be uint8 or float32, got {images.dtype}")
    if labels.dtype != torch.int64 or labels.shape != (len(images),):
        raise LrsearchError(
            f"{split}_labels must be int64 of shape ({len(images)},), got {labels.dtype} of "
            f"shape {tuple(labels.shape)}"
        )
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise LrsearchError(
            f"{split}_labels must lie in [0, {num_classes - 1}], got values from {low} to {high}"
        )


@dataclass(frozen=True, eq=False)
class Task:
    """A task ready to train on: every split on the target device, loaded once per process.

    Cached and shared between trials, so treat every tensor as read-only.
    """

    name: str
    model_name: str
    build_model: ModelFactory
    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    num_classes: int

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Standardize one batch; done per batch so the stored data set never becomes float."""
        return (images.float() - self.mean) / self.std


def lenet() -> nn.Module:
    """LeNet-5 as in the reference article (ReLU and max pooling), for 1x28x28 inputs.

    Each pooling runs before its ReLU, not after as the article writes it: ReLU is monotone,
    so both orders compute the same outputs and gradients, and this one applies ReLU to a
    quarter of the values (LeNet steps 5-8% faster on a CPU, BENCHMARKS.md).
    """
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2),
        nn.MaxPool2d(2, 2),
        nn.ReLU(),
        nn.Conv2d(6, 16, 5),
        nn.MaxPool2d(2, 2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(400, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, 10),
    )


def small_cnn() -> nn.Module:
    """The reference article's small CNN, for 1x28x28 inputs; pooling before ReLU as in
    :func:`lenet`."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.MaxPool2d(2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3136, 128),
        # The article has no activation between the two dense layers; kept that way so that
        # results stay comparable with it.
        nn.Linear(128, 10),
    )


class _BasicBlock(nn.Module):
    """Two 3x3 convolutions plus a shortcut, the residual unit of ResNet-18/34."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def small_resnet() -> nn.Module:
    """A three-stage ResNet small enough for quick trials, for 3x32x32 inputs."""
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        _BasicBlock(32, 32, stride=1),
        _BasicBlock(32, 64, stride=2),
        _BasicBlock(64, 128, stride=2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(128, 10),
    )


_MNIST_MODELS: Mapping[str, ModelFactory] = {"lenet": lenet, "cnn": small_cnn}


def _from_mnist_like(train: Any, test: Any) -> TaskSource:
    return TaskSource(
        train_images=train.data.unsqueeze(1),
        train_labels=train.targets,
        test_images=test.data.unsqueeze(1),
        test_labels=test.targets,
        num_classes=10,
        models=_MNIST_MODELS,
    )


def _from_cifar10(train: Any, test: Any) -> TaskSource:
    def images(dataset: Any) -> torch.Tensor:
        return torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()

    return TaskSource(
        train_images=images(train),
        train_labels=torch.tensor(train.targets, dtype=torch.int64),
        test_images=images(test),
        test_labels=torch.tensor(test.targets, dtype=torch.int64),
        num_classes=10,
        models={"resnet": small_resnet},
    )


# Builtin task name -> (torchvision data set class, conversion of its train and test splits).
_BUILTINS: dict[str, tuple[Any, Callable[[Any, Any], TaskSource]]] = {
    "fashion-mnist": (torchvision.datasets.FashionMNIST, _from_mnist_like),
    "mnist": (torchvision.datasets.MNIST, _from_mnist_like),
    "cifar10": (torchvision.datasets.CIFAR10, _from_cifar10),
}

BUILTIN_TASKS: tuple[str, ...] = tuple(_BUILTINS)


def _open_dataset(
    task: str, dataset_class: Any, data_dir: Path, train: bool, download: bool
) -> Any:
    top = _first_missing(data_dir)
    before = _paths(top)
    try:
        return dataset_class(root=data_dir, train=train, download=download)
    except (RuntimeError, OSError) as err:  # OSError covers urllib's URLError
        # A failed download leaves empty folders that look like a data set on the next look.
        _remove_new(top, before)
        reason = f"downloading it failed ({_cause(err)})" if download else "downloading is off"
        raise LrsearchError(
            f"task {task!r}: no data set in {data_dir.resolve()} and {reason}; "
            "pass --data-dir pointing to an existing copy"
        ) from err


def _first_missing(data_dir: Path) -> Path:
    """The highest missing folder on the way to ``data_dir``, or ``data_dir`` when it exists:
    everything a download may create lies under it."""
    missing = [path for path in (data_dir, *data_dir.absolute().parents) if not path.exists()]
    return missing[-1] if missing else data_dir


def _paths(top: Path) -> set[Path]:
    return {top, *top.rglob("*")} if top.exists() else set()


def _remove_new(top: Path, before: set[Path]) -> None:
    """Remove what appeared under ``top`` since ``before``; what was there stays untouched."""
    new = _paths(top) - before
    for path in new:
        if path.parent not in new:  # the top of a created tree; its contents go with it
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def _cause(err: BaseException) -> str:
    """The root error's type and first line; torchvision's own message ends with the
    mirrors' errors (the network's, offline), so its last line is kept too."""
    while (parent := err.__cause__ or err.__context__) is not None:
        err = parent
    lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [""]
    last = f" ... {lines[-1]}" if len(lines) > 1 else ""
    return f"{type(err).__name__}: {lines[0]}{last}"


def _load_user_source(task: str, data_dir: Path) -> TaskSource:
    module_name, _, function_name = task.partition(":")
    expected = "expected the form module:function, e.g. mypackage.tasks:build"
    if not function_name.isidentifier() or not all(
        part.isidentifier() for part in module_name.split(".")
    ):
        raise LrsearchError(f"task {task!r} is not a valid import path; {expected}")
    # The user's code may raise anything; its author sees the traceback with --debug.
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        top = module_name.split(".")[0]
        if isinstance(err, ModuleNotFoundError) and err.name == top:
            # The form is right; the module is just not where Python looks from here.
            raise LrsearchError(
                f"task {task!r}: cannot import {module_name!r}: no module {top!r} is importable "
                f"from the working directory {Path.cwd()} or sys.path; run from the folder that "
                f"contains {top}.py or the {top}/ package, or add that folder to PYTHONPATH"
            ) from err
        raise LrsearchError(
            f"task {task!r}: cannot import {module_name!r} ({err}); {expected}"
        ) from err
    except (Exception, SystemExit) as err:  # sys.exit in user code is user code failing
        raise LrsearchError(f"task {task!r}: importing {module_name!r} {_raised(err)}") from err
    build = getattr(module, function_name, None)
    if not callable(build):
        raise LrsearchError(
            f"task {task!r}: {module_name!r} has no function {function_name!r}; {expected}"
        )
    try:
        source = build(data_dir)
    except LrsearchError as err:  # TaskSource's own checks, or the task's
        raise LrsearchError(f"task {task!r}: {err}") from err
    except (Exception, SystemExit) as err:  # sys.exit in user code is user code failing
        raise LrsearchError(f"task {task!r}: {function_name} {_raised(err)}") from err
    if not isinstance(source, TaskSource):
        raise LrsearchError(
            f"task {task!r} returned {type(source).__name__}, expected lrsearch.tasks.TaskSource"
        )
    return source


def _raised(error: BaseException) -> str:
    """``raised ValueError: its message``, on one line."""
    lines = str(error).strip().splitlines()
    return f"raised {type(error).__name__}" + (f": {lines[0]}" if lines else "")


def load_source(task: str, data_dir: Path, download: bool = True) -> TaskSource:
    """Build a task's raw tensors from a builtin name or a user's ``module:function``."""
    if task in _BUILTINS:
        dataset_class, convert = _BUILTINS[task]
        train, test = (
            _open_dataset(task, dataset_class, data_dir, train=split, download=download)
            for split in (True, False)
        )
        return convert(train, test)
    if ":" not in task:
        raise LrsearchError(
            f"unknown task {task!r}; use one of {', '.join(BUILTIN_TASKS)} "
            "or an import path module:function"
        )
    return _load_user_source(task, data_dir)


def _val_count(val_size: int | float, n: int) -> int:
    if isinstance(val_size, float):
        if not 0 < val_size < 1:
            raise LrsearchError(f"val_size {val_size!r} is a fraction outside (0, 1)")
        count = round(val_size * n)
    else:
        count = val_size
    if not 1 <= count < n:
        raise LrsearchError(
            f"val_size {val_size!r} gives {count} validation images; it must leave between "
            f"1 and {n - 1} of the {n} training images"
        )
    return count


def _channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std per channel in float64, chunked so no float copy of the set is made."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    for chunk in torch.split(images, _STATS_CHUNK):
        values = chunk.to(torch.float64)
        total += values.sum(dim=(0, 2, 3))
        total_sq += values.square().sum(dim=(0, 2, 3))
    count = images.numel() // images.shape[1]
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt()
    # Like scikit-learn's StandardScaler: a constant channel is only centered, not blown up.
    return mean, torch.where(std > 0, std, torch.ones_like(std))


def _check_model(task: str, name: str, source: TaskSource) -> None:
    """Build the model once and run two images through it, so that a broken model factory, or
    one made for other images, is one line before any trial rather than a failure in each."""
    where = f"task {task!r}: model {name!r}"
    state = torch.random.get_rng_state()  # building draws from the global generator
    try:
        model = source.models[name]()
    except (Exception, SystemExit) as error:
        raise LrsearchError(f"{where} {_raised(error)}") from error
    finally:
        torch.random.set_rng_state(state)
    if not isinstance(model, nn.Module):
        raise LrsearchError(f"{where} returned {type(model).__name__}, expected a torch.nn.Module")
    images = source.train_images[:2].float()
    try:
        with torch.no_grad():
            logits = model.eval()(images)
    except (Exception, SystemExit) as error:
        raise LrsearchError(
            f"{where} cannot take the task's images of shape {tuple(images.shape[1:])}: "
            f"{_raised(error)}"
        ) from error
    # More outputs than classes train (the extra logits are never the label); fewer cannot.
    shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else None
    if shape is None or len(shape) != 2 or shape[0] != 2 or shape[1] < source.num_classes:
        raise LrsearchError(
            f"{where} returns {shape or type(logits).__name__} for 2 images; expected logits of "
            f"shape (2, {source.num_classes})"
        )


def prepare_task(
    source: TaskSource,
    *,
    name: str,
    model: str | None,
    val_size: int | float,
    split_seed: int,
    device: torch.device,
) -> Task:
    """Carve the validation split from train and move everything to the device.

    The split is drawn on the CPU from its own generator, so it depends on ``split_seed``
    only: neither the device nor the global RNG state used for model init changes it.
    """
    model_name = next(iter(source.models)) if model is None else model
    if model_name not in source.models:
        raise LrsearchError(
            f"task {name!r} has no model {model_name!r}; choose one of {', '.join(source.models)}"
        )
    _check_model(name, model_name, source)
    n = len(source.train_images)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    n_val = _val_count(val_size, n)
    val_idx, train_idx = order[:n_val], order[n_val:]
    train_images = source.train_images[train_idx]
    mean, std = _channel_stats(train_images)
    stat_shape = (1, -1, 1, 1)
    return Task(
        name=name,
        model_name=model_name,
        build_model=source.models[model_name],
        train_images=train_images.to(device),
        train_labels=source.train_labels[train_idx].to(device),
        val_images=source.train_images[val_idx].to(device),
        val_labels=source.train_labels[val_idx].to(device),
        test_images=source.test_images.to(device),
        test_labels=source.test_labels.to(device),
        mean=mean.view(stat_shape).to(device, torch.float32),
        std=std.view(stat_shape).to(device, torch.float32),
        num_classes=source.num_classes,
    )


def load_task(
    task: str,
    *,
    model: str | None,
    data_dir: Path,
    val_size: int | float,
    split_seed: int,
    device: torch.device,
    download: bool = True,
) -> Task:
    """Load and prepare a task, cached so that every trial in a process reuses the tensors."""
    return _load_task_cached(
        task, model, data_dir.resolve(), val_size, split_seed, device, download
    )


# typed=True keeps val_size=1 (one image) and val_size=1.0 (an invalid fraction) apart.
@functools.lru_cache(maxsize=None, typed=True)
def _load_task_cached(
    task: str,
    model: str | None,
    data_dir: Path,
    val_size: int | float,
    split_seed: int,
    device: torch.device,
    download: bool,
) -> Task:
    source = load_source(task, data_dir, download)
    return prepare_task(
        source,
        name=task,
        model=model,
        val_size=val_size,
        split_seed=split_seed,
        device=device,
    )
