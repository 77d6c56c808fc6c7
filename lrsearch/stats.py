"""The noise in a verdict: standard errors and paired comparisons of trials.

A trial's validation accuracy is a mean over a finite set of examples (and of
seeds, where it trains several), so every accuracy carries a standard error.
Two trials scored on the same examples are compared example by example,
which is far sharper than comparing two accuracies.
"""

from __future__ import annotations

import base64
import math
import statistics
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["binomial_se", "mean_se", "pack_correct", "unpack_correct"]


def binomial_se(accuracy: float, examples: int) -> float:
    """Standard error of an accuracy measured on ``examples`` independent examples."""
    if examples < 1 or not math.isfinite(accuracy):
        return math.nan
    return math.sqrt(max(accuracy * (1.0 - accuracy), 0.0) / examples)


def pack_correct(correct: npt.ArrayLike) -> str:
    """Per-example correctness as base64 bits: 10,000 examples in 1,668 characters, small
    enough for an Optuna user attribute that optuna-dashboard shows."""
    bits = np.packbits(np.asarray(correct, dtype=bool), bitorder="little")
    return base64.b64encode(bits.tobytes()).decode("ascii")


def unpack_correct(text: str, examples: int) -> npt.NDArray[np.bool_]:
    """The inverse of :func:`pack_correct` for ``examples`` examples."""
    bits = np.frombuffer(base64.b64decode(text), dtype=np.uint8)
    return np.unpackbits(bits, count=examples, bitorder="little").astype(bool)


def mean_se(per_seed: Sequence[float], examples: int) -> float:
    """Standard error of a mean accuracy over seeds that share one set of ``examples``.

    Two parts: the spread between seeds, which averaging over seeds shrinks, and the sampling
    of the examples, which it does not (every seed meets the same examples)."""
    values = [v for v in per_seed if math.isfinite(v)]
    if not values:
        return math.nan
    mean = sum(values) / len(values)
    between = statistics.variance(values) / len(values) if len(values) > 1 else 0.0
    return math.sqrt(between + binomial_se(mean, examples) ** 2)
