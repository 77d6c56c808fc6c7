"""The learning-rate range test: the peak-LR range read off the model's own loss curve.

One model trains for a few hundred steps while its LR grows exponentially from ``start`` to
``end`` (Smith 2017, "Cyclical learning rates"; fastai's ``lr_find``). The loss first falls,
then, past the largest LR the model tolerates, blows up; the test stops there. A range read off
that curve replaces a guess that fits one optimizer and model only (``lr = [1e-3, 0.5]`` is
right for SGD with momentum on LeNet, far too high for Adam).

The rule from curve to range (:func:`suggest_range`) is pure, so it is tested on synthetic
curves: noisy ones, ones that never blow up, ones that are NaN from the first step.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TextIO

import numpy as np
import numpy.typing as npt
import optuna
import torch

from lrsearch.config import StudyConfig
from lrsearch.errors import LrsearchError
from lrsearch.optim import MemberOptimizer, weight_matrices
from lrsearch.paths import write_outputs
from lrsearch.space import LR_RANGE_ATTR
from lrsearch.storage import claim_once, claimer_alive
from lrsearch.tasks import Task
from lrsearch.training import TrainConfig, autocast_dtype, steps_per_epoch

__all__ = [
    "LrRange",
    "auto_lr_range",
    "check_span",
    "find_lr",
    "save_plot",
    "suggest_range",
]

STEPS = 200  # fastai and Lightning take 100; twice that halves the noise of each LR's loss
MAX_STEPS = 10_000  # fifty times the default: a sweep that long has long stopped informing
RANGE_CLAIM = "lrsearch:lr_range"  # study system attribute: the process running the range test
# The EMA's window, in decades of LR. fastai's factor 0.98 averages about 50 steps, which at
# 100 steps over 8 decades is 4 decades: the smoothed minimum then lags the raw one far to the
# right. A third of a decade keeps the lag below the precision the range needs.
SMOOTHING_DECADES = 1 / 3
# The LR is too high once the smoothed loss exceeds BLOW_UP x its minimum (fastai's and
# Lightning's rule), or, having fallen by MIN_DECREASE, climbs back above where it started:
# a network whose units die at a high LR falls back to chance (2.3 for ten classes), which
# is far less than 4x a minimum of 1.9.
BLOW_UP = 4.0
# Points ignored at each end when looking for the steepest descent: the EMA's first values
# lean on a few batches, and the last ones on the blow-up itself (fastai skips 10 and 5).
SKIP_START, SKIP_END = 10, 5
# Suggested high = the LR at the loss minimum / HIGH_DIVISOR. The minimum is where training
# is about to fail; fastai suggests min / 10 as one safe LR for a whole one-cycle run. The
# search wants the highest peak that may still work (with warmup and decay a schedule can
# peak above a constant LR's limit) and learns to avoid what diverges, so a third of the
# minimum: half a decade below the edge.
HIGH_DIVISOR = 3.0
SPAN = 100.0  # suggested low = high / SPAN: two decades, as wide as the default [1e-3, 0.5]
# A smoothed loss that never falls 10% below its start "never decreased": smaller dips are
# noise, and a range read off them would be a guess dressed up as a measurement.
MIN_DECREASE = 0.1


@dataclass(frozen=True)
class LrRange:
    """A range test's curve and the range it suggests for a schedule's peak LR."""

    lrs: tuple[float, ...]  # the LR of each step taken
    losses: tuple[float, ...]  # each step's training loss
    smoothed: tuple[float, ...]  # bias-corrected EMA of ``losses``
    low: float
    high: float
    steepest: float  # the LR where the smoothed loss falls fastest per decade
    diverged: bool  # False: the loss never blew up inside the tested span
    seconds: float = 0.0

    @property
    def steps(self) -> int:
        return len(self.lrs)

    @property
    def suggested(self) -> float:
        """The single LR the search starts from (its baselines' peak): the steepest descent,
        moved inside the suggested range."""
        return min(max(self.steepest, self.low), self.high)

    def describe(self) -> str:
        note = (
            ""
            if self.diverged
            else f"; the loss never blew up up to lr {self.lrs[-1]:.3g}, so high may be too"
            " low: test a larger --end"
        )
        return (
            f"lr range [{self.low:.3g}, {self.high:.3g}], steepest descent at {self.steepest:.3g}"
            f" ({self.steps} steps, {self.seconds:.1f} s){note}"
        )


def _smooth(losses: npt.NDArray[np.float64], per_decade: float) -> npt.NDArray[np.float64]:
    """fastai's bias-corrected exponential moving average (early values are not pulled to 0),
    over about SMOOTHING_DECADES of LR whatever the number of steps."""
    factor = _ema_factor(per_decade)
    smoothed = np.empty_like(losses)
    average = 0.0
    for index, loss in enumerate(losses):
        average = factor * average + (1 - factor) * loss
        smoothed[index] = average / (1 - factor ** (index + 1))
    return smoothed


def _ema_factor(per_decade: float) -> float:
    return 1 - 1 / max(1.0, SMOOTHING_DECADES * per_decade)


class _BlowUpWatch:
    """``_blow_up(_smooth(losses))`` asked after every step, in O(1) a step: the same
    decision for the newest step (the earlier ones were asked already). Re-smoothing the
    whole history every step made a long sweep quadratic."""

    def __init__(self, per_decade: float) -> None:
        self.factor = _ema_factor(per_decade)
        self.average = 0.0
        self.count = 0
        self.first = math.nan
        self.lowest = math.inf

    def blew_up(self, loss: float) -> bool:
        self.count += 1
        self.average = self.factor * self.average + (1 - self.factor) * loss
        smoothed = self.average / (1 - self.factor**self.count)
        if self.count == 1:
            self.first = smoothed
        if not math.isfinite(smoothed):
            return True
        self.lowest = min(self.lowest, smoothed)
        limit = BLOW_UP * self.lowest
        if self.lowest <= (1 - MIN_DECREASE) * self.first:
            limit = min(limit, self.first)
        return smoothed > limit


def _per_decade(lrs: npt.NDArray[np.float64]) -> float:
    """Steps per decade of LR of an exponential sweep."""
    return (len(lrs) - 1) / math.log10(lrs[-1] / lrs[0])


def _blow_up(smoothed: npt.NDArray[np.float64]) -> int | None:
    """The first step whose smoothed loss is not finite, above BLOW_UP x the minimum so far,
    or back above the first after a fall."""
    with np.errstate(invalid="ignore"):
        lowest = np.minimum.accumulate(smoothed)
        fell = lowest <= (1 - MIN_DECREASE) * smoothed[0]
        limit = np.where(fell, np.minimum(BLOW_UP * lowest, smoothed[0]), BLOW_UP * lowest)
        bad = ~np.isfinite(smoothed) | (smoothed > limit)
    return int(np.argmax(bad)) if bad.any() else None


def suggest_range(lrs: Sequence[float], losses: Sequence[float]) -> LrRange:
    """The range from a curve of (LR, loss) with LRs rising, up to where the loss blew up.

    Refused with one line when the curve says nothing: NaN from the first step, a blow-up
    before enough points to read a slope, or a loss that never decreases."""
    rates = np.asarray(lrs, dtype=np.float64)
    raw = np.asarray(losses, dtype=np.float64)
    if (
        len(rates) == 0
        or len(rates) != len(raw)
        or not (rates[0] > 0 and np.all(np.diff(rates) > 0))
    ):
        raise ValueError("suggest_range needs a loss per LR, the LRs positive and rising")
    if not math.isfinite(raw[0]):
        raise LrsearchError(
            f"the range test's loss is {raw[0]} from its first step (lr {rates[0]:.3g}); the "
            "model or its data produce no finite loss at any LR: check the task"
        )
    needed = SKIP_START + SKIP_END + 2
    smoothed = _smooth(raw, _per_decade(rates)) if len(raw) >= needed else raw
    end = _blow_up(smoothed)
    kept = len(raw) if end is None else end
    if kept < needed:
        where = "has" if end is None else f"blew up at lr {rates[kept]:.3g} after"
        raise LrsearchError(
            f"the range test {where} {kept} steps; at least {needed} are needed to read a "
            "slope: start the test at a lower LR, or give it more steps"
        )
    curve, points = smoothed[:kept], np.log10(rates[:kept])
    lowest = int(np.argmin(curve))
    if curve[lowest] > curve[0] * (1 - MIN_DECREASE):
        raise LrsearchError(
            f"the range test's loss never decreased by {MIN_DECREASE:.0%} between lr "
            f"{rates[0]:.3g} and {rates[kept - 1]:.3g} (smoothed {curve[0]:.4g} at the start, "
            f"lowest {curve[lowest]:.4g}): check the task, try find-lr with more --steps, or "
            "set lr = [low, high] by hand"
        )
    # Where the loss falls fastest on its way down to the minimum, away from the EMA's start.
    first = min(SKIP_START, lowest - 1)
    slopes = np.gradient(curve, points)[first : min(lowest + 1, kept - SKIP_END)]
    steepest = float(rates[first + int(np.argmin(slopes))])
    high = float(rates[lowest]) / HIGH_DIVISOR
    return LrRange(
        lrs=tuple(float(r) for r in rates[:kept]),
        losses=tuple(float(loss) for loss in raw[:kept]),
        smoothed=tuple(float(s) for s in curve),
        low=high / SPAN,
        high=high,
        steepest=steepest,
        diverged=end is not None,
    )


def check_span(start: float, end: float, steps: int) -> None:
    """The test's LRs and length, checked before a task is loaded or anything trained."""
    if not (0 < start < end < math.inf):
        raise LrsearchError(
            f"the range test's span [{start}, {end}] is not allowed; it needs finite "
            "0 < start < end"
        )
    if not SKIP_START + SKIP_END + 2 <= steps <= MAX_STEPS:
        raise LrsearchError(
            f"the range test's steps={steps} is not allowed; it must be in "
            f"[{SKIP_START + SKIP_END + 2}, {MAX_STEPS}]"
        )


def find_lr(
    task: Task,
    config: TrainConfig,
    *,
    seed: int,
    start: float = 1e-7,
    end: float = 10.0,
    steps: int = STEPS,
) -> LrRange:
    """Train one model of the task with ``config``'s optimizer and batch size while the LR
    grows from ``start`` to ``end`` over ``steps`` steps; stop once the loss blows up.

    The model is built from ``seed`` as a trial's is, and MemberOptimizer updates it with
    one member's LR, so it steps exactly as a trial would, on the task's device. It is not
    stacked: a model whose outputs are NaN must reach the loss check, not stacking's own."""
    check_span(start, end, steps)
    if task.batches is not None:
        raise LrsearchError(
            f"task {task.name!r} streams its batches; lr = 'auto' needs its training data in "
            "memory: give [space] lr a range instead"
        )
    device = task.device
    per_epoch = steps_per_epoch(task, config)
    torch.manual_seed(seed)
    model = task.build_model().to(device)
    optimizer = MemberOptimizer(list(model.parameters()), 1, config, weight_matrices(model))
    shuffle = torch.Generator(device=device).manual_seed(seed)
    amp = autocast_dtype(config, device)  # a trial's precision, fp16 with its loss scaler
    lrs = np.geomspace(start, end, steps)
    losses: list[float] = []
    watch = _BlowUpWatch(_per_decade(lrs))
    started = time.perf_counter()
    batches = torch.empty(0, config.batch_size, dtype=torch.int64, device=device)
    for step, lr in enumerate(lrs):
        if step % per_epoch == 0:
            order = torch.randperm(len(task.train_labels), device=device, generator=shuffle)
            batches = order[: per_epoch * config.batch_size].view(per_epoch, config.batch_size)
        batch = batches[step % per_epoch]
        labels = task.train_labels.index_select(0, batch)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = model(task.normalize(task.train_images.index_select(0, batch)))
        loss = task.loss(logits.float(), labels).mean()
        optimizer.zero_grad()
        optimizer.scaled(loss.view(1)).sum().backward()  # type: ignore[no-untyped-call]
        optimizer.step(torch.tensor([lr], dtype=torch.float32, device=device))
        losses.append(float(loss.detach()))
        if watch.blew_up(losses[-1]):
            break
    seconds = time.perf_counter() - started
    found = suggest_range(lrs[: len(losses)].tolist(), losses)
    return dataclasses.replace(found, seconds=seconds)


def auto_lr_range(
    study: optuna.Study, config: StudyConfig, task: Task, out: TextIO
) -> tuple[float, float] | None:
    """For ``lr = "auto"``: the study's stored range, or the range test run now and stored.

    Stored as the study's ``lr_range`` user attribute, so a resumed run and every worker
    search the same range while the study's definition keeps ``lr = "auto"``. None when the
    study file sets its own range."""
    if not config.space.auto_lr:
        return None
    stored = study.user_attrs.get(LR_RANGE_ATTR)
    if stored is None and not claim_once(study, RANGE_CLAIM):
        # Processes started together on a new study: one runs the test, the others wait
        # for its result (or run it themselves if that process died before storing it).
        print("lr = 'auto': waiting for the range test another process runs", file=out)
        while (stored := study.user_attrs.get(LR_RANGE_ATTR)) is None and claimer_alive(
            study, RANGE_CLAIM
        ):
            time.sleep(1)
    if stored is None:
        print("lr = 'auto': running the learning-rate range test", file=out)
        found = find_lr(task, config.training, seed=config.seed)
        stored = {
            "low": found.low,
            "high": found.high,
            "suggested": found.suggested,
            "steepest": found.steepest,
            "diverged": found.diverged,
            "steps": found.steps,
            "seconds": found.seconds,
        }
        study.set_user_attr(LR_RANGE_ATTR, stored)
        print(found.describe(), file=out)
    return float(stored["low"]), float(stored["high"])


def save_plot(found: LrRange, path: Path) -> None:
    """Loss against LR on a log axis, raw and smoothed, the suggested range shaded and the
    steepest descent marked; with matplotlib's Figure API, no pyplot state."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9.0, 5.6), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    axes.plot(found.lrs, found.losses, color="#bbbbbb", linewidth=0.8, label="loss")
    axes.plot(found.lrs, found.smoothed, color="#1f77b4", label="smoothed")
    axes.axvspan(found.low, found.high, color="#2ca02c", alpha=0.15, label="suggested range")
    axes.axvline(found.steepest, color="#d62728", linestyle="--", label="steepest descent")
    axes.set_xscale("log")
    axes.set_ylim(0.9 * min(found.losses), 1.1 * max(found.smoothed))
    axes.set_xlabel("learning rate")
    axes.set_ylabel("training loss")
    axes.set_title(found.describe().split(";")[0], fontsize=10)
    axes.legend()
    write_outputs({path: partial(figure.savefig, format="png")}, "--out")
