"""Training a population: K trials in lockstep on one device, sharing every batch.

A member is a (schedule, initialisation seed) pair. Every step all members see the same batch
(one device permutation per epoch, from the population's data seed), so two members differ
by their schedule and seed alone: the comparison between trials is paired. The members'
models run as one wide network (lrsearch.stacking) and one optimizer step updates them all,
each with its own learning rate from a ``[steps, K]`` table computed once and indexed on the
device. A single trial is a population of one; there is no second loop.

The loop knows torch and schedules, not Optuna: after each epoch it hands every member's
validation accuracy and losses to a callback, which may stop members (a pruner); the study
runner decides. Speed comes from never leaving the device: uint8 data loaded once per
process, index_select batches, divergence tracked per member on the device and read every
``check_every`` steps, evaluation in large batches under ``inference_mode``.

A member fails alone: when its loss blows up its learning rate becomes 0 at that very step,
so its NaN stays in its own rows, and the others train on exactly as without it.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from lrsearch.config import TrainConfig
from lrsearch.errors import LrsearchError
from lrsearch.optim import MemberOptimizer
from lrsearch.schedules import Schedule
from lrsearch.stacking import StackedModels, stack_models
from lrsearch.tasks import Task

__all__ = [
    "EpochMetrics",
    "Member",
    "PopulationResult",
    "TrainConfig",
    "TrainResult",
    "population_size",
    "resolve_device",
    "steps_per_epoch",
    "thread_count",
    "train",
    "train_population",
    "uses_bf16",
]

Report = Callable[[int, float], None]
LossHook = Callable[[torch.Tensor], None]


@dataclass(frozen=True)
class Member:
    """One trial's share of a population: its schedule and the seed of its initial weights."""

    schedule: Schedule
    seed: int


@dataclass(frozen=True)
class EpochMetrics:
    """Every member's figures after an epoch (a stopped or diverged member's are stale)."""

    epoch: int  # 1-based
    val_accuracy: tuple[float, ...]
    val_loss: tuple[float, ...]
    training: tuple[bool, ...]  # still training: neither stopped nor diverged


# Given an epoch's metrics, the members to stop (pruned); they keep their results so far.
OnEpoch = Callable[[EpochMetrics], Iterable[int]]


@dataclass(frozen=True)
class TrainResult:
    """One member's run."""

    val_accuracy: float
    test_accuracy: float  # nan unless the member trained to the end
    epochs: int  # completed
    steps: int  # optimizer steps taken
    seconds: float  # the population's training time
    diverged_step: int | None = None  # set when the loss blew up
    diverged_reason: str | None = None
    stopped_epoch: int | None = None  # set when the callback stopped it
    val_loss: float = math.nan
    val_correct: npt.NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, dtype=bool))
    test_correct: npt.NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, dtype=bool))
    epoch_val_accuracy: tuple[float, ...] = ()
    epoch_val_loss: tuple[float, ...] = ()
    epoch_train_loss: tuple[float, ...] = ()


@dataclass(frozen=True)
class PopulationResult:
    members: tuple[TrainResult, ...]
    path: str  # how the models ran together: stacked, vmap or loop (lrsearch.stacking)
    seconds: float


# Trials per population when the study says nothing, by device type: the K with the lowest
# time per member-epoch in `lrsearch bench` (BENCHMARKS.md). No GPU was lent to measure CUDA's;
# its value is the CPU's until one is.
POPULATION = {"cpu": 8, "cuda": 8}


def population_size(population: int | None, device: torch.device) -> int:
    return population if population is not None else POPULATION.get(device.type, 1)


def thread_count(threads: int | None, workers: int = 1) -> int:
    """CPU threads for each of ``workers`` processes: as asked, else the idle cores shared out.

    Idle, not all: OpenMP threads spinning against another job's core made a LeNet population
    1.9x slower with 2 threads than with 1 on a 2-core machine, while on an idle machine 2
    threads were 1.8x faster (README, "Threads"). The 1-minute load average at start counts
    the busy cores."""
    if threads is not None:
        return threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    busy = min(cores - 1, round(os.getloadavg()[0])) if hasattr(os, "getloadavg") else 0
    return max(1, (cores - busy) // workers)


def resolve_device(name: str, option: str = "--device") -> torch.device:
    """``auto`` is CUDA when present, else CPU; a named device must exist. ``option`` names
    where the device came from, so the error points at what to change."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise LrsearchError(
            f"{option} {name!r} is not a device; use auto, cpu, cuda or cuda:N"
        ) from None
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0 or (device.index or 0) >= count:
            raise LrsearchError(
                f"{option} {name!r} does not exist here; this machine has {count} CUDA device(s)"
            )
    elif device.type != "cpu":
        raise LrsearchError(f"{option} {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    return device


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


def _member_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``[K, B, classes]`` logits per example: ``[K, B]``."""
    members = logits.shape[0]
    losses = F.cross_entropy(logits.float().flatten(0, 1), labels.repeat(members), reduction="none")
    return losses.view(members, -1)


@torch.inference_mode()
def _evaluate(
    stacked: StackedModels,
    task: Task,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: TrainConfig,
    bf16: bool,
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.float64]]:
    """Each member's per-example correctness ``[K, N]`` and mean loss ``[K]``: one host sync.

    Batches shrink as the population grows, so the widest activations stay the size of one
    model's at ``eval_batch_size``."""
    stacked.module.eval()
    members = stacked.members
    batch = max(1, config.eval_batch_size // members)
    correct = torch.empty(members, len(labels), dtype=torch.bool, device=labels.device)
    loss = torch.zeros(members, device=labels.device)
    for start in range(0, len(labels), batch):
        chunk = labels[start : start + batch]
        with _autocast(labels.device, bf16):
            logits = stacked.module(task.normalize(images[start : start + batch]))
        correct[:, start : start + batch] = logits.argmax(dim=-1) == chunk
        loss += _member_losses(logits, chunk).sum(dim=1)
    stacked.module.train()
    return correct.cpu().numpy(), (loss / max(len(labels), 1)).double().cpu().numpy()


def _models(task: Task, members: Sequence[Member]) -> StackedModels:
    """Each member's model built from its own seed, as a lone trial would build it."""
    device = task.train_labels.device
    models = []
    for member in members:
        torch.manual_seed(member.seed)
        models.append(task.build_model().to(device))
    return stack_models(models, task.normalize(task.train_images[:4]))


def train_population(
    task: Task,
    members: Sequence[Member],
    config: TrainConfig,
    *,
    data_seed: int,
    on_epoch: OnEpoch | None = None,
    on_loss: LossHook | None = None,
) -> PopulationResult:
    """Train every member with its schedule stepped every batch; return each one's results.

    Seeded end to end: each member's model is built after ``torch.manual_seed(member.seed)``,
    and each epoch's order is ``torch.randperm`` from a device generator seeded with
    ``data_seed``, so a member trains exactly as it would alone with those seeds. Divergence
    freezes a member and records its step and reason rather than raising: a diverged
    schedule is a result. ``on_loss`` receives each step's ``[K]`` losses on the device.
    """
    if not members:
        raise LrsearchError("a population needs at least one member")
    device = task.train_labels.device
    count = len(members)
    stacked = _models(task, members)
    optimizer = MemberOptimizer(stacked.params, count, config)
    per_epoch = steps_per_epoch(task, config)
    total = config.epochs * per_epoch
    # Row t holds every member's LR at step t: one contiguous read a step, no host sync.
    lr_table = torch.from_numpy(np.stack([m.schedule.curve(total) for m in members], axis=1))
    lr_table = lr_table.to(device, torch.float32)
    forward: Callable[[torch.Tensor], torch.Tensor] = stacked.module
    if config.compile:  # the training step only: evaluation, once an epoch, stays eager
        forward = torch.compile(stacked.module)
    bf16 = uses_bf16(config.bf16, device)
    shuffle = torch.Generator(device=device).manual_seed(data_seed)
    limit = config.divergence_factor * math.log(max(task.num_classes, 2))
    training = torch.ones(count, device=device)  # 1: trains; 0: frozen (diverged or stopped)
    worst_loss = torch.zeros(count, device=device)  # torch.maximum keeps a NaN once seen
    track = _Track(count, limit)
    started = time.perf_counter()
    step = 0
    for epoch in range(config.epochs):
        order = torch.randperm(len(task.train_labels), device=device, generator=shuffle)
        loss_sum = torch.zeros(count, device=device)
        for batch in order[: per_epoch * config.batch_size].view(per_epoch, config.batch_size):
            # index_select, not images[batch]: 5 us instead of 33 us for 128 rows on a CPU.
            images = task.train_images.index_select(0, batch)
            labels = task.train_labels.index_select(0, batch)
            with _autocast(device, bf16):
                logits = forward(task.normalize(images))
            losses = _member_losses(logits, labels).mean(dim=1)
            optimizer.zero_grad()
            losses.sum().backward()  # type: ignore[no-untyped-call]
            optimizer.step(lr_table[step] * training)
            step += 1
            losses = losses.detach()
            worst_loss = torch.maximum(worst_loss, losses)
            training = training * (losses < limit)  # frozen from the step it blew up
            loss_sum += losses
            if on_loss is not None:
                on_loss(losses)
            if step % config.check_every == 0 and not track.check(training, worst_loss, step):
                break
        if not track.check(training, worst_loss, step):
            break
        correct, val_loss = _evaluate(stacked, task, task.val_images, task.val_labels, config, bf16)
        track.epoch_done(epoch + 1, correct, val_loss, (loss_sum / per_epoch).tolist())
        if on_epoch is not None:
            for index in on_epoch(track.metrics()):
                track.stop(index)
                training[index] = 0.0
        if not track.any_training():
            break
    if track.evaluated_at != step:
        track.final_val(*_evaluate(stacked, task, task.val_images, task.val_labels, config, bf16))
    test_correct, _ = _evaluate(stacked, task, task.test_images, task.test_labels, config, bf16)
    return PopulationResult(
        track.results(test_correct, config.epochs, time.perf_counter() - started),
        stacked.path,
        time.perf_counter() - started,
    )


class _Track:
    """The host's record of each member: its figures so far and why it ended, if it did."""

    def __init__(self, count: int, limit: float) -> None:
        self.count, self.limit = count, limit
        self.step = 0  # at the last check
        self.evaluated_at = -1  # the step of the last validation
        self.diverged_step: list[int | None] = [None] * count
        self.diverged_reason: list[str | None] = [None] * count
        self.stopped_epoch: list[int | None] = [None] * count
        self.steps = [0] * count
        self.epochs = [0] * count
        self.val_accuracy: list[list[float]] = [[] for _ in range(count)]
        self.val_loss: list[list[float]] = [[] for _ in range(count)]
        self.train_loss: list[list[float]] = [[] for _ in range(count)]
        self.val_correct = np.zeros((count, 0), dtype=bool)
        self.last_val_loss = np.full(count, math.nan)

    def training(self, index: int) -> bool:
        return self.diverged_step[index] is None and self.stopped_epoch[index] is None

    def any_training(self) -> bool:
        return any(self.training(k) for k in range(self.count))

    def check(self, training: torch.Tensor, worst_loss: torch.Tensor, step: int) -> bool:
        """Record the members frozen on the device since the last check (one host sync);
        False once no member trains."""
        flags, worst = torch.stack([training, worst_loss]).tolist()
        self.step = step
        for k in range(self.count):
            if self.training(k):
                self.steps[k] = step
                if not flags[k]:
                    self.diverged_step[k] = step
                    self.diverged_reason[k] = (
                        f"loss became {worst[k]}"
                        if not math.isfinite(worst[k])
                        else f"loss reached {worst[k]:.4g} > limit {self.limit:.4g}"
                    )
        return self.any_training()

    def epoch_done(
        self,
        epoch: int,
        correct: npt.NDArray[np.bool_],
        val_loss: npt.NDArray[np.float64],
        train_loss: list[float],
    ) -> None:
        self.final_val(correct, val_loss)
        for k in range(self.count):
            if self.training(k):
                self.epochs[k] = epoch
                self.val_accuracy[k].append(float(correct[k].mean()))
                self.val_loss[k].append(float(val_loss[k]))
                self.train_loss[k].append(train_loss[k])

    def final_val(self, correct: npt.NDArray[np.bool_], val_loss: npt.NDArray[np.float64]) -> None:
        self.val_correct, self.last_val_loss, self.evaluated_at = correct, val_loss, self.step

    def stop(self, index: int) -> None:
        if self.training(index):
            self.stopped_epoch[index] = self.epochs[index]

    def metrics(self) -> EpochMetrics:
        return EpochMetrics(
            epoch=max(self.epochs),
            val_accuracy=tuple(float(a) for a in self.val_correct.mean(axis=1)),
            val_loss=tuple(float(v) for v in self.last_val_loss),
            training=tuple(self.training(k) for k in range(self.count)),
        )

    def results(
        self, test_correct: npt.NDArray[np.bool_], epochs: int, seconds: float
    ) -> tuple[TrainResult, ...]:
        return tuple(
            TrainResult(
                val_accuracy=float(self.val_correct[k].mean()),
                test_accuracy=float(test_correct[k].mean()) if self.training(k) else math.nan,
                epochs=self.epochs[k],
                steps=self.steps[k],
                seconds=seconds,
                diverged_step=self.diverged_step[k],
                diverged_reason=self.diverged_reason[k],
                stopped_epoch=self.stopped_epoch[k],
                val_loss=float(self.last_val_loss[k]),
                val_correct=self.val_correct[k],
                test_correct=test_correct[k],
                epoch_val_accuracy=tuple(self.val_accuracy[k]),
                epoch_val_loss=tuple(self.val_loss[k]),
                epoch_train_loss=tuple(self.train_loss[k]),
            )
            for k in range(self.count)
        )


def train(
    task: Task,
    schedule: Schedule,
    config: TrainConfig,
    *,
    seed: int,
    report: Report | None = None,
    on_loss: LossHook | None = None,
) -> TrainResult:
    """One trial alone: a population of one, initialised and shuffled from ``seed``.

    ``report(epoch, val_accuracy)`` is called after each epoch and may raise to end the run
    (a pruner); ``on_loss`` receives each step's loss as a device tensor."""

    def on_epoch(metrics: EpochMetrics) -> tuple[int, ...]:
        if report is not None:
            report(metrics.epoch, metrics.val_accuracy[0])
        return ()

    result = train_population(
        task,
        [Member(schedule, seed)],
        config,
        data_seed=seed,
        on_epoch=on_epoch,
        on_loss=None if on_loss is None else (lambda losses: on_loss(losses[0])),
    )
    return result.members[0]
