"""The per-trial LR-curve image: its size, its cost and its axis."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from lrsearch.schedules import make_schedule
from lrsearch.thumbnail import CURVE_PIXELS, curve_range, save_lr_curve


def png_size(path: Path) -> tuple[int, int]:
    width, height = struct.unpack(">II", path.read_bytes()[16:24])
    return width, height


@pytest.mark.parametrize(
    ("family", "params"),
    [
        ("cosine", {"lr": 0.1, "warmup": 0.1}),
        ("exponential", {"lr": 0.1, "decay_rate": 0.5}),
        ("constant", {"lr": 0.3}),
    ],
)
def test_a_schedule_draws_a_small_png(
    family: str, params: dict[str, float], tmp_path: Path
) -> None:
    target = tmp_path / "curve.png"
    save_lr_curve(make_schedule(family, params), 10_000, target)
    assert png_size(target) == CURVE_PIXELS
    assert target.stat().st_size < 20_000


def test_the_lr_curve_artifact_axis_is_the_real_lr_range() -> None:
    floor = make_schedule("cosine", {"lr": 0.1, "min_lr": 0.02})
    assert curve_range(floor.curve(1000)) == pytest.approx((0.02, 0.1), rel=1e-4)
    assert curve_range(make_schedule("constant", {"lr": 0.3}).curve(10)) == (0.0, 0.3)


def test_a_run_of_a_trillion_steps_draws_from_a_bounded_sample(tmp_path: Path) -> None:
    """Every step's LR would take 8 TB: the curve is sampled at CURVE_SAMPLES steps."""
    schedule = make_schedule("cosine", {"lr": 0.1, "warmup": 0.1})
    path = tmp_path / "curve.png"
    save_lr_curve(schedule, 10**12, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
