"""Confidence intervals for the evaluation of a classifier on a user's own cases (Wilson and percentile bootstrap)."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

#: z for a two-sided 95 % interval.
Z95 = 1.959963984540054


def wilson(successes: int, total: int, z: float = Z95) -> dict[str, float]:
    """A proportion with its Wilson score interval: ``{value, low, high, n}`` (NaN when ``total`` is 0).

    Wilson rather than the normal approximation: it stays inside [0, 1] and is honest at 0 or n successes,
    which is where few-shot evaluations on a handful of cases per class live.
    """
    if total <= 0:
        return {"value": float("nan"), "low": float("nan"), "high": float("nan"), "n": 0}
    p = successes / total
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return {"value": p, "low": max(0.0, centre - half), "high": min(1.0, centre + half), "n": int(total)}


def bootstrap_ci(
    statistic: Callable[[np.ndarray], float], n: int, resamples: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """95 % percentile bootstrap interval of ``statistic(indices)`` over ``resamples`` resamples of ``n`` items.

    Resamples where the statistic is undefined (NaN, e.g. a class drawn zero times) are skipped.
    """
    if n <= 1:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, n, size=n)) for _ in range(resamples)], dtype=np.float64)
    values = values[np.isfinite(values)]
    if values.size < resamples // 2:
        return float("nan"), float("nan")
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)
