"""Baselines: the articles' schedules enter a study once, as trials the sampler learns from."""

from __future__ import annotations

import io
import json
from pathlib import Path

import optuna
import pytest
from digits_study import digits_study

from lrsearch import load_results, suggest_schedule
from lrsearch.baselines import (
    ARTICLE_BASELINES,
    BASELINE_ATTR,
    BASELINES,
    OFFERED_ATTR,
    REFERENCE_SHAPES,
    baselines_for,
    enqueue_baselines,
)
from lrsearch.export import export_study
from lrsearch.runner import run_study
from lrsearch.space import default_space, params_for, space_from_table


def test_there_is_one_baseline_per_article_schedule_named_in_the_issue() -> None:
    assert set(ARTICLE_BASELINES) == {
        "constant",
        "cosine-warmup-004",
        "cosine-restarts-000",
        "polynomial-000",
        "exponential-burnin-001",
        "triangular-002",
        "multistep-004",
    }
    restarts = ARTICLE_BASELINES["cosine-restarts-000"].params()
    assert restarts["multiplier"] == 1.25 and restarts["first_cycle"] == pytest.approx(0.2)


def test_the_reference_shapes_share_a_10_percent_warmup_and_differ_after_it() -> None:
    total = 1000
    curves = {name: s.curve(total) / s.lr for name, s in baselines_for(default_space()).items()}
    for name in REFERENCE_SHAPES:
        assert curves[name][0] == 0.0 and curves[name][total // 10] == pytest.approx(1.0), name
        assert curves[name][total // 20] == pytest.approx(0.5), name
    assert curves["constant-warmup10"][total // 10 :] == pytest.approx(1.0)
    for decaying in ("cosine-warmup10", "linear-to-zero", "wsd-cooldown20"):
        assert curves[decaying][-1] < 0.01, decaying  # down to zero at the run's end
    linear = curves["linear-to-zero"][total // 10 :]
    assert linear[:-1] - linear[1:] == pytest.approx(1.0 / (0.9 * total))  # a straight line
    wsd = curves["wsd-cooldown20"]
    cooldown = int(0.8 * total)  # the last 20% of the whole run
    assert wsd[total // 10 : cooldown + 1] == pytest.approx(1.0)
    assert wsd[cooldown + 1] < 1.0


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_each_baseline_is_produced_by_the_default_space_from_its_enqueued_params(name: str) -> None:
    space = default_space()
    schedule = baselines_for(space)[name]
    study = optuna.create_study()
    study.enqueue_trial(params_for(schedule, space))
    produced = suggest_schedule(study.ask(), space)
    assert produced.family == schedule.family
    for key, value in schedule.params().items():
        if isinstance(value, float):
            assert produced.params()[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key
        else:
            assert produced.params()[key] == value, key


def test_the_peak_moves_to_the_centre_of_the_lr_range_and_ratios_stay() -> None:
    space = space_from_table({"lr": [0.01, 1.0]})
    article = ARTICLE_BASELINES["cosine-warmup-004"]
    moved = baselines_for(space)["cosine-warmup-004"]
    assert moved.lr == pytest.approx(0.1)
    assert moved.params()["min_lr"] / moved.lr == pytest.approx(
        article.params()["min_lr"] / article.lr
    )
    assert moved.warmup == article.warmup


def test_a_baseline_outside_a_narrowed_space_is_skipped_with_a_note() -> None:
    space = space_from_table(
        {"families": ["cosine_restarts", "constant"], "cosine_restarts": {"multiplier": [1.5, 2.0]}}
    )
    out = io.StringIO()
    queued = enqueue_baselines(optuna.create_study(), space, out)
    assert queued == ["constant", "constant-warmup10"]
    assert "baseline cosine-restarts-000 skipped" in out.getvalue()
    assert "multiplier=1.25" in out.getvalue()


def test_baselines_are_queued_once_and_recognisable_in_the_export(tmp_path: Path) -> None:
    config = digits_study(tmp_path / "study.db", n_trials=1, baselines=True, space=default_space())
    first = run_study(config, out=io.StringIO())
    second = run_study(config, out=io.StringIO())
    assert (first.trials_run, second.trials_run) == (len(BASELINES) + 1, 1)
    table = load_results(config.storage, config.name)
    named = table[BASELINE_ATTR].dropna()
    assert sorted(named) == sorted(BASELINES)
    assert table.loc[table[BASELINE_ATTR].notna(), "number"].tolist() == list(range(len(BASELINES)))
    assert any(line.startswith("searched vs baseline") for line in second.lines())

    export_study(config.storage, config.name, tmp_path / "out")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["best_baseline"]["baseline"] in BASELINES
    assert summary["best_searched"]["baseline"] is None
    points = 100 * (summary["best_searched"]["value"] - summary["best_baseline"]["value"])
    assert summary["searched_minus_baseline_points"]["val_accuracy"] == pytest.approx(points)


def test_a_study_that_queued_baselines_before_the_reference_shapes_resumes_without_them() -> None:
    space = default_space()
    study = optuna.create_study()
    old = baselines_for(space)["constant"]  # what an older lrsearch queued, without the record
    study.enqueue_trial(params_for(old, space), user_attrs={BASELINE_ATTR: "constant"})
    queued = enqueue_baselines(study, space, io.StringIO())
    assert sorted(queued) == sorted(set(ARTICLE_BASELINES) - {"constant"})
    assert study.user_attrs[OFFERED_ATTR] == sorted(ARTICLE_BASELINES)
    assert enqueue_baselines(study, space, io.StringIO()) == []


def test_a_new_study_offers_every_baseline_and_records_it() -> None:
    study = optuna.create_study()
    queued = enqueue_baselines(study, default_space(), io.StringIO())
    assert sorted(queued) == sorted(BASELINES)
    assert study.user_attrs[OFFERED_ATTR] == sorted(BASELINES)
