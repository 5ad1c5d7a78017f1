"""Macro one-vs-rest AUROC as a local ``evaluate`` metric module.

AUROC of each class against the rest from the predicted class probabilities (ties count one half,
the Mann-Whitney U statistic), averaged over the classes that have both positive and negative
references; with fewer than two such classes it is undefined and NaN is returned.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Unweighted mean over classes of the one-vs-rest area under the ROC curve."
_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[list[float]]`): class probabilities (or any scores), one row per example.
    references (`list[int]`): true class indices.
Returns:
    auroc (`float`): in [0, 1], NaN when no class has both positives and negatives.
"""


def _binary_auroc(scores: np.ndarray, positive: np.ndarray) -> float:
    # Average ranks handle ties exactly: AUROC = (sum of positive ranks - n+(n+ + 1)/2) / (n+ n-).
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    start = 0
    while start < len(scores):
        end = start
        while end + 1 < len(scores) and sorted_scores[end + 1] == sorted_scores[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    n_pos, n_neg = positive.sum(), (~positive).sum()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


class Auroc(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float64")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references):
        scores, references = np.asarray(predictions, dtype=np.float64), np.asarray(references)
        if scores.ndim != 2 or len(scores) != len(references):
            raise ValueError("auroc needs one row of class scores per reference.")
        values = []
        for c in range(scores.shape[1]):
            positive = references == c
            if positive.any() and not positive.all():
                values.append(_binary_auroc(scores[:, c], positive))
        return {"auroc": float(np.mean(values)) if len(values) >= 2 else float("nan")}
