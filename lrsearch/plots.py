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
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np
import optuna

from lrsearch.baselines import BASELINE_ATTR
from lrsearch.export import load_study, storage_url
from lrsearch.paths import write_outputs
from lrsearch.schedules import Schedule
from lrsearch.stats import Z95
from lrsearch.study import objective_of, score
from lrsearch.verdict import run_scores, trial_family, trial_scores

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["PLOT_DPI", "PLOT_SIZE", "plot_study"]

PLOT_SIZE = (9.0, 5.6)  # inches; at PLOT_DPI every study plot is 900 x 560 pixels
PLOT_DPI = 100
MIN_IMPORTANCE_TRIALS = 5  # below this Optuna's evaluators return equal shares or fail


def plot_study(
    storage: str | None,
    study_name: str,
    out: Path,
    *,
    top: int = 5,
    log_lr: bool = False,
    notes: TextIO | None = None,
) -> list[Path]:
    """Write the study's plots into ``out``; a plot the study cannot support yet is a note."""
    study = load_study(storage_url(storage, study_name), study_name)
    complete = sorted(
        study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)),
        key=score,
        reverse=True,
    )
    out.mkdir(parents=True, exist_ok=True)
    draws: dict[str, Callable[[], Figure]] = {
        "lr_curves": lambda: _lr_curves(*_top_curves(complete, top), log_lr=log_lr),
        "accuracy_by_family": lambda: _accuracy_by_family(complete),
        "history": lambda: _from_optuna(
            optuna.visualization.matplotlib.plot_optimization_history, study
        ),
        "importances": lambda: _importances(study, complete),
    }
    figures: dict[Path, Callable[[Path], object]] = {}
    for name, draw in draws.items():
        path = out / f"{name}.png"
        try:
            figure = draw()
        except (ValueError, RuntimeError) as error:  # too few or too uniform trials
            print(f"skipped {path.name}: {error}", file=notes or sys.stderr)
            continue
        figures[path] = partial(figure.savefig, dpi=PLOT_DPI, format="png")
    return write_outputs(figures, "--out")


def _new_figure() -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=PLOT_SIZE, dpi=PLOT_DPI, layout="constrained")


@dataclass(frozen=True)
class _Curve:
    """One schedule's line in lr_curves.png: a trial of a search, or every seed-run of one
    schedule of a confirm study (``<study>.confirm``), drawn once with their mean."""

    name: str  # "#12", "trial 12" (confirm), "baseline cosine-warmup-004"
    schedule: Schedule
    steps: int
    value: str  # what the legend reports: the search's figure, or confirm's mean ± s.e.
    baseline: bool


def _is_confirm(trials: list[optuna.trial.FrozenTrial]) -> bool:
    """Confirm runs carry the schedule's label and their seed (lrsearch.confirm)."""
    return bool(trials) and all("label" in t.user_attrs and "seed" in t.user_attrs for t in trials)


def _top_curves(complete: list[optuna.trial.FrozenTrial], top: int) -> tuple[list[_Curve], int]:
    """The ``top`` best schedules, and the best baseline for reference if it is not among them;
    with how many of the curves are the top ones."""
    if _is_confirm(complete):
        curves = _confirmed_curves(complete)
    else:
        curves = [
            _Curve(
                f"baseline {t.user_attrs[BASELINE_ATTR]}"
                if BASELINE_ATTR in t.user_attrs
                else f"#{t.number}",
                Schedule.from_dict(t.user_attrs["schedule"]),
                int(t.user_attrs["steps"]),
                f"val={_accuracy(t):.4f}",
                BASELINE_ATTR in t.user_attrs,
            )
            for t in complete
        ]
    chosen = curves[:top]
    baseline = next((c for c in curves if c.baseline), None)
    extra = [] if baseline is None or baseline in chosen else [baseline]
    return [*chosen, *extra], len(chosen)


def _confirmed_curves(runs: list[optuna.trial.FrozenTrial]) -> list[_Curve]:
    """One curve per confirmed schedule at its longest length, best mean first, with the mean
    and standard error over its seeds that ``lrsearch confirm`` prints."""
    epochs = max(int(t.user_attrs.get("epochs", 0)) for t in runs)
    by_label: dict[str, list[optuna.trial.FrozenTrial]] = {}
    for run in runs:
        if int(run.user_attrs.get("epochs", 0)) == epochs:
            by_label.setdefault(str(run.user_attrs["label"]), []).append(run)
    curves = []
    for label, mine in by_label.items():
        scores = run_scores(mine)
        se = f" ± {scores.se:.4f} s.e." if np.isfinite(scores.se) else ""
        seeds = len(mine)
        curves.append(
            (
                (-1 if scores.higher_is_better else 1) * scores.value
                if np.isfinite(scores.value)
                else np.inf,
                _Curve(
                    label,
                    Schedule.from_dict(mine[0].user_attrs["schedule"]),
                    int(mine[0].user_attrs["steps"]),
                    f"val {scores.metric.replace('_', ' ')} {scores.value:.4f}{se} "
                    f"({seeds} seed{'s' * (seeds != 1)})",
                    label.startswith("baseline"),
                ),
            )
        )
    return [curve for _, curve in sorted(curves, key=lambda pair: pair[0])]


def _lr_curves(curves: list[_Curve], top: int, *, log_lr: bool = False) -> Figure:
    """The first ``top`` curves are the best schedules, any further one the best baseline."""
    if not curves:
        raise ValueError("no complete trial yet")
    figure = _new_figure()
    axes = figure.add_subplot()
    for curve in curves:
        axes.plot(
            np.arange(curve.steps) / curve.steps,
            curve.schedule.curve(curve.steps),
            linestyle="--" if curve.baseline else "-",
            label=f"{curve.name} {curve.schedule.family}  {curve.value}",
        )
    if log_lr:
        axes.set_yscale("log")  # a curve's zeros are left out, not drawn at -inf
    title = f"LR schedules of the top {top}" if top > 1 else "LR schedule of the best"
    if len(curves) > top:
        title += " and the best baseline"
    if any(curve.baseline for curve in curves):
        title += " (dashed: baseline)"
    axes.set_title(title)
    axes.set_xlabel("fraction of the run")
    axes.set_ylabel("learning rate" + (" (log scale)" if log_lr else ""))
    axes.legend(fontsize=8)
    return figure


def accuracy_interval(trial: optuna.trial.FrozenTrial) -> float:
    """Half the 95% interval of a trial's validation accuracy; NaN where nothing says how wide."""
    return Z95 * trial_scores(trial).se


def _accuracy_by_family(trials: list[optuna.trial.FrozenTrial]) -> Figure:
    by_family: dict[str, list[optuna.trial.FrozenTrial]] = {}
    for trial in trials:
        by_family.setdefault(str(trial_family(trial)), []).append(trial)
    if not by_family:
        raise ValueError("no complete trial yet")
    best = {family: _accuracy(max(group, key=score)) for family, group in by_family.items()}
    families = sorted(by_family, key=best.__getitem__)
    figure = _new_figure()
    axes = figure.add_subplot()
    jitter = np.random.default_rng(0)
    for row, family in enumerate(families):
        group = by_family[family]
        values = np.array([_accuracy(t) for t in group])
        heights = row + jitter.uniform(-0.15, 0.15, len(values))
        half = np.array([accuracy_interval(t) for t in group])
        axes.errorbar(
            values,
            heights,
            xerr=np.where(np.isfinite(half), half, 0.0),
            fmt="o",
            markersize=4,
            elinewidth=1,
            alpha=0.7,
        )
        axes.vlines(best[family], row - 0.3, row + 0.3, color="black")
    axes.set_xlim(*_zoom([t for group in by_family.values() for t in group]))
    axes.set_yticks(range(len(families)), [f"{f} ({len(by_family[f])})" for f in families])
    metric = objective_of(trials[0]).removeprefix("val_").replace("_", " ")
    axes.set_xlabel(f"validation {metric} (bars: 95% interval of each trial; line: best)")
    axes.set_title(
        "Confirm runs by schedule family, one point per seed (lr_curves.png: the means)"
        if _is_confirm(trials)
        else "Complete trials by schedule family"
    )
    return figure


def _accuracy(trial: optuna.trial.FrozenTrial) -> float:
    """The validation objective (accuracy, loss, any metric of the task)."""
    return float(trial.user_attrs.get(objective_of(trial), trial.value or 0.0))


def _zoom(trials: list[optuna.trial.FrozenTrial]) -> tuple[float, float]:
    """Every trial's interval and a margin, not 0..1: the differences between trials are
    often a fraction of a point, invisible on the full scale."""
    values = np.array([_accuracy(t) for t in trials])
    half = np.nan_to_num(np.array([accuracy_interval(t) for t in trials]), nan=0.0)
    low, high = float(np.min(values - half)), float(np.max(values + half))
    margin = max(0.05 * (high - low), 0.002)
    if not objective_of(trials[0]).endswith("accuracy"):  # no bounds but the figures'
        return low - margin, high + margin
    return max(0.0, low - margin), min(1.0, high + margin)


def _importances(study: optuna.Study, complete: list[optuna.trial.FrozenTrial]) -> Figure:
    """Within the most-tried family: across families the only shared parameter is ``family``
    itself, whose effect accuracy_by_family.png already shows."""
    if not complete:
        raise ValueError("no complete trial yet")
    family, count = Counter(str(trial_family(t)) for t in complete).most_common(1)[0]
    if count < MIN_IMPORTANCE_TRIALS:
        raise ValueError(
            f"importances need {MIN_IMPORTANCE_TRIALS} complete trials of one family; "
            f"the most tried, {family}, has {count}"
        )
    trials = [t for t in complete if str(trial_family(t)) == family]  # the key counted above
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
