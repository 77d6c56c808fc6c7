"""Verdict lines from FrozenTrials: new ones with per-example correctness, and old ones."""

from __future__ import annotations

import json
import math
import re
from typing import Any

import numpy as np
import optuna

from lrsearch.baselines import BASELINE_ATTR
from lrsearch.stats import AHEAD, UNKNOWN, WITHIN_NOISE, binomial_se, pack_correct
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
