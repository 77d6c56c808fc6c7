"""Plots and per-trial artifacts from a real (small) study run in-process."""

from __future__ import annotations

import io
import math
import statistics
import struct
from pathlib import Path
from typing import Any

import optuna
import pytest

from lrsearch.cli import main
from lrsearch.config import study_from_table
from lrsearch.plots import (
    PLOT_DPI,
    PLOT_SIZE,
    _accuracy_by_family,
    _lr_curves,
    _top_curves,
    plot_study,
)
from lrsearch.runner import run_study
from lrsearch.schedules import make_schedule
from lrsearch.stats import binomial_se
from lrsearch.thumbnail import CURVE_PIXELS

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def study_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Five short cosine trials: enough of one family for the importances plot."""
    folder = tmp_path_factory.mktemp("study")
    url = f"sqlite:///{folder / 'plots.db'}"
    config = study_from_table(
        {
            "study": {"name": "plots", "n_trials": 5, "storage": url},
            "task": {"name": "examples.custom_task:build", "val_size": 0.2},
            "training": {"epochs": 2, "batch_size": 64},
            "space": {"families": ["cosine"]},
        },
        default_name="plots",
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(REPO))
        run_study(config, out=open(folder / "log.txt", "w"))  # noqa: SIM115
    return url


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n" and header[12:16] == b"IHDR"
    width, height = struct.unpack(">II", header[16:24])
    return width, height


def test_plot_writes_every_png_at_its_size(study_url: str, tmp_path: Path) -> None:
    argv = ["plot", "--study-name", "plots", "--storage", study_url, "--out", str(tmp_path)]
    assert main([*argv, "--top", "3", "--log-lr"]) == 0
    expected = (int(PLOT_SIZE[0] * PLOT_DPI), int(PLOT_SIZE[1] * PLOT_DPI))
    for name in ("lr_curves", "history", "accuracy_by_family", "importances"):
        path = tmp_path / f"{name}.png"
        assert png_size(path) == expected, name
        assert path.stat().st_size > 5_000, name  # drawn, not blank


def test_too_few_trials_skip_importances_with_a_note(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'one.db'}"
    study = optuna.create_study(study_name="one", storage=url, direction="maximize")
    study.add_trial(
        optuna.trial.create_trial(
            value=0.5,
            params={"family": "constant"},
            distributions={"family": optuna.distributions.CategoricalDistribution(["constant"])},
            user_attrs={
                "family": "constant",
                "steps": 10,
                "schedule": {
                    "format": "lrsearch.schedule",
                    "version": 1,
                    "family": "constant",
                    "params": {"lr": 0.1},
                },
            },
        )
    )
    out = tmp_path / "out"
    assert main(["plot", "--study-name", "one", "--storage", url, "--out", str(out)]) == 0
    assert "skipped importances.png" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == [
        "accuracy_by_family.png",
        "history.png",
        "lr_curves.png",
    ]


def test_every_trial_carries_its_lr_curve(study_url: str, tmp_path: Path) -> None:
    study = optuna.load_study(study_name="plots", storage=study_url)
    store = optuna.artifacts.FileSystemArtifactStore(
        Path(study_url[10:]).parent / "plots-artifacts"
    )
    for trial in study.trials:
        (meta,) = optuna.artifacts.get_all_artifact_meta(trial, storage=study._storage)
        assert meta.mimetype == "image/png"
        target = tmp_path / f"{trial.number}.png"
        optuna.artifacts.download_artifact(
            artifact_store=store, artifact_id=meta.artifact_id, file_path=str(target)
        )
        assert png_size(target) == CURVE_PIXELS


def made_trial(
    value: float, family: str, *, attrs: dict[str, Any] | None = None
) -> optuna.trial.FrozenTrial:
    """A complete trial with no parameters, like a confirm run; ``family`` only in the schedule."""
    schedule = make_schedule(family, {"lr": 0.1}).to_dict()
    return optuna.trial.create_trial(
        value=value, user_attrs={"schedule": schedule, "steps": 100, **(attrs or {})}
    )


def test_a_confirm_study_plots_grouped_by_the_schedules_family(tmp_path: Path) -> None:
    """Issue 14.1: confirm runs carried no family (one row "None") and importances crashed."""
    url = f"sqlite:///{tmp_path / 'c.db'}"
    study = optuna.create_study(study_name="s.confirm", storage=url, direction="maximize")
    for value, family in [(0.9, "cosine"), (0.91, "cosine"), (0.92, "cosine"), (0.8, "linear")] * 2:
        study.add_trial(made_trial(value, family))
    notes = io.StringIO()
    written = plot_study(url, "s.confirm", tmp_path / "out", notes=notes)
    assert {p.name for p in written} >= {"accuracy_by_family.png", "lr_curves.png"}
    assert (
        "skipped importances.png: the cosine trials have no searched parameter" in notes.getvalue()
    )
    figure = _accuracy_by_family(study.get_trials())
    labels = [label.get_text() for label in figure.axes[0].get_yticklabels()]
    assert labels == ["linear (2)", "cosine (6)"]


def test_accuracy_by_family_shows_each_interval_on_a_zoomed_axis() -> None:
    examples = 300
    trials = [
        made_trial(v, "cosine", attrs={"val_examples": examples, "val_accuracy": v})
        for v in (0.90, 0.92, 0.93)
    ]
    axes = _accuracy_by_family(trials).axes[0]
    low, high = axes.get_xlim()
    half = 1.96 * binomial_se(0.93, examples)
    assert low < 0.90 - 1.96 * binomial_se(0.90, examples) and high > 0.93 + half
    assert high - low < 0.2  # not 0..1
    (bars,) = [c for c in axes.containers if c.has_xerr]
    segments = bars.lines[2][0].get_segments()
    widths = sorted(round(seg[1][0] - seg[0][0], 6) for seg in segments)
    expected = sorted(round(2 * 1.96 * binomial_se(v, examples), 6) for v in (0.90, 0.92, 0.93))
    assert widths == pytest.approx(expected, abs=1e-4)


def test_lr_curves_mark_the_baselines_and_take_a_log_scale() -> None:
    searched = made_trial(0.9, "cosine")
    searched.number = 3
    baseline = made_trial(0.8, "linear", attrs={"baseline": "linear-001"})
    figure = _lr_curves(*_top_curves([searched, baseline], 1), log_lr=True)
    axes = figure.axes[0]
    assert axes.get_yscale() == "log"
    styles = {line.get_label().split()[0]: line.get_linestyle() for line in axes.get_lines()}
    assert styles == {"#3": "-", "baseline": "--"}
    assert axes.get_legend().get_texts()[1].get_text().startswith("baseline linear-001 linear")
    assert axes.get_title() == "LR schedule of the best and the best baseline (dashed: baseline)"
    alone = _lr_curves(*_top_curves([searched], 5)).axes[0]
    assert alone.get_yscale() == "linear"
    assert alone.get_title() == "LR schedule of the best"  # no baseline drawn, none named


def test_the_title_counts_the_top_schedules_not_the_baseline_added_to_them() -> None:
    trials = [made_trial(0.9 - i / 100, "cosine") for i in range(6)]
    trials.append(made_trial(0.5, "linear", attrs={"baseline": "linear-001"}))
    axes = _lr_curves(*_top_curves(trials, 5)).axes[0]
    assert len(axes.get_lines()) == 6
    assert axes.get_title() == "LR schedules of the top 5 and the best baseline (dashed: baseline)"


def test_a_confirm_study_draws_each_schedule_once_with_its_mean_over_seeds() -> None:
    """Seed-runs of one schedule are one curve, labelled as confirm labels it, with the mean."""
    runs = []
    for label, family, values in [
        ("trial 4", "cosine", (0.90, 0.92, 0.94)),
        ("trial 9", "constant", (0.95, 0.95, 0.96)),
        ("baseline linear-001", "linear", (0.80, 0.82, 0.84)),
    ]:
        for seed, value in enumerate(values):
            attrs = {"label": label, "seed": seed, "epochs": 4, "val_accuracy": value}
            runs.append(made_trial(value, family, attrs=attrs))
    curves, top = _top_curves(runs, 5)
    assert [curve.name for curve in curves] == ["trial 9", "trial 4", "baseline linear-001"]
    legend = [text.get_text() for text in _lr_curves(curves, top).axes[0].get_legend().get_texts()]
    mean = (0.90 + 0.92 + 0.94) / 3
    se = statistics.stdev((0.90, 0.92, 0.94)) / math.sqrt(3)
    assert legend[1] == f"trial 4 cosine  val accuracy {mean:.4f} ± {se:.4f} s.e. (3 seeds)"
    title = _accuracy_by_family(runs).axes[0].get_title()
    assert title.startswith("Confirm runs by schedule family, one point per seed")


def test_a_loss_study_plots_its_loss_lowest_as_best_and_unclamped() -> None:
    examples = 300
    trials = [
        made_trial(
            v,
            "cosine",
            attrs={
                "objective": "val_loss",
                "val_loss": v,
                "val_loss_se": 0.05,
                "val_examples": examples,
            },
        )
        for v in (1.4, 1.6, 1.9)
    ]
    axes = _accuracy_by_family(trials).axes[0]
    assert axes.get_xlabel().startswith("validation loss")
    low, high = axes.get_xlim()
    assert low < 1.4 - 1.96 * 0.05 and high > 1.9 + 1.96 * 0.05 > 1.0  # not clamped to 0..1
    (best,) = [c for c in axes.collections if c.get_segments() and len(c.get_segments()) == 1]
    assert best.get_segments()[0][0][0] == pytest.approx(1.4)  # the line marks the lowest
