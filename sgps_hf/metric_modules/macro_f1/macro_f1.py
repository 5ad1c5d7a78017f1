"""Macro-averaged F1 as a local ``evaluate`` metric module.

Only classes that occur in the references or the predictions enter the average: a class that is
neither has no defined F1 (0/0), so an episode's score does not depend on classes absent from it.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Unweighted mean over classes of the per-class F1 score 2TP / (2TP + FP + FN)."
_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[int]`): predicted class indices.
    references (`list[int]`): true class indices.
Returns:
    macro_f1 (`float`): in [0, 1].
"""


class MacroF1(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references):
        predictions, references = np.asarray(predictions), np.asarray(references)
        if predictions.size == 0:
            raise ValueError("macro_f1 needs at least one prediction.")
        scores = []
        for c in np.union1d(predictions, references):
            tp = np.sum((predictions == c) & (references == c))
            fp = np.sum((predictions == c) & (references != c))
            fn = np.sum((predictions != c) & (references == c))
            scores.append(2 * tp / (2 * tp + fp + fn))
        return {"macro_f1": float(np.mean(scores))}
