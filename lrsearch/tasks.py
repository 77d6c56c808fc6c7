"""The task protocol: what lrsearch trains on, and how it scores what it trained.

A task gives its data (tensors in memory, or a stream of batches with a step budget), its
loss, its metrics with their direction, an optional on-device batch transform, an optional
validation split of its own, and the models it offers. ``TaskSource`` is what a task builder
returns and is validated once, on construction and against its models before any trial, so
that a wrong shape is one line naming the task rather than a failure inside every trial.

Inputs may be of any shape and dtype (token ids ``[N, T]``, signals ``[N, C, L]``, tables
``[N, F]``, images ``[N, C, H, W]``); targets are a class per example, a class per position
(with an ignore index), or real values. Nothing is done to the inputs that the task did not
ask for: standardisation is its choice, and images (4-D inputs) keep being standardised per
channel by default, as every study before this protocol was.

A task is loaded once per process and kept on the device as it came (uint8 stays uint8),
so that many short trials can share it without reloading or a 4x larger float copy.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import math
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lrsearch.errors import LrsearchError
from lrsearch.models import BasicBlock

__all__ = [
    "BUILTIN_METRICS",
    "BUILTIN_TASKS",
    "Metric",
    "Stream",
    "Targets",
    "Task",
    "TaskSource",
    "lenet",
    "load_source",
    "load_task",
    "prepare_task",
    "small_cnn",
    "small_resnet",
]

ModelFactory = Callable[[], nn.Module]
# (outputs [B, ...], targets [B, ...]) -> one figure per example [B]; every loss and metric
# is a mean over examples of such figures, which is what makes two trials' results pair.
PerExample = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# (inputs [B, ...] on the device, generator) -> inputs of the same batch size.
BatchTransform = Callable[[torch.Tensor, torch.Generator], torch.Tensor]

# Images per chunk when computing channel statistics, to bound the float64 working copy.
_STATS_CHUNK = 4096
LOSSES = ("cross_entropy", "mse")


@dataclass(frozen=True)
class Metric:
    """A figure a task reports: the mean over examples of ``per_example`` (then ``of_mean``).

    The per-example figures are what a verdict pairs between two trials; ``of_mean`` maps
    their mean to the reported value where that is not the mean itself (perplexity is the
    exponential of the mean loss), so it must be monotone increasing."""

    name: str
    per_example: PerExample
    higher_is_better: bool
    of_mean: Callable[[float], float] | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.name, str) and self.name.isidentifier()):
            raise LrsearchError(f"a metric's name must be an identifier, got {self.name!r}")
        if not callable(self.per_example):
            raise LrsearchError(f"metric {self.name!r}: per_example must be a function")

    def value(self, mean: float) -> float:
        return self.of_mean(mean) if self.of_mean is not None else mean


def _correct(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return (outputs.argmax(dim=-1) == targets).float()


def _token_correct(ignore_index: int) -> PerExample:
    def token_accuracy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        kept = targets != ignore_index
        right = (outputs.argmax(dim=-1) == targets) & kept
        return right.flatten(1).sum(1) / kept.flatten(1).sum(1).clamp_min(1)

    return token_accuracy


def _cross_entropy(ignore_index: int) -> PerExample:
    """Per example; with a class per position, the mean over its positions not ignored."""

    def cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        losses = F.cross_entropy(
            outputs.float().flatten(0, -2),
            targets.flatten(),
            reduction="none",
            ignore_index=ignore_index,
        ).view(targets.shape)
        if targets.dim() == 1:
            return losses
        kept = (targets != ignore_index).flatten(1).sum(1).clamp_min(1)
        return losses.flatten(1).sum(1) / kept

    return cross_entropy


def _squared_error(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    errors = (outputs.float() - targets.float()).square()
    return errors.flatten(1).mean(1) if errors.dim() > 1 else errors


# The metrics a task may name; "loss" is every task's own loss, filled in per task.
BUILTIN_METRICS = ("accuracy", "token_accuracy", "loss", "perplexity", "mse")


def _builtin_metric(name: str, loss: PerExample, ignore_index: int) -> Metric:
    if name == "accuracy":
        return Metric("accuracy", _correct, higher_is_better=True)
    if name == "token_accuracy":
        return Metric("token_accuracy", _token_correct(ignore_index), higher_is_better=True)
    if name == "loss":
        return Metric("loss", loss, higher_is_better=False)
    if name == "perplexity":
        return Metric("perplexity", loss, higher_is_better=False, of_mean=_exp)
    return Metric("mse", _squared_error, higher_is_better=False)


def _exp(value: float) -> float:
    return math.exp(value) if value < 700 else math.inf


@dataclass(frozen=True)
class Targets:
    """What a task's targets may hold, by its loss. One check for a split in memory and for
    every streamed batch, so that a target the loss cannot take is one line naming where it
    is, never an IndexError, a CUDA assert or a trial of NaN."""

    loss: str  # "cross_entropy": class numbers; "mse": real values
    classes: int  # cross_entropy's classes are 0 .. classes - 1
    ignore_index: int | None  # a class per position: targets equal to it are not scored

    def outside(self, targets: torch.Tensor) -> torch.Tensor:
        """Where a target is one the loss cannot take. On the targets' device, without waiting
        for it: a stream computes it for every batch and reads the verdicts later."""
        if self.loss == "mse":
            return ~targets.isfinite()
        outside = (targets < 0) | (targets >= self.classes)
        return outside if self.ignore_index is None else outside & (targets != self.ignore_index)

    def check_dtype(self, name: str, targets: torch.Tensor) -> None:
        if self.loss == "mse" and not targets.is_floating_point():
            raise LrsearchError(f"{name} must be real values for loss 'mse', got {targets.dtype}")
        if self.loss == "cross_entropy" and targets.dtype != torch.int64:
            raise LrsearchError(f"{name} must be int64 class numbers, got {targets.dtype}")

    def check(self, name: str, targets: torch.Tensor) -> None:
        """Refuse ``targets`` (called ``name`` in the message) unless the loss can take them
        all; the message says what is wrong and what is allowed."""
        self.check_dtype(name, targets)
        outside = self.outside(targets)
        if not outside.any():
            return
        if self.loss == "mse":
            raise LrsearchError(
                f"{name} must be finite real values for loss 'mse', got {int(outside.sum())} "
                "nan or inf"
            )
        scored = targets if self.ignore_index is None else targets[targets != self.ignore_index]
        ignored = "" if self.ignore_index is None else f" (or ignore_index {self.ignore_index})"
        raise LrsearchError(
            f"{name} must lie in [0, {self.classes - 1}]{ignored}, got values from "
            f"{int(scored.min())} to {int(scored.max())}"
        )


@dataclass(frozen=True, eq=False)
class TaskSource:
    """What a task builder returns: its data on the CPU, how to score it, and its models.

    Validated on construction so that a user's own task fails with a readable message here
    rather than with a shape error deep inside training. ``eq=False`` because comparing
    tensors field by field has no single truth value. The fields keep their first names
    (``*_images``, ``*_labels``) so that tasks written for images keep working; they hold
    inputs and targets of any kind.
    """

    # Inputs [N, ...] and targets [N] (a class each, or a real value) or [N, ...] (a class per
    # position, or real values); None for train when ``batches`` streams the training data.
    train_images: torch.Tensor | None
    train_labels: torch.Tensor | None
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int | None  # None: real-valued targets
    models: Mapping[str, ModelFactory]
    # "cross_entropy", "mse", or a function of (outputs, targets) returning per-example losses.
    loss: str | PerExample = "cross_entropy"
    # Names from BUILTIN_METRICS or Metric objects; "loss" is always reported. Empty: the
    # loss's usual ones (accuracy for classes, token accuracy and perplexity per position).
    metrics: Sequence[str | Metric] = ()
    # A validation split of the task's own (text: held-out text, not neighbouring windows);
    # None: carved from train with the study's split seed.
    val_images: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None
    # Standardise inputs per channel (dim 1) with the training split's statistics; None:
    # for 4-D float or uint8 inputs (images) only.
    standardize: bool | None = None
    # Applied to each training batch on the device, one draw per batch seen by every member.
    transform: BatchTransform | None = None
    # Streamed training data: an iterable of (inputs, targets) batches (a DataLoader, an
    # IterableDataset), iterated again when it ends, and the steps to train for.
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None
    steps: int | None = None
    ignore_index: int = -100  # targets per position with this value are not scored

    def __post_init__(self) -> None:
        streamed = self.batches is not None
        for name in ("train_images", "train_labels", "test_images", "test_labels"):
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor) and not (streamed and name.startswith("train")):
                raise LrsearchError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if self.num_classes is not None and (
            isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int)
        ):
            raise LrsearchError(f"num_classes must be an int or None, got {self.num_classes!r}")
        if not isinstance(self.models, Mapping) or not all(
            isinstance(name, str) and callable(factory) for name, factory in self.models.items()
        ):
            raise LrsearchError(
                f"models must map names (str) to functions that build a model, got {self.models!r}"
            )
        if not self.models:
            raise LrsearchError("a task must offer at least one model")
        self._check_loss()
        if streamed:
            if self.steps is None or isinstance(self.steps, bool) or self.steps < 1:
                raise LrsearchError(
                    f"a task with batches needs steps, an int >= 1, got {self.steps!r}"
                )
            if self.val_images is None:
                raise LrsearchError("a task with batches needs its own val_images and val_labels")
        elif self.steps is not None:
            raise LrsearchError("steps is the budget of streamed batches; give batches too")
        if (self.val_images is None) != (self.val_labels is None):
            raise LrsearchError("val_images and val_labels come together, or neither")
        if self.transform is not None and not callable(self.transform):
            raise LrsearchError(f"transform must be a function, got {self.transform!r}")
        splits = [("test", self.test_images, self.test_labels)]
        if self.train_images is not None and self.train_labels is not None:
            splits.insert(0, ("train", self.train_images, self.train_labels))
        if self.val_images is not None and self.val_labels is not None:
            splits.append(("val", self.val_images, self.val_labels))
        for split, inputs, targets in splits:
            self.check_split(split, inputs, targets)
        self.metric_table()  # names checked here, once

    def _check_loss(self) -> None:
        if callable(self.loss):
            return
        if self.loss not in LOSSES:
            raise LrsearchError(
                f"loss {self.loss!r} is not known; use {' or '.join(LOSSES)}, or a function "
                "(outputs, targets) -> per-example losses"
            )
        if self.loss == "cross_entropy" and (self.num_classes is None or self.num_classes < 2):
            raise LrsearchError(
                f"num_classes must be at least 2 for loss 'cross_entropy', got {self.num_classes}"
            )

    @property
    def per_position(self) -> bool:
        """Classes per position (a language model's targets [N, T]) rather than per example."""
        return self.loss == "cross_entropy" and self.test_labels.dim() > 1

    def check_split(self, split: str, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        """One split's inputs and targets against the test split's."""
        if len(inputs) == 0 or inputs.dim() < 2:
            raise LrsearchError(
                f"{split}_images must be a non-empty [N, ...] tensor, got shape "
                f"{tuple(inputs.shape)}"
            )
        reference = self.test_images
        if (inputs.dtype, inputs.shape[1:]) != (reference.dtype, reference.shape[1:]):
            raise LrsearchError(
                f"{split}_images must match the test images, {reference.dtype} of "
                f"[N, {_dims(reference)}]; got {inputs.dtype} of [N, {_dims(inputs)}]"
            )
        expected = self.test_labels
        if targets.shape[:1] != inputs.shape[:1] or targets.shape[1:] != expected.shape[1:]:
            raise LrsearchError(
                f"{split}_labels must have shape {(len(inputs), *expected.shape[1:])} for "
                f"{len(inputs)} inputs, got {tuple(targets.shape)}"
            )
        allowed = self.targets()
        if allowed is not None:
            allowed.check(f"{split}_labels", targets)
        if self.per_position and not (targets != self.ignore_index).any():
            raise LrsearchError(f"{split}_labels has no target that is not ignore_index")

    def targets(self) -> Targets | None:
        """What the targets may hold; None for a loss of the task's own, which alone knows."""
        if callable(self.loss):
            return None
        ignore_index = self.ignore_index if self.per_position else None
        return Targets(self.loss, self.num_classes or 0, ignore_index)

    def loss_function(self) -> PerExample:
        if callable(self.loss):
            return self.loss
        if self.loss == "mse":
            return _squared_error
        return _cross_entropy(self.ignore_index)

    def metric_table(self) -> dict[str, Metric]:
        """Every metric by name, "loss" first."""
        names: Sequence[str | Metric] = self.metrics or _usual_metrics(self)
        table = {"loss": _builtin_metric("loss", self.loss_function(), self.ignore_index)}
        for metric in names:
            if isinstance(metric, str):
                if metric not in BUILTIN_METRICS:
                    raise LrsearchError(
                        f"metric {metric!r} is not known; use {', '.join(BUILTIN_METRICS)} "
                        "or a lrsearch.tasks.Metric"
                    )
                metric = _builtin_metric(metric, self.loss_function(), self.ignore_index)
            elif not isinstance(metric, Metric):
                raise LrsearchError(
                    f"metrics must be names or lrsearch.tasks.Metric, got {metric!r}"
                )
            table[metric.name] = metric
        return table


def _usual_metrics(source: TaskSource) -> tuple[str, ...]:
    if source.loss == "cross_entropy":
        return ("token_accuracy", "perplexity") if source.per_position else ("accuracy",)
    return ("mse",) if source.loss == "mse" else ()


def _dims(tensor: torch.Tensor) -> str:
    return ", ".join(str(size) for size in tensor.shape[1:]) or "-"


@dataclass(frozen=True, eq=False)
class Task:
    """A task ready to train on: every split on the target device, loaded once per process.

    Cached and shared between trials, so treat every tensor as read-only. With streamed
    training data ``train_images``/``train_labels`` are empty and ``batches`` gives them.
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
    mean: torch.Tensor | None  # standardisation, when the task asked for it
    std: torch.Tensor | None
    num_classes: int | None
    loss: PerExample
    metrics: Mapping[str, Metric]
    # The loss of a trivial guess (uniform classes, the targets' mean), for divergence.
    loss_scale: float
    targets: Targets | None  # what the targets may hold; None: the task's own loss knows
    transform: BatchTransform | None = None
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]] | None = None
    steps: int | None = None

    @property
    def device(self) -> torch.device:
        return self.test_labels.device

    def normalize(self, inputs: torch.Tensor) -> torch.Tensor:
        """Standardise one batch if the task asked for it; per batch so that the stored data
        set never becomes float."""
        if self.mean is None or self.std is None:
            return inputs
        return (inputs.float() - self.mean) / self.std

    def prepare_batch(self, inputs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """What the models see of a training batch: transformed (one draw), then standardised."""
        if self.transform is not None:
            inputs = self.transform(inputs, generator)
        return self.normalize(inputs)

    def stream(self) -> Stream:
        """The streamed batches on the device, passes one after another, each checked."""
        return Stream(self)


class Stream:
    """A streamed task's batches on the device, passes one after another, each checked.

    A batch's shapes and dtypes are checked as it is read; its targets' values on the device,
    where waiting for the verdict would cost a host sync every step. A target the loss cannot
    take is replaced by 0 there, so that no class out of range reaches the loss (an
    IndexError, a CUDA assert) and no NaN a member, and ``verify``, called where training
    reads the device anyway, ends the run in one line naming the first such batch. The steps
    in between train on for results that are never recorded."""

    def __init__(self, task: Task) -> None:
        self.task = task
        self.read = 0  # batches read so far, over every pass
        # (batch number, its targets as read, whether any is outside) since the last verify.
        self.unverified: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        self.batches = self._passes()

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        return next(self.batches)

    def _passes(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        task, allowed = self.task, self.task.targets
        assert task.batches is not None
        while True:
            empty = True
            for batch in task.batches:
                empty = False
                self.read += 1
                inputs, targets = _checked_batch(task, batch, self.read)
                if allowed is not None:
                    outside = allowed.outside(targets)
                    self.unverified.append((self.read, targets, outside.any()))
                    targets = targets.masked_fill(outside, 0)
                yield inputs, targets
            if empty:  # a generator, say: it can be read only once
                raise LrsearchError(
                    f"task {task.name!r}: its batches ended before the {task.steps} steps and "
                    "yielded nothing when read again; give an iterable that can be read again "
                    "(a DataLoader, an IterableDataset, a list), not a generator"
                )

    def verify(self) -> None:
        """Refuse the first batch read since the last call with a target the loss cannot take
        (one host sync)."""
        unverified, self.unverified = self.unverified, []
        allowed = self.task.targets
        if not unverified or allowed is None:
            return
        flags = torch.stack([outside for _, _, outside in unverified]).tolist()
        for (number, targets, _), outside in zip(unverified, flags, strict=True):
            if outside:
                allowed.check(_targets_of(self.task, number), targets)


def _targets_of(task: Task, number: int) -> str:
    return f"task {task.name!r}: the targets of batch {number}"


def _checked_batch(task: Task, batch: Any, number: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Streamed batch ``number`` moved to the device, refused unless it is (inputs, targets)
    shaped like the validation split's examples, its targets of a dtype the loss takes."""
    where = f"task {task.name!r}: batch {number}"
    if not (isinstance(batch, Sequence) and len(batch) == 2) or not all(
        isinstance(part, torch.Tensor) for part in batch
    ):
        raise LrsearchError(
            f"{where} must be (inputs, targets) tensors, got {type(batch).__name__}"
        )
    inputs, targets = batch
    if task.targets is not None:
        task.targets.check_dtype(_targets_of(task, number), targets)
    reference = (task.val_images, task.val_labels)
    wanted = [(tensor.dtype, tuple(tensor.shape[1:])) for tensor in reference]
    got = [(tensor.dtype, tuple(tensor.shape[1:])) for tensor in (inputs, targets)]
    if got != wanted or len(inputs) != len(targets) or len(inputs) == 0:
        raise LrsearchError(
            f"{where} has inputs {inputs.dtype} {tuple(inputs.shape)} and targets "
            f"{targets.dtype} {tuple(targets.shape)}; expected [B, ...] like the validation "
            f"split's {wanted[0][0]} [N, {_dims(reference[0])}] and {wanted[1][0]} "
            f"[N, {_dims(reference[1])}]"
        )
    return inputs.to(task.device, non_blocking=True), targets.to(task.device, non_blocking=True)


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


def small_resnet() -> nn.Module:
    """A three-stage ResNet small enough for quick trials, for 3x32x32 inputs."""
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1, bias=False),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        BasicBlock(32, 32, stride=1),
        BasicBlock(32, 64, stride=2),
        BasicBlock(64, 128, stride=2),
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


# Builtin task name -> (torchvision data set class name, conversion of its train and test
# splits). torchvision is imported only to load one of these: a custom task does not pay for it
# (it was about half of a short custom-task run's wall time).
_BUILTINS: dict[str, tuple[str, Callable[[Any, Any], TaskSource]]] = {
    "fashion-mnist": ("FashionMNIST", _from_mnist_like),
    "mnist": ("MNIST", _from_mnist_like),
    "cifar10": ("CIFAR10", _from_cifar10),
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
        # torchvision's layout under the root, so that files placed flat are told where to go.
        layout = getattr(dataset_class, "base_folder", None) or (
            f"{dataset_class.__name__}/raw/train-images-idx3-ubyte"
        )
        raise LrsearchError(
            f"task {task!r}: no data set in {data_dir.resolve()} and {reason}; "
            f"pass --data-dir pointing to an existing copy (expected: <dir>/{layout})"
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
        import torchvision

        class_name, convert = _BUILTINS[task]
        dataset_class = getattr(torchvision.datasets, class_name)
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


def _channel_stats(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std per channel (dim 1) in float64, chunked so no float copy of the set is
    made; shaped to broadcast against a batch."""
    dims = [0, *range(2, inputs.dim())]
    total = torch.zeros(inputs.shape[1], dtype=torch.float64)
    total_sq = torch.zeros_like(total)
    for chunk in torch.split(inputs, _STATS_CHUNK):
        values = chunk.to(torch.float64)
        total += values.sum(dim=dims)
        total_sq += values.square().sum(dim=dims)
    count = inputs.numel() // inputs.shape[1]
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt()
    # Like scikit-learn's StandardScaler: a constant channel is only centered, not blown up.
    std = torch.where(std > 0, std, torch.ones_like(std))
    shape = (1, -1, *[1] * (inputs.dim() - 2))
    return mean.view(shape), std.view(shape)


def _standardizes(source: TaskSource, inputs: torch.Tensor) -> bool:
    if source.standardize is not None:
        return source.standardize
    return inputs.dim() == 4 and inputs.dtype in (torch.uint8, torch.float32)


def _loss_scale(source: TaskSource, targets: torch.Tensor) -> float:
    """The loss of a trivial guess: uniform over the classes, or the targets' mean (their
    variance); a task's own loss has none known, and only a non-finite loss is divergence."""
    if callable(source.loss):
        return math.inf
    if source.loss == "mse":
        variance = float(targets.double().var(dim=0, unbiased=False).mean())
        return variance if variance > 0 else 1.0
    return math.log(max(source.num_classes or 2, 2))


def _check_model(task: str, name: str, source: TaskSource, probe: Task) -> None:
    """Build the model once and run two training examples through it exactly as training
    feeds them (transformed, standardised or not), then the loss and every metric, so that a
    broken model factory, one made for other inputs, or outputs that do not fit the loss are
    one line before any trial rather than a failure in each."""
    where = f"task {task!r}: model {name!r}"
    with torch.random.fork_rng(devices=[]):  # building draws from the global generator
        try:
            model = source.models[name]()
        except (Exception, SystemExit) as error:
            raise LrsearchError(f"{where} {_raised(error)}") from error
    if not isinstance(model, nn.Module):
        raise LrsearchError(f"{where} returned {type(model).__name__}, expected a torch.nn.Module")
    examples = (probe.train_images, probe.train_labels)
    if len(examples[0]) == 0:  # streamed
        examples = (probe.val_images, probe.val_labels)
    raw, targets = examples[0][:2].cpu(), examples[1][:2].cpu()
    count = len(raw)
    cpu_probe = _on_device(probe, torch.device("cpu"))
    if source.transform is not None:
        try:
            changed = source.transform(raw, torch.Generator().manual_seed(0))
        except (Exception, SystemExit) as error:
            raise LrsearchError(f"task {task!r}: its transform {_raised(error)}") from error
        if not isinstance(changed, torch.Tensor) or changed.shape[:1] != raw.shape[:1]:
            shape = tuple(changed.shape) if isinstance(changed, torch.Tensor) else changed
            raise LrsearchError(
                f"task {task!r}: its transform must keep the batch size; it made "
                f"{tuple(raw.shape)} into {shape}"
            )
        raw = changed
    inputs = cpu_probe.normalize(raw)
    try:
        with torch.no_grad():
            outputs = model.eval()(inputs)
    except (Exception, SystemExit) as error:
        raise LrsearchError(
            f"{where} cannot take the task's inputs, {inputs.dtype} of shape "
            f"{tuple(inputs.shape[1:])} as training feeds them: {_raised(error)}"
        ) from error
    _check_outputs(where, source, outputs, targets)
    for metric in probe.metrics.values():
        try:
            figures = metric.per_example(outputs, targets)
        except (Exception, SystemExit) as error:
            raise LrsearchError(
                f"task {task!r}: metric {metric.name!r} {_raised(error)}"
            ) from error
        if not isinstance(figures, torch.Tensor) or tuple(figures.shape) != (count,):
            shape = tuple(figures.shape) if isinstance(figures, torch.Tensor) else figures
            raise LrsearchError(
                f"task {task!r}: {'loss' if metric.name == 'loss' else f'metric {metric.name!r}'}"
                f" returns {shape} for {count} examples; expected one figure per example, shape "
                f"({count},)"
            )


def _check_outputs(where: str, source: TaskSource, outputs: Any, targets: torch.Tensor) -> None:
    """The model's outputs against what the loss needs, said in the task's terms."""
    shape = tuple(outputs.shape) if isinstance(outputs, torch.Tensor) else None
    if callable(source.loss):
        if shape is None:
            raise LrsearchError(f"{where} returns {type(outputs).__name__}, expected a tensor")
        return  # the loss is checked with the metrics
    if source.loss == "mse":
        expected = tuple(targets.shape)
        what = "one output per target (the targets' shape)"
    else:
        # More outputs than classes train (the extra logits are never the target); fewer cannot.
        expected = (*targets.shape, source.num_classes or 0)
        what = "logits, one per class" + (" and position" if source.per_position else "")
        if shape is not None and shape[:-1] == expected[:-1] and shape[-1] >= expected[-1]:
            return
    if shape != expected:
        raise LrsearchError(
            f"{where} returns {shape or type(outputs).__name__} for {len(targets)} examples; "
            f"expected {what} "
            f"of shape {expected}"
        )


def _on_device(task: Task, device: torch.device) -> Task:
    """The standardisation of ``task`` for tensors on ``device``."""
    if task.mean is None or task.std is None:
        return task
    return dataclasses.replace(task, mean=task.mean.to(device), std=task.std.to(device))


def prepare_task(
    source: TaskSource,
    *,
    name: str,
    model: str | None,
    val_size: int | float,
    split_seed: int,
    device: torch.device,
) -> Task:
    """Carve the validation split from train, unless the task gives one, and move everything
    to the device.

    The carve is drawn on the CPU from its own generator, so it depends on ``split_seed``
    only: neither the device nor the global RNG state used for model init changes it.
    """
    model_name = next(iter(source.models)) if model is None else model
    if model_name not in source.models:
        raise LrsearchError(
            f"task {name!r} has no model {model_name!r}; choose one of {', '.join(source.models)}"
        )
    if source.val_images is not None and source.val_labels is not None:
        train_images, train_labels = source.train_images, source.train_labels
        val_images, val_labels = source.val_images, source.val_labels
    else:
        assert source.train_images is not None and source.train_labels is not None
        n = len(source.train_images)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
        n_val = _val_count(val_size, n)
        val_idx, train_idx = order[:n_val], order[n_val:]
        train_images, train_labels = source.train_images[train_idx], source.train_labels[train_idx]
        val_images, val_labels = source.train_images[val_idx], source.train_labels[val_idx]
    statistics_from = train_images if train_images is not None else val_images
    mean = std = None
    if _standardizes(source, statistics_from):
        mean, std = _channel_stats(statistics_from)
    task = Task(
        name=name,
        model_name=model_name,
        build_model=source.models[model_name],
        train_images=(val_images[:0] if train_images is None else train_images).to(device),
        train_labels=(val_labels[:0] if train_labels is None else train_labels).to(device),
        val_images=val_images.to(device),
        val_labels=val_labels.to(device),
        test_images=source.test_images.to(device),
        test_labels=source.test_labels.to(device),
        mean=None if mean is None else mean.to(device, torch.float32),
        std=None if std is None else std.to(device, torch.float32),
        num_classes=source.num_classes,
        loss=source.loss_function(),
        metrics=source.metric_table(),
        loss_scale=_loss_scale(source, train_labels if train_labels is not None else val_labels),
        targets=source.targets(),
        transform=source.transform,
        batches=source.batches,
        steps=source.steps,
    )
    _check_model(name, model_name, source, task)
    if task.batches is not None:
        _, targets = _checked_batch(task, _first(name, task.batches), 1)
        if task.targets is not None:
            task.targets.check(_targets_of(task, 1), targets)
    return task


def _first(name: str, batches: Iterable[Any]) -> Any:
    for batch in batches:
        return batch
    raise LrsearchError(f"task {name!r}: its batches yielded no batch")


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
