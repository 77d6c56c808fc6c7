"""The confirm step: longer runs, several seeds, one record each, and the rank correlation."""

from __future__ import annotations

import dataclasses
import io
import math
import re
from pathlib import Path

import optuna
import pytest
from digits_study import digits_study

from lrsearch import LrsearchError, load_schedule
from lrsearch.baselines import BASELINE_ATTR
from lrsearch.config import StudyConfig, TaskConfig
from lrsearch.confirm import (
    CONFIRM_SUFFIX,
    Confirmed,
    ConfirmReport,
    confirm,
    save_best_confirmed,
    spearman,
)
from lrsearch.runner import run_study
from lrsearch.schedules import make_schedule
from lrsearch.space import space_from_table
from lrsearch.stats import Comparison, Scores
from lrsearch.training import TrainConfig


def test_spearman_on_hand_made_examples() -> None:
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [9, 7, 5, 1]) == pytest.approx(-1.0)
    # b's ranks with the tie at 7 shared: 1, 2, 3.5, 5, 3.5. Against 1..5 (mean 3 each):
    # covariance sum 4 + 1 + 0 + 2 + 1 = 8, variances 10 and 9.5, so 8 / sqrt(95).
    assert spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / math.sqrt(95))
    with pytest.raises(LrsearchError, match="2\\+ values"):
        spearman([1.0], [2.0])


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> StudyConfig:
    folder = tmp_path_factory.mktemp("confirm")
    config = digits_study(folder / "study.db", name="to-confirm", baselines=True)
    run_study(config, out=io.StringIO())
    return config


def test_one_record_per_schedule_and_seed_at_the_confirm_length(searched: StudyConfig) -> None:
    progress = io.StringIO()
    report = confirm(searched, top=2, epochs=2, seeds=2, out=progress)
    record = optuna.load_study(study_name=searched.name + CONFIRM_SUFFIX, storage=searched.storage)
    runs = record.get_trials()
    assert len(runs) == (2 + 1) * 2
    # Progress as it goes: each population's start, each of its epochs, each run's result.
    lines = progress.getvalue().splitlines()
    populations = sum(": epoch 1/2" in line for line in lines)
    assert populations >= 1 and sum(": epoch 2/2" in line for line in lines) == populations
    assert sum(line.startswith("confirmed ") for line in lines) == len(runs)
    assert {t.user_attrs["epochs"] for t in runs} == {2}
    assert sorted((t.user_attrs["trial"], t.user_attrs["seed"]) for t in runs) == sorted(
        (row.trial, seed) for row in report.rows for seed in (0, 1)
    )
    assert sum(row.is_baseline for row in report.rows) == 1
    search = optuna.load_study(study_name=searched.name, storage=searched.storage)
    baseline = [t for t in search.trials if BASELINE_ATTR in t.user_attrs and t.value is not None]
    best_baseline = max(baseline, key=lambda t: t.value)
    assert f"baseline {best_baseline.user_attrs[BASELINE_ATTR]}" in [r.label for r in report.rows]
    means = [sum(r.val) / len(r.val) for r in report.rows]
    assert means == sorted(means, reverse=True)
    assert report.rank_correlation == pytest.approx(
        spearman([r.search_val for r in report.rows], means)
    )
    assert any("Spearman" in line for line in report.lines())
    assert {t.user_attrs["family"] for t in runs} == {row.schedule.family for row in report.rows}
    for row in report.rows:
        assert (row.versus_baseline is None) == row.is_baseline
        assert len(row.val) == 2 and row.scores.se >= 0  # over the two seeds
    assert report.lines()[-1].startswith(f"lrsearch best --confirmed writes {report.rows[0].label}")

    again = confirm(searched, top=2, epochs=2, seeds=2, out=io.StringIO())
    assert len(record.get_trials()) == 6  # nothing recorded twice
    assert [r.val for r in again.rows] == [r.val for r in report.rows]


def test_best_confirmed_writes_the_winner_at_the_longest_length(
    searched: StudyConfig, tmp_path: Path
) -> None:
    report = confirm(searched, top=2, epochs=2, seeds=2, out=io.StringIO())
    winner, epochs = save_best_confirmed(searched.storage, searched.name, tmp_path / "best.json")
    assert epochs == 2
    assert winner.label == report.rows[0].label
    assert load_schedule(tmp_path / "best.json") == report.rows[0].schedule


def test_bad_counts_and_missing_studies_are_one_line(searched: StudyConfig, tmp_path: Path) -> None:
    with pytest.raises(LrsearchError, match="--top 0"):
        confirm(searched, top=0, epochs=2, seeds=1, out=io.StringIO())
    with pytest.raises(LrsearchError, match="--seeds -1"):
        confirm(searched, top=1, epochs=2, seeds=-1, out=io.StringIO())
    with pytest.raises(LrsearchError, match=r"no study 'other' .*studies there: to-confirm"):
        save_best_confirmed(searched.storage, "other", tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


def test_best_confirmed_before_any_confirm_run_says_to_run_confirm(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'alone.db'}"
    optuna.create_study(study_name="alone", storage=storage)
    with pytest.raises(LrsearchError, match=r"'alone' has no confirm runs yet; run `lrsearch conf"):
        save_best_confirmed(storage, "alone", tmp_path / "x.json")
    assert not (tmp_path / "x.json").exists()


def test_confirming_with_another_task_is_refused_before_training(searched: StudyConfig) -> None:
    def confirm_studies() -> list[tuple[str, int]]:
        return [
            (s.study_name, s.n_trials)
            for s in optuna.get_all_study_summaries(searched.storage)
            if s.study_name.endswith(CONFIRM_SUFFIX)
        ]

    before = confirm_studies()
    other = dataclasses.replace(searched, task=dataclasses.replace(searched.task, val_size=0.3))
    out = io.StringIO()
    with pytest.raises(LrsearchError, match=r"'to-confirm' .*other settings \(task\.val_size"):
        confirm(other, top=1, epochs=2, seeds=1, out=out)
    assert out.getvalue() == ""  # nothing trained
    assert confirm_studies() == before


def test_a_search_run_with_other_epochs_than_its_file_can_still_be_confirmed(
    searched: StudyConfig,
) -> None:
    """``run --epochs 1`` on a file that says 5: confirm reads the file and its own --epochs."""
    from_file = dataclasses.replace(
        searched, training=dataclasses.replace(searched.training, epochs=5)
    )
    report = confirm(from_file, top=1, epochs=2, seeds=1, out=io.StringIO())
    assert report.rows


def row(
    label: str, search_val: float, val: tuple[float, ...], versus: Comparison | None
) -> Confirmed:
    scores = Scores(sum(val) / len(val), val, 0, 0.001)
    return Confirmed(
        label=label,
        trial=0,
        schedule=make_schedule("constant", {"lr": 0.1}),
        search_val=search_val,
        val=val,
        test=val,
        scores=scores,
        test_scores=scores,
        versus_baseline=versus,
    )


def test_the_table_shows_ties_ranks_beside_values_and_the_decision() -> None:
    tie = Comparison(0.001, -0.004, 0.006, 300, 3, "paired across 3 seeds (t, 2 df)")
    rows = (
        row("trial 4", 0.95, (0.96, 0.97, 0.98), tie),  # mean 0.97
        row("trial 9", 0.96, (0.97, 0.97, 0.97), tie),  # mean 0.97 too: a tie
        row("baseline step-000", 0.90, (0.96, 0.96, 0.96), None),
    )
    report = ConfirmReport(rows, epochs=4, seeds=3, rank_correlation=-0.5, trial_epochs=8)
    lines = report.lines()
    assert "shorter than the searched trials (8 epochs)" in lines[1]
    # each rank sits right after the value it ranks, the test column after both
    assert re.fullmatch(
        r"schedule +search val +rank +confirm val ± se +rank +test ± se +"
        r"vs baseline, points \[95%\] +verdict",
        lines[2],
    )
    table = {line.split("  ")[0]: line for line in lines[3:6]}
    for label in ("trial 4", "trial 9"):
        cells = table[label].split()
        assert cells[cells.index("0.9700") + 3] == "1="  # mean, ±, se, rank
        assert "within noise" in table[label]
    assert "0.9600 ± 0.0010" in table["baseline step-000"]
    assert "+0.10 [-0.40, +0.60]" in table["trial 4"]
    search_ranks = {label: line.split()[3] for label, line in table.items()}
    assert search_ranks == {"trial 4": "2", "trial 9": "1", "baseline step-000": "3"}
    assert lines[-1] == (
        "lrsearch best --confirmed writes trial 4: the best mean validation accuracy at 4 epochs "
        "(0.9700); against the best baseline it is within noise"
    )


def test_a_confirm_at_the_trials_length_has_no_length_note() -> None:
    report = ConfirmReport(
        (row("trial 1", 0.9, (0.9,), None),),
        epochs=8,
        seeds=1,
        rank_correlation=math.nan,
        trial_epochs=8,
    )
    assert not any("shorter" in line for line in report.lines())


def test_a_loss_driven_study_confirms_on_the_loss_lowest_first(tmp_path: Path) -> None:
    config = digits_study(
        tmp_path / "loss.db",
        name="loss-confirm",
        n_trials=2,
        objective="val_loss",
        task=TaskConfig(name="examples.regression:build", val_size=0.25),
        training=TrainConfig(epochs=2, batch_size=16),
        space=space_from_table({"families": ["constant", "cosine"], "lr": [1e-3, 0.03]}),
    )
    run_study(config, out=io.StringIO())
    report = confirm(config, top=2, epochs=3, seeds=2, out=io.StringIO())

    losses = [row.val_mean for row in report.rows]
    assert losses == sorted(losses)  # lower is better: first
    assert all(
        row.scores.metric == "loss" and not row.scores.higher_is_better for row in report.rows
    )
    text = "\n".join(report.lines())
    assert "on val loss" in text and "points" not in text
    assert "the best mean validation loss at 3 epochs" in text
    record = optuna.load_study(study_name=config.name + CONFIRM_SUFFIX, storage=config.storage)
    assert record.direction == optuna.study.StudyDirection.MINIMIZE
    assert all(t.value == t.user_attrs["val_loss"] for t in record.trials)

    out = tmp_path / "best.json"
    winner, _ = save_best_confirmed(config.storage, config.name, out)
    assert winner.label == report.rows[0].label
    assert load_schedule(out).family in ("constant", "cosine")
