"""Learning-rate schedules as pure functions of ``(t, T)``.

A schedule is a frozen value (family name + parameters). Evaluating it never
touches state, so step 5000 computed directly equals step 5000 reached one step
at a time, and a run resumed from a checkpoint sees the LRs it would have seen.
Parameters that say *when* things happen are fractions of the run, so a
schedule found on a 10-epoch trial replays on a 90-epoch production run by
passing another ``total_steps``. The semantics are fixed by SCHEDULES.md.

Time is measured in optimizer steps: ``t`` is the 0-based index of the step
about to be taken and ``T`` the run's total. Warmup takes the first ``W·T``
steps; the family then runs on ``t' = t - W·T`` out of ``T' = T - W·T``, with
``u = t'/T'``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import sys
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, NamedTuple

import numpy as np
import numpy.typing as npt

from lrsearch.errors import LrsearchError, read_document
from lrsearch.paths import write_outputs

if TYPE_CHECKING:
    import torch

    from lrsearch.torch_scheduler import ScheduleLR

__all__ = [
    "FAMILIES",
    "FORMAT",
    "FORMAT_VERSION",
    "Constant",
    "Cosine",
    "CosineRestarts",
    "Cyclic",
    "Exponential",
    "InverseSqrt",
    "InverseTime",
    "Linear",
    "OneCycle",
    "Piecewise",
    "Polynomial",
    "Schedule",
    "ScheduleError",
    "Step",
    "Wsd",
    "cosine_scheduler",
    "cosine_warmup_decay",
    "cyclic_lr",
    "exponential_decay_with_burnin",
    "load_schedule",
    "make_schedule",
    "multistep_lr",
    "polynomial_decay",
    "square_root_scheduler",
]

FORMAT = "lrsearch.schedule"
FORMAT_VERSION = 1

Array = npt.NDArray[np.float64]
Steps = int | float | npt.ArrayLike

# Fractions derived from integer step counts (``m / T``) come back as
# ``m·(1 ± 1e-16)`` once multiplied by ``T``; snapping to the nearest integer
# within this relative tolerance keeps milestones, cycle ends and staircase
# edges on the exact step an integer reference (PyTorch) puts them.
_SNAP = 1e-9
# Run lengths, and steps per run at most, on which a new schedule's values are checked.
_PROBE_RUNS = (1, 2, 3, 10, 1000, 10**9)
_PROBE_STEPS = 257
# A schedule document's top-level keys: what ``to_dict`` writes, and ``save``'s ``source``.
_DOCUMENT_KEYS = {"format", "version", "family", "params", "source"}


class ScheduleError(LrsearchError, ValueError):
    """A schedule that cannot be what was asked for."""


def _snap(x: Array | float) -> Array:
    nearest = np.round(x)
    return np.where(np.abs(x - nearest) <= _SNAP * np.maximum(1.0, np.abs(x)), nearest, x)


def _floor(x: Array) -> Array:
    return np.floor(_snap(x))


def _ceil(x: Array) -> Array:
    return np.ceil(_snap(x))


def _cos_anneal(high: float | Array, low: float | Array, frac: Array) -> Array:
    """Half a cosine from ``high`` at ``frac=0`` to ``low`` at ``frac=1``."""
    return low + (high - low) * (1.0 + np.cos(np.pi * frac)) / 2.0


class Clock(NamedTuple):
    """Post-warmup time handed to a family: steps ``t'``, ``T'`` and the run's ``T``."""

    steps: Array
    total: float
    run_total: int

    @property
    def u(self) -> Array:
        return self.steps / self.total


# ---------------------------------------------------------------------------
# The value type


@dataclass(frozen=True, kw_only=True)
class Schedule:
    """A learning-rate schedule: a family and its parameters, immutable and hashable.

    ``lr`` is the peak. Every family accepts a warmup over the first
    ``warmup`` fraction of the run: ``linear`` ramps from ``warmup_start``
    (default: the family's ``min_lr`` where it has one, else 0); ``burnin``
    is darknet's ``(t / (W·T)) ** burnin_power``. Both end, at ``t = W·T``,
    on the value the family starts from, so there is no jump: that is
    ``lr`` for every family but those that start low by design (``cyclic``
    at ``min_lr``, ``one_cycle`` at ``lr/div_factor``, ``piecewise`` at
    ``lr·values[0]``, ``cosine_restarts`` with ``cycle_warmup`` at ``min_lr``).
    """

    family: ClassVar[str] = ""

    lr: float
    warmup: float = 0.0
    warmup_mode: Literal["linear", "burnin"] = "linear"
    warmup_start: float | None = None
    burnin_power: float = 4.0

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "family" in vars(cls):  # a family, not a base shared by families
            FAMILIES[cls.family] = cls

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = _coerce(
                self.family, field.name, _hints(type(self))[field.name], getattr(self, field.name)
            )
            object.__setattr__(self, field.name, value)
        self._require("lr", self.lr > 0, "> 0")
        self._require("warmup", 0.0 <= self.warmup < 1.0, "in [0, 1)")
        self._require("burnin_power", self.burnin_power > 0, "> 0")
        if self.warmup_start is not None:
            self._require(
                "warmup_start", self.warmup_mode == "linear", "unset when warmup_mode='burnin'"
            )
            self._require(
                "warmup_start", 0.0 <= self.warmup_start <= self.lr, f"in [0, lr={self.lr}]"
            )
        if hasattr(self, "min_lr"):
            self._require("min_lr", 0.0 <= self.min_lr <= self.lr, f"in [0, lr={self.lr}]")
        # A warmup this close to 1 ends on the run's last step for every length (the step
        # snaps to T), leaving no post-warmup time to divide by.
        self._require("warmup", self.warmup < 1 / (1 + _SNAP), f"< {1 / (1 + _SNAP)!r}")
        self._validate()
        self._check_values()

    def _check_values(self) -> None:
        """Every family's LR is finite and in [0, lr] at every step of every run, or the
        schedule is refused here, naming the step: a peak near float's limit overflows, a
        cycle of 1e-300 divides by nothing. Probed on runs of several lengths, every step of
        the short ones and 257 of the long; ``__call__`` checks every value it returns
        too, for what the probe misses."""
        for total in _PROBE_RUNS:
            steps = np.unique(np.linspace(0, total, min(total + 1, _PROBE_STEPS)).round())
            self(steps, total)

    def _checked(self, values: Array, steps: Array, total: int) -> Array:
        bad = ~np.isfinite(values) | (values < 0) | (values > self.lr * (1 + _SNAP))
        if np.any(bad):
            first = int(np.argmax(bad))
            raise ScheduleError(
                f"{self.family}: the lr at step {steps.flat[first]:g} of a {total}-step run is "
                f"{float(values.flat[first])!r}, not a finite value in [0, lr={self.lr!r}]; "
                "these parameters cannot make a schedule"
            )
        return values

    # Families override these two.
    def _validate(self) -> None:
        """Check the family's own parameters (the shared ones are already checked)."""

    def _decay(self, clock: Clock) -> Array:
        raise NotImplementedError

    def _require(self, name: str, ok: bool, allowed: str) -> None:
        if not ok:
            raise ScheduleError(
                f"{self.family}: {name}={getattr(self, name)!r} is not allowed; "
                f"{name} must be {allowed}"
            )

    # -- evaluation ---------------------------------------------------------

    @typing.overload
    def __call__(self, t: int | float, total_steps: int) -> float: ...
    @typing.overload
    def __call__(self, t: npt.ArrayLike, total_steps: int) -> Array | float: ...

    def __call__(self, t: Steps, total_steps: int) -> Array | float:
        """The learning rate at step(s) ``t`` of a ``total_steps`` run; arrays evaluate at once."""
        steps = np.asarray(t, dtype=np.float64)
        if not np.all(np.isfinite(steps)) or np.any(steps < 0):
            raise ScheduleError(f"{self.family}: step t must be finite and >= 0, got {t!r}")
        run_total = _check_total_steps(total_steps)
        with np.errstate(all="ignore"):  # an overflow is refused by name, not warned about
            return self._evaluate(t, steps, run_total)

    def _evaluate(self, t: Steps, steps: Array, run_total: int) -> Array | float:
        warm = float(_snap(self.warmup * run_total))
        clock = Clock(np.maximum(steps - warm, 0.0), run_total - warm, run_total)
        values = self._decay(clock)
        if warm > 0:
            ramp = steps / warm
            target = float(self._decay(clock._replace(steps=np.zeros(1)))[0])
            if self.warmup_mode == "burnin":
                warming = target * ramp**self.burnin_power
            else:
                start = (
                    self.default_warmup_start if self.warmup_start is None else self.warmup_start
                )
                warming = start + (target - start) * ramp
            values = np.where(steps < warm, warming, values)
        values = self._checked(
            np.broadcast_to(values, steps.shape).astype(np.float64), steps, run_total
        )
        return float(values) if values.ndim == 0 else values

    def factor(self, t: Steps, total_steps: int) -> Array | float:
        """``lr(t) / lr``: what multiplies each parameter group's base LR (LambdaLR convention)."""
        return self(t, total_steps) / self.lr

    def curve(self, total_steps: int) -> Array:
        """Every step's LR of a ``total_steps`` run, for plots and for replays at another length."""
        return np.asarray(self(np.arange(_check_total_steps(total_steps)), total_steps))

    @property
    def default_warmup_start(self) -> float:
        return float(getattr(self, "min_lr", 0.0))

    # -- PyTorch ------------------------------------------------------------

    def torch_scheduler(
        self, optimizer: torch.optim.Optimizer, total_steps: int, last_epoch: int = -1
    ) -> ScheduleLR:
        """A PyTorch LR scheduler that steps this schedule once per optimizer step.

        Each parameter group's LR at construction is its base and is multiplied
        by ``lr(t) / lr``; build the optimizer with ``lr=schedule.lr`` to get the
        searched peak, or give groups other LRs to keep their ratios. It sets the
        LR outright, as ``LambdaLR`` does, so it is not chainable
        (``ChainedScheduler`` would multiply nothing into it). ``last_epoch`` as
        in every PyTorch scheduler: the step already taken, for a resume without
        a ``state_dict`` (the groups then need ``initial_lr``). Past
        ``total_steps`` the closed form goes on (docs/schedules.md).
        """
        from lrsearch.torch_scheduler import ScheduleLR  # torch only when a scheduler is made

        return ScheduleLR(optimizer, self, total_steps, last_epoch)

    # -- serialisation ------------------------------------------------------

    def params(self) -> dict[str, Any]:
        """Every parameter by name, defaults included, as JSON-ready values."""
        return {
            field.name: list(value) if isinstance(value, tuple) else value
            for field in dataclasses.fields(self)
            for value in [getattr(self, field.name)]
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "family": self.family,
            "params": self.params(),
        }

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> Schedule:
        """The inverse of ``to_dict``; anything unknown, missing or mistyped is refused."""
        if not isinstance(data, Mapping):
            raise ScheduleError(f"a schedule must be a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - _DOCUMENT_KEYS)
        if unknown:
            raise ScheduleError(
                f"unknown key {unknown[0]!r} beside the schedule's; allowed: "
                f"{', '.join(sorted(_DOCUMENT_KEYS))} (a family's parameters go in 'params')"
            )
        if data.get("format") != FORMAT:
            raise ScheduleError(
                f"not an lrsearch schedule: format={data.get('format')!r}, expected {FORMAT!r}"
            )
        version = data.get("version")
        # ``true == 1`` in Python: only the integer itself is version 1.
        if type(version) is not int or version != FORMAT_VERSION:
            raise ScheduleError(
                f"unsupported schedule version={version!r}; "
                f"this lrsearch reads version {FORMAT_VERSION}"
            )
        params = data.get("params")
        if not isinstance(params, Mapping):
            raise ScheduleError(f"schedule 'params' must be a JSON object, got {params!r}")
        return make_schedule(data.get("family"), params)

    def save(
        self, path: str | os.PathLike[str], *, source: Mapping[str, Any] | None = None
    ) -> None:
        """Write the schedule as JSON (atomically: a reader never sees half a file; a failure
        is one ``LrsearchError`` and leaves nothing behind)."""
        document = self.to_dict()
        if source is not None:
            document["source"] = dict(source)
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(document, indent=2, allow_nan=False) + "\n"  # fails before any file
        write_outputs({target: lambda file: file.write_text(text, encoding="utf-8")}, "schedule")

    def describe(self) -> str:
        """The schedule in words: family and every parameter that differs from its default."""
        changed = [
            f"{field.name}={_short(getattr(self, field.name))}"
            for field in dataclasses.fields(self)
            if field.name == "lr" or getattr(self, field.name) != field.default
        ]
        return f"{self.family}({', '.join(changed)})"


FAMILIES: dict[str, type[Schedule]] = {}


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, tuple):
        return "(" + ", ".join(_short(v) for v in value) + ")"
    return repr(value)


def make_schedule(family: Any, params: Mapping[str, Any]) -> Schedule:
    """The one place a family name and a parameter mapping become a ``Schedule``."""
    cls = FAMILIES.get(family) if isinstance(family, str) else None
    if cls is None:
        raise ScheduleError(
            f"unknown schedule family {family!r}; known: {', '.join(sorted(FAMILIES))}"
        )
    names = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(params) - names)
    if unknown:
        raise ScheduleError(
            f"{family}: unknown parameter {unknown[0]!r}; allowed: {', '.join(sorted(names))}"
        )
    required = sorted(
        field.name
        for field in dataclasses.fields(cls)
        if field.default is dataclasses.MISSING and field.name not in params
    )
    if required:
        raise ScheduleError(f"{family}: missing parameter {required[0]!r}")
    return cls(**params)


def load_schedule(path: str | os.PathLike[str]) -> Schedule:
    """Read a schedule file written by ``Schedule.save`` or ``lrsearch best``."""
    data = read_document(
        path,
        "schedule",
        "JSON",
        lambda text: json.loads(text, object_pairs_hook=_unique_keys),
        json.JSONDecodeError,
        lambda problem: f"{problem.msg} at line {problem.lineno}",
        "a schedule is one JSON object of finite numbers",
        error=ScheduleError,
    )
    try:
        return Schedule.from_dict(data)
    except ScheduleError as error:
        raise ScheduleError(f"schedule file {str(path)!r}: {error}") from None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are unique: of a duplicate, ``json`` would keep the last."""
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ScheduleError(f"the key {key!r} appears twice in one object")
        seen[key] = value
    return seen


def _check_total_steps(total_steps: Any) -> int:
    if (
        isinstance(total_steps, bool)
        or not isinstance(total_steps, (int, np.integer))
        or total_steps < 1
    ):
        raise ScheduleError(
            f"total_steps={total_steps!r} is not allowed; it must be an integer >= 1"
        )
    return int(total_steps)


# -- parameter types ---------------------------------------------------------

_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _coerce(family: str, name: str, hint: Any, value: Any) -> Any:
    """Check one parameter against its annotation; ints become floats where floats are meant."""

    def refuse(expected: str) -> ScheduleError:
        return ScheduleError(f"{family}: {name}={value!r} has the wrong type; expected {expected}")

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [arg for arg in args if arg is not type(None)]
        return _coerce(family, name, inner, value)
    if origin is Literal:
        if value not in args:
            raise ScheduleError(
                f"{family}: {name}={value!r} is not allowed; {name} must be one of "
                + ", ".join(repr(arg) for arg in args)
            )
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise refuse("a list of numbers")
        return tuple(_coerce(family, name, args[0], item) for item in value)
    if hint is bool:
        if not isinstance(value, bool):
            raise refuse("true or false")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise refuse("a number")
        # False for nan, inf, and an integer beyond float's range (1 followed by 400 zeros).
        if not -sys.float_info.max <= value <= sys.float_info.max:
            raise ScheduleError(f"{family}: {name}={value!r} is not allowed; {name} must be finite")
        return float(value)
    raise TypeError(f"unsupported parameter annotation {hint!r}")  # a bug in a family definition


# ---------------------------------------------------------------------------
# Families: each one is its parameters plus the post-warmup formula.


@dataclass(frozen=True, kw_only=True)
class Constant(Schedule):
    """``lr`` throughout: the baseline every search must beat."""

    family: ClassVar[str] = "constant"

    def _decay(self, clock: Clock) -> Array:
        return np.full_like(clock.steps, self.lr)


@dataclass(frozen=True, kw_only=True)
class Step(Schedule):
    """``lr · gamma ** (number of milestones m_i ≤ u)``: PyTorch's MultiStepLR in fractions."""

    family: ClassVar[str] = "step"
    milestones: tuple[float, ...]
    gamma: float = 0.1

    def _validate(self) -> None:
        self._require(
            "milestones",
            _increasing_in_unit(self.milestones),
            "strictly increasing fractions in (0, 1]",
        )
        self._require("gamma", 0.0 < self.gamma <= 1.0, "in (0, 1]")

    def _decay(self, clock: Clock) -> Array:
        edges = _snap(np.asarray(self.milestones) * clock.total)
        passed = np.searchsorted(edges, clock.steps, side="right")
        return self.lr * self.gamma ** passed.astype(np.float64)


@dataclass(frozen=True, kw_only=True)
class Piecewise(Schedule):
    """``lr · values[i]`` on ``[b_i, b_{i+1})``: Keras's PiecewiseConstantDecay in factors of lr.

    Keras keeps ``values[i]`` up to and *including* step ``b_i``; here the new
    value starts *at* ``b_i`` (SCHEDULES.md), so Keras's boundary ``b`` (in
    steps) is the fraction ``(b + 1) / T``.
    """

    family: ClassVar[str] = "piecewise"
    boundaries: tuple[float, ...]
    values: tuple[float, ...]

    def _validate(self) -> None:
        self._require(
            "boundaries",
            _increasing_in_unit(self.boundaries),
            "strictly increasing fractions in (0, 1]",
        )
        self._require(
            "values",
            len(self.values) == len(self.boundaries) + 1 and all(0 < v <= 1 for v in self.values),
            f"{len(self.boundaries) + 1} factors of lr in (0, 1] (one more than the boundaries)",
        )

    def _decay(self, clock: Clock) -> Array:
        edges = _snap(np.asarray(self.boundaries) * clock.total)
        return self.lr * np.asarray(self.values)[np.searchsorted(edges, clock.steps, side="right")]


@dataclass(frozen=True, kw_only=True)
class _PeriodDecay(Schedule):
    """What exponential and inverse-time decay share: periods of ``D = decay_steps · T'``."""

    decay_rate: float
    decay_steps: float = 1.0
    staircase: bool = False

    def _validate(self) -> None:
        self._require(
            "decay_steps", self.decay_steps > 0, "> 0 (a fraction of the post-warmup run)"
        )

    def _periods(self, clock: Clock) -> Array:
        """``t'/D``, floored with ``staircase``."""
        periods = clock.steps / (self.decay_steps * clock.total)
        return _floor(periods) if self.staircase else periods


@dataclass(frozen=True, kw_only=True)
class Exponential(_PeriodDecay):
    """``max(min_lr, lr · decay_rate ** (t'/D))`` with ``D = decay_steps · T'``.

    ``staircase`` floors ``t'/D``.
    """

    family: ClassVar[str] = "exponential"
    min_lr: float = 0.0

    def _validate(self) -> None:
        super()._validate()
        self._require("decay_rate", 0.0 < self.decay_rate <= 1.0, "in (0, 1]")

    def _decay(self, clock: Clock) -> Array:
        return np.maximum(self.min_lr, self.lr * self.decay_rate ** self._periods(clock))


@dataclass(frozen=True, kw_only=True)
class InverseTime(_PeriodDecay):
    """``lr / (1 + decay_rate · t'/D)``: Keras's InverseTimeDecay; ``staircase`` floors ``t'/D``."""

    family: ClassVar[str] = "inverse_time"

    def _validate(self) -> None:
        super()._validate()
        self._require("decay_rate", self.decay_rate > 0, "> 0")

    def _decay(self, clock: Clock) -> Array:
        return self.lr / (1.0 + self.decay_rate * self._periods(clock))


@dataclass(frozen=True, kw_only=True)
class InverseSqrt(Schedule):
    """``lr · (1 + t'/tau) ** -0.5``; article 004's SquareRootScheduler is ``tau`` = one step."""

    family: ClassVar[str] = "inverse_sqrt"
    tau: float

    def _validate(self) -> None:
        self._require("tau", self.tau > 0, "> 0 (a fraction of the post-warmup run)")

    def _decay(self, clock: Clock) -> Array:
        return self.lr * (1.0 + clock.steps / (self.tau * clock.total)) ** -0.5


@dataclass(frozen=True, kw_only=True)
class Polynomial(Schedule):
    """Polynomial decay from ``lr`` to ``min_lr`` over ``decay_period`` (fraction of ``T'``).

    Without ``cycle`` it holds ``min_lr`` after the period. With ``cycle`` it
    follows Keras: the period stretches to the next multiple ``P·ceil(u/P)``,
    so the LR jumps back up at every multiple of ``P``.
    """

    family: ClassVar[str] = "polynomial"
    power: float = 1.0
    min_lr: float = 0.0
    decay_period: float = 1.0
    cycle: bool = False

    def _validate(self) -> None:
        self._require("power", self.power > 0, "> 0")
        self._require(
            "decay_period", self.decay_period > 0, "> 0 (a fraction of the post-warmup run)"
        )

    def _decay(self, clock: Clock) -> Array:
        period = self.decay_period * clock.total
        if self.cycle:
            # Snapping can leave ``t'`` a rounding error past ``P_k``; clipping keeps a
            # fractional power away from a negative base (NaN).
            cycle_period = period * np.maximum(_ceil(clock.steps / period), 1.0)
            done = np.minimum(clock.steps / cycle_period, 1.0)
        else:
            done = np.minimum(clock.steps, period) / period
        return (self.lr - self.min_lr) * (1.0 - done) ** self.power + self.min_lr


@dataclass(frozen=True, kw_only=True)
class Cosine(Schedule):
    """Half a cosine from ``lr`` to ``min_lr`` over ``decay_period`` (of ``T'``), then ``min_lr``.

    Article 000's code rises again after the period; holding ``min_lr`` is the fix.
    """

    family: ClassVar[str] = "cosine"
    min_lr: float = 0.0
    decay_period: float = 1.0

    def _validate(self) -> None:
        self._require(
            "decay_period", self.decay_period > 0, "> 0 (a fraction of the post-warmup run)"
        )

    def _decay(self, clock: Clock) -> Array:
        period = self.decay_period * clock.total
        return _cos_anneal(self.lr, self.min_lr, np.minimum(clock.steps, period) / period)


@dataclass(frozen=True, kw_only=True)
class CosineRestarts(Schedule):
    """SGDR: cosine cycles ``first_cycle · multiplier**k`` long (``first_cycle`` of ``T'``).

    Cycle ``k`` peaks at ``max(min_lr, lr · peak_decay**k)``, optionally ramping up from
    ``min_lr`` over its first ``cycle_warmup`` fraction (article 000's
    multi-cycle schedule; its ``multi=0.25`` is ``multiplier=1.25``). The cycle
    index is the closed form of the geometric series, corrected at exact cycle
    ends where the float logarithm lands one cycle short. Keras's
    CosineDecayRestarts is this with ``min_lr = alpha · lr`` when
    ``m_mul = 1`` or ``alpha = 0``; otherwise Keras scales ``alpha`` into the
    peak, and here it does not.
    """

    family: ClassVar[str] = "cosine_restarts"
    first_cycle: float
    multiplier: float = 1.0
    peak_decay: float = 1.0
    cycle_warmup: float = 0.0
    min_lr: float = 0.0

    def _validate(self) -> None:
        self._require(
            "first_cycle",
            0 < self.first_cycle <= 1,
            "in (0, 1] (a fraction of the post-warmup run)",
        )
        self._require("multiplier", self.multiplier >= 1, ">= 1")
        self._require("peak_decay", 0 < self.peak_decay <= 1, "in (0, 1]")
        self._require("cycle_warmup", 0 <= self.cycle_warmup < 1, "in [0, 1)")

    def _cycle_start(self, first: float, k: Array) -> Array:
        if self.multiplier == 1.0:
            return _snap(first * k)
        return _snap(first * (self.multiplier**k - 1.0) / (self.multiplier - 1.0))

    def _decay(self, clock: Clock) -> Array:
        first = float(_snap(self.first_cycle * clock.total))
        if self.multiplier == 1.0:
            k = np.floor(clock.steps / first)
        else:
            k = np.floor(
                np.log1p(clock.steps / first * (self.multiplier - 1.0)) / math.log(self.multiplier)
            )
        k = np.where(self._cycle_start(first, k + 1) <= clock.steps, k + 1, k)
        k = np.where(self._cycle_start(first, k) > clock.steps, k - 1, k)
        frac = (clock.steps - self._cycle_start(first, k)) / (first * self.multiplier**k)
        # Decayed peaks stop at the floor: below it a cycle would rise towards min_lr.
        peak = np.maximum(self.min_lr, self.lr * self.peak_decay**k)
        if self.cycle_warmup == 0:
            return _cos_anneal(peak, self.min_lr, frac)
        ramp = self.min_lr + (peak - self.min_lr) * frac / self.cycle_warmup
        anneal = _cos_anneal(
            peak, self.min_lr, (frac - self.cycle_warmup) / (1 - self.cycle_warmup)
        )
        return np.where(frac < self.cycle_warmup, ramp, anneal)


@dataclass(frozen=True, kw_only=True)
class Cyclic(Schedule):
    """Smith's cyclical LR between ``min_lr`` and ``lr``; PyTorch's CyclicLR with equal half-cycles.

    ``step_size`` is the half-cycle as a fraction of the whole run ``T``.
    ``triangular2`` halves the amplitude every cycle; ``exp_range`` multiplies
    it by ``gamma ** t'`` with ``t'`` in steps, so it alone does not stretch
    with the run length.
    """

    family: ClassVar[str] = "cyclic"
    step_size: float
    mode: Literal["triangular", "triangular2", "exp_range"] = "triangular"
    gamma: float = 1.0
    min_lr: float = 0.0

    def _validate(self) -> None:
        self._require("step_size", 0 < self.step_size <= 1, "in (0, 1] (a fraction of the run)")
        self._require("gamma", 0 < self.gamma <= 1, "in (0, 1]")

    def _decay(self, clock: Clock) -> Array:
        half = float(_snap(self.step_size * clock.run_total))
        position = clock.steps / (2 * half)
        cycle = _floor(1.0 + position)
        x = np.maximum(1.0 + position - cycle, 0.0)  # snapped ``cycle`` may overshoot by a hair
        height = np.where(x <= 0.5, 2 * x, 2 * (1 - x))
        if self.mode == "triangular2":
            height = height / 2.0 ** (cycle - 1)
        elif self.mode == "exp_range":
            height = height * self.gamma**clock.steps
        return self.min_lr + (self.lr - self.min_lr) * height


@dataclass(frozen=True, kw_only=True)
class OneCycle(Schedule):
    """Smith's one-cycle: ``lr/div_factor`` up to ``lr`` over ``pct_start``, then down to the floor.

    Both phases use the ``anneal`` shape, as PyTorch's OneCycleLR does. Step
    counting differs from PyTorch: OneCycleLR ends its phases at steps
    ``pct_start·T - 1`` and ``T - 1``; here the peak is at ``u = pct_start`` and
    the floor is reached at ``u = 1`` (one step after the last), so the same
    curve is shifted by at most one step.
    """

    family: ClassVar[str] = "one_cycle"
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    anneal: Literal["cos", "linear"] = "cos"

    def _validate(self) -> None:
        self._require("pct_start", 0 < self.pct_start < 1, "in (0, 1)")
        self._require("div_factor", self.div_factor >= 1, ">= 1")
        self._require("final_div_factor", self.final_div_factor >= 1, ">= 1")

    def _shape(self, high: float, low: float, frac: Array) -> Array:
        if self.anneal == "cos":
            return _cos_anneal(high, low, frac)
        return high + (low - high) * frac

    def _decay(self, clock: Clock) -> Array:
        start = self.lr / self.div_factor
        end = start / self.final_div_factor
        u = np.minimum(clock.u, 1.0)
        rise = self._shape(start, self.lr, u / self.pct_start)
        fall = self._shape(self.lr, end, (u - self.pct_start) / (1 - self.pct_start))
        return np.where(u < self.pct_start, rise, fall)


@dataclass(frozen=True, kw_only=True)
class Linear(Schedule):
    """A straight line from ``lr`` to ``min_lr`` over the post-warmup run."""

    family: ClassVar[str] = "linear"
    min_lr: float = 0.0

    def _decay(self, clock: Clock) -> Array:
        return self.lr + (self.min_lr - self.lr) * np.minimum(clock.u, 1.0)


@dataclass(frozen=True, kw_only=True)
class Wsd(Schedule):
    """Warmup-stable-decay: ``lr`` until ``1 - decay_fraction``, then down to ``min_lr``."""

    family: ClassVar[str] = "wsd"
    decay_fraction: float = 0.2
    decay: Literal["linear", "cosine", "1-sqrt"] = "linear"
    min_lr: float = 0.0

    def _validate(self) -> None:
        self._require("decay_fraction", 0 < self.decay_fraction <= 1, "in (0, 1]")

    def _decay(self, clock: Clock) -> Array:
        x = np.clip((clock.u - (1 - self.decay_fraction)) / self.decay_fraction, 0.0, 1.0)
        if self.decay == "cosine":
            return _cos_anneal(self.lr, self.min_lr, x)
        shape = x if self.decay == "linear" else np.sqrt(x)
        return self.lr + (self.min_lr - self.lr) * shape


def _increasing_in_unit(points: tuple[float, ...]) -> bool:
    """Strictly increasing in (0, 1]: a last point at 1.0 is the run's end (it acts on replays
    past ``T``, and article 004's ``milestones=[15, 30]`` on 30 epochs has one)."""
    return (
        len(points) > 0
        and points[-1] <= 1.0
        and all(a < b for a, b in itertools.pairwise((0.0, *points)))
    )


# ---------------------------------------------------------------------------
# Absolute-step constructors with the reference articles' own signatures.
# Each returns the fractional schedule that gives the same LRs on a run of
# ``total_steps`` steps, so it can be searched around and replayed.


def polynomial_decay(
    initial_lr: float,
    decay_period: int,
    power: float,
    min_lr: float,
    cycle: bool,
    *,
    total_steps: int,
) -> Polynomial:
    """Article 000's ``PolynomialDecay(initial_lr, decay_period, power, min_lr, cycle)``."""
    total = _check_total_steps(total_steps)
    return Polynomial(
        lr=initial_lr, power=power, min_lr=min_lr, decay_period=decay_period / total, cycle=cycle
    )


def cosine_warmup_decay(
    initial_lr: float,
    min_lr: float,
    warmup_step: int,
    total_step: int,
    multi: float | None = None,
    *,
    total_steps: int | None = None,
) -> Cosine | CosineRestarts:
    """Article 000's ``CosineWarmupDecay(initial_lr, min_lr, warmup_step, total_step[, multi])``.

    Without ``multi``: a linear ramp from ``min_lr`` over ``warmup_step``, then
    a cosine ending at ``total_step`` (held at ``min_lr`` after, where the
    article rose again). With ``multi``: cycles of ``total_step·(1+multi)**k``
    steps, each ramping over the same share ``warmup_step/total_step``, with
    the cycle counted from the step given rather than the article's private
    counter. ``total_steps`` is the run's length (default ``total_step``).
    """
    run = _check_total_steps(total_step if total_steps is None else total_steps)
    if multi is None:
        return Cosine(
            lr=initial_lr,
            min_lr=min_lr,
            warmup=warmup_step / run,
            decay_period=(total_step - warmup_step) / (run - warmup_step),
        )
    return CosineRestarts(
        lr=initial_lr,
        min_lr=min_lr,
        first_cycle=total_step / run,
        multiplier=1.0 + multi,
        cycle_warmup=warmup_step / total_step,
    )


def exponential_decay_with_burnin(
    lr: float,
    decay_steps: int,
    decay_rate: float,
    burnin_steps: int,
    staircase: bool = False,
    *,
    total_steps: int,
) -> Exponential:
    """Article 001's ``exponential_decay_with_burnin``: a darknet burn-in, then exponential decay.

    The article's TensorFlow branches decay during burn-in and freeze after
    it; SCHEDULES.md fixes the intent instead: ``lr · (t/burnin)**4`` up to
    ``lr``, then ``lr · decay_rate ** ((t - burnin) / decay_steps)``.
    """
    total = _check_total_steps(total_steps)
    return Exponential(
        lr=lr,
        warmup=burnin_steps / total,
        warmup_mode="burnin",
        decay_rate=decay_rate,
        decay_steps=decay_steps / (total - burnin_steps),
        staircase=staircase,
    )


def cyclic_lr(
    base_lr: float,
    max_lr: float,
    step_size: int,
    mode: Literal["triangular", "triangular2", "exp_range"] = "triangular",
    gamma: float = 1.0,
    *,
    total_steps: int,
) -> Cyclic:
    """Article 002's cyclical LR (Smith): ``base_lr`` to ``max_lr`` and back, in steps."""
    total = _check_total_steps(total_steps)
    return Cyclic(lr=max_lr, min_lr=base_lr, step_size=step_size / total, mode=mode, gamma=gamma)


def square_root_scheduler(lr: float = 0.1, *, total_steps: int) -> InverseSqrt:
    """Article 004's ``SquareRootScheduler(lr)``: ``lr · (t + 1) ** -0.5``."""
    return InverseSqrt(lr=lr, tau=1.0 / _check_total_steps(total_steps))


def cosine_scheduler(
    max_update: int,
    base_lr: float = 0.01,
    final_lr: float = 0.0,
    warmup_steps: int = 0,
    warmup_begin_lr: float = 0.0,
    *,
    total_steps: int | None = None,
) -> Cosine:
    """Article 004's ``CosineScheduler``, with its signature and defaults.

    Linear warmup from ``warmup_begin_lr``, cosine to ``final_lr`` at
    ``max_update``, then ``final_lr``. ``total_steps`` defaults to ``max_update``.
    """
    run = _check_total_steps(max_update if total_steps is None else total_steps)
    return Cosine(
        lr=base_lr,
        min_lr=final_lr,
        warmup=warmup_steps / run,
        warmup_start=warmup_begin_lr if warmup_steps else None,
        decay_period=(max_update - warmup_steps) / (run - warmup_steps),
    )


def multistep_lr(lr: float, milestones: list[int], gamma: float = 0.1, *, total_steps: int) -> Step:
    """Article 004's ``MultiStepLR(optimizer, milestones, gamma)`` with milestones in steps."""
    total = _check_total_steps(total_steps)
    return Step(lr=lr, milestones=tuple(m / total for m in milestones), gamma=gamma)
