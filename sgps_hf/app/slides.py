"""The app's Slides tab: a few labelled whole-slide images per class -> a slide classifier -> screen a new slide.

The event functions (``synthesize_slides``, ``screen_slide``, ``download_slides``) are plain Python, tested without a
browser; :func:`build_slides_tab` lays them out inside the app's ``gr.Blocks``. Synthesis holds the app's
``SYNTHESIS_LOCK`` (the shared synthesizer is not thread-safe while it synthesizes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from ..errors import SGPSError
from .export import ExportArea, safe_filename, zip_saved
from .limits import SYNTHESIS_LOCK

CLASS_ROWS = 3
MAX_SLIDES_PER_CLASS = 5
DISCLAIMER = (
    "Research prototype, **not for clinical use**: a pathologist must review every slide. The slide arrangement of "
    "the benchmark is synthetic; validate on your own slides."
)


def _paths(files: Any) -> list[str]:
    if not files:
        return []
    files = files if isinstance(files, (list, tuple)) else [files]
    return [str(getattr(f, "name", f)) for f in files]


def synthesize_slides(rows: Sequence[tuple[str, str, Any]], synthesizer: Any, processor: Any, name: str = ""):
    """rows: (class name, clinical text, uploaded slides) -> (SlideClassifier or None, status markdown, card)."""
    from ..slides import SlideClassSpec, SlideTask, synthesize_slide_classifier

    try:
        classes = []
        for class_name, text, files in rows:
            slides = _paths(files)
            if not (class_name or "").strip() and not slides:
                continue
            if len(slides) > MAX_SLIDES_PER_CLASS:
                raise SlideAppError(f"At most {MAX_SLIDES_PER_CLASS} slides per class in the app.")
            if not slides:
                raise SlideAppError(f"Class {class_name.strip()!r} has no slide; upload at least one.")
            if not (class_name or "").strip():
                raise SlideAppError("Every class with slides needs a name.")
            classes.append(SlideClassSpec(class_name.strip(), (text or "").strip(), slides))
        task = SlideTask(classes, name=(name or "").strip() or "slide-task")
        with SYNTHESIS_LOCK:
            classifier = synthesize_slide_classifier(synthesizer, task, processor)
    except (SGPSError, SlideAppError) as exc:
        return None, f"**Error:** {exc}", ""
    from ..hub.model_card import classifier_card
    from ..slides.classifier import card_section

    counts = ", ".join(f"{n}: {len(v)}" for n, v in classifier.slides.items())
    tiles = sum(e["tiles"] for v in classifier.slides.values() for e in v)
    status = (
        f"Synthesized a slide classifier for **{task.name}** from {tiles} tiles of {counts} slide(s) "
        f"(rule: {classifier.rule.name}, {classifier.tiling['target_mpp']:g} um/px)."
    )
    return classifier, status, classifier_card(classifier.tile_classifier).text + "\n\n" + card_section(classifier)


class SlideAppError(ValueError):
    """A problem with what was uploaded to the Slides tab (shown as a message)."""


def screen_slide(classifier: Any, file: Any):
    """-> (probabilities markdown, heatmap, top-tile contact sheet, tile overlay)."""
    from ..slides import tile_overlay

    if classifier is None:
        return "**Error:** synthesize a slide classifier first.", None, None, None
    paths = _paths(file)
    if len(paths) != 1:
        return "**Error:** upload one slide to screen.", None, None, None
    try:
        result = classifier.predict_slide(paths[0])
    except SGPSError as exc:
        return f"**Error:** {exc}", None, None, None
    lines = [f"**{Path(paths[0]).name}: {result.label}** ({len(result.tile_probs)} tissue tiles)", ""]
    lines += [f"- {name}: {p:.3f}" for name, p in sorted(result.probabilities.items(), key=lambda kv: -kv[1])]
    if not result.slide["mpp_recorded"]:
        lines.append(f"\nThe slide records no resolution: {result.slide['mpp']:g} um/px was assumed.")
    lines.append("\n" + DISCLAIMER)
    return "\n".join(lines), result.heatmap(), result.contact_sheet(), tile_overlay(result.tiles)


def download_slides(classifier: Any, area: ExportArea) -> tuple[str | None, str]:
    """-> (zip of the saved slide classifier folder, status)."""
    if classifier is None:
        return None, "**Error:** synthesize a slide classifier first."
    stem = safe_filename(classifier.tile_classifier.info["task"]["name"], default="slide") + "-classifier"
    archive = zip_saved(classifier.save_pretrained, area, stem)
    return str(archive), f"Built `{archive.name}` (timm tile classifier + `slide_rule.json` + card)."


def build_slides_tab(handle: Any, exports: ExportArea) -> None:
    """Add the Slides tab to the enclosing ``gr.Blocks``.

    ``handle`` holds the app's synthesizer and processor; zips go to ``exports``, the app's one export area.
    """
    import gradio as gr

    with gr.Tab("Slides", elem_id="slides-tab"):
        gr.Markdown(
            "# Whole-slide classifier from a few labelled slides\n" + DISCLAIMER + "\n\n"
            f"## 1. Slides per class\nUp to {MAX_SLIDES_PER_CLASS} slides per class (SVS, NDPI, pyramidal TIFF, "
            f"within the app's upload limit). Each is tiled at 1 um/px; up to 8 tissue tiles per class (spread "
            "over its slides) become the support set of one synthesis."
        )
        task_name = gr.Textbox(label="Task name", placeholder="my-slide-task", elem_id="slides-task-name")
        inputs = []
        for i in range(CLASS_ROWS):
            with gr.Row():
                inputs.append(gr.Textbox(label=f"Class {i + 1} name", elem_id=f"slides-class-{i}"))
                inputs.append(gr.Textbox(label="Clinical text (optional)", elem_id=f"slides-text-{i}"))
                inputs.append(gr.File(label="Slides", file_count="multiple", elem_id=f"slides-files-{i}"))
        run = gr.Button("Synthesize slide classifier", variant="primary", elem_id="slides-synthesize")
        status = gr.Markdown(elem_id="slides-status")
        state = gr.State(None)
        gr.Markdown("## 2. Screen a slide")
        query = gr.File(label="Slide to screen", file_count="single", elem_id="slides-query")
        screen = gr.Button("Screen slide", variant="primary", elem_id="slides-screen")
        outcome = gr.Markdown(elem_id="slides-outcome")
        with gr.Row():
            heat = gr.Image(label="Heatmap (predicted class)", type="pil", elem_id="slides-heatmap")
            sheet = gr.Image(label="Top tiles", type="pil", elem_id="slides-top-tiles")
            overlay = gr.Image(label="Tiles kept", type="pil", elem_id="slides-overlay")
        gr.Markdown("## 3. Download")
        with gr.Row():
            build_zip = gr.Button("Build zip", elem_id="slides-download")
            archive = gr.File(label="Slide classifier (.zip)", interactive=False, elem_id="slides-zip")
        zip_status = gr.Markdown(elem_id="slides-zip-status")
        with gr.Accordion("Model card", open=False):
            card = gr.Markdown(elem_id="slides-card")

        def run_synthesis(name: str, *values: Any):
            rows = [tuple(values[i : i + 3]) for i in range(0, len(values), 3)]
            return synthesize_slides(rows, handle.model, handle.processor, name)

        run.click(run_synthesis, [task_name, *inputs], [state, status, card], api_name="slides_synthesize")
        screen.click(screen_slide, [state, query], [outcome, heat, sheet, overlay], api_name="slides_screen")
        build_zip.click(
            lambda classifier: download_slides(classifier, exports),
            [state],
            [archive, zip_status],
            api_name="slides_download",
        )
