"""Dice and IoU through the packaged local ``evaluate`` modules (``evaluation/metric_modules/dice|iou``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np

MODULES = Path(__file__).resolve().parents[1] / "evaluation" / "metric_modules"


@lru_cache(maxsize=None)
def load_seg_metric(name: str) -> Any:
    if name not in ("dice", "iou"):
        raise ValueError(f"Unknown segmentation metric {name!r}; packaged: dice, iou.")
    import evaluate

    return evaluate.load(str(MODULES / name))


def dice_iou(predictions: Sequence[np.ndarray], references: Sequence[np.ndarray], per_image: bool = False) -> dict[str, Any]:
    """Mean per-image Dice and IoU (and the per-image lists with ``per_image=True``)."""
    preds = [np.asarray(p, dtype=bool) for p in predictions]
    refs = [np.asarray(r, dtype=bool) for r in references]
    dice = load_seg_metric("dice").compute(predictions=preds, references=refs)
    iou = load_seg_metric("iou").compute(predictions=preds, references=refs)
    out: dict[str, Any] = {"dice": dice["dice"], "iou": iou["iou"]}
    if per_image:
        out["dice_per_image"], out["iou_per_image"] = dice["per_image"], iou["per_image"]
    return out
