import dataclasses
import math

import numpy as np
import pytest

from lrsearch.stats import (
    AHEAD,
    BEHIND,
    UNKNOWN,
    WITHIN_NOISE,
    Scores,
    binomial_se,
    compare,
    compare_across_seeds,
    mcnemar_p,
    mean_se,
    pack_correct,
    paired_bootstrap,
    t95,
    unpack_correct,
    unpaired,
)


@pytest.mark.parametrize("examples", [1, 7, 8, 9, 287, 10_000])
def test_correctness_bits_round_trip(examples: int) -> None:
    correct = np.random.default_rng(examples).random(examples) < 0.9
    text = pack_correct(correct)
    assert len(text) == 4 * math.ceil(math.ceil(examples / 8) / 3)
    np.testing.assert_array_equal(unpack_correct(text, examples), correct)


def test_binomial_se() -> None:
    assert binomial_se(0.9, 100) == pytest.approx(0.03)
    assert binomial_se(1.0, 50) == 0.0
    assert math.isnan(binomial_se(0.5, 0))
    assert math.isnan(binomial_se(math.nan, 10))


def scores(correct: np.ndarray) -> Scores:
    correct = np.atleast_2d(correct)
    per_seed = tuple(float(row.mean()) for row in correct)
    accuracy = float(np.mean(per_seed))
    examples = correct.shape[1]
    return Scores(accuracy, per_seed, examples, binomial_se(accuracy, examples), correct)


def test_identical_trials_differ_by_nothing() -> None:
    correct = np.random.default_rng(1).random((2, 500)) < 0.8
    result = paired_bootstrap(correct, correct)
    assert (result.difference, result.low, result.high) == (0.0, 0.0, 0.0)
    assert result.verdict == WITHIN_NOISE
    assert (result.examples, result.seeds) == (500, 2)
    assert "averaged over 2 paired seeds" in result.method


def test_right_on_100_more_of_1000_examples_is_ahead() -> None:
    b = np.random.default_rng(2).random(1000) < 0.7
    a = b.copy()
    a[np.flatnonzero(~b)[:100]] = True
    result = compare(scores(a), scores(b))
    assert result.difference == pytest.approx(0.1)
    assert result.low > 0.05 and result.verdict == AHEAD
    assert result.p_value == pytest.approx(2 / 2**100)  # 100 discordant pairs, all one way
    assert compare(scores(b), scores(a)).verdict == BEHIND


def test_paired_interval_is_deterministic_and_narrower_than_unpaired() -> None:
    rng = np.random.default_rng(3)
    b = rng.random(2000) < 0.8
    a = b ^ (rng.random(2000) < 0.02)  # 2% of the examples flip
    first, again = compare(scores(a), scores(b)), compare(scores(a), scores(b))
    assert first == again
    loose = unpaired(scores(a), scores(b))
    assert loose.high - loose.low > 3 * (first.high - first.low)
    assert "unpaired" in loose.method and first.method.startswith("paired")


def test_paired_interval_covers_the_true_difference_about_95_percent() -> None:
    """Trials whose true accuracies differ by 1 point, scored on fresh examples each time."""
    rng = np.random.default_rng(4)
    hits = 0
    for _ in range(300):
        b = rng.random(400) < 0.85
        # Of all examples, 4% go wrong-to-right and 3% right-to-wrong: +1 point expected.
        flip = rng.random(400)
        a = np.where(b, flip > 0.03 / 0.85, flip < 0.04 / 0.15)
        true = 0.04 - 0.03
        result = paired_bootstrap(a, b, resamples=1000)
        hits += result.low <= true <= result.high
    assert 0.90 <= hits / 300 <= 0.985


def test_mcnemar_exact() -> None:
    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(3, 3) == 1.0
    # 1 against 5: P(X <= 1) = (1 + 6) / 64 for X ~ Bin(6, 1/2), doubled.
    assert mcnemar_p(1, 5) == pytest.approx(14 / 64)
    assert mcnemar_p(5000, 5200) == pytest.approx(0.0489, abs=0.002)  # normal approximation
    assert 0.0 <= mcnemar_p(0, 10_000) < 1e-300


def test_old_trials_without_anything_give_an_unknown_verdict() -> None:
    old = Scores(0.9, (0.9,), 0, math.nan)
    result = compare(old, Scores(0.8, (0.8,), 0, math.nan))
    assert result.difference == pytest.approx(0.1)
    assert result.verdict == UNKNOWN
    with_count = compare(Scores(0.9, (0.9,), 1000, math.nan), Scores(0.8, (0.8,), 1000, math.nan))
    half = 1.96 * math.sqrt(0.9 * 0.1 / 1000 + 0.8 * 0.2 / 1000)
    assert with_count.high - with_count.difference == pytest.approx(half, rel=1e-3)


def test_across_seeds_t_interval() -> None:
    a = Scores(0.0, (0.91, 0.93, 0.92), 0, math.nan)
    b = Scores(0.0, (0.90, 0.91, 0.90), 0, math.nan)
    result = compare_across_seeds(a, b)
    differences = [0.01, 0.02, 0.02]
    half = 4.303 * np.std(differences, ddof=1) / math.sqrt(3)
    assert result.difference == pytest.approx(np.mean(differences))
    assert result.high - result.difference == pytest.approx(half)
    assert result.seeds == 3 and "2 df" in result.method


def test_across_seeds_adds_the_example_noise() -> None:
    rng = np.random.default_rng(5)
    b = rng.random((3, 300)) < 0.8
    a = b ^ (rng.random((3, 300)) < 0.05)
    both = compare_across_seeds(scores(a), scores(b))
    seeds_only = compare_across_seeds(
        Scores(0, scores(a).per_seed, 300, math.nan), Scores(0, scores(b).per_seed, 300, math.nan)
    )
    assert both.difference == pytest.approx(seeds_only.difference)
    assert both.high - both.low > seeds_only.high - seeds_only.low
    assert "bootstrap" in both.method


def test_t95_table() -> None:
    assert t95(1) == 12.706 and t95(2) == 4.303
    assert t95(11) == t95(10)  # between rows: the wider one
    assert t95(1000) == pytest.approx(1.96, abs=1e-3)
    assert math.isnan(t95(0))


def test_real_figures_pair_example_by_example_and_the_direction_decides_the_verdict() -> None:
    rng = np.random.default_rng(0)
    losses = rng.gamma(2.0, 0.5, (2, 2000))
    lower = losses - 0.02 + rng.normal(0, 0.01, losses.shape)
    a = Scores(float(lower.mean()), (0.0, 0.0), 2000, math.nan, lower, "loss", False)
    b = Scores(float(losses.mean()), (0.0, 0.0), 2000, math.nan, losses, "loss", False)

    paired = compare(a, b)
    assert paired.method.startswith("paired over examples (normal interval)")
    assert paired.difference == pytest.approx(-0.02, abs=0.002)
    assert paired.high < 0 and paired.verdict == AHEAD  # lower loss: ahead
    assert compare(b, a).verdict == BEHIND
    # Unpaired, the spread of the losses themselves swamps a 0.02 difference.
    assert unpaired(a, dataclasses.replace(b, se=0.02)).verdict == WITHIN_NOISE


def test_the_standard_error_of_real_figures_comes_from_their_spread() -> None:
    assert mean_se([0.5], 400, spread=2.0) == pytest.approx(0.1)
    assert mean_se([0.5, 0.7], 400, spread=2.0) == pytest.approx(math.sqrt(0.01 + 0.01))
