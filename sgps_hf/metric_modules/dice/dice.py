"""Dice of binary masks as a local ``evaluate`` metric module (mean over images; the Hub's modules need network)."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = (
    "Per-image Dice = 2 |P & R| / (|P| + |R|) of binary masks, averaged over images (1.0 when both are empty)."
)
_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[array]`): predicted binary masks (H x W, bool or 0/1), one per image.
    references (`list[array]`): reference binary masks of the same shapes.
Returns:
    dice (`float`): mean over images, in [0, 1].
    per_image (`list[float]`): the score of each image.
"""


class Dice(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Sequence(datasets.Value("bool"))),
                    "references": datasets.Sequence(datasets.Sequence(datasets.Value("bool"))),
                }
            ),
        )

    def _compute(self, predictions, references):
        scores = per_image_dice(predictions, references)
        return {"dice": float(np.mean(scores)), "per_image": scores}


def per_image_dice(predictions, references) -> list:
    """Dice of each (prediction, reference) pair of binary masks (1.0 when both are empty)."""
    if len(predictions) == 0:
        raise ValueError("dice needs at least one predicted mask.")
    scores = []
    for prediction, reference in zip(predictions, references, strict=False):
        p, r = np.asarray(prediction, dtype=bool), np.asarray(reference, dtype=bool)
        if p.shape != r.shape:
            raise ValueError(f"prediction {p.shape} and reference {r.shape} masks differ in shape.")
        p, r = p.reshape(1, -1), r.reshape(1, -1)
        inter = float((p & r).sum(1)[0])
        total = float((p.sum(1) + r.sum(1))[0])
        scores.append(1.0 if total == 0 else 2 * inter / total)
    return scores
