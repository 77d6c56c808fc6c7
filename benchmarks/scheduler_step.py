"""Microseconds per ``scheduler.step()``: ScheduleLR against LambdaLR with a hand-written lambda.

A scheduler steps once per optimizer step, so it must cost nothing next to
the step itself. ScheduleLR evaluates the whole run once, vectorised, when it is
built (not timed here) and then reads one factor per step; LambdaLR calls Python
once per parameter group per step. Run from the repository root::

    python benchmarks/scheduler_step.py
"""

from __future__ import annotations

import math
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from lrsearch.schedules import Cosine, CosineRestarts, Schedule
from lrsearch.torch_scheduler import ScheduleLR

STEPS = 20_000  # scheduler steps per timed run (also the schedule's T)
REPEATS = 7  # timed runs; the median is reported
LR, MIN_LR = 0.1, 1e-4
WARMUP = 0.05  # fraction of STEPS
FIRST_CYCLE = 625  # steps; cycles double: 625, 1250, 2500, ...


def cosine_factor(t: int) -> float:
    """The LambdaLR twin of ``COSINE``: linear warmup from MIN_LR, then a half cosine."""
    warm = WARMUP * STEPS
    if t < warm:
        return (MIN_LR + (LR - MIN_LR) * t / warm) / LR
    u = min((t - warm) / (STEPS - warm), 1.0)
    return (MIN_LR + (LR - MIN_LR) * (1 + math.cos(math.pi * u)) / 2) / LR


def restarts_factor(t: int) -> float:
    """The LambdaLR twin of ``RESTARTS``: SGDR with doubling cycles (log2 is exact here)."""
    k = math.floor(math.log2(1 + t / FIRST_CYCLE))
    frac = (t - FIRST_CYCLE * (2**k - 1)) / (FIRST_CYCLE * 2**k)
    return (MIN_LR + (LR - MIN_LR) * (1 + math.cos(math.pi * frac)) / 2) / LR


CASES: list[tuple[str, Schedule, Callable[[int], float]]] = [
    ("cosine + warmup", Cosine(lr=LR, min_lr=MIN_LR, warmup=WARMUP), cosine_factor),
    (
        "cosine_restarts",
        CosineRestarts(lr=LR, min_lr=MIN_LR, first_cycle=FIRST_CYCLE / STEPS, multiplier=2.0),
        restarts_factor,
    ),
]


def make_optimizer(groups: int) -> torch.optim.SGD:
    params = [
        {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": LR / (i + 1)} for i in range(groups)
    ]
    return torch.optim.SGD(params, lr=LR, momentum=0.9)


def us_per_step(make: Callable[[torch.optim.Optimizer], LRScheduler], groups: int) -> float:
    runs = []
    for _ in range(REPEATS):
        optimizer = make_optimizer(groups)
        scheduler = make(optimizer)
        optimizer.step()  # else PyTorch warns that the scheduler stepped first
        start = time.perf_counter()
        for _ in range(STEPS):
            scheduler.step()
        runs.append((time.perf_counter() - start) / STEPS * 1e6)
    return statistics.median(runs)


def main() -> None:
    print(f"torch {torch.__version__}, numpy {np.__version__}, Python {platform.python_version()}")
    print(f"{platform.platform()}, {platform.processor() or platform.machine()}")
    print(f"median of {REPEATS} runs of {STEPS:,} steps, SGD with momentum, CPU\n")
    print(f"{'schedule':<17} {'groups':>6} {'ScheduleLR us':>14} {'LambdaLR us':>12} {'ratio':>6}")
    for name, schedule, factor in CASES:
        twin = np.array([factor(t) for t in range(STEPS + 1)])
        np.testing.assert_allclose(twin, schedule.factor(np.arange(STEPS + 1), STEPS), rtol=1e-9)
        for groups in (1, 4):
            ours = us_per_step(partial(ScheduleLR, schedule=schedule, total_steps=STEPS), groups)
            theirs = us_per_step(partial(LambdaLR, lr_lambda=factor), groups)
            print(f"{name:<17} {groups:>6} {ours:>14.2f} {theirs:>12.2f} {ours / theirs:>6.2f}")


if __name__ == "__main__":
    main()
