"""ScheduleLR's API beyond replaying a schedule (tests/test_schedules.py): its export, a
resume from ``last_epoch``, parameter groups, and a resume at another length."""

from __future__ import annotations

import io
import math
import warnings

import pytest
import torch

import lrsearch
from lrsearch.schedules import Constant, Cosine, CosineRestarts, Cyclic
from lrsearch.torch_scheduler import ScheduleLR

SCHEDULE = Cosine(lr=0.2, warmup=0.1, min_lr=0.002)


def optimizer(*lrs: float) -> torch.optim.Optimizer:
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs]
    return torch.optim.SGD(groups, lr=lrs[0])


def lrs_over(scheduler: ScheduleLR, steps: int) -> list[float]:
    """The LR of each of ``steps`` optimizer steps, from the scheduler's current step on."""
    seen = []
    for _ in range(steps):
        seen.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return seen


def test_the_class_is_part_of_the_public_api() -> None:
    assert lrsearch.ScheduleLR is ScheduleLR
    assert isinstance(SCHEDULE.torch_scheduler(optimizer(0.2), 10), lrsearch.ScheduleLR)


def test_last_epoch_resumes_where_a_run_stood_without_a_state_dict() -> None:
    total, stop = 40, 13
    running = SCHEDULE.torch_scheduler(optimizer(0.2), total)
    lrs_over(running, stop)
    fresh = optimizer(0.2)
    fresh.param_groups[0]["initial_lr"] = 0.2  # what PyTorch requires to resume this way
    resumed = SCHEDULE.torch_scheduler(fresh, total, last_epoch=stop - 1)
    assert lrs_over(resumed, 10) == pytest.approx(lrs_over(running, 10), rel=1e-12)


def test_each_group_is_its_own_base_lr_times_the_schedules_factor() -> None:
    scheduler = SCHEDULE.torch_scheduler(optimizer(0.2, 0.02), 50)
    for step in range(50):
        factor = SCHEDULE(step, 50) / SCHEDULE.lr
        lrs = [group["lr"] for group in scheduler.optimizer.param_groups]
        assert lrs == pytest.approx([0.2 * factor, 0.02 * factor], rel=1e-12)
        scheduler.optimizer.step()
        scheduler.step()


def checkpoint_at(total: int, stop: int, schedule: object = SCHEDULE) -> dict[str, object]:
    assert isinstance(schedule, lrsearch.Schedule)
    scheduler = schedule.torch_scheduler(optimizer(schedule.lr), total)
    lrs_over(scheduler, stop)
    buffer = io.BytesIO()
    torch.save(
        {"optimizer": scheduler.optimizer.state_dict(), "scheduler": scheduler.state_dict()},
        buffer,
    )
    buffer.seek(0)
    loaded: dict[str, object] = torch.load(buffer, weights_only=True)
    return loaded


def test_a_resume_at_the_same_length_says_nothing() -> None:
    state = checkpoint_at(100, 30)
    resumed = SCHEDULE.torch_scheduler(optimizer(SCHEDULE.lr), 100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resumed.load_state_dict(state["scheduler"])  # type: ignore[arg-type]
    assert resumed.total_steps == 100


def test_a_longer_resumed_run_follows_its_new_length_and_warns_where_it_happens() -> None:
    """Lightning rebuilds the scheduler with the new run's length and then loads the
    checkpoint: the added steps follow the schedule, not the end of the old one."""
    schedule = CosineRestarts(lr=0.1, first_cycle=0.25, multiplier=1.0)
    state = checkpoint_at(100, 60, schedule)
    resumed = schedule.torch_scheduler(optimizer(schedule.lr), 150)
    resumed.optimizer.load_state_dict(state["optimizer"])  # type: ignore[arg-type]
    with pytest.warns(UserWarning, match=r"step 60 with total_steps=150, the checkpoint's was 100"):
        resumed.load_state_dict(state["scheduler"])  # type: ignore[arg-type]
    assert resumed.total_steps == 150
    expected = [schedule(step, 150) for step in range(60, 150)]
    assert lrs_over(resumed, 90) == pytest.approx(expected, rel=1e-12)


def test_past_total_steps_the_closed_form_goes_on() -> None:
    scheduler = CosineRestarts(lr=0.1, first_cycle=0.5).torch_scheduler(optimizer(0.1), 20)
    seen = lrs_over(scheduler, 40)
    closed = [CosineRestarts(lr=0.1, first_cycle=0.5)(step, 20) for step in range(40)]
    assert seen == pytest.approx(closed, rel=1e-12)
    assert not math.isclose(seen[20], seen[39])  # still moving: a new cycle, not frozen


CYCLIC = Cyclic(lr=0.1, min_lr=0.01, step_size=0.25)


def accelerated_lrs(prepare_scheduler: bool, total: int, steps: int) -> list[float]:
    """The LR of each optimizer step of a loop run by Accelerate, in one process."""
    accelerate = pytest.importorskip("accelerate")
    accelerator = accelerate.Accelerator(cpu=True)
    model = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=CYCLIC.lr)
    scheduler = CYCLIC.torch_scheduler(opt, total)
    if prepare_scheduler:
        model, opt, scheduler = accelerator.prepare(model, opt, scheduler)
    else:
        model, opt = accelerator.prepare(model, opt)
    seen = []
    for _ in range(steps):
        seen.append(opt.param_groups[0]["lr"])
        accelerator.backward(model(torch.ones(1, 2)).sum())
        opt.step()
        scheduler.step()
        opt.zero_grad()
    return seen


def test_under_accelerate_a_scheduler_stepped_by_hand_follows_the_closed_form() -> None:
    """What the README tells Accelerate users: keep the scheduler out of ``prepare`` and step
    it once per optimizer step. A prepared one is stepped num_processes times per step
    without split_batches, and never past its ``total_steps`` (it freezes at the end value)."""
    total, steps = 12, 20
    closed = [CYCLIC(step, total) for step in range(steps)]
    assert accelerated_lrs(False, total, steps) == pytest.approx(closed, rel=1e-12)
    prepared = accelerated_lrs(True, total, steps)
    assert prepared[: total + 1] == pytest.approx(closed[: total + 1], rel=1e-12)
    assert set(prepared[total + 1 :]) == {prepared[total + 1]}  # frozen ...
    assert prepared[-1] != pytest.approx(closed[-1])  # ... where the closed form goes on


def test_it_is_not_chainable_it_sets_the_lr_from_the_base_each_step() -> None:
    """As docs/schedules.md says: an ExponentialLR chained after it scales its value for one
    step, never cumulatively."""
    opt = optimizer(0.1)
    constant = Constant(lr=0.1)
    chained = torch.optim.lr_scheduler.ChainedScheduler(
        [constant.torch_scheduler(opt, 10), torch.optim.lr_scheduler.ExponentialLR(opt, 0.5)]
    )
    seen = []
    for _ in range(4):
        opt.step()
        chained.step()
        seen.append(opt.param_groups[0]["lr"])
    assert seen == pytest.approx([0.05] * 4)  # 0.1 x 0.5 every step, not 0.1 x 0.5**k
