"""Classification metrics shared by the classifier's self-evaluation and the benchmark."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def classification_metrics(probs: np.ndarray, labels: Sequence[int], num_classes: int) -> dict[str, float]:
    """Accuracy and macro-F1 (over the classes present in ``labels`` or predicted)."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        raise ValueError("Cannot compute metrics on zero images.")
    preds = np.asarray(probs).argmax(-1)
    f1s = []
    for c in range(num_classes):
        tp = np.sum((preds == c) & (labels == c))
        fp = np.sum((preds == c) & (labels != c))
        fn = np.sum((preds != c) & (labels == c))
        if tp + fp + fn:
            f1s.append(2 * tp / (2 * tp + fp + fn))
    return {"accuracy": float(np.mean(preds == labels)), "macro_f1": float(np.mean(f1s))}
