"""lrsearch schedules against the references SCHEDULES.md names: PyTorch, Keras, the articles.

Where PyTorch has the schedule, every step must agree to 1e-6 relative, both the
closed form ``schedule(t, T)`` and ``schedule.torch_scheduler`` stepped in a real
loop. Keras is not a dependency: its documented formulas are written out below.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import numpy.typing as npt
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from torch.optim import lr_scheduler

from lrsearch.schedules import (
    Constant,
    Cosine,
    CosineRestarts,
    Cyclic,
    Exponential,
    InverseTime,
    Linear,
    OneCycle,
    Piecewise,
    Polynomial,
    Schedule,
    Step,
    Wsd,
    cosine_scheduler,
    cosine_warmup_decay,
    cyclic_lr,
    exponential_decay_with_burnin,
    multistep_lr,
    polynomial_decay,
    square_root_scheduler,
)

Array = npt.NDArray[np.float64]
MakeReference = Callable[[torch.optim.Optimizer], lr_scheduler.LRScheduler]
RTOL = 1e-6


def _optimizer(lr: float) -> torch.optim.SGD:
    # Momentum lets CyclicLR and OneCycleLR cycle it, as they do by default.
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr, momentum=0.9)


def _drive(scheduler: lr_scheduler.LRScheduler, steps: int) -> Array:
    """The LR each of ``steps`` optimizer steps runs with, in a loop as training writes it."""
    optimizer = scheduler.optimizer
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return np.array(lrs)


def _assert_matches_torch(
    schedule: Schedule, total_steps: int, make_reference: MakeReference, steps: int | None = None
) -> None:
    steps = total_steps if steps is None else steps
    expected = _drive(make_reference(_optimizer(schedule.lr)), steps)
    closed_form = schedule(np.arange(steps), total_steps)
    stepped = _drive(schedule.torch_scheduler(_optimizer(schedule.lr), total_steps), steps)
    np.testing.assert_allclose(closed_form, expected, rtol=RTOL)
    np.testing.assert_allclose(stepped, expected, rtol=RTOL)


# ---------------------------------------------------------------------------
# PyTorch


@pytest.mark.parametrize("gamma", [0.1, 0.5])
@pytest.mark.parametrize(
    ("total_steps", "milestones"),
    [(10, [3]), (97, [20, 50, 90]), (1000, [300, 600]), (1000, [1, 999]), (1001, [333, 667])],
)
def test_step_matches_multisteplr(total_steps: int, milestones: list[int], gamma: float) -> None:
    schedule = Step(lr=0.1, milestones=tuple(m / total_steps for m in milestones), gamma=gamma)
    _assert_matches_torch(
        schedule, total_steps, lambda opt: lr_scheduler.MultiStepLR(opt, milestones, gamma)
    )


@pytest.mark.parametrize("gamma", [0.5, 0.95, 0.999])
@pytest.mark.parametrize("total_steps", [10, 250, 3000])
def test_exponential_matches_exponentiallr(total_steps: int, gamma: float) -> None:
    schedule = Exponential(lr=0.1, decay_rate=gamma, decay_steps=1 / total_steps)
    _assert_matches_torch(schedule, total_steps, lambda opt: lr_scheduler.ExponentialLR(opt, gamma))


@pytest.mark.parametrize("eta_min", [0.0, 1e-3])
@pytest.mark.parametrize("total_steps", [1, 7, 100, 1000])
def test_cosine_matches_cosineannealinglr(total_steps: int, eta_min: float) -> None:
    """Up to and including ``t = T_max``, where PyTorch's curve stops being a half cosine."""
    schedule = Cosine(lr=0.1, min_lr=eta_min)
    _assert_matches_torch(
        schedule,
        total_steps,
        lambda opt: lr_scheduler.CosineAnnealingLR(opt, total_steps, eta_min),
        steps=total_steps + 1,
    )


@pytest.mark.parametrize("eta_min", [0.0, 1e-3])
@pytest.mark.parametrize("t_mult", [1, 2, 3])
@pytest.mark.parametrize(("total_steps", "t_0"), [(100, 1), (400, 2), (1000, 7), (1200, 33)])
def test_cosine_restarts_matches_warm_restarts(
    total_steps: int, t_0: int, t_mult: int, eta_min: float
) -> None:
    """Driven by plain ``step()``, which counts the cycle with integers."""
    schedule = CosineRestarts(
        lr=0.1, first_cycle=t_0 / total_steps, multiplier=t_mult, min_lr=eta_min
    )
    _assert_matches_torch(
        schedule,
        total_steps,
        lambda opt: lr_scheduler.CosineAnnealingWarmRestarts(opt, t_0, t_mult, eta_min),
    )


def _sgdr_integer(t: int, t_0: int, t_mult: int, lr: float) -> float:
    """SGDR at step ``t`` with the cycle found by walking integer cycle lengths: no logarithm."""
    start, length = 0, t_0
    while t >= start + length:
        start, length = start + length, length * t_mult
    return lr * (1 + math.cos(math.pi * (t - start) / length)) / 2


@pytest.mark.filterwarnings("ignore:The epoch parameter:UserWarning")
@pytest.mark.parametrize(
    ("t_0", "t_mult", "restart"),
    [(2, 3, 242), (1, 3, 121), (1, 10, 111)],  # restart = t_0·(t_mult**n - 1)/(t_mult - 1)
)
def test_cosine_restarts_exact_at_restarts_where_torch_explicit_epoch_is_a_cycle_off(
    t_0: int, t_mult: int, restart: int
) -> None:
    """PyTorch's ``step(epoch)`` finds the cycle as ``int(log(epoch/T_0·(T_mult-1)+1, T_mult))``.

    At these exact restarts the float logarithm lands just under the integer
    (``math.log(243, 3) == 4.999...``), so PyTorch puts the restart step at the
    *end* of the previous cycle (``eta_min`` instead of the peak). Our closed
    form corrects the index and agrees with the integer walk, both evaluated
    directly and through ``ScheduleLR.step(epoch)``.
    """
    lr, total_steps = 0.1, 2 * restart
    schedule = CosineRestarts(lr=lr, first_cycle=t_0 / total_steps, multiplier=t_mult)
    steps = range(restart - 2, restart + 3)
    expected = [_sgdr_integer(t, t_0, t_mult, lr) for t in steps]
    np.testing.assert_allclose(schedule(np.array(steps), total_steps), expected, rtol=RTOL)
    ours = schedule.torch_scheduler(_optimizer(lr), total_steps)
    ours.optimizer.step()
    ours.step(restart)
    assert ours.get_last_lr() == pytest.approx([lr], rel=RTOL)

    torch_explicit = lr_scheduler.CosineAnnealingWarmRestarts(_optimizer(lr), t_0, t_mult)
    torch_explicit.step(restart)
    assert torch_explicit.get_last_lr() == pytest.approx([0.0], abs=1e-12), (
        "PyTorch's explicit-epoch cycle index is exact here now; drop this half of the test"
    )


@pytest.mark.parametrize(
    ("mode", "gamma"),
    [("triangular", 1.0), ("triangular2", 1.0), ("exp_range", 0.99), ("exp_range", 0.9995)],
)
@pytest.mark.parametrize(
    ("total_steps", "step_size"), [(100, 5), (100, 37), (1000, 10), (1000, 250)]
)
def test_cyclic_matches_cycliclr(total_steps: int, step_size: int, mode: str, gamma: float) -> None:
    base_lr, max_lr = 1e-3, 0.1
    schedule = Cyclic(
        lr=max_lr, min_lr=base_lr, step_size=step_size / total_steps, mode=mode, gamma=gamma
    )
    _assert_matches_torch(
        schedule,
        total_steps,
        lambda opt: lr_scheduler.CyclicLR(
            opt, base_lr, max_lr, step_size, step_size, mode=mode, gamma=gamma
        ),
    )


@pytest.mark.parametrize("start_factor", [0.1, 0.25, 1 / 3])
@pytest.mark.parametrize(
    ("total_steps", "warmup_steps"), [(100, 5), (100, 50), (1000, 10), (1000, 99)]
)
def test_linear_warmup_matches_linearlr(
    total_steps: int, warmup_steps: int, start_factor: float
) -> None:
    lr = 0.1
    schedule = Constant(lr=lr, warmup=warmup_steps / total_steps, warmup_start=lr * start_factor)
    _assert_matches_torch(
        schedule,
        total_steps,
        lambda opt: lr_scheduler.LinearLR(opt, start_factor, 1.0, warmup_steps),
    )


@pytest.mark.parametrize("power", [0.5, 1.0, 2.0])
@pytest.mark.parametrize(
    ("total_steps", "total_iters"), [(100, 100), (100, 37), (1000, 500), (1000, 1000)]
)
def test_polynomial_matches_polynomiallr(total_steps: int, total_iters: int, power: float) -> None:
    """PolynomialLR multiplies the previous LR by ``((1 - t/N) / (1 - (t-1)/N)) ** power``.

    The ratios telescope to ``base · (1 - t/N) ** power`` for ``t ≤ N``, and it
    leaves the LR at 0 after ``N = total_iters``: the closed form with ``min_lr = 0``
    and ``decay_period = N/T``, on every step of the run.
    """
    schedule = Polynomial(lr=0.1, power=power, decay_period=total_iters / total_steps)
    _assert_matches_torch(
        schedule, total_steps, lambda opt: lr_scheduler.PolynomialLR(opt, total_iters, power)
    )


@pytest.mark.parametrize("anneal", ["cos", "linear"])
@pytest.mark.parametrize("pct_start", [0.25, 0.3, 0.45])
@pytest.mark.parametrize("total_steps", [100, 1000, 5000])
def test_one_cycle_has_the_shape_of_onecyclelr(
    total_steps: int, pct_start: float, anneal: str
) -> None:
    """Same curve, one step apart, as the OneCycle docstring says.

    OneCycleLR peaks at step ``pct_start·T - 1`` and reaches its floor at the last
    step ``T - 1``; ours peaks at ``pct_start·T`` and reaches the floor at ``T``.
    So the two differ by at most one step of the steepest slope,
    ``(pi/2)·lr / (min(pct_start, 1 - pct_start)·T)``.
    """
    lr, div_factor, final_div_factor = 1.0, 25.0, 1e4
    schedule = OneCycle(
        lr=lr,
        pct_start=pct_start,
        div_factor=div_factor,
        final_div_factor=final_div_factor,
        anneal=anneal,
    )
    expected = _drive(
        lr_scheduler.OneCycleLR(
            _optimizer(lr),
            max_lr=lr,
            total_steps=total_steps,
            pct_start=pct_start,
            anneal_strategy=anneal,
            div_factor=div_factor,
            final_div_factor=final_div_factor,
        ),
        total_steps,
    )
    ours = schedule(np.arange(total_steps + 1), total_steps)
    stepped = _drive(schedule.torch_scheduler(_optimizer(lr), total_steps), total_steps + 1)
    np.testing.assert_allclose(stepped, ours, rtol=RTOL)

    steepest = math.pi / 2 * lr / (min(pct_start, 1 - pct_start) * total_steps)
    assert np.max(np.abs(ours[:total_steps] - expected)) <= steepest
    peak = round(pct_start * total_steps)
    assert (int(np.argmax(expected)), int(np.argmax(ours))) == (peak - 1, peak)
    floor = lr / (div_factor * final_div_factor)
    assert expected[0] == pytest.approx(ours[0]) == pytest.approx(lr / div_factor)
    assert expected[-1] == pytest.approx(floor, rel=RTOL)
    assert ours[total_steps] == pytest.approx(floor, rel=RTOL)
    assert ours[total_steps - 1] > floor


# ---------------------------------------------------------------------------
# Keras: the documented formulas, written out (Keras is not a dependency)


def _keras_polynomial_decay(
    step: int, initial: float, decay_steps: int, end: float, power: float, cycle: bool
) -> float:
    if cycle:
        decay_steps = decay_steps * (1 if step == 0 else math.ceil(step / decay_steps))
    else:
        step = min(step, decay_steps)
    return (initial - end) * (1 - step / decay_steps) ** power + end


def _keras_cosine_decay_restarts(
    step: int, initial: float, first_decay_steps: int, t_mul: float, m_mul: float, alpha: float
) -> float:
    completed = step / first_decay_steps
    if t_mul == 1.0:
        i_restart = math.floor(completed)
        completed -= i_restart
    else:
        i_restart = math.floor(math.log(1.0 - completed * (1.0 - t_mul)) / math.log(t_mul))
        sum_r = (1.0 - t_mul**i_restart) / (1.0 - t_mul)
        completed = (completed - sum_r) / t_mul**i_restart
    cosine = 0.5 * m_mul**i_restart * (1.0 + math.cos(math.pi * completed))
    return initial * ((1 - alpha) * cosine + alpha)


def _keras_inverse_time_decay(
    step: int, initial: float, decay_steps: int, decay_rate: float, staircase: bool
) -> float:
    periods = step // decay_steps if staircase else step / decay_steps
    return initial / (1 + decay_rate * periods)


def _keras_exponential_decay(
    step: int, initial: float, decay_steps: int, decay_rate: float, staircase: bool
) -> float:
    periods = step // decay_steps if staircase else step / decay_steps
    return initial * decay_rate**periods


def _keras_piecewise_constant_decay(step: int, boundaries: list[int], values: list[float]) -> float:
    """``values[i]`` while ``step <= boundaries[i]``: Keras switches one step after the boundary."""
    return next((v for b, v in zip(boundaries, values, strict=False) if step <= b), values[-1])


KERAS_T = 2000


def _assert_matches_keras(schedule: Schedule, keras: Callable[[int], float]) -> None:
    expected = [keras(t) for t in range(KERAS_T)]
    np.testing.assert_allclose(schedule(np.arange(KERAS_T), KERAS_T), expected, rtol=RTOL)


@pytest.mark.parametrize("cycle", [False, True])
@pytest.mark.parametrize("end", [0.0, 1e-3])
@pytest.mark.parametrize(
    ("decay_steps", "power"), [(100, 1.0), (250, 0.5), (600, 2.0), (2000, 3.0)]
)
def test_polynomial_matches_keras_polynomial_decay(
    decay_steps: int, power: float, end: float, cycle: bool
) -> None:
    schedule = Polynomial(
        lr=0.1, power=power, min_lr=end, decay_period=decay_steps / KERAS_T, cycle=cycle
    )
    _assert_matches_keras(
        schedule, lambda t: _keras_polynomial_decay(t, 0.1, decay_steps, end, power, cycle)
    )


@pytest.mark.parametrize(
    ("first_decay_steps", "t_mul", "m_mul", "alpha", "float_log_misses"),
    [
        (100, 1.0, 1.0, 0.0, ()),
        (100, 2.0, 1.0, 0.1, ()),
        (50, 2.0, 0.5, 0.0, ()),
        (150, 1.0, 0.7, 0.0, ()),
        (64, 1.5, 0.8, 0.0, (844,)),  # 64·(1.5**5 - 1)/0.5
        (10, 3.0, 1.0, 0.01, (1210,)),  # 10·(3**5 - 1)/2
    ],
)
def test_cosine_restarts_matches_keras_cosine_decay_restarts(
    first_decay_steps: int,
    t_mul: float,
    m_mul: float,
    alpha: float,
    float_log_misses: tuple[int, ...],
) -> None:
    """Keras's ``CosineDecayRestarts`` with ``alpha = 0`` or ``m_mul = 1``, where it equals ours.

    Keras finds the cycle with a float logarithm too; at some exact restarts it
    lands one cycle short and Keras gives the previous cycle's floor
    (``alpha·lr``) where the restart's peak belongs. There we restart.
    """
    lr = 0.1
    schedule = CosineRestarts(
        lr=lr,
        first_cycle=first_decay_steps / KERAS_T,
        multiplier=t_mul,
        peak_decay=m_mul,
        min_lr=alpha * lr,
    )
    steps = np.arange(KERAS_T)
    keras = np.array(
        [_keras_cosine_decay_restarts(t, lr, first_decay_steps, t_mul, m_mul, alpha) for t in steps]
    )
    ours = schedule(steps, KERAS_T)
    exact = ~np.isin(steps, float_log_misses)
    np.testing.assert_allclose(ours[exact], keras[exact], rtol=RTOL)
    for t in float_log_misses:
        assert keras[t] == pytest.approx(alpha * lr, abs=1e-12)
        assert ours[t] > ours[t - 1]


@pytest.mark.parametrize("staircase", [False, True])
@pytest.mark.parametrize(("decay_steps", "decay_rate"), [(1, 0.5), (10, 2.0), (333, 0.7)])
def test_inverse_time_matches_keras_inverse_time_decay(
    decay_steps: int, decay_rate: float, staircase: bool
) -> None:
    schedule = InverseTime(
        lr=0.1, decay_rate=decay_rate, decay_steps=decay_steps / KERAS_T, staircase=staircase
    )
    _assert_matches_keras(
        schedule, lambda t: _keras_inverse_time_decay(t, 0.1, decay_steps, decay_rate, staircase)
    )


@pytest.mark.parametrize("staircase", [False, True])
@pytest.mark.parametrize(("decay_steps", "decay_rate"), [(1, 0.999), (100, 0.5), (700, 0.96)])
def test_exponential_matches_keras_exponential_decay(
    decay_steps: int, decay_rate: float, staircase: bool
) -> None:
    schedule = Exponential(
        lr=0.1, decay_rate=decay_rate, decay_steps=decay_steps / KERAS_T, staircase=staircase
    )
    _assert_matches_keras(
        schedule, lambda t: _keras_exponential_decay(t, 0.1, decay_steps, decay_rate, staircase)
    )


@pytest.mark.parametrize(
    ("boundaries", "values"),
    [
        ([100, 200], [0.1, 0.05, 0.01]),
        ([0, 999, 1998], [0.02, 0.1, 0.05, 0.001]),
        ([1500], [0.1, 0.1]),
    ],
)
def test_piecewise_matches_keras_piecewise_constant_decay(
    boundaries: list[int], values: list[float]
) -> None:
    """Keras keeps ``values[i]`` through step ``b_i``; our twin has boundaries ``(b_i + 1)/T``."""
    lr = max(values)
    schedule = Piecewise(
        lr=lr,
        boundaries=tuple((b + 1) / KERAS_T for b in boundaries),
        values=tuple(v / lr for v in values),
    )
    _assert_matches_keras(
        schedule, lambda t: _keras_piecewise_constant_decay(t, boundaries, values)
    )


@pytest.mark.parametrize(
    ("schedule", "t", "total_steps", "expected"),
    [
        # cosine half-way: (lr + min_lr)/2 = (0.1 + 0.01)/2
        (Cosine(lr=0.1, min_lr=0.01), 50, 100, 0.055),
        # polynomial power 2 at u = 0.5: (1 - 0.2)·0.5**2 + 0.2
        (Polynomial(lr=1.0, power=2.0, min_lr=0.2), 50, 100, 0.4),
        # polynomial cycle, P = 20 steps, t = 30: P_k = 40, (1 - 30/40)**1 = 0.25
        (Polynomial(lr=1.0, decay_period=0.2, cycle=True), 30, 100, 0.25),
        # exponential staircase, D = 10 steps, t = 25: 0.1·0.5**2
        (Exponential(lr=0.1, decay_rate=0.5, decay_steps=0.1, staircase=True), 25, 100, 0.025),
        # exponential smooth at t = 25: 0.1·0.5**2.5 = 0.025/sqrt(2)
        (Exponential(lr=0.1, decay_rate=0.5, decay_steps=0.1), 25, 100, 0.01767766952966369),
        # inverse time, D = 10 steps, t = 30: 0.1/(1 + 1·3)
        (InverseTime(lr=0.1, decay_rate=1.0, decay_steps=0.1), 30, 100, 0.025),
        # step milestones [0.3, 0.6] at t = 60: both passed, 0.1·0.1**2
        (Step(lr=0.1, milestones=(0.3, 0.6)), 60, 100, 0.001),
        # cyclic half-cycle 10 steps: a quarter cycle at t = 5 is half-way up, 0.1·5/10
        (Cyclic(lr=0.1, step_size=0.1), 5, 100, 0.05),
        # triangular2 second peak (t = 30) has half the amplitude: 0.1/2
        (Cyclic(lr=0.1, step_size=0.1, mode="triangular2"), 30, 100, 0.05),
        # cycles 10, 20, 40 steps start at 0, 10, 30; the third peaks at 1·0.5**2
        (CosineRestarts(lr=1.0, first_cycle=0.1, multiplier=2.0, peak_decay=0.5), 30, 100, 0.25),
        # second cycle (10..30) half-way at t = 20: 0.5·(1 + cos(pi/2))/2
        (CosineRestarts(lr=1.0, first_cycle=0.1, multiplier=2.0, peak_decay=0.5), 20, 100, 0.25),
        # linear warmup over 10 steps from 0: t = 5 is 0.1·5/10
        (Cosine(lr=0.1, warmup=0.1), 5, 100, 0.05),
        # burn-in over 10 steps: 1·(5/10)**4
        (Constant(lr=1.0, warmup=0.1, warmup_mode="burnin"), 5, 100, 0.0625),
        # wsd linear decay over the last 20 steps: t = 90 is half-way, 1 - 0.5
        (Wsd(lr=1.0, decay_fraction=0.2), 90, 100, 0.5),
        # wsd 1-sqrt at the same point: 1 - sqrt(0.5)
        (Wsd(lr=1.0, decay_fraction=0.2, decay="1-sqrt"), 90, 100, 0.2928932188134524),
        # linear to min_lr half-way: 1 + (0.1 - 1)·0.5
        (Linear(lr=1.0, min_lr=0.1), 50, 100, 0.55),
        # one-cycle: starts at lr/25, peaks at pct_start·T, floor lr/(25·1e4) at T
        (OneCycle(lr=1.0, pct_start=0.25), 0, 100, 0.04),
        (OneCycle(lr=1.0, pct_start=0.25), 25, 100, 1.0),
        (OneCycle(lr=1.0, pct_start=0.25), 100, 100, 4e-6),
        # square root scheduler at t = 3: 0.1·(3 + 1)**-0.5
        (square_root_scheduler(0.1, total_steps=100), 3, 100, 0.05),
    ],
)
def test_hand_checked_values(schedule: Schedule, t: int, total_steps: int, expected: float) -> None:
    assert schedule(t, total_steps) == pytest.approx(expected, rel=1e-12)


# ---------------------------------------------------------------------------
# Absolute-step constructors against the articles' code, re-implemented


class _ArticleCosineScheduler:
    """Article 004's ``CosineScheduler``, as written: stateful past ``max_update``."""

    def __init__(
        self,
        max_update: int,
        base_lr: float,
        final_lr: float,
        warmup_steps: int,
        warmup_begin_lr: float,
    ) -> None:
        self.base_lr_orig = base_lr
        self.max_update = max_update
        self.final_lr = final_lr
        self.warmup_steps = warmup_steps
        self.warmup_begin_lr = warmup_begin_lr
        self.max_steps = max_update - warmup_steps
        self.base_lr = base_lr

    def __call__(self, epoch: int) -> float:
        if epoch < self.warmup_steps:
            increase = (self.base_lr_orig - self.warmup_begin_lr) * epoch / self.warmup_steps
            return self.warmup_begin_lr + increase
        if epoch <= self.max_update:
            self.base_lr = (
                self.final_lr
                + (self.base_lr_orig - self.final_lr)
                * (1 + math.cos(math.pi * (epoch - self.warmup_steps) / self.max_steps))
                / 2
            )
        return self.base_lr


@st.composite
def _cosine_scheduler_args(draw: st.DrawFn) -> tuple[int, float, float, int, float, int]:
    """``(max_update, base_lr, final_lr, warmup_steps, warmup_begin_lr, total_steps)``."""
    max_update = draw(st.integers(2, 400))
    base_lr = draw(st.floats(1e-4, 1.0))
    final_lr = draw(st.floats(0.0, 1.0)) * base_lr
    warmup_steps = draw(st.integers(0, max_update - 1))
    warmup_begin_lr = draw(st.floats(0.0, 1.0)) * base_lr
    total_steps = draw(st.integers(max_update, 2 * max_update))
    return max_update, base_lr, final_lr, warmup_steps, warmup_begin_lr, total_steps


@settings(max_examples=50, deadline=None)
@given(_cosine_scheduler_args())
@example((20, 0.3, 0.01, 0, 0.0, 20))  # the article's own example
def test_cosine_scheduler_matches_article_004(
    args: tuple[int, float, float, int, float, int],
) -> None:
    """Including runs longer than ``max_update``, where the article holds ``final_lr``."""
    *article_args, total_steps = args
    article = _ArticleCosineScheduler(*article_args)
    schedule = cosine_scheduler(*article_args, total_steps=total_steps)
    expected = [article(t) for t in range(total_steps)]
    np.testing.assert_allclose(
        schedule(np.arange(total_steps), total_steps), expected, rtol=RTOL, atol=1e-15
    )


@pytest.mark.parametrize("cycle", [False, True])
@pytest.mark.parametrize(("decay_period", "power", "min_lr"), [(100, 1.0, 0.0), (300, 2.0, 1e-3)])
def test_polynomial_decay_matches_article_000(
    decay_period: int, power: float, min_lr: float, cycle: bool
) -> None:
    """Article 000's formula, with the ``keras.backend.epsilon()`` (1e-7) it adds when cycling."""
    initial_lr, total_steps, epsilon = 0.1, 1000, 1e-7

    def article(step: int) -> float:
        if cycle:
            period = decay_period * math.ceil(step / decay_period)
            return (initial_lr - min_lr) * (1 - step / (period + epsilon)) ** power + min_lr
        current = min(step, decay_period)
        return (initial_lr - min_lr) * (1 - current / decay_period) ** power + min_lr

    schedule = polynomial_decay(
        initial_lr, decay_period, power, min_lr, cycle, total_steps=total_steps
    )
    expected = [article(t) for t in range(total_steps)]
    np.testing.assert_allclose(
        schedule(np.arange(total_steps), total_steps), expected, rtol=RTOL, atol=1e-9
    )


def test_cosine_warmup_decay_single_cycle_matches_article_000_then_holds() -> None:
    """Article 000's single cycle up to ``total_step``; after it the article rises, we hold."""
    initial_lr, min_lr, warmup_step, total_step, total_steps = 0.1, 1e-3, 20, 200, 300

    def article(step: int) -> float:
        if step < warmup_step:
            return (initial_lr - min_lr) / warmup_step * step + min_lr
        angle = math.pi * (step - warmup_step) / (total_step - warmup_step)
        return min_lr + 0.5 * (initial_lr - min_lr) * (1 + math.cos(angle))

    schedule = cosine_warmup_decay(
        initial_lr, min_lr, warmup_step, total_step, total_steps=total_steps
    )
    ours = schedule(np.arange(total_steps), total_steps)
    expected = [article(t) for t in range(total_step + 1)]
    np.testing.assert_allclose(ours[: total_step + 1], expected, rtol=RTOL)
    np.testing.assert_allclose(ours[total_step:], min_lr, rtol=RTOL)
    assert article(total_steps - 1) > 10 * min_lr


def _article_multi_cycle(
    initial_lr: float, min_lr: float, warmup_step: float, total_step: float, multi: float
) -> Iterator[float]:
    """Article 000's multi-cycle ``CosineWarmupDecay``, its private counter walked from step 0.

    The article's ``__call__`` ignores the step it is given and counts its own;
    the fix is to drive it once per step from 0, which this generator does.
    """
    step = 0
    while True:
        if step >= total_step:
            warmup_step, total_step, step = warmup_step * (1 + multi), total_step * (1 + multi), 0
        if step < warmup_step:
            yield (initial_lr - min_lr) / warmup_step * step + min_lr
        else:
            angle = math.pi * (step - warmup_step) / (total_step - warmup_step)
            yield min_lr + 0.5 * (initial_lr - min_lr) * (1 + math.cos(angle))
        step += 1


@pytest.mark.parametrize(
    ("warmup_step", "total_step", "multi", "total_steps"),
    [
        (64, 256, 0.25, 2101),  # cycles 256, 320, 400, 500, 625 steps: whole numbers
        (16, 64, 0.5, 1330),  # cycles 64, 96, 144, 216, 324, 486
    ],
)
def test_cosine_warmup_decay_multi_matches_article_000_counter(
    warmup_step: int, total_step: int, multi: float, total_steps: int
) -> None:
    """Whole-step cycle lengths: the article's counter rounds each cycle up to a whole step."""
    initial_lr, min_lr = 0.1, 1e-3
    article = _article_multi_cycle(initial_lr, min_lr, warmup_step, total_step, multi)
    expected = [next(article) for _ in range(total_steps)]
    schedule = cosine_warmup_decay(
        initial_lr, min_lr, warmup_step, total_step, multi, total_steps=total_steps
    )
    np.testing.assert_allclose(schedule(np.arange(total_steps), total_steps), expected, rtol=RTOL)


@settings(max_examples=30, deadline=None)
@given(st.floats(1e-4, 10.0), st.integers(1, 2000))
def test_square_root_scheduler_matches_article_004(lr: float, total_steps: int) -> None:
    steps = np.arange(total_steps)
    schedule = square_root_scheduler(lr, total_steps=total_steps)
    np.testing.assert_allclose(schedule(steps, total_steps), lr * (steps + 1.0) ** -0.5, rtol=RTOL)


@settings(max_examples=50, deadline=None)
@given(
    st.floats(1e-4, 1.0),
    st.floats(0.01, 1.0),
    st.booleans(),
    st.integers(2, 1000),
    st.data(),
)
def test_exponential_decay_with_burnin_matches_schedules_md(
    lr: float, decay_rate: float, staircase: bool, total_steps: int, data: st.DataObject
) -> None:
    """SCHEDULES.md's intent: ``lr·(t/B)**4`` during burn-in, then ``lr·rate**((t-B)/D)``."""
    burnin_steps = data.draw(st.integers(0, total_steps - 1), label="burnin_steps")
    decay_steps = data.draw(st.integers(1, 2 * total_steps), label="decay_steps")

    def reference(t: int) -> float:
        if t < burnin_steps:
            return lr * (t / burnin_steps) ** 4
        elapsed = t - burnin_steps
        return lr * decay_rate ** (elapsed // decay_steps if staircase else elapsed / decay_steps)

    schedule = exponential_decay_with_burnin(
        lr, decay_steps, decay_rate, burnin_steps, staircase, total_steps=total_steps
    )
    expected = [reference(t) for t in range(total_steps)]
    np.testing.assert_allclose(schedule(np.arange(total_steps), total_steps), expected, rtol=RTOL)


@settings(max_examples=30, deadline=None)
@given(
    st.floats(1e-3, 1.0),
    st.floats(0.0, 1.0),
    st.sampled_from(["triangular", "triangular2", "exp_range"]),
    st.floats(0.9, 1.0),
    st.integers(2, 500),
    st.data(),
)
def test_cyclic_lr_matches_cycliclr(
    max_lr: float, ratio: float, mode: str, gamma: float, total_steps: int, data: st.DataObject
) -> None:
    base_lr = ratio * max_lr
    step_size = data.draw(st.integers(1, total_steps), label="step_size")
    schedule = cyclic_lr(base_lr, max_lr, step_size, mode, gamma, total_steps=total_steps)
    _assert_matches_torch(
        schedule,
        total_steps,
        lambda opt: lr_scheduler.CyclicLR(
            opt, base_lr, max_lr, step_size, step_size, mode=mode, gamma=gamma
        ),
    )


@settings(max_examples=30, deadline=None)
@given(st.floats(0.05, 1.0), st.integers(2, 500), st.data())
def test_multistep_lr_matches_multisteplr(
    gamma: float, total_steps: int, data: st.DataObject
) -> None:
    milestones = sorted(
        data.draw(
            st.sets(st.integers(1, total_steps - 1), min_size=1, max_size=5), label="milestones"
        )
    )
    schedule = multistep_lr(0.1, milestones, gamma, total_steps=total_steps)
    _assert_matches_torch(
        schedule, total_steps, lambda opt: lr_scheduler.MultiStepLR(opt, milestones, gamma)
    )
