"""The app's results, read at a glance: one card per image (picture with its saliency overlay, the outcome as the
headline, "uncertain" when it is, the top classes as bars) and a bad file reported on its own card while the
other images are classified."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from .inputs import as_list, display_name, read_with_warnings, upload_path
from .limits import ACCEPTED_FORMATS, DEFAULT_LIMITS, AppInputError, AppLimits
from .prediction import Prediction, check_threshold

OVERLAY_SIZE = 224


@dataclass
class AppResult:
    """One uploaded file: its prediction and saliency overlay, or why it could not be classified."""

    name: str
    prediction: Prediction | None = None
    overlay: Image.Image | None = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)


def classify_uploads(
    classifier: Any,
    files: Any,
    threshold: Any,
    limits: AppLimits = DEFAULT_LIMITS,
    roots: Sequence[Path] = (),
    explain: bool = True,
) -> list[AppResult]:
    """Classify every readable upload (with a Grad-CAM overlay); an unreadable one gets an error card.

    Raises AppInputError when there is nothing to classify: no classifier, a bad threshold, no or too many files,
    or no readable file (then with the first file's message).
    """
    if classifier is None:
        raise AppInputError("No classifier yet: synthesize one first (step 2).")
    value = check_threshold(threshold)
    items = as_list(files)
    if not items:
        raise AppInputError(f"Upload at least one image ({ACCEPTED_FORMATS}) to classify.")
    if len(items) > limits.max_predict_images:
        raise AppInputError(f"{len(items)} images: classify at most {limits.max_predict_images} at a time.")
    results, images = [], []
    for item in items:
        name = display_name(upload_path(item)).strip("'\"")
        try:
            _, image, advice = read_with_warnings(item, limits, roots)
            images.append(image)
            results.append(AppResult(name, warnings=advice))
        except AppInputError as exc:
            results.append(AppResult(name, error=str(exc)))
    good = [r for r in results if r.error is None]
    if not good:
        raise AppInputError(results[0].error if len(results) == 1 else "; ".join(r.error for r in results))
    if classifier.info.get("conformal") is None:  # no guarantee: the page says so under the results
        outputs = [{"probabilities": p, "prediction_set": None, "coverage": None} for p in classifier.predict(images)]
    else:
        outputs = classifier.predict_sets(images)
    explanations = classifier.explain(images) if explain else [None] * len(images)
    for result, image, output, explanation in zip(good, images, outputs, explanations, strict=True):
        probs = output["probabilities"]
        top = max(probs, key=probs.get)
        result.prediction = Prediction(
            result.name, probs, top, probs[top], value, output["prediction_set"], output["coverage"]
        )
        result.overlay = explanation.overlay(image, size=OVERLAY_SIZE) if explanation is not None else None
    return results


_CARD = "border:1px solid #bbb;border-radius:6px;padding:6px 10px;margin:6px 0"
_ERROR = "border:1px solid #c00;border-radius:6px;padding:6px 10px;margin:6px 0;color:#900"
_ROW = "display:flex;align-items:center;gap:6px;font-size:0.9em"
_LABEL = "width:12em;overflow:hidden;text-overflow:ellipsis;white-space:nowrap"
_BAR = "display:inline-block;height:0.8em;background:#3b82f6;border-radius:3px"


def results_html(results: Sequence[AppResult], top_k: int = 3) -> str:
    """One card per file: the outcome as headline, the top classes as bars, or the error (all text escaped)."""
    cards = []
    for r in results:
        name = html.escape(r.name)
        if r.error is not None:
            message = html.escape(r.error)
            cards.append(f'<div class="sgps-error" style="{_ERROR}"><b>{name}</b>: not classified: {message}</div>')
            continue
        p = r.prediction
        if p.abstained:
            headline = (
                f"<b>{name}: uncertain</b> (top class {html.escape(p.top_label)} at {p.top_probability:.2f} is below "
                f"the threshold {p.threshold:.2f})"
            )
        else:
            headline = f"<b>{name}: {html.escape(p.top_label)}</b> ({p.top_probability:.2f})"
        bars = []
        for label, prob in sorted(p.probabilities.items(), key=lambda kv: -kv[1])[:top_k]:
            bars.append(
                f'<div style="{_ROW}"><span style="{_LABEL}">{html.escape(label)}</span>'
                f'<span style="{_BAR};width:{max(prob * 60, 1):.0f}%"></span><span>{100 * prob:.0f}%</span></div>'
            )
        picture = _thumbnail(r.overlay) if r.overlay is not None else ""
        notes = "".join(f'<div class="sgps-warning">Warning: {html.escape(w)}</div>' for w in r.warnings)
        extra = _set_line(p) + notes
        body = f'<div style="flex:1">{headline}{"".join(bars)}{extra}</div>'
        cards.append(f'<div class="sgps-card" style="{_CARD};display:flex;gap:10px">{picture}{body}</div>')
    calibrated = any(r.prediction is not None and r.prediction.coverage is not None for r in results)
    guarantee = (
        "Prediction sets: each holds the true class with the stated probability, for cases like the labelled "
        "cases it was calibrated on (a marginal guarantee, not per class)."
        if calibrated
        else "No prediction set: this classifier has no conformal calibration, so no coverage guarantee holds "
        "(calibrate it on labelled cases of your own below, or with <code>sgps calibrate</code>)."
    )
    note = (
        f'<p style="font-size:0.85em">Overlays: where the evidence for the top class lies (Grad-CAM). {guarantee}</p>'
    )
    return f'<div class="sgps-results">{"".join(cards)}{note}</div>'


def _set_line(p: Prediction) -> str:
    if p.coverage is None or p.prediction_set is None:
        return ""
    members = ", ".join(html.escape(c) for c in p.prediction_set) or "empty: no class is plausible enough"
    return (
        f'<div class="sgps-set">Prediction set ({100 * p.coverage:.0f}% coverage guarantee): '
        f"<b>{{{members}}}</b></div>"
    )


def _thumbnail(image: Image.Image, size: int = 128, alt: str = "saliency overlay") -> str:
    """An inline PNG ``<img>`` of the saliency overlay (no file on the server, nothing to fetch)."""
    small = image.convert("RGB")
    small.thumbnail((size, size))  # keeps the aspect ratio
    buffer = io.BytesIO()
    small.save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{alt}" width="{small.width}" height="{small.height}" src="data:image/png;base64,{data}">'


def support_html(classifier: Any, size: int = 72) -> str:
    """Thumbnails of the support images per class (what the classifier was synthesized from), names escaped."""
    support = classifier.support or {}
    rows = []
    for name in classifier.label_names:
        images = support.get(name, [])
        pictures = (
            "".join(_thumbnail(Image.fromarray(np.asarray(img)), size, "support image") for img in images)
            or "<i>text only</i>"
        )
        label = f'<span style="{_LABEL}"><b>{html.escape(name)}</b></span>'
        rows.append(f'<div style="{_ROW};margin:4px 0">{label}{pictures}</div>')
    return f'<div class="sgps-support">{"".join(rows)}</div>'
