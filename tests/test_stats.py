import math

import numpy as np
import pytest

from lrsearch.stats import binomial_se, pack_correct, unpack_correct


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
