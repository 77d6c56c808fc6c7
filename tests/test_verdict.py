"""Verdict lines from FrozenTrials: new ones with per-example correctness, and old ones."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np
import optuna

from lrsearch.baselines import BASELINE_ATTR
from lrsearch.stats import AHEAD, UNKNOWN, WITHIN_NOISE, binomial_se, pack_correct, pack_figures
from lrsearch.verdict import trial_scores, verdict_rows, verdict_summary

EXAMPLES = 1000
BASE = np.random.default_rng(0).random(EXAMPLES) < 0.7


def trial(number: int, correct: np.ndarray, *, baseline: str | None = None) -> Any:
    """A trial with the attributes population training records, one seed."""
    accuracy = float(correct.mean())
    attrs: dict[str, Any] = {
        "val_accuracy": accuracy,
        "val_accuracy_se": binomial_se(accuracy, EXAMPLES),
        "val_accuracy_per_seed": [accuracy],
        "seeds": [0],
        "val_examples": EXAMPLES,
        "val_correct": [pack_correct(correct)],
        "epochs": 4,
    }
    if baseline is not None:
        attrs[BASELINE_ATTR] = baseline
    frozen = optuna.trial.create_trial(value=accuracy, user_attrs=attrs)
    frozen.number = number
    return frozen


def old_trial(number: int, accuracy: float, *, baseline: str | None = None) -> Any:
    attrs: dict[str, Any] = {"val_accuracy": accuracy, "test_accuracy": accuracy, "epochs": 4}
    if baseline is not None:
        attrs[BASELINE_ATTR] = baseline
    frozen = optuna.trial.create_trial(value=accuracy, user_attrs=attrs)
    frozen.number = number
    return frozen


def better(by: int) -> np.ndarray:
    """BASE right on ``by`` more examples."""
    correct = BASE.copy()
    correct[np.flatnonzero(~BASE)[:by]] = True
    return correct


def test_a_clear_winner_is_ahead_and_a_tie_is_within_noise_with_advice() -> None:
    trials = [trial(0, BASE, baseline="cosine-000"), trial(1, better(100)), trial(2, better(97))]
    rows = dict(verdict_rows(trials))
    assert set(rows) == {"searched vs baseline", "best vs runner-up"}
    vs_baseline = rows["searched vs baseline"]
    assert vs_baseline.startswith(
        "trial 1 vs baseline cosine-000: +10.00 points val accuracy [95% "
    )
    assert vs_baseline.endswith(f"on {EXAMPLES} examples x 1 seed: {AHEAD}")
    runner_up = rows["best vs runner-up"]
    assert runner_up.startswith("trial 1 vs trial 2: +0.30 points")
    assert f": {WITHIN_NOISE} — run lrsearch confirm --top 3 --epochs 8 --seeds 3" in runner_up
    low, high = map(float, re.findall(r"\[95% ([-+.\d]+), ([-+.\d]+)\]", runner_up)[0])
    assert low <= 0.30 <= high
    for label, line in rows.items():  # issue 14.6: the label is not repeated in the line
        assert label not in line and "best searched vs best baseline" not in line


def test_the_summary_dict_is_json_and_matches_the_lines() -> None:
    trials = [trial(0, BASE, baseline="cosine-000"), trial(1, better(100)), trial(2, better(97))]
    summary = verdict_summary(trials)
    json.dumps(summary, allow_nan=False)
    vs = summary["searched_vs_baseline"]
    assert (vs["a"], vs["b"], vs["verdict"], vs["advice"]) == (
        "trial 1",
        "baseline cosine-000",
        AHEAD,
        None,
    )
    assert math.isclose(vs["difference_points"], 10.0)
    assert vs["low_points"] > 0 and vs["mcnemar_p"] < 1e-20
    assert summary["best_vs_runner_up"]["verdict"] == WITHIN_NOISE


def test_old_trials_fall_back_to_what_they_carry() -> None:
    trials = [old_trial(0, 0.90, baseline="step-001"), old_trial(1, 0.91), old_trial(2, 0.905)]
    scores = trial_scores(trials[1])
    assert (scores.value, scores.examples, scores.figures) == (0.91, 0, None)
    rows = dict(verdict_rows(trials))
    assert rows["searched vs baseline"].startswith(
        "trial 1 vs baseline step-001: +1.00 points val accuracy (no standard error recorded"
    )
    assert UNKNOWN in rows["searched vs baseline"]
    assert "lrsearch confirm --top 3 --epochs 8 --seeds 3" in rows["best vs runner-up"]
    assert verdict_summary(trials)["searched_vs_baseline"]["low_points"] is None


def test_a_mixed_pair_is_compared_unpaired_and_says_so() -> None:
    new = trial(1, better(100))
    old = old_trial(0, 0.7, baseline="step-001")
    old.user_attrs["val_examples"] = EXAMPLES  # a count but no correctness bits
    (line,) = [line for _, line in verdict_rows([old, new])]
    assert "(unpaired)" in line and line.endswith(AHEAD)


def test_nothing_to_compare_gives_no_rows() -> None:
    assert verdict_rows([trial(0, BASE)]) == []
    assert verdict_summary([]) == {}


LOSSES = np.random.default_rng(1).gamma(2.0, 0.5, EXAMPLES)


def loss_trial(number: int, losses: np.ndarray, *, baseline: str | None = None) -> Any:
    """A trial of a study that minimises the validation loss, with its per-example losses."""
    loss = float(losses.mean())
    attrs: dict[str, Any] = {
        "objective": "val_loss",
        "higher_is_better": False,
        "val_loss": loss,
        "val_loss_se": float(losses.std(ddof=1) / math.sqrt(EXAMPLES)),
        "val_loss_per_seed": [loss],
        "seeds": [0],
        "val_examples": EXAMPLES,
        "val_loss_figures": [pack_figures(losses)],
        "epochs": 4,
    }
    if baseline is not None:
        attrs[BASELINE_ATTR] = baseline
    frozen = optuna.trial.create_trial(value=loss, user_attrs=attrs)
    frozen.number = number
    return frozen


def test_a_loss_study_pairs_per_example_losses_and_says_lower_is_ahead() -> None:
    trials = [
        loss_trial(0, LOSSES, baseline="cosine-000"),
        loss_trial(1, LOSSES - 0.05),  # lower on every example: clearly better
        loss_trial(2, LOSSES - 0.05 + np.random.default_rng(2).normal(0, 0.01, EXAMPLES)),
    ]
    scores = trial_scores(trials[1])
    assert scores.figures is not None and scores.figures.shape == (1, EXAMPLES)
    assert scores.metric == "loss" and not scores.higher_is_better

    rows = dict(verdict_rows(trials))
    baseline_line = rows["searched vs baseline"]
    assert "val loss" in baseline_line and "points" not in baseline_line
    assert re.search(r": -0\.05\d* val loss \[95% -0\.05\d*, -0\.04\d*\]", baseline_line)
    assert baseline_line.endswith(f": {AHEAD}")
    summary = verdict_summary(trials)["searched_vs_baseline"]
    assert summary["metric"] == "val_loss" and summary["verdict"] == AHEAD
    assert "difference_points" not in summary and summary["difference"] < 0
