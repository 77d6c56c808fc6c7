"""PNG plots of a study, and the small LR-curve image each trial carries as an artifact.

matplotlib is imported inside the functions: ``import lrsearch`` stays light.
Optuna draws the optimization history and the importances itself; only what
Optuna cannot know (schedules, families) is drawn here, with the Figure API
so that no pyplot state is shared between trials running in threads.
"""

from __future__ import annotations

import sys
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np
import optuna

from lrsearch.export import load_study, storage_url
from lrsearch.schedules import Schedule

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["PLOT_DPI", "PLOT_SIZE", "plot_study", "save_lr_curve"]

PLOT_SIZE = (9.0, 5.6)  # inches; at PLOT_DPI every study plot is 900 x 560 pixels
PLOT_DPI = 100
CURVE_PIXELS = (320, 200)  # the per-trial artifact, a few kB
MIN_IMPORTANCE_TRIALS = 5  # below this Optuna's evaluators return equal shares or fail


def save_lr_curve(schedule: Schedule, steps: int, path: Path) -> None:
    """The LR of every step of a ``steps``-step run, drawn straight with Pillow.

    Every trial writes one, so it must cost next to nothing: matplotlib took
    about 0.19 s a trial, a line drawn with Pillow takes milliseconds. The
    axes are a frame with the peak LR, 0 and the step count written on it.
    """
    from PIL import Image, ImageDraw

    width, height = CURVE_PIXELS
    left, right, top, bottom = 48, width - 8, 22, height - 22
    image = Image.new("RGB", CURVE_PIXELS, "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle((left, top, right, bottom), outline="#888888")
    columns = np.linspace(0, steps - 1, right - left).round().astype(np.int64)
    values = schedule.curve(steps)[columns] / schedule.lr  # 1 at the peak
    points = [
        (left + i, bottom - value * (bottom - top)) for i, value in enumerate(values.tolist())
    ]
    draw.line(points, fill="#1f77b4", width=2)
    draw.text((left, 4), f"{schedule.family}   peak lr {schedule.lr:.3g}", fill="black")
    draw.text((4, top), f"{schedule.lr:.2g}", fill="black")
    draw.text((4, bottom - 10), "0", fill="black")
    draw.text((left, bottom + 6), "step 0", fill="black")
    draw.text((right - 60, bottom + 6), f"{steps:>9,}", fill="black")
    image.save(path, format="PNG", optimize=False)


def plot_study(
    storage: str | None, study_name: str, out: Path, *, top: int = 5, notes: TextIO | None = None
) -> list[Path]:
    """Write the study's plots into ``out``; a plot the study cannot support yet is a note."""
    study = load_study(storage_url(storage, study_name), study_name)
    complete = sorted(
        study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)),
        key=lambda trial: trial.value or 0.0,
        reverse=True,
    )
    out.mkdir(parents=True, exist_ok=True)
    draws: dict[str, Callable[[], Figure]] = {
        "lr_curves": lambda: _lr_curves(complete[:top]),
        "accuracy_by_family": lambda: _accuracy_by_family(complete),
        "history": lambda: _from_optuna(
            optuna.visualization.matplotlib.plot_optimization_history, study
        ),
        "importances": lambda: _importances(study, complete),
    }
    written = []
    for name, draw in draws.items():
        path = out / f"{name}.png"
        try:
            figure = draw()
        except (ValueError, RuntimeError) as error:  # too few or too uniform trials
            print(f"skipped {path.name}: {error}", file=notes or sys.stderr)
            continue
        figure.savefig(path, dpi=PLOT_DPI)
        written.append(path)
    return written


def _new_figure() -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=PLOT_SIZE, dpi=PLOT_DPI, layout="constrained")


def _lr_curves(trials: list[optuna.trial.FrozenTrial]) -> Figure:
    if not trials:
        raise ValueError("no complete trial yet")
    figure = _new_figure()
    axes = figure.add_subplot()
    for trial in trials:
        steps = int(trial.user_attrs["steps"])
        schedule = Schedule.from_dict(trial.user_attrs["schedule"])
        axes.plot(
            np.arange(steps) / steps,
            schedule.curve(steps),
            label=f"#{trial.number} {schedule.family}  val={trial.value:.4f}",
        )
    axes.set_title(f"LR schedules of the top {len(trials)} trials")
    axes.set_xlabel("fraction of the run")
    axes.set_ylabel("learning rate")
    axes.legend(fontsize=8)
    return figure


def _accuracy_by_family(trials: list[optuna.trial.FrozenTrial]) -> Figure:
    by_family: dict[str, list[float]] = {}
    for trial in trials:
        by_family.setdefault(str(trial.user_attrs.get("family")), []).append(
            float(trial.value or 0)
        )
    if not by_family:
        raise ValueError("no complete trial yet")
    families = sorted(by_family, key=lambda family: max(by_family[family]))
    figure = _new_figure()
    axes = figure.add_subplot()
    jitter = np.random.default_rng(0)
    for row, family in enumerate(families):
        values = by_family[family]
        axes.scatter(values, row + jitter.uniform(-0.15, 0.15, len(values)), s=18, alpha=0.7)
        axes.vlines(max(values), row - 0.3, row + 0.3, color="black")
    axes.set_yticks(range(len(families)), [f"{f} ({len(by_family[f])})" for f in families])
    axes.set_xlabel("validation accuracy (bar: best)")
    axes.set_title("Complete trials by schedule family")
    return figure


def _importances(study: optuna.Study, complete: list[optuna.trial.FrozenTrial]) -> Figure:
    """Within the most-tried family: across families the only shared parameter is ``family``
    itself, whose effect accuracy_by_family.png already shows."""
    if not complete:
        raise ValueError("no complete trial yet")
    family, count = Counter(str(t.user_attrs.get("family")) for t in complete).most_common(1)[0]
    if count < MIN_IMPORTANCE_TRIALS:
        raise ValueError(
            f"importances need {MIN_IMPORTANCE_TRIALS} complete trials of one family; "
            f"the most tried, {family}, has {count}"
        )
    trials = [t for t in complete if t.user_attrs.get("family") == family]
    params = sorted(set.intersection(*(set(t.params) for t in trials)) - {"family"})
    if not params:
        raise ValueError(f"the {family} trials have no searched parameter")
    subset = optuna.create_study(direction=study.direction)
    subset.add_trials(trials)
    figure = _from_optuna(optuna.visualization.matplotlib.plot_param_importances, subset, params)
    figure.axes[0].set_title(
        f"Parameter importances within {family} ({len(trials)} trials)", loc="left"
    )
    return figure


def _from_optuna(plot: Any, study: optuna.Study, params: list[str] | None = None) -> Figure:
    import matplotlib

    matplotlib.use("Agg")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        axes = plot(study) if params is None else plot(study, params=params)
    figure: Figure = axes.figure
    import matplotlib.pyplot as plt

    plt.close(figure)  # drawn through pyplot; saving still works once it is released
    figure.set_size_inches(*PLOT_SIZE)
    figure.tight_layout()
    return figure
