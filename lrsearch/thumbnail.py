"""The small LR-curve image each trial carries as an Optuna artifact.

optuna-dashboard shows it beside the trial, about 200 px wide. Every trial writes one, so it
is drawn straight with Pillow (milliseconds) rather than matplotlib (0.19 s a trial).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import numpy.typing as npt
import optuna

from lrsearch.errors import LrsearchError
from lrsearch.schedules import Schedule

__all__ = ["CURVE_PIXELS", "attach_lr_curve", "curve_range", "save_lr_curve"]

CURVE_PIXELS = (320, 200)  # a few kB
CURVE_FONT = 24  # pixels: about 15 where optuna-dashboard shrinks the image to 200 wide
# Steps the curve is evaluated at, at most: a run of 10^9 steps would need GiBs for every step.
CURVE_SAMPLES = 4096


def save_lr_curve(schedule: Schedule, steps: int, path: Path) -> None:
    """The LR of every step of a ``steps``-step run, drawn straight with Pillow.

    Every trial writes one, so it must cost next to nothing: matplotlib took
    about 0.19 s a trial, a line drawn with Pillow takes milliseconds.
    optuna-dashboard shows it about 200 px wide, so the text is large and
    sparse: the family, the lowest and highest LR of the run (not 0, when the
    schedule has a floor) and the step count.
    """
    from PIL import Image, ImageDraw, ImageFont

    width, height = CURVE_PIXELS
    font = ImageFont.load_default(size=CURVE_FONT)
    sampled = np.unique(np.linspace(0, steps - 1, min(steps, CURVE_SAMPLES)).round())
    curve = np.asarray(schedule(sampled, steps), dtype=np.float64)
    low, high = curve_range(curve)
    labels = (f"{high:.2g}", f"{low:.2g}")
    left = 10 + int(max(font.getlength(label) for label in labels))
    right, top, bottom = width - 10, CURVE_FONT + 10, height - CURVE_FONT - 10
    image = Image.new("RGB", CURVE_PIXELS, "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle((left, top, right, bottom), outline="#888888")
    columns = np.linspace(0, len(sampled) - 1, right - left).round().astype(np.int64)
    fractions = (curve[columns] - low) / (high - low)
    pad = 3  # keeps a line at the lowest or highest LR off the frame
    points = [
        (left + i, bottom - pad - value * (bottom - top - 2 * pad))
        for i, value in enumerate(fractions.tolist())
    ]
    draw.line(points, fill="#1f77b4", width=3)
    draw.text((left, 2), schedule.family, fill="black", font=font)
    draw.text((left - 5, top), labels[0], fill="black", font=font, anchor="ra")
    draw.text((left - 5, bottom), labels[1], fill="black", font=font, anchor="rd")
    draw.text((left, height - 4), "0", fill="black", font=font, anchor="ld")
    draw.text((right, height - 4), f"{steps:,} steps", fill="black", font=font, anchor="rd")
    image.save(path, format="PNG", optimize=False)


def curve_range(curve: npt.NDArray[np.float64]) -> tuple[float, float]:
    """The LR axis of a curve: its real minimum and maximum, from 0 for a flat one."""
    low, high = float(curve.min()), float(curve.max())
    return (low, high) if high > low else (0.0, max(high, 1e-12))


def attach_lr_curve(
    trial: optuna.Trial,
    schedule: Schedule,
    steps: int,
    artifacts: optuna.artifacts.FileSystemArtifactStore,
) -> None:
    """Attached before training, so optuna-dashboard shows it while the trial runs and after
    it fails or is pruned. An artifact folder removed, read-only or full mid-run is one error
    naming it, as a failing storage is."""
    try:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"lr_curve_trial_{trial.number}.png"
            save_lr_curve(schedule, steps, path)
            optuna.artifacts.upload_artifact(
                artifact_store=artifacts,
                file_path=str(path),
                study_or_trial=trial,
                mimetype="image/png",
            )
    except OSError as error:
        raise LrsearchError(
            f"artifact folder {str(artifacts._base_path)!r} failed during the run: "
            f"{error.strerror or error}; completed trials are kept"
        ) from None
