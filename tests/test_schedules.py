"""The schedule contract of SCHEDULES.md: pure in ``(t, T)``, replayable, serialisable, strict."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import re
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.optim.lr_scheduler import LambdaLR

from lrsearch.errors import LrsearchError
from lrsearch.schedules import (
    FAMILIES,
    FORMAT,
    Constant,
    Cosine,
    CosineRestarts,
    Cyclic,
    Exponential,
    InverseSqrt,
    InverseTime,
    Linear,
    OneCycle,
    Piecewise,
    Polynomial,
    Schedule,
    ScheduleError,
    Step,
    Wsd,
    cosine_scheduler,
    load_schedule,
    make_schedule,
    multistep_lr,
)
from lrsearch.torch_scheduler import ScheduleLR

Array = npt.NDArray[np.float64]

# One schedule per family with its parameters away from the defaults.
EXAMPLES: dict[str, Schedule] = {
    schedule.family: schedule
    for schedule in [
        Constant(lr=0.1, warmup=0.1, warmup_start=0.01),
        Step(lr=0.1, milestones=(0.3, 0.6), gamma=0.5, warmup=0.05, warmup_mode="burnin"),
        Piecewise(lr=0.1, boundaries=(0.25, 0.5), values=(1.0, 0.5, 0.2)),
        Exponential(lr=0.1, decay_rate=0.5, decay_steps=0.2, staircase=True, min_lr=1e-3),
        InverseTime(lr=0.1, decay_rate=2.0, decay_steps=0.1, staircase=True),
        InverseSqrt(lr=0.1, tau=0.01, warmup=0.05),
        Polynomial(lr=0.1, power=2.0, min_lr=1e-3, decay_period=0.5, cycle=True),
        Cosine(lr=0.1, min_lr=1e-4, decay_period=0.9, warmup=0.1),
        CosineRestarts(
            lr=0.1, first_cycle=0.1, multiplier=2.0, peak_decay=0.8, cycle_warmup=0.1, min_lr=1e-4
        ),
        Cyclic(lr=0.1, step_size=0.05, mode="exp_range", gamma=0.999, min_lr=1e-3),
        OneCycle(lr=0.1, pct_start=0.25, div_factor=10.0, final_div_factor=100.0, anneal="linear"),
        Linear(lr=0.1, min_lr=1e-3, warmup=0.2, warmup_mode="burnin", burnin_power=2.0),
        Wsd(lr=0.1, decay_fraction=0.3, decay="1-sqrt", min_lr=1e-4, warmup=0.05),
    ]
}


def test_examples_cover_every_family() -> None:
    assert set(EXAMPLES) == set(FAMILIES)


def _optimizer(*lrs: float) -> torch.optim.SGD:
    groups = [{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs]
    return torch.optim.SGD(groups, lr=lrs[0], momentum=0.9)


def _drive(scheduler: ScheduleLR | LambdaLR, steps: int) -> list[list[float]]:
    """Every group's LR for each of ``steps`` optimizer steps."""
    optimizer = scheduler.optimizer
    lrs = []
    for _ in range(steps):
        lrs.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return lrs


# ---------------------------------------------------------------------------
# Properties over random valid schedules of every family


def _fractions(count: int) -> st.SearchStrategy[tuple[float, ...]]:
    """``count`` strictly increasing fractions in (0, 1)."""
    points = st.floats(0.01, 0.99)
    return st.sets(points, min_size=count, max_size=count).map(lambda s: tuple(sorted(s)))


def _family_params(lr: float) -> dict[str, st.SearchStrategy[dict[str, Any]]]:
    min_lr = st.floats(0.0, 1.0).map(lambda ratio: ratio * lr)
    period = st.floats(0.01, 1.0)
    piecewise = st.integers(1, 4).flatmap(
        lambda n: st.fixed_dictionaries(
            {
                "boundaries": _fractions(n),
                "values": st.lists(st.floats(0.01, 1.0), min_size=n + 1, max_size=n + 1),
            }
        )
    )
    return {
        "constant": st.just({}),
        "step": st.fixed_dictionaries(
            {"milestones": st.integers(1, 4).flatmap(_fractions), "gamma": st.floats(0.01, 1.0)}
        ),
        "piecewise": piecewise,
        "exponential": st.fixed_dictionaries(
            {
                "decay_rate": st.floats(0.01, 1.0),
                "decay_steps": period,
                "staircase": st.booleans(),
                "min_lr": min_lr,
            }
        ),
        "inverse_time": st.fixed_dictionaries(
            {"decay_rate": st.floats(0.01, 10.0), "decay_steps": period, "staircase": st.booleans()}
        ),
        "inverse_sqrt": st.fixed_dictionaries({"tau": st.floats(1e-4, 1.0)}),
        "polynomial": st.fixed_dictionaries(
            {
                "power": st.floats(0.1, 4.0),
                "min_lr": min_lr,
                "decay_period": period,
                "cycle": st.booleans(),
            }
        ),
        "cosine": st.fixed_dictionaries({"min_lr": min_lr, "decay_period": period}),
        "cosine_restarts": st.fixed_dictionaries(
            {
                "first_cycle": st.floats(0.02, 1.0),
                "multiplier": st.floats(1.0, 3.0),
                "peak_decay": st.floats(0.1, 1.0),
                "cycle_warmup": st.sampled_from([0.0, 0.1]) | st.floats(0.0, 0.5),
                "min_lr": min_lr,
            }
        ),
        "cyclic": st.fixed_dictionaries(
            {
                "step_size": st.floats(0.01, 0.5),
                "mode": st.sampled_from(["triangular", "triangular2", "exp_range"]),
                "gamma": st.floats(0.9, 1.0),
                "min_lr": min_lr,
            }
        ),
        "one_cycle": st.fixed_dictionaries(
            {
                "pct_start": st.floats(0.05, 0.95),
                "div_factor": st.floats(1.0, 100.0),
                "final_div_factor": st.floats(1.0, 1e4),
                "anneal": st.sampled_from(["cos", "linear"]),
            }
        ),
        "linear": st.fixed_dictionaries({"min_lr": min_lr}),
        "wsd": st.fixed_dictionaries(
            {
                "decay_fraction": st.floats(0.05, 1.0),
                "decay": st.sampled_from(["linear", "cosine", "1-sqrt"]),
                "min_lr": min_lr,
            }
        ),
    }


def test_strategy_covers_every_family() -> None:
    assert set(_family_params(1.0)) == set(FAMILIES)


def _warmup_params(
    lr: float, warmup: st.SearchStrategy[float]
) -> st.SearchStrategy[dict[str, Any]]:
    linear = st.fixed_dictionaries(
        {
            "warmup": warmup,
            "warmup_mode": st.just("linear"),
            "warmup_start": st.none() | st.floats(0.0, 1.0).map(lambda ratio: ratio * lr),
        }
    )
    burnin = st.fixed_dictionaries(
        {"warmup": warmup, "warmup_mode": st.just("burnin"), "burnin_power": st.floats(0.5, 6.0)}
    )
    return linear | burnin


ALL = tuple(sorted(FAMILIES))
ANY_WARMUP = st.just(0.0) | st.floats(0.0, 0.5)


@st.composite
def schedules(
    draw: st.DrawFn, families: tuple[str, ...] = ALL, warmup: st.SearchStrategy[float] = ANY_WARMUP
) -> Schedule:
    family = draw(st.sampled_from(families))
    lr = draw(st.floats(1e-5, 10.0))
    params = draw(_family_params(lr)[family]) | draw(_warmup_params(lr, warmup))
    return make_schedule(family, {"lr": lr, **params})


TOTAL_STEPS = st.integers(1, 3000)
# Families whose post-warmup curve starts at lr; the others start lower by
# definition (cyclic at min_lr, one_cycle at lr/div_factor, piecewise at values[0]).
STARTS_AT_PEAK = tuple(sorted(set(FAMILIES) - {"cyclic", "one_cycle", "piecewise"}))


def _floor(schedule: Schedule) -> float:
    if isinstance(schedule, OneCycle):
        return schedule.lr / (schedule.div_factor * schedule.final_div_factor)
    return float(getattr(schedule, "min_lr", 0.0))


@settings(max_examples=200, deadline=None)
@given(schedules(), TOTAL_STEPS)
def test_values_are_finite_within_lr_and_above_the_floor(schedule: Schedule, total: int) -> None:
    """Also past the end of the run, where ScheduleLR falls back to the closed form."""
    steps = np.arange(2 * total)
    values = schedule(steps, total)
    assert np.all(np.isfinite(values))
    assert np.all(values >= 0.0)
    assert np.all(values <= schedule.lr * (1 + 1e-12))
    after_warmup = values[steps >= schedule.warmup * total]
    assert np.all(after_warmup >= _floor(schedule) - 1e-12 * schedule.lr)


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 2000), st.data())
def test_no_jump_at_the_warmup_boundary(total: int, data: st.DataObject) -> None:
    """At ``t = W·T`` the value is where the family starts (lr for most); the last warmup step
    is at most one ramp step away from it."""
    warm = data.draw(st.integers(1, total - 1), label="warmup steps")
    schedule = data.draw(schedules(ALL, st.just(warm / total)), label="schedule")
    family_start = dataclasses.replace(schedule, warmup=0.0)(0, total - warm)
    before, at = schedule(np.array([warm - 1, warm]), total)
    assert at == pytest.approx(family_start, rel=1e-12)
    if schedule.family in STARTS_AT_PEAK and not getattr(schedule, "cycle_warmup", 0.0):
        assert at == pytest.approx(schedule.lr, rel=1e-12)
    ramp_from = 0.0 if schedule.warmup_mode == "burnin" else schedule.params()["warmup_start"]
    if ramp_from is None:
        ramp_from = schedule.default_warmup_start
    steepness = schedule.burnin_power if schedule.warmup_mode == "burnin" else 1.0
    ramp_step = abs(family_start - ramp_from) / warm * max(1.0, steepness)
    assert abs(at - before) <= ramp_step * (1 + 1e-9) + 1e-15


@settings(max_examples=100, deadline=None)
@given(schedules(), TOTAL_STEPS, st.data())
def test_vectorised_equals_scalar(schedule: Schedule, total: int, data: st.DataObject) -> None:
    points = data.draw(
        st.lists(st.integers(0, 2 * total) | st.floats(0.0, 2.0 * total), min_size=1, max_size=8)
    )
    vectorised = schedule(np.array(points, dtype=np.float64), total)
    scalar = [schedule(t, total) for t in points]
    assert all(isinstance(value, float) for value in scalar)
    np.testing.assert_allclose(vectorised, scalar, rtol=1e-12, atol=0.0)


@settings(max_examples=40, deadline=None)
@given(schedules(), st.integers(1, 200), st.data())
def test_resumed_scheduler_continues_like_one_that_never_stopped(
    schedule: Schedule, total: int, data: st.DataObject
) -> None:
    stop = data.draw(st.integers(0, total), label="checkpoint step")
    after = data.draw(st.integers(1, 50), label="steps after")
    never_stopped = _drive(schedule.torch_scheduler(_optimizer(schedule.lr), total), stop + after)

    scheduler = schedule.torch_scheduler(_optimizer(schedule.lr), total)
    _drive(scheduler, stop)
    buffer = io.BytesIO()
    torch.save(
        {"optimizer": scheduler.optimizer.state_dict(), "scheduler": scheduler.state_dict()}, buffer
    )
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)

    # Built from another schedule: the checkpoint must carry the one that ran.
    resumed = Constant(lr=1.0).torch_scheduler(_optimizer(schedule.lr), total)
    resumed.optimizer.load_state_dict(checkpoint["optimizer"])
    resumed.load_state_dict(checkpoint["scheduler"])
    assert resumed.schedule == schedule
    assert _drive(resumed, after) == never_stopped[stop:]


# ---------------------------------------------------------------------------
# Replay at another length


def _jumps(curve: Array) -> list[int]:
    """Steps where the LR moves by more than 5% of its peak: drops and restarts, not ramps."""
    return [int(t) + 1 for t in np.flatnonzero(np.abs(np.diff(curve)) > 0.05 * curve.max())]


def _peaks(curve: Array) -> list[int]:
    return [t for t in range(1, len(curve) - 1) if curve[t - 1] < curve[t] >= curve[t + 1]]


@pytest.mark.parametrize(
    ("schedule", "events", "on_1000"),
    [
        (Step(lr=0.1, milestones=(0.3, 0.6)), _jumps, [300, 600]),
        (Piecewise(lr=0.1, boundaries=(0.25, 0.5), values=(1.0, 0.5, 0.2)), _jumps, [250, 500]),
        # warmup 100 steps, then D = 0.25·900 steps: drops at 100 + 225k
        (
            Exponential(lr=0.1, decay_rate=0.5, decay_steps=0.25, staircase=True, warmup=0.1),
            _jumps,
            [325, 550, 775],
        ),
        (Cosine(lr=0.1, warmup=0.1), _peaks, [100]),
        (Cosine(lr=0.1, warmup=0.2, warmup_mode="burnin"), _peaks, [200]),
        # warmup 100 steps, then cycles of 180 and 360 steps
        (CosineRestarts(lr=0.1, first_cycle=0.2, multiplier=2.0, warmup=0.1), _jumps, [280, 640]),
        (Cyclic(lr=0.1, min_lr=0.01, step_size=0.1), _peaks, [100, 300, 500, 700, 900]),
        (OneCycle(lr=0.1, pct_start=0.3), _peaks, [300]),
    ],
)
def test_replay_keeps_events_at_the_same_fractions(
    schedule: Schedule, events: Callable[[Array], list[int]], on_1000: list[int]
) -> None:
    assert events(schedule.curve(1000)) == on_1000
    assert events(schedule.curve(9000)) == [9 * t for t in on_1000]


# ---------------------------------------------------------------------------
# ScheduleLR in a PyTorch optimizer


def _plain_json(value: Any) -> bool:
    """Only JSON's own types, exactly: no tuples, tensors, numpy scalars or other objects."""
    if type(value) is dict:
        return all(type(k) is str and _plain_json(v) for k, v in value.items())
    if type(value) is list:
        return all(_plain_json(item) for item in value)
    return value is None or type(value) in (bool, int, float, str)


def test_param_groups_keep_their_own_base_lrs_like_lambdalr() -> None:
    schedule, total = EXAMPLES["cosine"], 300
    base_lrs = (0.1, 0.01, 0.5)
    ours = schedule.torch_scheduler(_optimizer(*base_lrs), total)
    reference = LambdaLR(_optimizer(*base_lrs), lambda t: float(schedule.factor(t, total)))
    lrs = _drive(ours, total)
    np.testing.assert_allclose(lrs, _drive(reference, total), rtol=1e-12)
    factors = np.asarray(schedule.factor(np.arange(total), total))
    np.testing.assert_allclose(lrs, np.outer(factors, base_lrs), rtol=1e-12)
    assert ours.get_last_lr() == [group["lr"] for group in ours.optimizer.param_groups]
    assert ours.get_last_lr() == pytest.approx(
        [b * schedule.factor(total, total) for b in base_lrs]
    )


def test_state_dict_is_plain_json_with_the_schedule() -> None:
    schedule = EXAMPLES["cosine_restarts"]
    scheduler = schedule.torch_scheduler(_optimizer(0.1, 0.02), 100)
    _drive(scheduler, 7)
    state = scheduler.state_dict()
    assert _plain_json(state), state
    assert json.loads(json.dumps(state, allow_nan=False)) == state
    assert state["last_epoch"] == 7
    assert Schedule.from_dict(state["schedule"]) == schedule


def test_torch_scheduler_runs_past_total_steps_on_the_closed_form() -> None:
    schedule, total = EXAMPLES["cyclic"], 100
    lrs = _drive(schedule.torch_scheduler(_optimizer(schedule.lr), total), 3 * total)
    np.testing.assert_allclose(
        [lr for (lr,) in lrs], schedule(np.arange(3 * total), total), rtol=1e-12
    )


# ---------------------------------------------------------------------------
# JSON


@pytest.mark.parametrize("family", ALL)
def test_json_round_trip(family: str, tmp_path: Path) -> None:
    schedule = EXAMPLES[family]
    document = json.loads(json.dumps(schedule.to_dict(), allow_nan=False))
    assert document["format"] == FORMAT
    restored = Schedule.from_dict(document)
    assert restored == schedule
    assert hash(restored) == hash(schedule)
    assert type(restored) is type(schedule)

    path = tmp_path / "nested" / f"{family}.json"
    schedule.save(path, source={"study": "demo", "trial": 3})
    assert load_schedule(path) == schedule
    assert json.loads(path.read_text())["source"] == {"study": "demo", "trial": 3}


@settings(max_examples=100, deadline=None)
@given(schedules())
def test_json_round_trip_of_random_schedules(schedule: Schedule) -> None:
    restored = Schedule.from_dict(json.loads(json.dumps(schedule.to_dict(), allow_nan=False)))
    assert restored == schedule
    assert hash(restored) == hash(schedule)


def _document(family: str = "cosine", **params: Any) -> dict[str, Any]:
    return {"format": FORMAT, "version": 1, "family": family, "params": {"lr": 0.1, **params}}


@pytest.mark.parametrize(
    ("document", "fragments"),
    [
        (_document("cosine_anealing"), ["'cosine_anealing'", *sorted(FAMILIES)]),
        (_document(min_lrr=0.0), ["cosine", "'min_lrr'"]),
        (_document("step"), ["step", "missing", "'milestones'"]),
        ({**_document(), "params": {}}, ["missing", "'lr'"]),
        (_document(min_lr="0.001"), ["min_lr='0.001'", "a number"]),
        (_document(min_lr=True), ["min_lr=True", "a number"]),
        (_document("exponential", decay_rate=0.5, staircase=1), ["staircase=1", "true or false"]),
        (_document(min_lr=[0.001]), ["min_lr=[0.001]", "a number"]),
        (_document("step", milestones=0.5), ["milestones=0.5", "a list of numbers"]),
        (_document("cyclic", step_size=0.1, mode="sawtooth"), ["mode='sawtooth'", "'triangular'"]),
        ({**_document(), "format": "optax.schedule"}, ["format='optax.schedule'", FORMAT]),
        ({**_document(), "version": 2}, ["version=2"]),
        ({**_document(), "version": True}, ["version=True"]),
        ({**_document(), "params": [0.1]}, ["'params'", "[0.1]"]),
        ([_document()], ["JSON object", "list"]),
    ],
)
def test_bad_documents_are_refused_naming_the_offender(document: Any, fragments: list[str]) -> None:
    with pytest.raises(ScheduleError) as error:
        Schedule.from_dict(document)
    for fragment in fragments:
        assert fragment in str(error.value)


def _truncated(text: str) -> bytes:
    return text[: len(text) // 2].encode()


def _lr(value: str) -> Callable[[str], bytes]:
    return lambda text: re.sub(r'"lr": [^,\n]+', f'"lr": {value}', text).encode()


@pytest.mark.parametrize(
    ("edit", "fragment"),
    [
        (lambda text: b"{format: lrsearch", "not valid JSON"),
        (_truncated, "not valid JSON"),
        (lambda text: b"", "not valid JSON"),
        (lambda text: b"\x89PNG\r\n\x1a\n\x00\xff\xfe", "not UTF-8 text .byte 0x89 at offset 0"),
        (lambda text: text.encode("utf-16"), "not UTF-8 text"),
        (lambda text: b"[" * 100_000 + b"]" * 100_000, "nests too deeply"),
        (lambda text: b'{"a": ' * 100_000 + b"1" + b"}" * 100_000, "nests too deeply"),
        (_lr("1" + "0" * 5000), "has a huge number"),
        (_lr("1" + "0" * 400), "lr must be finite"),
        (_lr("-1" + "0" * 400), "lr must be finite"),
        (_lr("1e400"), "lr=inf is not allowed"),
        (_lr("NaN"), "lr=nan is not allowed"),
        (_lr("Infinity"), "lr=inf is not allowed"),
    ],
)
def test_bad_files_are_refused_naming_the_file(
    edit: Callable[[str], bytes], fragment: str, tmp_path: Path
) -> None:
    path = tmp_path / "schedule.json"
    EXAMPLES["cosine"].save(path)
    path.write_bytes(edit(path.read_text()))
    with pytest.raises(ScheduleError, match=fragment) as error:
        load_schedule(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_saving_onto_a_folder_fails_without_leaving_a_temporary_file(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    with pytest.raises(LrsearchError, match="is a folder"):
        EXAMPLES["cosine"].save(folder)
    assert sorted(tmp_path.rglob("*")) == [folder]


def test_missing_file_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.json"
    with pytest.raises(ScheduleError, match="cannot read") as error:
        load_schedule(path)
    assert str(path) in str(error.value)


def test_a_file_with_a_bad_schedule_names_file_and_parameter(tmp_path: Path) -> None:
    path = tmp_path / "schedule.json"
    path.write_text(json.dumps(_document(lr=-1.0)))
    with pytest.raises(ScheduleError) as error:
        load_schedule(path)
    assert str(path) in str(error.value)
    assert "lr=-1.0" in str(error.value)


# ---------------------------------------------------------------------------
# Bad parameters (SCHEDULES.md): refused at construction, naming parameter, value, range


def _with(family: str, **changes: Any) -> dict[str, Any]:
    return EXAMPLES[family].params() | changes


WITH_MIN_LR = sorted(family for family, s in EXAMPLES.items() if hasattr(s, "min_lr"))

BAD = [
    *[(f, {"lr": lr}, f"lr={lr!r}", "> 0") for f in ALL for lr in (-0.1, 0.0)],
    *[(f, {"min_lr": 0.2}, "min_lr=0.2", "[0, lr=0.1]") for f in WITH_MIN_LR],
    *[(f, {"min_lr": -1e-3}, "min_lr=-0.001", "[0, lr=0.1]") for f in WITH_MIN_LR],
    *[(f, {"warmup": w}, f"warmup={w!r}", "[0, 1)") for f in ALL for w in (-0.1, 1.0, 1.5)],
    ("cosine", {"warmup_start": 0.5}, "warmup_start=0.5", "[0, lr=0.1]"),
    ("polynomial", {"power": 0.0}, "power=0.0", "> 0"),
    ("polynomial", {"power": -1.0}, "power=-1.0", "> 0"),
    ("step", {"burnin_power": 0.0}, "burnin_power=0.0", "> 0"),
    ("cosine_restarts", {"multiplier": 0.5}, "multiplier=0.5", ">= 1"),
    ("cosine_restarts", {"first_cycle": 0.0}, "first_cycle=0.0", "(0, 1]"),
    *[
        (
            "step",
            {"milestones": bad},
            f"milestones={tuple(map(float, bad))!r}",
            "increasing fractions in (0, 1]",
        )
        for bad in [(0.6, 0.3), (0.3, 0.3), (0.0, 0.5), (0.5, 1.5), (1.5,), (-0.1,), ()]
    ],
    (
        "piecewise",
        {"boundaries": (0.5, 0.25)},
        "boundaries=(0.5, 0.25)",
        "increasing fractions in (0, 1]",
    ),
    ("piecewise", {"values": (1.0, 0.5)}, "values=(1.0, 0.5)", "3 factors of lr in (0, 1]"),
    ("cyclic", {"step_size": 0.0}, "step_size=0.0", "(0, 1]"),
    ("one_cycle", {"pct_start": 1.0}, "pct_start=1.0", "(0, 1)"),
    ("exponential", {"decay_rate": 1.5}, "decay_rate=1.5", "(0, 1]"),
]


@pytest.mark.parametrize(("family", "changes", "named", "allowed"), BAD)
def test_bad_parameters_are_refused(
    family: str, changes: dict[str, Any], named: str, allowed: str
) -> None:
    with pytest.raises(ScheduleError) as error:
        make_schedule(family, _with(family, **changes))
    assert named in str(error.value)
    assert allowed in str(error.value)


def _float_fields(family: str) -> list[str]:
    """Parameters annotated ``float``, ``float | None`` or ``tuple[float, ...]``."""
    hints = typing.get_type_hints(type(EXAMPLES[family]))
    return [
        field.name
        for field in dataclasses.fields(EXAMPLES[family])
        if "float" in str(hints[field.name])
    ]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize(
    ("family", "name"), [(family, name) for family in ALL for name in _float_fields(family)]
)
def test_nan_and_inf_are_refused_everywhere(family: str, name: str, bad: float) -> None:
    current = EXAMPLES[family].params()[name]
    value = [bad, *current[1:]] if isinstance(current, list) else bad
    with pytest.raises(ScheduleError, match=f"{name}={bad!r}.*finite"):
        make_schedule(family, _with(family, **{name: value}))


BAD_TOTALS = [0, -1, 1.5, True, "100", math.nan]


@pytest.mark.parametrize("total", BAD_TOTALS)
@pytest.mark.parametrize(
    "use",
    [
        lambda total: EXAMPLES["cosine"](0, total),
        lambda total: EXAMPLES["cosine"].curve(total),
        lambda total: EXAMPLES["cosine"].torch_scheduler(_optimizer(0.1), total),
        lambda total: multistep_lr(0.1, [10], total_steps=total),
        lambda total: cosine_scheduler(100, total_steps=total),
    ],
)
def test_bad_total_steps_are_refused(use: Callable[[Any], object], total: Any) -> None:
    with pytest.raises(ScheduleError, match=f"total_steps={total!r}.*integer >= 1"):
        use(total)


@pytest.mark.parametrize("t", [-1, -0.5, math.nan, math.inf, [0, 5, -1]])
def test_bad_steps_are_refused(t: Any) -> None:
    with pytest.raises(ScheduleError, match="step t must be finite and >= 0"):
        EXAMPLES["cosine"](t, 100)


# ---------------------------------------------------------------------------
# Vectorised evaluation


@pytest.mark.parametrize("family", ALL)
def test_a_million_steps_at_once(family: str) -> None:
    schedule, total = EXAMPLES[family], 1_000_000
    curve = schedule.curve(total)
    assert curve.shape == (total,)
    assert curve.dtype == np.float64
    for t in (0, 1, 49_999, 123_457, 500_000, 999_999):
        assert curve[t] == pytest.approx(schedule(t, total), rel=1e-12)


def test_a_milestone_at_the_end_acts_only_past_the_run() -> None:
    """Article 004's ``milestones=[15, 30]`` on 30 epochs: the second lands on the run's end."""
    schedule = Step(lr=0.1, milestones=(0.5, 1.0), gamma=0.5)
    assert schedule(np.array([49, 50, 99]), 100).tolist() == [0.1, 0.05, 0.05]
    assert schedule(100, 100) == 0.025


# --- A schedule is finite and within [0, lr] at every step, or refused with the value named.


@pytest.mark.parametrize(
    ("family", "params", "named"),
    [
        ("cosine", {"lr": 1.7e308}, "inf"),  # the cosine's (high - low) * 2 overflows
        ("cosine_restarts", {"lr": 0.1, "first_cycle": 1e-300}, "nan"),
        ("cyclic", {"lr": 0.1, "step_size": 1e-300}, "nan"),
        ("constant", {"lr": 0.1, "warmup": 0.9999999999}, "warmup=0.9999999999"),
    ],
)
def test_a_schedule_whose_lr_is_not_finite_at_some_step_is_refused_when_made(
    family: str, params: dict[str, Any], named: str
) -> None:
    with pytest.raises(ScheduleError, match=re.escape(named)) as refused:
        make_schedule(family, params)
    assert str(refused.value).startswith(f"{family}: ")


def test_a_schedule_file_that_is_not_finite_is_refused_when_loaded(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    document = Constant(lr=0.1).to_dict()
    document["params"]["lr"] = 1.7e308
    document["params"]["warmup"] = 0.5
    document["family"] = "cosine"
    path.write_text(json.dumps(document))
    with pytest.raises(ScheduleError, match="not a finite value"):
        load_schedule(path)


def test_a_schedule_file_with_a_key_beside_the_schedule_is_refused(tmp_path: Path) -> None:
    document = {**Constant(lr=0.1).to_dict(), "warmup": 0.1}  # meant for "params"
    path = tmp_path / "s.json"
    path.write_text(json.dumps(document))
    with pytest.raises(ScheduleError, match="unknown key 'warmup'"):
        load_schedule(path)


def test_a_schedule_file_with_a_duplicate_key_is_refused(tmp_path: Path) -> None:
    text = json.dumps(Constant(lr=0.1).to_dict()).replace('"lr": 0.1', '"lr": 0.1, "lr": 0.2')
    path = tmp_path / "s.json"
    path.write_text(text)
    with pytest.raises(ScheduleError, match="'lr' appears twice"):
        load_schedule(path)


def test_a_value_the_construction_probe_misses_is_refused_when_evaluated() -> None:
    schedule = Constant(lr=0.1)
    with pytest.raises(ScheduleError, match="step"):
        schedule(-1, 10)
    with pytest.raises(ScheduleError, match="not a finite value"):
        schedule._checked(np.array([0.1, math.inf]), np.array([0.0, 1.0]), 2)


@pytest.mark.filterwarnings("ignore::UserWarning")  # step(epoch) is deprecated, and tested
def test_the_torch_scheduler_refuses_a_negative_step() -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = Cosine(lr=0.1).torch_scheduler(optimizer, total_steps=10)
    with pytest.raises(ScheduleError, match="step -1 is not allowed"):
        scheduler.step(-1)  # type: ignore[arg-type]
    assert scheduler._factor(10) == pytest.approx(0.0, abs=1e-12)
