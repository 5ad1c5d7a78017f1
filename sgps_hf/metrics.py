"""Metrics shared by the synthesized models' self-evaluation (classifier, segmenter) and the benchmarks."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch


def classification_metrics(probs: np.ndarray, labels: Sequence[int], num_classes: int) -> dict[str, float]:
    """Accuracy and macro-F1 (over the classes present in ``labels`` or predicted), through the ``evaluate`` modules.

    ``num_classes`` is the classifier's output size, kept for callers; the scores depend only on what occurs.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        raise ValueError("Cannot compute metrics on zero images.")
    preds = np.asarray(probs).argmax(-1)
    return {
        name: float(load_metric(name).compute(predictions=preds, references=labels)[name])
        for name in ("accuracy", "macro_f1")
    }


# --------------------------------------------------------------------------------------------------
# The benchmark's metrics: local ``evaluate`` modules shipped in ``metric_modules/<name>/<name>.py``.

#: Names of the packaged metric modules.
METRIC_NAMES = ("accuracy", "macro_f1", "auroc", "ece", "dice", "iou")


def metric_module_path(name: str) -> Path:
    """Folder of the packaged ``evaluate`` module ``name`` (``evaluate.load`` accepts it as is)."""
    if name not in METRIC_NAMES:
        raise ValueError(f"Unknown metric {name!r}; packaged metrics: {', '.join(METRIC_NAMES)}.")
    return Path(__file__).resolve().parent / "metric_modules" / name


@lru_cache(maxsize=None)
def load_metric(name: str) -> Any:
    """``evaluate.load`` of a packaged metric by path (no Hub access), cached per process."""
    import evaluate

    return evaluate.load(str(metric_module_path(name)))


def episode_scores(probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy, macro-F1 and macro one-vs-rest AUROC of one episode's queries, through ``evaluate``."""
    preds = probs.argmax(-1)
    return {
        "accuracy": load_metric("accuracy").compute(predictions=preds, references=labels)["accuracy"],
        "macro_f1": load_metric("macro_f1").compute(predictions=preds, references=labels)["macro_f1"],
        "auroc": load_metric("auroc").compute(predictions=probs, references=labels)["auroc"],
    }


def calibration(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> dict[str, Any]:
    """ECE and reliability bins of pooled predictions (per-episode ECE on ~75 queries is too noisy)."""
    return load_metric("ece").compute(predictions=probs, references=labels, n_bins=n_bins)


def mean_ci(values: Iterable[float]) -> dict[str, float]:
    """Mean over episodes with a 95% confidence half-width (normal approximation); NaN episodes skipped."""
    array = np.asarray([v for v in values if not np.isnan(v)], dtype=np.float64)
    if array.size == 0:
        return {"mean": float("nan"), "ci95": float("nan"), "n": 0}
    ci = 1.96 * array.std(ddof=1) / np.sqrt(array.size) if array.size > 1 else float("nan")
    return {"mean": float(array.mean()), "ci95": float(ci), "n": int(array.size)}


def episode_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Query accuracy of one episode's logits (the per-episode score every criterion averages)."""
    return (logits.argmax(-1) == labels).float().mean().item()


def dice_iou(
    predictions: Sequence[np.ndarray], references: Sequence[np.ndarray], per_image: bool = False
) -> dict[str, Any]:
    """Mean per-image Dice and IoU of binary masks (and the per-image lists with ``per_image=True``)."""
    preds = [np.asarray(p, dtype=bool) for p in predictions]
    refs = [np.asarray(r, dtype=bool) for r in references]
    dice = load_metric("dice").compute(predictions=preds, references=refs)
    iou = load_metric("iou").compute(predictions=preds, references=refs)
    out: dict[str, Any] = {"dice": dice["dice"], "iou": iou["iou"]}
    if per_image:
        out["dice_per_image"], out["iou_per_image"] = dice["per_image"], iou["per_image"]
    return out


def dice_per_image(predictions: Sequence[Any], references: Sequence[Any]) -> list[float]:
    """Per-image Dice of binary masks (arrays or tensors, ``(H, W)`` each): the math of the packaged ``evaluate``
    module ``dice`` (its ``per_image_dice``), called directly, as in-loop scoring of thousands of masks cannot afford
    the module's Arrow conversion of every pixel. The one Dice of the project: training, head selection, benchmarks."""
    preds = [np.asarray(p, dtype=bool) for p in predictions]
    refs = [np.asarray(r, dtype=bool) for r in references]
    return metric_module_function("dice", "per_image_dice")(preds, refs)


@lru_cache(maxsize=None)
def metric_module_function(name: str, function: str) -> Any:
    """A function of the packaged metric module ``name`` (its file ``metric_modules/<name>/<name>.py``)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"sgps_hf_metric_{name}", metric_module_path(name) / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, function)
