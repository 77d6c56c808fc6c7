"""The range test: its rule on synthetic loss curves, one real run, and lr = "auto" in a study."""

from __future__ import annotations

import dataclasses
import io
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

from lrsearch import LrsearchError, suggest_schedule
from lrsearch.baselines import baselines_for, enqueue_baselines
from lrsearch.config import StudyConfig, study_from_table
from lrsearch.lr_find import (
    HIGH_DIVISOR,
    RANGE_CLAIM,
    SPAN,
    _blow_up,
    _BlowUpWatch,
    _per_decade,
    _smooth,
    auto_lr_range,
    find_lr,
    save_plot,
    suggest_range,
)
from lrsearch.space import LR_RANGE_ATTR, FloatRange, space_from_table
from lrsearch.study import study_definition
from lrsearch.tasks import Task, load_task
from lrsearch.training import TrainConfig

LRS = np.geomspace(1e-7, 10, 200)
LOG = np.log10(LRS)


def falling(centre: float = -2.0) -> np.ndarray:
    """From 2.3 down to 0.3, fastest at lr 10**centre."""
    return 0.3 + 2.0 / (1 + np.exp(3 * (LOG - centre)))


def blowing_up(at: float = -1.0) -> np.ndarray:
    """``falling`` then growing exponentially from lr 10**at on."""
    return falling() + np.where(at < LOG, np.expm1(4 * (LOG - at)), 0.0)


def test_a_clean_curve_gives_high_below_the_minimum_and_steepest_near_the_fastest_fall() -> None:
    found = suggest_range(LRS, blowing_up())
    minimum = LRS[int(np.argmin(blowing_up()))]
    assert found.diverged and found.steps < len(LRS)  # the points after the blow-up are cut
    assert found.high == pytest.approx(minimum / HIGH_DIVISOR, rel=0.3)
    assert found.low == pytest.approx(found.high / SPAN)
    assert 10**-2.5 < found.steepest < 10**-1.5
    assert found.low <= found.suggested <= found.high
    assert "lr range" in found.describe() and "never" not in found.describe()


def test_a_noisy_curve_gives_nearly_the_clean_curves_range() -> None:
    clean = suggest_range(LRS, blowing_up())
    noise = np.random.default_rng(0).normal(0, 0.15, len(LRS))
    noisy = suggest_range(LRS, blowing_up() + noise)
    assert noisy.diverged
    assert clean.high / 3 < noisy.high < clean.high * 3
    assert 10**-3 < noisy.steepest < 10**-1


def test_a_curve_that_never_diverges_returns_its_range_with_a_note() -> None:
    found = suggest_range(LRS, falling(centre=0.0))
    assert not found.diverged and found.steps == len(LRS)
    assert found.high == pytest.approx(LRS[-1] / HIGH_DIVISOR)
    assert "never blew up" in found.describe()


def test_a_loss_back_at_chance_after_a_fall_has_blown_up() -> None:
    """Dead units: the loss returns to where it started, far below 4x its minimum."""
    losses = np.where(LOG < -1, falling(), 2.4)
    found = suggest_range(LRS, losses)
    assert found.diverged and found.lrs[-1] < 1.0  # not the span's end, 10
    assert found.high == pytest.approx(0.1 / HIGH_DIVISOR, rel=0.2)


@pytest.mark.parametrize(
    ("losses", "message"),
    [
        (np.full(len(LRS), math.nan), "loss is nan from its first step"),
        (np.full(len(LRS), math.inf), "loss is inf from its first step"),
        (np.full(len(LRS), 2.3), "never decreased by 10%"),
        (2.3 + np.random.default_rng(1).normal(0, 0.1, len(LRS)), "never decreased"),
        (2.3 + LOG - LOG[0], "never decreased"),  # rising from the start
        (np.where(np.arange(len(LRS)) < 5, 2.3, math.nan), "blew up at lr"),
    ],
)
def test_a_curve_that_says_nothing_is_one_error(losses: np.ndarray, message: str) -> None:
    with pytest.raises(LrsearchError, match=message):
        suggest_range(LRS, losses)


@pytest.fixture(scope="module")
def digits() -> Task:
    return load_task(
        "examples.custom_task:build",
        model=None,
        data_dir=Path("data"),
        val_size=0.2,
        split_seed=0,
        device=torch.device("cpu"),
    )


QUICK = TrainConfig(epochs=1, batch_size=32, optimizer="sgd", momentum=0.9)


def test_a_real_run_finds_a_range_inside_its_span_and_is_repeatable(digits: Task) -> None:
    found = find_lr(digits, QUICK, seed=0, steps=120)
    again = find_lr(digits, QUICK, seed=0, steps=120)
    assert 1e-7 < found.low < found.high < 10 and found.seconds > 0
    assert found.steps <= 120 and all(map(math.isfinite, found.losses))
    assert found.lrs == again.lrs and found.losses == again.losses


def test_adam_is_given_a_lower_range_than_sgd_with_momentum(digits: Task) -> None:
    sgd = find_lr(digits, QUICK, seed=0, steps=120)
    adam = find_lr(digits, dataclasses.replace(QUICK, optimizer="adam"), seed=0, steps=120)
    assert adam.high < sgd.high


@pytest.mark.parametrize(
    ("start", "end", "steps", "message"),
    [(0.0, 10.0, 100, "span"), (1.0, 0.1, 100, "span"), (1e-7, math.inf, 100, "span"),
     (math.nan, 1.0, 100, "span"), (1e-7, 10.0, 5, "steps=5"),
     (1e-7, 10.0, 10_000_000, "steps=10000000")],
)  # fmt: skip
def test_a_bad_span_is_refused_before_training(
    digits: Task, start: float, end: float, steps: int, message: str
) -> None:
    with pytest.raises(LrsearchError, match=message):
        find_lr(digits, QUICK, seed=0, start=start, end=end, steps=steps)


def test_the_plot_is_a_png(digits: Task, tmp_path: Path) -> None:
    path = tmp_path / "lr.png"
    save_plot(suggest_range(LRS, blowing_up()), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def auto_config(**space: object) -> StudyConfig:
    return study_from_table(
        {
            "task": {"name": "examples.custom_task:build", "val_size": 0.2},
            "training": {"epochs": 1, "batch_size": 32},
            "space": {"lr": "auto", **space},
        },
        default_name="auto",
    )


def test_auto_runs_once_stores_the_range_and_a_resume_reuses_it(digits: Task) -> None:
    config = auto_config()
    study = optuna.create_study(direction="maximize")
    out = io.StringIO()
    low, high = auto_lr_range(study, config, digits, out) or (0.0, 0.0)
    stored = study.user_attrs[LR_RANGE_ATTR]
    assert (stored["low"], stored["high"]) == (low, high) and low < stored["suggested"] <= high
    assert "range test" in out.getvalue() and f"{stored['steps']} steps" in out.getvalue()
    again = io.StringIO()
    broken = dataclasses.replace(digits, build_model=lambda: 1 / 0)  # would fail if trained
    assert auto_lr_range(study, config, broken, again) == (low, high)
    assert again.getvalue() == ""


def test_processes_on_one_new_study_run_the_range_test_once(digits: Task) -> None:
    """The first to claim it runs it; another waits for its result, or runs it itself when
    that process died before storing it."""
    config = auto_config()
    study = optuna.create_study(direction="maximize")
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait()
    claim = {"host": socket.gethostname(), "pid": gone.pid}
    study._storage.set_study_system_attr(study._study_id, RANGE_CLAIM, claim)
    out = io.StringIO()
    found = auto_lr_range(study, config, digits, out)
    assert "waiting for the range test" in out.getvalue()
    assert "running the learning-rate range test" in out.getvalue()
    stored = study.user_attrs[LR_RANGE_ATTR]
    assert found == (stored["low"], stored["high"])

    alive = {"host": socket.gethostname(), "pid": os.getpid()}  # at work, and done below
    other = optuna.create_study(direction="maximize")
    other._storage.set_study_system_attr(other._study_id, RANGE_CLAIM, alive)
    other.set_user_attr(LR_RANGE_ATTR, stored)
    broken = dataclasses.replace(digits, build_model=lambda: 1 / 0)  # would fail if trained
    assert auto_lr_range(other, config, broken, io.StringIO()) == found


def test_a_study_file_range_runs_no_test(digits: Task) -> None:
    config = study_from_table({"space": {"lr": [0.01, 0.1]}}, default_name="hand")
    study = optuna.create_study()
    assert auto_lr_range(study, config, digits, io.StringIO()) is None
    assert LR_RANGE_ATTR not in study.user_attrs


def test_trials_and_baselines_use_the_stored_range_and_the_definition_keeps_auto() -> None:
    config = auto_config(families=["constant", "cosine"])
    definition = study_definition(config)
    study = optuna.create_study(direction="maximize")
    study.set_user_attr(LR_RANGE_ATTR, {"low": 1e-4, "high": 1e-2, "suggested": 3e-3})
    queued = enqueue_baselines(study, config.space, io.StringIO())
    assert queued == ["constant", "cosine-warmup-004", "cosine-warmup10", "constant-warmup10"]
    for _ in queued:  # the queued trials come first, each at the suggested peak
        assert suggest_schedule(study.ask(), config.space).lr == pytest.approx(3e-3)
    for _ in range(20):
        schedule = suggest_schedule(study.ask(), config.space)
        assert 1e-4 <= schedule.lr <= 1e-2
    assert study_definition(config) == definition
    assert definition["space"]["settings"]["cosine"]["lr"]["auto"] is True


def test_baselines_without_auto_stay_at_the_ranges_centre() -> None:
    space = space_from_table({"lr": [1e-4, 1e-2]})
    assert baselines_for(space)["constant"].lr == pytest.approx(1e-3)
    assert isinstance(space.settings["constant"]["lr"], FloatRange)


@pytest.mark.parametrize(
    "losses",
    [
        np.r_[np.linspace(2.3, 0.5, 150), np.linspace(0.5, 40, 50)],  # falls, then blows up
        np.r_[np.linspace(2.3, 1.0, 80), np.full(120, 2.3)],  # back at chance after a fall
        np.r_[np.full(3, 2.3), math.nan, np.full(196, 2.3)],  # NaN
        np.full(200, 2.3) + np.linspace(0, 0.01, 200),  # never blows up
    ],
)
def test_the_step_by_step_watch_decides_as_smoothing_the_whole_history(
    losses: np.ndarray,
) -> None:
    """find_lr asks after every step in O(1); its answer is the whole curve's."""
    per_decade = _per_decade(LRS)
    watch = _BlowUpWatch(per_decade)
    stopped = next((i for i, loss in enumerate(losses) if watch.blew_up(float(loss))), None)
    assert stopped == _blow_up(_smooth(losses, per_decade))
