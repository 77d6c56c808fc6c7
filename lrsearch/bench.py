"""``python -m lrsearch bench``: the classic training loop against lrsearch's, in one table.

Both train the same LeNet on the same synthetic Fashion-MNIST, written in the real IDX format
and read through torchvision, with the same batch size and epochs, in one process, alternating
run by run so that a busy machine slows both alike. The classic loop is reference article
004's, as written: a torchvision data set with ``ToTensor`` and ``Normalize``, a shuffling
``DataLoader``, an epoch-stepped ``MultiStepLR`` and ``loss.item()`` every batch.

A second table times populations of the shared models (lrsearch.models: the char GPT and the
ResNet on digits) step by step, at each population size in turn, round after round.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import io
import itertools
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils.data import DataLoader
from torchvision import transforms

from lrsearch.config import StudyConfig, TaskConfig
from lrsearch.errors import LrsearchError
from lrsearch.idx import write_mnist_like
from lrsearch.models import CharGPT, resnet_digits
from lrsearch.optim import MemberOptimizer
from lrsearch.schedules import Constant
from lrsearch.stacking import stack_models
from lrsearch.tasks import Task, lenet, load_task
from lrsearch.training import (
    EpochMetrics,
    Member,
    TrainConfig,
    resolve_device,
    train_population,
    uses_bf16,
)

__all__ = ["BenchConfig", "machine_busy", "main", "run"]

TASK = "fashion-mnist"
DEFAULT_EPOCHS = 15  # studies/fashion_mnist.toml
QUICK_TASK = "examples.custom_task:build"  # studies/quick.toml, run from the repository root
QUICK_BATCH = 32
POPULATIONS = (1, 2, 4, 8, 16)
# The shared models' workloads, as studies/char_gpt.toml and studies/digits_augment.toml
# train them: batches of 32, 64 characters of context, a vocabulary of about 96 characters.
MODEL_BATCH = 32
GPT_VOCAB = 96
GPT_BLOCK = 64
# Other work beyond half a core (1-minute load average) makes the figures unreliable.
BUSY_LOAD = 0.5


@dataclass(frozen=True)
class BenchConfig:
    epochs: int = 3
    batch_size: int = 128
    repeats: int = 1  # runs of each loop; the table shows the median epoch over all of them
    images: int = 60_000  # training images, as in Fashion-MNIST
    trials: int = 3  # trials of the study that measures Optuna's overhead
    trial_epochs: int = 1  # their length; 15 is the default study's, measured rather than scaled
    model_steps: int = 20  # timed steps of each shared model's population, per repeat
    device: str = "auto"

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, int) and value < 1:
                raise LrsearchError(f"bench --{field.name.replace('_', '-')} must be >= 1")

    @property
    def val_size(self) -> int:
        """The study's validation split, in Fashion-MNIST's proportion (10,000 of 60,000)."""
        return max(self.images // 6, 1)


@dataclass(frozen=True)
class Row:
    loop: str
    epoch_seconds: float  # median
    images: int  # trained per epoch
    peak_rss_mib: float  # the process's high-water mark once this loop has run
    peak_device_mib: float | None  # CUDA only


def classic_epochs(root: Path, config: BenchConfig, device: torch.device) -> list[float]:
    """Article 004's loop, timed per epoch: train, then evaluate the test set, as it does."""
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
    dataset = torchvision.datasets.FashionMNIST(
        root, train=True, download=False, transform=transform
    )
    test_set = torchvision.datasets.FashionMNIST(
        root, train=False, download=False, transform=transform
    )
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True)
    test_loader = DataLoader(test_set, batch_size=config.batch_size, shuffle=False)
    model = lenet().to(device)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[15, 30], gamma=0.5)
    seconds = []
    for _epoch in range(config.epochs):
        started = time.perf_counter()
        model.train()
        total_loss = 0.0
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            optimizer.zero_grad()
            loss = criterion(model(images), labels)
            loss.backward()
            optimizer.step()
            total_loss += loss.item()
        _classic_evaluate(model, test_loader, device)
        scheduler.step()
        seconds.append(time.perf_counter() - started)
    return seconds


def _classic_evaluate(model: nn.Module, loader: DataLoader[Any], device: torch.device) -> float:
    """Article 004's ``evaluate``: summed loss and correct count, one ``.item()`` per batch."""
    model.eval()
    test_loss, correct = 0.0, 0
    with torch.no_grad():
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            outputs = model(images)
            test_loss += nn.CrossEntropyLoss(reduction="sum")(outputs, labels).item()
            correct += int((outputs.argmax(dim=1) == labels).sum().item())
    model.train()
    return correct / len(loader.dataset)  # type: ignore[arg-type]


def bench_task(root: Path, config: BenchConfig, device: torch.device) -> Task:
    """The study's task, from the cache ``run_study`` reads, so its timing skips loading."""
    return load_task(
        TASK,
        model=None,
        data_dir=root,
        val_size=config.val_size,
        split_seed=0,
        device=device,
        download=False,
    )


def lrsearch_epochs(
    task: Task, config: BenchConfig, *, bf16: bool, members: int = 1, batch_size: int | None = None
) -> list[float]:
    """Real trials, a population of ``members``, timed per epoch and divided by ``members``:
    seconds per member-epoch. Each epoch also evaluates the validation split."""
    stamps = [time.perf_counter()]

    def stamp(_metrics: EpochMetrics) -> tuple[int, ...]:
        stamps.append(time.perf_counter())
        return ()

    training = TrainConfig(
        epochs=config.epochs, batch_size=batch_size or config.batch_size, bf16=bf16
    )
    # With momentum 0.9 SGD moves about lr / (1 - 0.9) per step: the classic loop's 0.3.
    population = [Member(Constant(lr=0.03), seed) for seed in range(members)]
    result = train_population(task, population, training, data_seed=0, on_epoch=stamp)
    diverged = [m.diverged_reason for m in result.members if m.diverged_step is not None]
    if diverged:  # a shortened run would time fewer epochs
        raise RuntimeError(f"the benchmark's trial diverged: {diverged[0]}")
    return [(end - start) / members for start, end in itertools.pairwise(stamps)]


def quick_task(device: torch.device) -> Task | None:
    """The quick study's task (scikit-learn's digits, a small MLP), where the working
    directory is the repository root; None elsewhere."""
    try:
        return load_task(
            QUICK_TASK,
            model=None,
            data_dir=Path("data"),
            val_size=0.2,
            split_seed=0,
            device=device,
            download=False,
        )
    except LrsearchError:
        return None


def optuna_overhead(root: Path, config: BenchConfig) -> tuple[float, float]:
    """Seconds per trial spent outside training in a default study, and their share of it.

    The study is the default one (TPE, a SQLite file, everything ``lrsearch run`` records) with
    ``trial_epochs``-epoch trials; each trial stores its own training time, so from the first
    trial's start to the last one's end the rest is sampler, storage and bookkeeping. Opening
    the storage is once per run and is left out; imports done on the first trial are not.
    """
    from lrsearch.runner import run_study  # Optuna's storage stack is only needed here

    storage = f"sqlite:///{root / 'bench.db'}"
    study = StudyConfig(
        name="bench",
        n_trials=config.trials,
        storage=storage,
        device=config.device,
        task=TaskConfig(name=TASK, data_dir=root, download=False, val_size=config.val_size),
        training=TrainConfig(epochs=config.trial_epochs, batch_size=config.batch_size),
    )
    run_study(study, out=io.StringIO(), artifact_dir=root / "artifacts")
    trials = optuna.load_study(study_name="bench", storage=storage).trials
    start, end = trials[0].datetime_start, trials[-1].datetime_complete
    assert start is not None and end is not None  # every trial has finished
    span = (end - start).total_seconds()
    trained: float = sum(trial.user_attrs["train_seconds"] for trial in trials)
    return (span - trained) / len(trials), (span - trained) / span


@dataclass(frozen=True)
class Workload:
    """A shared model's training step on random data of its study's shapes: the time of a
    step does not depend on the values."""

    name: str
    build: Callable[[], nn.Module]
    inputs: torch.Tensor
    targets: torch.Tensor  # class ids: one per example, or one per position
    training: TrainConfig


def model_workloads(device: torch.device) -> list[Workload]:
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randint(GPT_VOCAB, (MODEL_BATCH, GPT_BLOCK + 1), generator=generator)
    return [
        Workload(
            "char GPT",
            lambda: CharGPT(GPT_VOCAB, GPT_BLOCK),
            tokens[:, :-1].to(device),
            tokens[:, 1:].to(device),
            TrainConfig(optimizer="adamw", weight_decay=0.01),
        ),
        Workload(
            "ResNet digits",
            resnet_digits,
            torch.randn(MODEL_BATCH, 1, 8, 8, generator=generator).to(device),
            torch.randint(10, (MODEL_BATCH,), generator=generator).to(device),
            TrainConfig(optimizer="sgd", momentum=0.9),
        ),
    ]


def population_timer(workload: Workload, members: int) -> tuple[Callable[[int], float], str]:
    """A population's training step as ``train_population`` takes it (stacked forward,
    per-member cross-entropy, one backward, the member optimizer): a timer of ``n`` steps
    returning seconds per member-step, and the stacking path the population took."""
    device = workload.inputs.device
    models = []
    for seed in range(members):
        torch.manual_seed(seed)
        models.append(workload.build().to(device))
    stacked = stack_models(models, workload.inputs[:4])
    optimizer = MemberOptimizer(stacked.params, members, workload.training, stacked.matrices)
    lr = torch.full((members,), 1e-3, device=device)
    targets = workload.targets.expand(members, *workload.targets.shape).flatten()

    def step() -> None:
        logits = stacked.module(workload.inputs).flatten(0, -2).float()
        losses = F.cross_entropy(logits, targets, reduction="none").view(members, -1)
        optimizer.zero_grad()
        optimizer.scaled(losses.mean(dim=1)).sum().backward()  # type: ignore[no-untyped-call]
        optimizer.step(lr)

    def seconds(steps: int) -> float:
        _synchronize(device)
        started = time.perf_counter()
        for _ in range(steps):
            step()
        _synchronize(device)
        return (time.perf_counter() - started) / steps / members

    step()  # warm-up: first-call allocations and kernel choices
    return seconds, stacked.path


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def model_table(config: BenchConfig, device: torch.device) -> list[str]:
    """Milliseconds per member-step of each shared model at each population size, and the
    speedup against its population of one. Every size is timed once a round, in turn, for
    ``repeats`` rounds (A B A B): a busy machine slows them alike; the median is shown."""
    timers = {
        (workload.name, members): population_timer(workload, members)
        for workload in model_workloads(device)
        for members in POPULATIONS
    }
    seconds: dict[tuple[str, int], list[float]] = {key: [] for key in timers}
    for _ in range(config.repeats):
        for key, (timer, _path) in timers.items():
            seconds[key].append(timer(config.model_steps))
            print(f"{key[0]} population {key[1]}: {seconds[key][-1] * 1e3:.2f} ms", file=sys.stderr)
    cells = []
    for (name, members), (_timer, path) in timers.items():
        base = statistics.median(seconds[(name, 1)])
        median = statistics.median(seconds[(name, members)])
        cells.append(
            (f"{name} population {members}", path, f"{median * 1e3:.2f}", f"{base / median:.2f}x")
        )
    return _columns(("model", "path", "ms/member-step", "speedup"), cells)


def _peak_rss_mib() -> float:
    # ru_maxrss is KiB on Linux, bytes on macOS.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


def _dataset_bytes(task: Task) -> tuple[int, int]:
    """(bytes the task keeps on its device, bytes of its images as uint8): the memory target
    is at most twice the latter, which per-batch normalization keeps near 1x."""
    tensors = [getattr(task, f.name) for f in dataclasses.fields(task)]
    held = sum(t.nbytes for t in tensors if isinstance(t, torch.Tensor))
    images = (task.train_images, task.val_images, task.test_images)
    return held, sum(t.numel() for t in images)


def run(config: BenchConfig, command: str) -> str:
    """Run every measurement and return the report: the machine, then one table."""
    device = resolve_device(config.device)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="lrsearch-bench-") as tmp:
        root = Path(tmp)
        # The test set is as large as the carved validation split: both loops evaluate
        # the same number of held-out images every epoch.
        write_mnist_like(root, n_train=config.images, n_test=config.val_size)
        task = bench_task(root, config, device)
        # Train on all the images the classic loop sees; the carved validation split is
        # still evaluated every epoch, so lrsearch's epoch does more work, not less.
        full = dataclasses.replace(
            task,
            train_images=torch.cat([task.train_images, task.val_images]),
            train_labels=torch.cat([task.train_labels, task.val_labels]),
        )
        per_epoch = config.images // config.batch_size * config.batch_size
        # bf16 is the default on recent GPUs, an option on a CPU: both rows show what it changes.
        default = "bf16" if uses_bf16(None, device) else "fp32"
        fp32, bf16 = (f"lrsearch {p}{' (default)' * (p == default)}" for p in ("fp32", "bf16"))
        loops: dict[str, tuple[int, Callable[[], list[float]]]] = {
            "classic": (config.images, lambda: classic_epochs(root, config, device)),
            fp32: (per_epoch, lambda: lrsearch_epochs(full, config, bf16=False)),
            bf16: (per_epoch, lambda: lrsearch_epochs(full, config, bf16=True)),
        }
        # Populations train K members a pass; their rows are per member-epoch.
        for members in POPULATIONS[1:]:
            loops[f"lrsearch {default} population {members}"] = (
                per_epoch,
                functools.partial(
                    lrsearch_epochs, full, config, bf16=default == "bf16", members=members
                ),
            )
        digits = quick_task(device)
        if digits is not None:
            digits_images = len(digits.train_labels) // QUICK_BATCH * QUICK_BATCH
            for members in POPULATIONS:
                loops[f"quick MLP {default} population {members}"] = (
                    digits_images,
                    functools.partial(
                        lrsearch_epochs,
                        digits,
                        config,
                        bf16=default == "bf16",
                        members=members,
                        batch_size=QUICK_BATCH,
                    ),
                )
        seconds: dict[str, list[float]] = {loop: [] for loop in loops}
        peak_device: dict[str, float | None] = {}
        peak_rss: dict[str, float] = {}
        for _ in range(config.repeats):
            for loop, (_images, epochs) in loops.items():
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                seconds[loop] += epochs()
                # Progress on stderr: a full bench takes minutes, the table comes at the end.
                print(f"{loop}: {statistics.median(seconds[loop]):.3f} s", file=sys.stderr)
                if device.type == "cuda":
                    peak_device[loop] = torch.cuda.max_memory_allocated(device) / 2**20
                peak_rss[loop] = _peak_rss_mib()
        overhead, share = optuna_overhead(root, config)
        default_epoch = statistics.median(seconds[fp32 if default == "fp32" else bf16])
        held, uint8 = _dataset_bytes(task)
    table = [
        Row(loop, statistics.median(seconds[loop]), images, peak_rss[loop], peak_device.get(loop))
        for loop, (images, _epochs) in loops.items()
    ]
    load_after, threads = os.getloadavg()[0], torch.get_num_threads()
    return "\n".join(
        [
            f"command   {command}",
            f"machine   {_cpu_name()}, {_cores()} cores; device {_device_name(device)}",
            f"torch     {torch.__version__}, {threads} threads",
            f"load      1-minute load average {load_before:.2f} before, {load_after:.2f} after "
            f"(this bench adds about {threads})",
            *(
                [
                    "warning   the machine was busy with other work: the times, and the "
                    "speedups most, are not what it does idle; compare only rows of one run"
                ]
                if machine_busy(load_before, load_after, threads)
                else []
            ),
            f"workload  LeNet, {config.images} images, batch {config.batch_size}, "
            f"{config.epochs} epochs x {config.repeats} repeats; population rows: seconds per "
            "member-epoch (one model's epoch), their speedup against the classic LeNet epoch",
            "",
            *_format_table(table),
            "",
            f"Optuna + storage overhead: {overhead:.3f} s per trial, measured over "
            f"{config.trials} {config.trial_epochs}-epoch trials of a default study = {share:.2%} "
            "of them; "
            f"against a {DEFAULT_EPOCHS}-epoch trial of studies/fashion_mnist.toml at the "
            f"measured {default} epoch ({DEFAULT_EPOCHS} x {default_epoch:.2f} s): "
            f"{overhead / (overhead + DEFAULT_EPOCHS * default_epoch):.2%}",
            f"data set on the device: {held / 2**20:.1f} MiB = {held / uint8:.2f}x its uint8 "
            "images",
            "",
            f"shared models (lrsearch.models), batch {MODEL_BATCH}, random data, "
            f"{config.model_steps} steps x {config.repeats} rounds: milliseconds per "
            "member-step (one model's step), speedup against each model's population 1",
            *model_table(config, device),
        ]
    )


def machine_busy(load_before: float, load_after: float, threads: int) -> bool:
    """Other work held more than half a core, before the bench or during it (the average
    after it less the bench's own threads)."""
    return max(load_before, load_after - threads) > BUSY_LOAD


def _format_table(rows: list[Row]) -> list[str]:
    """Speedups against the classic LeNet loop; the quick MLP's against its own population 1."""
    quick = [r.epoch_seconds for r in rows if r.loop.startswith("quick MLP")]
    bases = {"": rows[0].epoch_seconds, "quick": quick[0] if quick else math.nan}
    header = ("loop", "epoch s", "images/s", "speedup", "peak RSS MiB", "peak device MiB")
    cells: list[tuple[str, ...]] = [
        (
            row.loop,
            f"{row.epoch_seconds:.3f}",
            f"{row.images / row.epoch_seconds:,.0f}",
            f"{bases['quick' if row.loop.startswith('quick') else ''] / row.epoch_seconds:.2f}x",
            f"{row.peak_rss_mib:,.0f}",
            "-" if row.peak_device_mib is None else f"{row.peak_device_mib:,.0f}",
        )
        for row in rows
    ]
    return _columns(header, cells)


def _columns(header: tuple[str, ...], cells: Sequence[tuple[str, ...]]) -> list[str]:
    """A text table: the first column left-aligned, the others right-aligned."""
    widths = [max(len(line[i]) for line in (header, *cells)) for i in range(len(header))]
    return [
        "  ".join(
            cell.rjust(width) if i else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        )
        for line in (header, *cells)
    ]


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def main(args: argparse.Namespace, command: str) -> int:
    config = BenchConfig(
        **{field.name: getattr(args, field.name) for field in dataclasses.fields(BenchConfig)}
    )
    print(run(config, command))
    return 0
