"""Training a population: K trials in lockstep on one device, sharing every batch.

A member is a (schedule, initialisation seed) pair. Every step all members see the same batch
(one device permutation per epoch from the population's data seed, or one batch read from a
streamed task), transformed once if the task augments, so two members differ by their schedule
and seed alone: the comparison between trials is paired. Each member's model is built from its
own seed with the global generator forked, and the batch order and transform draw from
generators of their own, so a member trains as it would alone at any population size. The
members' models run as one wide network (lrsearch.stacking) and one optimizer step updates
them all, each with its own learning rate from a ``[steps, K]`` table computed once and
indexed on the device. A single trial is a population of one; there is no second loop.

The loop knows torch, schedules and the task protocol (lrsearch.tasks), not Optuna nor
classification: the task gives the loss and the per-example figures of its metrics. After each
epoch it hands every member's validation metrics to a callback, which may stop members (a
pruner); the study runner decides. Speed comes from never leaving the device: uint8 data
loaded once per process, index_select batches, divergence tracked per member on the device and
read every ``check_every`` steps, evaluation in large batches under ``inference_mode``.

A member fails alone: when its loss blows up its learning rate becomes 0 at that very step,
so its NaN stays in its own rows, and the others train on exactly as without it.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch

from lrsearch.config import TrainConfig
from lrsearch.errors import LrsearchError
from lrsearch.optim import MemberOptimizer
from lrsearch.schedules import Schedule
from lrsearch.stacking import StackedModels, stack_models
from lrsearch.tasks import PerExample, Stream, Task

__all__ = [
    "PRECISION_NAMES",
    "EpochMetrics",
    "Member",
    "PopulationResult",
    "TrainConfig",
    "TrainResult",
    "autocast_dtype",
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
    val: Mapping[str, tuple[float, ...]]  # metric name -> one value per member
    training: tuple[bool, ...]  # still training: neither stopped nor diverged


# Given an epoch's metrics, the members to stop (pruned); they keep their results so far.
OnEpoch = Callable[[EpochMetrics], Iterable[int]]
Figures = Mapping[str, npt.NDArray[np.float64]]  # metric name -> per-example figures


@dataclass(frozen=True)
class TrainResult:
    """One member's run: each metric's value and per-example figures on val and test."""

    val: Mapping[str, float]
    test: Mapping[str, float]  # nan unless the member trained to the end
    epochs: int  # completed
    steps: int  # optimizer steps taken
    seconds: float  # the population's training time
    diverged_step: int | None = None  # set when the loss blew up
    diverged_reason: str | None = None
    stopped_epoch: int | None = None  # set when the callback stopped it
    val_figures: Figures = field(default_factory=dict)
    test_figures: Figures = field(default_factory=dict)
    epoch_val: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    epoch_train_loss: tuple[float, ...] = ()

    # A classification task's figures under the names its trials have always recorded.
    @property
    def val_accuracy(self) -> float:
        return self.val.get("accuracy", math.nan)

    @property
    def test_accuracy(self) -> float:
        return self.test.get("accuracy", math.nan)

    @property
    def val_loss(self) -> float:
        return self.val["loss"]

    @property
    def val_correct(self) -> npt.NDArray[np.bool_]:
        return self.val_figures.get("accuracy", np.zeros(0)).astype(bool)

    @property
    def test_correct(self) -> npt.NDArray[np.bool_]:
        return self.test_figures.get("accuracy", np.zeros(0)).astype(bool)

    @property
    def epoch_val_accuracy(self) -> tuple[float, ...]:
        return self.epoch_val.get("accuracy", ())

    @property
    def epoch_val_loss(self) -> tuple[float, ...]:
        return self.epoch_val.get("loss", ())


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
    """Optimizer steps per evaluation, of ``accumulate`` batches each. In memory, full batches
    only: the rest of the epoch is dropped, so every step has one shape. Streamed, the task's
    step budget (optimizer steps) shared out over ``config.epochs`` evaluations."""
    if task.steps is not None:
        if task.steps < config.epochs:
            raise LrsearchError(
                f"task {task.name!r} streams {task.steps} steps, fewer than "
                f"training.epochs={config.epochs} evaluations; lower the epochs"
            )
        return task.steps // config.epochs
    steps = len(task.train_labels) // (config.batch_size * config.accumulate)
    if steps < 1:
        accumulate = f" x training.accumulate={config.accumulate}" * (config.accumulate > 1)
        raise LrsearchError(
            f"training.batch_size={config.batch_size}{accumulate} is larger than the "
            f"{len(task.train_labels)} training examples"
        )
    return steps


def uses_bf16(bf16: bool | None, device: torch.device) -> bool:
    """Resolve ``TrainConfig.bf16``: ``None`` means bf16 on GPUs with bf16 tensor cores."""
    if bf16 is not None:
        return bf16
    # bf16 tensor cores arrived with Ampere (compute capability 8); older GPUs emulate bf16.
    return device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8


PRECISION_NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def autocast_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    """The autocast precision, None for float32. float16 needs its loss scaler, which only
    pays on CUDA's float16 tensor cores; bf16 keeps float32's range and needs none."""
    if config.fp16:
        if device.type != "cuda":
            raise LrsearchError(
                f"training.fp16 needs a CUDA device, this run is on {device.type}; "
                "leave it out, or set training.bf16 = true"
            )
        return torch.float16
    return torch.bfloat16 if uses_bf16(config.bf16, device) else None


def _autocast(
    device: torch.device, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager[object]:
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def _per_member(figure: PerExample, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``figure`` of ``[K, B, ...]`` outputs per member and example: ``[K, B]``."""
    members = outputs.shape[0]
    shared = targets.expand(members, *targets.shape).flatten(0, 1)
    return figure(outputs.flatten(0, 1), shared).view(members, -1)


@torch.inference_mode()
def _evaluate(
    stacked: StackedModels,
    task: Task,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    config: TrainConfig,
    amp: torch.dtype | None,  # the autocast precision, None for float32
) -> dict[str, npt.NDArray[np.float64]]:
    """Each member's per-example figures ``[K, N]`` for every metric: one host sync.

    Batches shrink as the population grows, so the widest activations stay the size of one
    model's at ``eval_batch_size``."""
    stacked.module.eval()
    members = stacked.members
    batch = max(1, config.eval_batch_size // members)
    figures = {
        name: torch.empty(members, len(targets), device=targets.device) for name in task.metrics
    }
    for start in range(0, len(targets), batch):
        chunk = targets[start : start + batch]
        with _autocast(targets.device, amp):
            outputs = stacked.module(task.normalize(inputs[start : start + batch]))
        for name, metric in task.metrics.items():
            figures[name][:, start : start + batch] = _per_member(
                metric.per_example, outputs, chunk
            )
    stacked.module.train()
    together = torch.stack(list(figures.values())).double().cpu().numpy()
    return dict(zip(figures, together, strict=True))


def _models(task: Task, members: Sequence[Member]) -> StackedModels:
    """Each member's model built from its own seed, as a lone trial would build it.

    The global generator is forked around the building (stacking draws from it too, in
    proportion to K), so what a stochastic model draws later does not depend on K."""
    models = []
    with torch.random.fork_rng(devices=[task.device] if task.device.type == "cuda" else []):
        for member in members:
            torch.manual_seed(member.seed)
            models.append(task.build_model().to(task.device))
        probe = task.val_images[:4]
        return stack_models(models, task.normalize(probe), [member.seed for member in members])


def _shuffled(
    task: Task, config: TrainConfig, per_epoch: int, shuffle: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The training batches of the data in memory, every epoch's (``per_epoch`` optimizer
    steps of ``accumulate`` batches): a device permutation per epoch."""
    images, labels = task.train_images, task.train_labels
    batches = per_epoch * config.accumulate
    while True:
        order = torch.randperm(len(labels), device=labels.device, generator=shuffle)
        for batch in order[: batches * config.batch_size].view(batches, config.batch_size):
            # index_select, not images[batch]: 5 us instead of 33 us for 128 rows on a CPU.
            yield images.index_select(0, batch), labels.index_select(0, batch)


def _seed(data_seed: int, stream: int) -> int:
    """A seed of its own for each use of the data seed (transform, the global generator)."""
    return int(np.random.SeedSequence([data_seed, stream]).generate_state(1)[0])


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
    each epoch's order is ``torch.randperm`` from a device generator seeded with
    ``data_seed``, and the task's transform draws from another, so a member trains exactly as
    it would alone with those seeds. Divergence freezes a member and records its step and
    reason rather than raising: a diverged schedule is a result. ``on_loss`` receives each
    step's ``[K]`` losses on the device.
    """
    if not members:
        raise LrsearchError("a population needs at least one member")
    device = task.device
    count = len(members)
    stacked = _models(task, members)
    optimizer = MemberOptimizer(stacked.params, count, config, stacked.matrices)
    per_epoch = steps_per_epoch(task, config)
    total = config.epochs * per_epoch
    # Row t holds every member's LR at step t: one contiguous read a step, no host sync.
    lr_table = torch.from_numpy(np.stack([m.schedule.curve(total) for m in members], axis=1))
    lr_table = lr_table.to(device, torch.float32)
    forward: Callable[[torch.Tensor], torch.Tensor] = stacked.module
    if config.compile:  # the training step only: evaluation, once an epoch, stays eager
        forward = torch.compile(stacked.module)
    amp = autocast_dtype(config, device)
    stream = task.stream() if task.batches is not None else None
    shuffle = torch.Generator(device).manual_seed(data_seed)
    batches = stream if stream is not None else _shuffled(task, config, per_epoch, shuffle)
    augment = torch.Generator(device).manual_seed(_seed(data_seed, 1))
    # What a model draws from the global generator while training (anything random but
    # nn.Dropout, which stacking gives each member's own generator) starts from the data
    # seed: the same at any K, and on a resumed run as on the first.
    torch.manual_seed(_seed(data_seed, 2))
    limit = config.divergence_factor * task.loss_scale
    training = torch.ones(count, device=device)  # 1: trains; 0: frozen (diverged or stopped)
    worst_loss = torch.zeros(count, device=device)  # torch.maximum keeps a NaN once seen
    track = _Track(count, limit, stream)
    started = time.perf_counter()
    step = 0
    for epoch in range(config.epochs):
        loss_sum = torch.zeros(count, device=device)
        for _ in range(per_epoch):
            optimizer.zero_grad()
            losses = torch.zeros(count, device=device)
            # Gradients summed over the micro-batches of one optimizer step.
            for inputs, targets in itertools.islice(batches, config.accumulate):
                with _autocast(device, amp):
                    outputs = forward(task.prepare_batch(inputs, augment))
                micro = _per_member(task.loss, outputs, targets).mean(dim=1) / config.accumulate
                optimizer.scaled(micro).sum().backward()  # type: ignore[no-untyped-call]
                losses += micro.detach()
            optimizer.step(lr_table[step] * training)
            step += 1
            worst_loss = torch.maximum(worst_loss, losses)
            training = training * (losses < limit)  # frozen from the step it blew up
            loss_sum += losses
            if on_loss is not None:
                on_loss(losses)
            if step % config.check_every == 0 and not track.check(training, worst_loss, step):
                break
        if not track.check(training, worst_loss, step):
            break
        optimizer.eval()  # schedule-free evaluates its averaged weights; others: no-op
        figures = _evaluate(stacked, task, task.val_images, task.val_labels, config, amp)
        optimizer.train()
        track.epoch_done(
            epoch + 1, _values(task, figures), figures, (loss_sum / per_epoch).tolist()
        )
        if on_epoch is not None:
            for index in on_epoch(track.metrics()):
                track.stop(index)
                training[index] = 0.0
        if not track.any_training():
            break
    optimizer.eval()
    if track.evaluated_at != step:
        figures = _evaluate(stacked, task, task.val_images, task.val_labels, config, amp)
        track.final_val(_values(task, figures), figures)
    test = _evaluate(stacked, task, task.test_images, task.test_labels, config, amp)
    return PopulationResult(
        track.results(_values(task, test), test, config.epochs, time.perf_counter() - started),
        stacked.path,
        time.perf_counter() - started,
    )


def _values(task: Task, figures: Figures) -> dict[str, list[float]]:
    """Each metric's value per member from its per-example figures."""
    return {
        name: [metric.value(float(row.mean())) for row in figures[name]]
        for name, metric in task.metrics.items()
    }


class _Track:
    """The host's record of each member: its figures so far and why it ended, if it did."""

    def __init__(self, count: int, limit: float, stream: Stream | None) -> None:
        self.count, self.limit, self.stream = count, limit, stream
        self.step = 0  # at the last check
        self.evaluated_at = -1  # the step of the last validation
        self.diverged_step: list[int | None] = [None] * count
        self.diverged_reason: list[str | None] = [None] * count
        self.stopped_epoch: list[int | None] = [None] * count
        self.steps = [0] * count
        self.epochs = [0] * count
        self.epoch_val: list[dict[str, list[float]]] = [{} for _ in range(count)]
        self.train_loss: list[list[float]] = [[] for _ in range(count)]
        self.values: dict[str, list[float]] = {}
        self.figures: Figures = {}

    def training(self, index: int) -> bool:
        return self.diverged_step[index] is None and self.stopped_epoch[index] is None

    def any_training(self) -> bool:
        return any(self.training(k) for k in range(self.count))

    def check(self, training: torch.Tensor, worst_loss: torch.Tensor, step: int) -> bool:
        """Record the members frozen on the device since the last check (one host sync);
        False once no member trains. A streamed batch read since with a target the loss
        cannot take ends the run first, in one line: the members' figures are void."""
        if self.stream is not None:
            self.stream.verify()
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
        values: dict[str, list[float]],
        figures: Figures,
        train_loss: list[float],
    ) -> None:
        self.final_val(values, figures)
        for k in range(self.count):
            if self.training(k):
                self.epochs[k] = epoch
                for name, per_member in values.items():
                    self.epoch_val[k].setdefault(name, []).append(per_member[k])
                self.train_loss[k].append(train_loss[k])

    def final_val(self, values: dict[str, list[float]], figures: Figures) -> None:
        self.values, self.figures, self.evaluated_at = values, figures, self.step

    def stop(self, index: int) -> None:
        if self.training(index):
            self.stopped_epoch[index] = self.epochs[index]

    def metrics(self) -> EpochMetrics:
        return EpochMetrics(
            epoch=max(self.epochs),
            val={name: tuple(per_member) for name, per_member in self.values.items()},
            training=tuple(self.training(k) for k in range(self.count)),
        )

    def results(
        self, test: dict[str, list[float]], test_figures: Figures, epochs: int, seconds: float
    ) -> tuple[TrainResult, ...]:
        return tuple(
            TrainResult(
                val={name: per_member[k] for name, per_member in self.values.items()},
                test={
                    name: per_member[k] if self.training(k) else math.nan
                    for name, per_member in test.items()
                },
                epochs=self.epochs[k],
                steps=self.steps[k],
                seconds=seconds,
                diverged_step=self.diverged_step[k],
                diverged_reason=self.diverged_reason[k],
                stopped_epoch=self.stopped_epoch[k],
                val_figures={name: rows[k] for name, rows in self.figures.items()},
                test_figures={name: rows[k] for name, rows in test_figures.items()},
                epoch_val={name: tuple(v) for name, v in self.epoch_val[k].items()},
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
    metric: str = "accuracy",
) -> TrainResult:
    """One trial alone: a population of one, initialised and shuffled from ``seed``.

    ``report(epoch, value)`` is called after each epoch with the validation ``metric`` and may
    raise to end the run (a pruner); ``on_loss`` receives each step's loss as a device tensor."""

    def on_epoch(metrics: EpochMetrics) -> tuple[int, ...]:
        if report is not None:
            report(metrics.epoch, metrics.val[metric][0])
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
