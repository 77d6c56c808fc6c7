"""One trial's training run: the whole loop on one screen, data already on the device.

The loop knows torch and schedules, not Optuna: it reports each epoch's
validation accuracy to a callback, and the study runner decides what to do
with it (report to a pruner, print progress). Model, optimizer and schedule
are values built here from arguments, nothing global, so several trials
could later share one pass over the data.

Speed comes from never leaving the device: the data set is uint8 tensors
loaded once per process, each epoch is a device ``randperm`` sliced into
batches, the divergence check reads one flag every ``check_every`` steps,
and evaluation runs in batches under ``inference_mode``. Convolutions run
channels_last; on GPUs with bf16 tensor cores the step runs in bf16 autocast
(on a CPU that is an option). On CUDA it may be compiled, the LR then living
in a tensor so that the schedule changing it every step does not trigger a
recompile.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from lrsearch.errors import LrsearchError
from lrsearch.schedules import Schedule
from lrsearch.tasks import Task

__all__ = [
    "TrainConfig",
    "TrainResult",
    "evaluate",
    "make_optimizer",
    "resolve_device",
    "steps_per_epoch",
    "train",
    "uses_bf16",
]

OptimizerName = Literal["sgd", "adam", "adamw"]
Report = Callable[[int, float], None]
LossHook = Callable[[torch.Tensor], None]


@dataclass(frozen=True)
class TrainConfig:
    """How every trial trains; only the schedule changes between trials."""

    epochs: int = 15
    batch_size: int = 128
    optimizer: OptimizerName = "sgd"
    momentum: float = 0.9  # SGD only
    nesterov: bool = False  # SGD only
    weight_decay: float = 0.0
    # Not larger: on a 2-core CPU 1024 evaluates 10,000 images in 0.17 s, 4096 in 0.30 s.
    eval_batch_size: int = 1024
    # A trial diverged when its loss is not finite or exceeds this many times
    # the loss of a uniform guess, ln(num_classes).
    divergence_factor: float = 10.0
    # Steps between reads of the device-side divergence flag (a host sync).
    check_every: int = 50
    # torch.compile the model and the optimizer step: pays on CUDA for runs long enough to
    # amortise the compile (tens of seconds), never for a few CPU epochs.
    compile: bool = False
    # bf16 autocast; None: on GPUs with bf16 tensor cores (Ampere on), float32 elsewhere. On a
    # CPU with AMX, bf16=True makes LeNet steps 8-12% faster but the quick study's small MLP 30%
    # slower (BENCHMARKS.md): it depends on the model, so on a CPU it is opted into.
    bf16: bool | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size", "check_every"):
            value = getattr(self, name)
            if value < 1:
                raise LrsearchError(f"training.{name}={value} is not allowed; it must be >= 1")
        if not 0.0 <= self.momentum < 1.0:
            raise LrsearchError(f"training.momentum={self.momentum} must be in [0, 1)")
        if self.weight_decay < 0:
            raise LrsearchError(f"training.weight_decay={self.weight_decay} must be >= 0")
        if self.divergence_factor <= 1:
            raise LrsearchError(f"training.divergence_factor={self.divergence_factor} must be > 1")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise LrsearchError("training.nesterov needs optimizer 'sgd' with momentum > 0")


@dataclass(frozen=True)
class TrainResult:
    val_accuracy: float
    test_accuracy: float
    epochs: int  # completed
    steps: int  # optimizer steps taken
    seconds: float
    diverged_step: int | None = None  # set when the loss blew up
    diverged_reason: str | None = None


def resolve_device(name: str) -> torch.device:
    """``auto`` is CUDA when present, else CPU; a named device must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise LrsearchError(
            f"--device {name!r} is not a device; use auto, cpu, cuda or cuda:N"
        ) from None
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0 or (device.index or 0) >= count:
            raise LrsearchError(
                f"--device {name!r} does not exist here; this machine has {count} CUDA device(s)"
            )
    elif device.type != "cpu":
        raise LrsearchError(f"--device {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    return device


def make_optimizer(
    params: Iterable[torch.nn.Parameter], lr: float | torch.Tensor, config: TrainConfig
) -> torch.optim.Optimizer:
    """A tensor ``lr`` is filled in place by schedulers, which a compiled step needs."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=lr,
            momentum=config.momentum,
            nesterov=config.nesterov,
            weight_decay=config.weight_decay,
        )
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)


def steps_per_epoch(task: Task, config: TrainConfig) -> int:
    """Full batches only: the last partial batch is dropped, so every step has one shape."""
    steps = len(task.train_labels) // config.batch_size
    if steps < 1:
        raise LrsearchError(
            f"training.batch_size={config.batch_size} is larger than the "
            f"{len(task.train_labels)} training examples"
        )
    return steps


def uses_bf16(bf16: bool | None, device: torch.device) -> bool:
    """Resolve ``TrainConfig.bf16``: ``None`` means bf16 on GPUs with bf16 tensor cores."""
    if bf16 is not None:
        return bf16
    # bf16 tensor cores arrived with Ampere (compute capability 8); older GPUs emulate bf16.
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8


def _autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager[object]:
    """bf16 keeps float32's range, so unlike float16 it needs no loss scaling."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


@torch.inference_mode()
def evaluate(
    model: torch.nn.Module,
    task: Task,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch_size: int,
    *,
    bf16: bool | None = None,
) -> float:
    """Accuracy in large batches, summed on the device: one host sync per call."""
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=labels.device)
    autocast_bf16 = uses_bf16(bf16, labels.device)
    for start in range(0, len(labels), batch_size):
        with _autocast(labels.device, autocast_bf16):
            logits = model(task.normalize(images[start : start + batch_size]))
        correct += (logits.argmax(dim=1) == labels[start : start + batch_size]).sum()
    model.train()
    return correct.item() / max(len(labels), 1)


def train(
    task: Task,
    schedule: Schedule,
    config: TrainConfig,
    *,
    seed: int,
    report: Report | None = None,
    on_loss: LossHook | None = None,
) -> TrainResult:
    """Train the task's model with ``schedule`` stepped every batch; return accuracies.

    Seeded end to end: ``torch.manual_seed(seed)`` before the model is built,
    and each epoch's order is ``torch.randperm`` from a device generator
    seeded with ``seed``, so the same seed gives the same run on the CPU.
    Divergence ends the run early with the step and reason recorded rather
    than raising: a diverged schedule is a result. ``on_loss`` receives each
    step's loss as a device tensor (reading it is the caller's host sync).
    """
    device = task.train_labels.device
    torch.manual_seed(seed)
    # NHWC convolutions: 16% faster LeNet steps on a 2-core CPU (BENCHMARKS.md), and the
    # layout bf16 tensor-core convolutions run in on CUDA.
    model = task.build_model().to(device).to(memory_format=torch.channels_last)
    lr = torch.tensor(schedule.lr) if config.compile else schedule.lr
    optimizer = make_optimizer(model.parameters(), lr, config)
    per_epoch = steps_per_epoch(task, config)
    scheduler = schedule.torch_scheduler(optimizer, config.epochs * per_epoch)
    forward: Callable[[torch.Tensor], torch.Tensor] = model
    optimizer_step: Callable[[], object] = optimizer.step  # as wrapped by the scheduler
    if config.compile:  # the training step only: evaluation, once an epoch, stays eager
        forward, optimizer_step = torch.compile(model), torch.compile(optimizer.step)
    bf16 = uses_bf16(config.bf16, device)
    shuffle = torch.Generator(device=device).manual_seed(seed)
    loss_limit = config.divergence_factor * math.log(max(task.num_classes, 2))
    worst_loss = torch.zeros((), device=device)  # torch.maximum keeps a NaN once seen
    started = time.perf_counter()
    step = 0
    for epoch in range(config.epochs):
        order = torch.randperm(len(task.train_labels), device=device, generator=shuffle)
        for batch in order[: per_epoch * config.batch_size].view(per_epoch, config.batch_size):
            # index_select, not images[batch]: 5 us instead of 33 us for 128 rows on a CPU.
            images = task.train_images.index_select(0, batch)
            labels = task.train_labels.index_select(0, batch)
            with _autocast(device, bf16):
                logits = forward(task.normalize(images))
            loss = F.cross_entropy(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer_step()
            scheduler.step()
            step += 1
            worst_loss = torch.maximum(worst_loss, loss.detach())
            if on_loss is not None:
                on_loss(loss.detach())
            if step % config.check_every == 0 and not worst_loss.item() < loss_limit:
                return _diverged(model, task, config, epoch, step, worst_loss, started)
        if not worst_loss.item() < loss_limit:
            return _diverged(model, task, config, epoch, step, worst_loss, started)
        val = _validate(model, task, config)
        if report is not None:
            report(epoch + 1, val)
    test = evaluate(
        model, task, task.test_images, task.test_labels, config.eval_batch_size, bf16=config.bf16
    )
    return TrainResult(val, test, config.epochs, step, time.perf_counter() - started)


def _validate(model: torch.nn.Module, task: Task, config: TrainConfig) -> float:
    return evaluate(
        model, task, task.val_images, task.val_labels, config.eval_batch_size, bf16=config.bf16
    )


def _diverged(
    model: torch.nn.Module,
    task: Task,
    config: TrainConfig,
    epoch: int,
    step: int,
    worst_loss: torch.Tensor,
    started: float,
) -> TrainResult:
    """``step`` is the first divergence check after the loss blew up; checks are
    ``check_every`` steps apart."""
    value = worst_loss.item()
    limit = config.divergence_factor * math.log(max(task.num_classes, 2))
    reason = (
        f"loss became {value}"
        if not math.isfinite(value)
        else f"loss reached {value:.4g} > limit {limit:.4g}"
    )
    return TrainResult(
        val_accuracy=_validate(model, task, config),
        test_accuracy=float("nan"),
        epochs=epoch,
        steps=step,
        seconds=time.perf_counter() - started,
        diverged_step=step,
        diverged_reason=reason,
    )
