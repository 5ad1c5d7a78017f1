"""Prediction with abstention, and continuous adaptation from the app."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .inputs import as_list, read_with_warnings
from .limits import ACCEPTED_FORMATS, DEFAULT_LIMITS, AppInputError, AppLimits

if TYPE_CHECKING:
    from ..models.sgps.classifier import SynthesizedClassifier


UNCERTAIN = "uncertain"


# --------------------------------------------------------------------------------------------------
# Prediction with abstention


@dataclass
class Prediction:
    """One image's outcome: the top class, or ``UNCERTAIN`` when its probability is below the threshold."""

    file: str
    probabilities: dict[str, float]
    top_label: str
    top_probability: float
    threshold: float
    prediction_set: list[str] | None = None  # with a conformal calibration: holds the true class w.p. >= coverage
    coverage: float | None = None

    @property
    def abstained(self) -> bool:
        return self.top_probability < self.threshold

    @property
    def outcome(self) -> str:
        return UNCERTAIN if self.abstained else self.top_label


def check_threshold(threshold: Any) -> float:
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise AppInputError(
            f"Confidence threshold {threshold!r} is not a number; pick a value between 0 and 1."
        ) from None
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise AppInputError(f"Confidence threshold {value} is outside 0-1; pick a value between 0 and 1.")
    return value


def predictions_markdown(predictions: Sequence[Prediction]) -> str:
    """A table of outcomes, escaped for Markdown (file and class names come from users)."""
    if not predictions:
        return ""
    lines = ["| image | outcome | top class | probability |", "|---|---|---|---|"]
    for p in predictions:
        outcome = f"**{UNCERTAIN}** (below {p.threshold:.2f})" if p.abstained else f"**{_md(p.top_label)}**"
        lines.append(f"| {_md(p.file)} | {outcome} | {_md(p.top_label)} | {p.top_probability:.3f} |")
    return "\n".join(lines)


def _md(text: str) -> str:
    return re.sub(r"([\\`*_{}\[\]<>()#+!|])", r"\\\1", " ".join(str(text).split()))


# --------------------------------------------------------------------------------------------------
# Continuous adaptation from the app


def update_from_app(
    synthesizer: Any,
    classifier: "SynthesizedClassifier | None",
    class_name: Any,
    files: Any,
    limits: AppLimits = DEFAULT_LIMITS,
    roots: Sequence[Path] = (),
    notes: list[str] | None = None,
) -> "SynthesizedClassifier":
    """Add uploaded verified cases to one class and re-synthesize (see :mod:`sgps_hf.synthesis`); ``notes`` gets
    the images' accuracy notes (e.g. which frame of a multi-frame DICOM is used), named by file."""
    if classifier is None:
        raise AppInputError("No classifier yet: synthesize one first.")
    if not isinstance(class_name, str) or class_name not in classifier.label_names:
        raise AppInputError(f"Pick the class the new cases belong to (one of {classifier.label_names}).")
    items = as_list(files)
    if not items:
        raise AppInputError(f"Upload at least one verified case ({ACCEPTED_FORMATS}) for {class_name!r}.")
    support = classifier.support or {}
    room = limits.max_support_per_class - len(support.get(class_name, []))
    if len(items) > max(room, 0):
        raise AppInputError(f"Class {class_name!r} can take {max(room, 0)} more image(s) in the app; add fewer cases.")
    images = []
    for item in items:
        data, _, advice = read_with_warnings(item, limits, roots)
        images.append(data)
        if notes is not None:
            notes += advice
    return synthesizer.update(classifier, {class_name: images})
