"""Split-conformal prediction sets: a set of classes that contains the true class with a stated probability.

Calibrate on labelled cases the classifier has not seen (not its support images): for each case a
*nonconformity score* of its true class is computed, and the threshold is the ``ceil((n + 1) * coverage)``-th
smallest of the ``n`` scores. For a new case from the same population (exchangeable with the calibration cases),
the set of classes whose score is at most the threshold contains the true class with probability at least
``coverage`` (Vovk et al. 2005; Angelopoulos & Bates, "A Gentle Introduction to Conformal Prediction", 2021).
The guarantee is marginal (on average over cases, not per class or per subgroup) and needs no assumption on the
classifier: a poor classifier gets large sets, not a broken guarantee.

Scores: ``"lac"`` (least ambiguous set-valued classifier, Sadinle et al. 2019): 1 - p(class), the smallest sets
on average; ``"aps"`` (adaptive prediction sets, Romano et al. 2020, non-randomised): the probability mass of the
classes at least as likely as the class, adapting the set size to the case's difficulty (without the randomisation
it is conservative: its coverage exceeds the target). A LAC set can be empty: no class is plausible enough.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import CheckpointError, DataError

METHODS = ("lac", "aps")
#: The coverage levels reported by the benchmark (``benchmarks/trust``).
BENCHMARK_COVERAGES = (0.8, 0.9, 0.95)


def _check(coverage: float, method: str) -> None:
    if method not in METHODS:
        raise DataError(f"Unknown conformal method {method!r}; choose one of {', '.join(METHODS)}.")
    if not (isinstance(coverage, (int, float)) and 0 < coverage < 1):
        raise DataError(f"coverage must be a probability strictly between 0 and 1 (e.g. 0.9), got {coverage!r}.")


def class_scores(probs: np.ndarray, method: str) -> np.ndarray:
    """The nonconformity score of every class for every case, [n, C] (lower: more plausible)."""
    probs = np.asarray(probs, dtype=np.float64)
    if method == "lac":
        return 1.0 - probs
    # aps: mass of the classes at least as probable as this one (ties broken by class order)
    order = np.argsort(-probs, axis=1, kind="stable")
    cumulative = np.cumsum(np.take_along_axis(probs, order, axis=1), axis=1)
    scores = np.empty_like(probs)
    np.put_along_axis(scores, order, cumulative, axis=1)
    return scores


def min_cases(coverage: float) -> int:
    """The fewest calibration cases for which a finite threshold exists at ``coverage``."""
    return math.ceil(coverage / (1 - coverage) - 1e-9)


def fit_conformal(probs: np.ndarray, labels: Sequence[int], coverage: float = 0.9, method: str = "lac") -> dict:
    """The calibration (method, coverage, threshold, num_cases) from probabilities and true class indices."""
    _check(coverage, method)
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    n = len(labels)
    rank = math.ceil((n + 1) * coverage - 1e-9)
    if rank > n:
        raise DataError(
            f"{n} labelled calibration cases are too few for a {coverage:g} coverage guarantee: at least "
            f"{min_cases(coverage)} are needed (more give smaller sets). Add cases or lower the coverage."
        )
    scores = class_scores(probs, method)[np.arange(n), labels]
    threshold = float(np.sort(scores)[rank - 1])
    return {"method": method, "coverage": float(coverage), "threshold": threshold, "num_cases": int(n)}


def set_membership(probs: np.ndarray, calibration: Mapping[str, Any]) -> np.ndarray:
    """Boolean [n, C]: whether each class is in each case's prediction set."""
    return class_scores(probs, calibration["method"]) <= calibration["threshold"] + 1e-12


def prediction_sets(probs: np.ndarray, calibration: Mapping[str, Any]) -> list[list[int]]:
    """For each row of ``probs``, the class indices of its prediction set, most probable first.

    A set may be empty (LAC): no class is plausible enough at this coverage, which is itself a reason not to trust
    the top class; it counts as a miss in the coverage, which the guarantee already allows for.
    """
    probs = np.asarray(probs, dtype=np.float64)
    inside = set_membership(probs, calibration)
    order = np.argsort(-probs, axis=1, kind="stable")
    return [[int(c) for c in row_order if member[c]] for row_order, member in zip(order, inside, strict=True)]


def coverage_and_size(sets: Sequence[Sequence[int]] | np.ndarray, labels: Sequence[int]) -> tuple[float, float]:
    """Share of cases whose set holds the true class, and the mean set size (sets as lists or a membership matrix)."""
    labels = np.asarray(labels, dtype=np.int64)
    if isinstance(sets, np.ndarray):
        return float(sets[np.arange(len(labels)), labels].mean()), float(sets.sum(1).mean())
    covered = [int(y) in s for s, y in zip(sets, labels, strict=True)]
    return float(np.mean(covered)), float(np.mean([len(s) for s in sets]))


def read_calibration(info: Mapping[str, Any], num_classes: int) -> dict[str, Any] | None:
    """The stored calibration of a classifier's ``info`` (None when there is none); CheckpointError when invalid."""
    stored = info.get("conformal")
    if stored is None:
        return None
    valid = (
        isinstance(stored, Mapping)
        and stored.get("method") in METHODS
        and isinstance(stored.get("coverage"), (int, float))
        and 0 < stored["coverage"] < 1
        and isinstance(stored.get("threshold"), (int, float))
        and math.isfinite(stored["threshold"])
        and 0 <= stored["threshold"] <= 1 + 1e-9
        and isinstance(stored.get("num_cases"), int)
        and stored["num_cases"] >= min_cases(stored["coverage"])
    )
    if not valid:
        raise CheckpointError(
            "sgps_task.json: key 'conformal' must be an object with method (lac or aps), coverage in (0, 1), a "
            "threshold in [0, 1] and num_cases; calibrate again with calibrate_conformal (or sgps calibrate)."
        )
    return dict(stored)
