"""Expected calibration error (and the reliability-diagram bins) as a local ``evaluate`` metric module.

Top-label ECE with equal-width confidence bins: ``sum_b |B_b|/n * |accuracy(B_b) - confidence(B_b)|``,
where the confidence of an example is its largest predicted probability.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Expected calibration error of the top-label confidence, with equal-width bins."
_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[list[float]]`): class probabilities, one row per example (rows sum to 1).
    references (`list[int]`): true class indices.
    n_bins (`int`, default 15): number of equal-width confidence bins on [0, 1].
Returns:
    ece (`float`): in [0, 1].
    bin_confidence, bin_accuracy (`list[float]`): per bin (NaN for empty bins), for reliability diagrams.
    bin_count (`list[int]`): examples per bin.
"""


class Ece(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Guo et al., On Calibration of Modern Neural Networks, ICML 2017.",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float64")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, n_bins: int = 15):
        probs, references = np.asarray(predictions, dtype=np.float64), np.asarray(references)
        if probs.ndim != 2 or len(probs) != len(references) or len(probs) == 0:
            raise ValueError("ece needs one row of class probabilities per reference (and at least one).")
        if n_bins < 1:
            raise ValueError(f"n_bins must be >= 1, got {n_bins}.")
        confidence = probs.max(1)
        correct = probs.argmax(1) == references
        # Bin b holds confidences in (b/n, (b+1)/n]; a confidence of exactly 0 goes to the first bin.
        bins = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
        count = np.bincount(bins, minlength=n_bins)
        conf_sum = np.bincount(bins, weights=confidence, minlength=n_bins)
        acc_sum = np.bincount(bins, weights=correct.astype(np.float64), minlength=n_bins)
        with np.errstate(invalid="ignore", divide="ignore"):
            bin_confidence = conf_sum / count
            bin_accuracy = acc_sum / count
        ece = float(np.sum(np.abs(acc_sum - conf_sum)) / len(probs))
        return {
            "ece": ece,
            "bin_confidence": bin_confidence.tolist(),
            "bin_accuracy": bin_accuracy.tolist(),
            "bin_count": count.tolist(),
        }
