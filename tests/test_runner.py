"""The population runner: K trials asked at once, trained together, told one by one."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import optuna
import pytest
from digits_study import digits_study

from lrsearch.errors import LrsearchError
from lrsearch.export import intermediate_table
from lrsearch.runner import StudyReport, run_study
from lrsearch.schedules import make_schedule
from lrsearch.study import open_study
from lrsearch.training import TrainConfig

State = optuna.trial.TrialState


def stored(config: object) -> list[optuna.trial.FrozenTrial]:
    assert dataclasses.is_dataclass(config)
    return optuna.load_study(study_name="digits", storage=config.storage).trials  # type: ignore[attr-defined]


def test_trials_run_in_populations_of_the_asked_size_and_the_count_is_exact(
    tmp_path: Path,
) -> None:
    config = digits_study(
        tmp_path / "p.db", n_trials=5, training=TrainConfig(epochs=1, population=2)
    )
    log = io.StringIO()
    report = run_study(config, out=log)
    trials = stored(config)
    assert report.trials_run == 5 and [t.state for t in trials] == [State.COMPLETE] * 5
    assert [t.user_attrs["population"] for t in trials] == [2, 2, 2, 2, 1]
    assert {t.user_attrs["population_path"] for t in trials} == {"stacked"}
    assert "populations of up to 2 trials, 1 seed each, run as one wide network" in log.getvalue()


def test_each_trial_trains_with_every_seed_and_is_scored_by_their_mean(tmp_path: Path) -> None:
    config = digits_study(tmp_path / "s.db", n_trials=2, seeds=2, seed=5)
    run_study(config, out=io.StringIO())
    for trial in stored(config):
        attrs = trial.user_attrs
        assert attrs["seeds"] == [5, 6]  # the same for every trial: paired comparisons
        per_seed = attrs["val_accuracy_per_seed"]
        assert len(per_seed) == len(attrs["val_correct"]) == 2
        assert trial.value == pytest.approx(sum(per_seed) / 2)
        assert attrs["val_accuracy_se"] > 0


def test_a_log_file_gets_one_line_per_trial_and_a_resumed_run_says_so(tmp_path: Path) -> None:
    config = digits_study(tmp_path / "log.db", n_trials=3)
    first = io.StringIO()
    run_study(config, out=first)
    lines = [line for line in first.getvalue().splitlines() if line.startswith("trial ")]
    assert len(lines) == 3 and "\r" not in first.getvalue()
    assert all(" val_accuracy 0." in line and " best 0." in line for line in lines)
    again = io.StringIO()
    report = run_study(dataclasses.replace(config, n_trials=1), out=again)
    best = report.best
    assert best is not None
    assert "resuming study 'digits': 3 trials, best " in again.getvalue()


def test_a_resumed_run_samples_new_points_and_keeps_the_training_seeds(tmp_path: Path) -> None:
    config = digits_study(tmp_path / "r.db", n_trials=2, sampler="random")
    run_study(config, out=io.StringIO())
    run_study(dataclasses.replace(config, seed=9), out=io.StringIO())
    trials = stored(config)
    first, second = trials[:2], trials[2:]
    assert [t.params for t in first] != [t.params for t in second]
    assert {tuple(t.user_attrs["seeds"]) for t in trials} == {(0,)}  # fixed at creation


def test_the_sampler_seed_depends_on_the_trials_so_far(tmp_path: Path) -> None:
    config = digits_study(tmp_path / "seed.db", n_trials=1, sampler="random")
    fresh = open_study(config, config.storage or "")
    first = fresh.sampler._rng.rng.random()  # RandomSampler's own generator
    run_study(config, out=io.StringIO())
    resumed = open_study(config, config.storage or "")
    assert resumed.sampler._rng.rng.random() != first


def test_the_objective_can_be_the_validation_loss_minimized(tmp_path: Path) -> None:
    config = digits_study(tmp_path / "loss.db", n_trials=3, objective="val_loss")
    report = run_study(config, out=io.StringIO())
    study = optuna.load_study(study_name="digits", storage=config.storage)
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    assert study.metric_names == ["val_loss"]
    for trial in study.trials:
        assert trial.value == trial.user_attrs["val_loss"]
        assert trial.intermediate_values == {
            1: pytest.approx(trial.user_attrs["epoch_val_loss"][0])
        }
    assert report.best is not None
    assert report.best.value == min(t.value for t in study.trials if t.value is not None)
    table = intermediate_table(study)
    assert list(table["val_loss"]) == [t.value for t in study.trials]
    assert table["val_accuracy"].between(0, 1).all()
    with pytest.raises(LrsearchError, match="objective"):
        run_study(dataclasses.replace(config, objective="val_accuracy"), out=io.StringIO())


def test_the_summary_names_a_baseline_that_is_best_overall_as_such(tmp_path: Path) -> None:
    schedule = make_schedule("constant", {"lr": 0.1}).to_dict()

    def made(value: float, **attrs: object) -> optuna.trial.FrozenTrial:
        made_attrs = {"schedule": schedule, "val_accuracy": value, **attrs}
        return optuna.trial.create_trial(value=value, user_attrs=made_attrs)

    trials = [made(0.9, baseline="cosine-warmup-004"), made(0.8), made(0.7)]
    for number, trial in enumerate(trials):
        trial.number = number
    report = StudyReport("s", "sqlite:///s.db", 3, trials, tmp_path)
    lines = report.lines(confirm="lrsearch confirm --study s.toml")
    (best,) = [line for line in lines if line.startswith(("best overall", "best trial"))]
    assert best.split(None, 2) == ["best", "overall", "trial 0, the baseline cosine-warmup-004"]
    best_searched = StudyReport("s", "sqlite:///s.db", 2, trials[1:], tmp_path).lines()
    assert any(line.split() == ["best", "trial", "1"] for line in best_searched)
