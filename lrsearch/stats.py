"""The noise in a verdict: standard errors and paired comparisons of trials.

A trial's validation figure (accuracy, loss, any metric of its task) is a mean over a finite
set of examples (and of seeds, where it trains several), so every one carries a standard
error. Two trials scored on the same examples are compared example by example, which is far
sharper than comparing two means: per-example correctness pairs, and so do per-example losses.
"""

from __future__ import annotations

import base64
import dataclasses
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "AHEAD",
    "BEHIND",
    "UNKNOWN",
    "WITHIN_NOISE",
    "Comparison",
    "Scores",
    "binomial_se",
    "compare",
    "compare_across_seeds",
    "in_metric_units",
    "mcnemar_p",
    "mean_se",
    "pack_correct",
    "pack_figures",
    "paired_bootstrap",
    "paired_normal",
    "t95",
    "unpack_correct",
    "unpack_figures",
    "unpaired",
]


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


def pack_figures(figures: npt.ArrayLike) -> str:
    """Per-example real figures (losses) as base64 float32: 4 bytes an example, so that two
    trials' losses pair as their correctness does."""
    values = np.asarray(figures, dtype="<f4")
    return base64.b64encode(values.tobytes()).decode("ascii")


def unpack_figures(text: str, examples: int) -> npt.NDArray[np.float64]:
    """The inverse of :func:`pack_figures` for ``examples`` examples."""
    values = np.frombuffer(base64.b64decode(text), dtype="<f4")
    if len(values) != examples:
        raise ValueError(f"{len(values)} figures recorded for {examples} examples")
    return values.astype(np.float64)


Z95 = 1.959964  # the normal quantile of a two-sided 95% interval
# Student's t quantiles for a two-sided 95% interval by degrees of freedom; between the
# rows, the next smaller degrees of freedom (a slightly wider, safe interval).
T95 = {
    1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
    9: 2.262, 10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042, 60: 2.000, 120: 1.980,
}  # fmt: skip
RESAMPLES = 4000
AHEAD, BEHIND, WITHIN_NOISE, UNKNOWN = "ahead", "behind", "within noise", "noise unknown"


def t95(degrees: int) -> float:
    """The 95% two-sided Student's t quantile, from :data:`T95`."""
    if degrees < 1:
        return math.nan
    return T95[max(d for d in T95 if d <= degrees)] if degrees <= 120 else Z95


@dataclass(frozen=True, eq=False)
class Scores:
    """One trial's results on one metric, as far as a comparison needs them.

    ``figures`` holds one row of per-example figures per seed (the examples in the order
    every trial of a study shares): correctness as booleans, or real values such as losses;
    old trials have none, and may not know their example count either (``examples`` 0, ``se``
    NaN).
    """

    value: float  # mean over seeds
    per_seed: tuple[float, ...]
    examples: int
    se: float
    figures: npt.NDArray[Any] | None = None  # seeds x examples: bool or float
    metric: str = "accuracy"
    higher_is_better: bool = True
    # For a metric that is a function of the figures' mean (perplexity: exp of the mean loss),
    # its slope at this trial's mean; None where the metric is the mean itself.
    slope: float | None = None


@dataclass(frozen=True)
class Comparison:
    """One trial's figure minus another's, with its 95% interval (in the metric's units;
    fractions for an accuracy)."""

    difference: float
    low: float
    high: float
    examples: int  # 0 when unknown
    seeds: int
    method: str
    p_value: float | None = None  # McNemar's exact test, where it applies
    higher_is_better: bool = True

    @property
    def verdict(self) -> str:
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            return UNKNOWN
        if self.low > 0:
            return AHEAD if self.higher_is_better else BEHIND
        if self.high < 0:
            return BEHIND if self.higher_is_better else AHEAD
        return WITHIN_NOISE


def mcnemar_p(only_a: int, only_b: int) -> float:
    """McNemar's exact test: the two-sided binomial p-value of the discordant pairs.

    Exact integer arithmetic, so 10,000 discordant pairs neither
    overflow nor lose the tail; scipy is not needed for one binomial tail.
    """
    n = only_a + only_b
    if n == 0:
        return 1.0
    term = tail = 1  # comb(n, 0), then each comb(n, k) from the one before
    for k in range(min(only_a, only_b)):
        term = term * (n - k) // (k + 1)
        tail += term
    return min(1.0, 2 * tail / (1 << n))


def paired_bootstrap(
    a: npt.NDArray[np.bool_], b: npt.NDArray[np.bool_], *, resamples: int = RESAMPLES
) -> Comparison:
    """Accuracy of ``a`` minus ``b`` on the same examples (seeds x examples, rows paired).

    Examples are resampled with replacement, the same examples for every seed,
    and the difference averaged over the seeds. A resample's mean only depends
    on how often each distinct per-example difference is drawn, so the draws are
    multinomial counts of those few values: exact, and cheap at any size.
    """
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    if a.shape != b.shape or a.shape[1] == 0:
        raise ValueError(
            f"paired correctness needs equal, non-empty shapes, got {a.shape}, {b.shape}"
        )
    seeds, examples = a.shape
    per_example = (a.astype(np.float64) - b).mean(axis=0)
    values, counts = np.unique(per_example, return_counts=True)
    draws = np.random.default_rng(0).multinomial(examples, counts / examples, size=resamples)
    means = draws @ values / examples
    low, high = np.quantile(means, [0.025, 0.975])
    only_a = int(np.sum(a[0] & ~b[0]))
    only_b = int(np.sum(b[0] & ~a[0]))
    return Comparison(
        difference=float(per_example.mean()),
        low=float(low),
        high=float(high),
        examples=examples,
        seeds=seeds,
        method="paired bootstrap over examples"
        + (f", averaged over {seeds} paired seeds" if seeds > 1 else ""),
        # Pooling pairs over seeds would count one example several times: one seed only.
        p_value=mcnemar_p(only_a, only_b) if seeds == 1 else None,
    )


def paired_normal(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> Comparison:
    """Mean of ``a`` minus ``b`` on the same examples (seeds x examples, rows paired), for
    real figures such as losses: the per-example differences, averaged over the seeds, have
    a mean whose 95% interval is the normal one (thousands of examples; the bootstrap of
    :func:`paired_bootstrap` relies on there being few distinct values)."""
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    if a.shape != b.shape or a.shape[1] == 0:
        raise ValueError(f"paired figures need equal, non-empty shapes, got {a.shape}, {b.shape}")
    seeds, examples = a.shape
    per_example = (a - b).mean(axis=0)
    difference = float(per_example.mean())
    spread = float(per_example.std(ddof=1)) if examples > 1 else math.nan
    half = Z95 * spread / math.sqrt(examples)
    return Comparison(
        difference=difference,
        low=difference - half,
        high=difference + half,
        examples=examples,
        seeds=seeds,
        method="paired over examples (normal interval)"
        + (f", averaged over {seeds} paired seeds" if seeds > 1 else ""),
    )


def _paired(a: Scores, b: Scores) -> Comparison | None:
    """The paired comparison over examples, when both recorded the same examples' figures."""
    if a.figures is None or b.figures is None or a.figures.shape != b.figures.shape:
        return None
    if a.figures.dtype == np.bool_ and b.figures.dtype == np.bool_:
        comparison = paired_bootstrap(a.figures.astype(bool), b.figures.astype(bool))
    else:
        comparison = paired_normal(a.figures.astype(np.float64), b.figures.astype(np.float64))
    if (a.slope is None) != (b.slope is None):
        return None  # one side's figures are in the metric's units, the other's not
    if a.slope is not None and b.slope is not None:
        comparison = in_metric_units(comparison, (a.slope + b.slope) / 2)
    return dataclasses.replace(comparison, higher_is_better=a.higher_is_better)


def in_metric_units(comparison: Comparison, slope: float) -> Comparison:
    """A paired difference of mean figures said in the units of a metric that is a monotone
    function of that mean (the delta method, with the slope between the two trials): the
    interval keeps its sign, so the verdict is the one the figures give."""
    return dataclasses.replace(
        comparison,
        difference=slope * comparison.difference,
        low=slope * comparison.low,
        high=slope * comparison.high,
        method=comparison.method + f", mapped by the metric's slope {slope:.4g} (delta method)",
    )


def unpaired(a: Scores, b: Scores) -> Comparison:
    """The fallback without per-example figures: the two standard errors combined."""
    half = Z95 * math.hypot(_se(a), _se(b))
    difference = a.value - b.value
    return Comparison(
        difference=difference,
        low=difference - half,
        high=difference + half,
        examples=min(a.examples, b.examples),
        seeds=min(len(a.per_seed), len(b.per_seed)),
        method="unpaired, from the two standard errors (no per-example figures recorded)",
        higher_is_better=a.higher_is_better,
    )


def compare(a: Scores, b: Scores) -> Comparison:
    """``a`` minus ``b``: paired over examples when both recorded them, else unpaired."""
    return _paired(a, b) or unpaired(a, b)


def compare_across_seeds(a: Scores, b: Scores) -> Comparison:
    """``a`` minus ``b`` for runs with the same seeds (confirm): paired seed by seed.

    The per-seed differences give a t interval with S-1 degrees of freedom (the
    training noise on these examples); the example comparison gives the noise of
    the examples themselves. They are independent sources, so where both exist
    the half-widths add in quadrature.
    """
    seeds = min(len(a.per_seed), len(b.per_seed))
    if seeds != max(len(a.per_seed), len(b.per_seed)) or seeds < 2:
        return compare(a, b)
    differences = np.subtract(a.per_seed, b.per_seed)
    difference = float(differences.mean())
    t_half = t95(seeds - 1) * float(differences.std(ddof=1)) / math.sqrt(seeds)
    method = f"paired across {seeds} seeds (t, {seeds - 1} df)"
    half, examples = t_half, min(a.examples, b.examples)
    paired = _paired(a, b)
    if paired is not None:
        half = math.hypot(t_half, (paired.high - paired.low) / 2)
        kind = "bootstrap" if paired.method.startswith("paired bootstrap") else "normal"
        method += f" and examples ({kind}), combined"
    return Comparison(
        difference,
        difference - half,
        difference + half,
        examples,
        seeds,
        method,
        higher_is_better=a.higher_is_better,
    )


def _se(scores: Scores) -> float:
    return scores.se if math.isfinite(scores.se) else binomial_se(scores.value, scores.examples)


def mean_se(per_seed: Sequence[float], examples: int, spread: float | None = None) -> float:
    """Standard error of a mean over seeds that share one set of ``examples``.

    Two parts: the spread between seeds, which averaging over seeds shrinks, and the sampling
    of the examples, which it does not (every seed meets the same examples): binomial for an
    accuracy, else from ``spread``, the standard deviation of the per-example figures."""
    values = [v for v in per_seed if math.isfinite(v)]
    if not values:
        return math.nan
    mean = sum(values) / len(values)
    between = statistics.variance(values) / len(values) if len(values) > 1 else 0.0
    sampling = binomial_se(mean, examples) if spread is None else spread / math.sqrt(examples)
    return math.sqrt(between + sampling**2)
