"""The app's segmentation tab: upload examples with masks, synthesize, overlay masks on new images, download or push.

The event functions are plain Python (``synthesize``, ``predict``, ``download``, ``push``) so they are tested
without a browser; :func:`build_segmentation_tab` lays them out inside the app's ``gr.Blocks``.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ..errors import InvalidTaskError, SGPSError
from ..hub.model_card import md_escape
from .export import ExportArea, safe_filename, zip_saved

MAX_EXAMPLES = 16
MAX_PREDICT_IMAGES = 16
OVERLAY_COLOUR = np.array([255, 40, 40], dtype=np.float32)
DISCLAIMER = "Research prototype, **not for clinical use**: a qualified clinician must review every mask."

_lock = threading.Lock()
_synthesizers: dict[str, Any] = {}


def get_synthesizer(source: str | None = None):
    """The segmentation synthesizer (the bundled one by default), loaded once per process."""
    from ..models.sgps_seg import DEFAULT_SEG_CHECKPOINT, SGPSSegSynthesizer

    key = source or DEFAULT_SEG_CHECKPOINT
    with _lock:
        if key not in _synthesizers:
            _synthesizers[key] = SGPSSegSynthesizer.from_pretrained(key).eval()
        return _synthesizers[key]


def _paths(files: Any) -> list[str]:
    if not files:
        return []
    files = files if isinstance(files, (list, tuple)) else [files]
    return [str(getattr(f, "name", f)) for f in files]


def pair_examples(image_files: Sequence[str], mask_files: Sequence[str]) -> list[tuple[str, str]]:
    """Match masks to images by file stem (``case1.png`` <- ``case1.png`` / ``case1_mask.png``), else by upload
    order."""
    images, masks = list(image_files), list(mask_files)
    if not images:
        raise InvalidTaskError("Upload at least one example image and its mask.")
    if len(images) > MAX_EXAMPLES:
        raise InvalidTaskError(f"At most {MAX_EXAMPLES} examples in the app; you uploaded {len(images)}.")
    by_stem = {}
    for mask in masks:
        stem = Path(mask).stem
        for suffix in ("_mask", "-mask", "_seg", "_label"):
            if stem.endswith(suffix):
                stem = stem[: -len(suffix)]
        by_stem[stem] = mask
    if all(Path(i).stem in by_stem for i in images) and len(masks) == len(images):
        return [(i, by_stem[Path(i).stem]) for i in images]
    if len(masks) != len(images):
        raise InvalidTaskError(
            f"{len(images)} images but {len(masks)} masks: upload one mask per image (same file name, or the same "
            "order)."
        )
    return list(zip(images, masks, strict=False))


def synthesize(image_files: Any, mask_files: Any, name: str, description: str, synthesizer: Any = None):
    """-> (segmenter or None, status markdown, card markdown)."""
    from ..models.sgps_seg.task import SegmentationTask

    try:
        pairs = pair_examples(_paths(image_files), _paths(mask_files))
        task = SegmentationTask((name or "").strip() or "my-structure", pairs, description=(description or None))
        segmenter = (synthesizer or get_synthesizer()).synthesize(task)
    except SGPSError as exc:
        return None, f"**Error:** {exc}", ""
    from ..hub.model_card import segmenter_card

    status = (
        f"Synthesized a segmenter for **{task.name}** from {len(task)} example(s). Weights sha256 "
        f"`{segmenter.info['weights_sha256'][:16]}`."
    )
    return segmenter, status, segmenter_card(segmenter).text


def overlay(image: Image.Image, mask: np.ndarray, alpha: float = 0.45) -> Image.Image:
    """The image with the mask tinted red."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
    out = rgb.copy()
    out[mask] = (1 - alpha) * rgb[mask] + alpha * OVERLAY_COLOUR
    return Image.fromarray(out.round().astype(np.uint8))


def predict(segmenter: Any, files: Any):
    """-> (list of (overlay image, caption), status markdown)."""
    from ..imaging import collected_notes, load_image

    if segmenter is None:
        return [], "**Error:** synthesize a segmenter first."
    paths = _paths(files)
    if not paths:
        return [], "**Error:** upload images to segment."
    if len(paths) > MAX_PREDICT_IMAGES:
        return [], f"**Error:** at most {MAX_PREDICT_IMAGES} images at a time."
    try:
        with collected_notes() as notes:  # e.g. which frame of a multi-frame DICOM is used (per thread)
            images = [load_image(p) for p in paths]
        masks = segmenter.predict(images)
    except SGPSError as exc:
        return [], f"**Error:** {_names_only(str(exc), paths)}"
    gallery = [
        (overlay(img, m), f"{Path(p).name}: {100 * m.mean():.1f}% {segmenter.label}")
        for p, img, m in zip(paths, images, masks, strict=False)
    ]
    notes = "".join(f"\n\n**Warning:** {md_escape(_names_only(m, paths))}" for m in dict.fromkeys(notes))
    return gallery, f"Segmented {len(paths)} image(s). " + DISCLAIMER + notes


def _names_only(message: str, paths: Sequence[str]) -> str:
    """``message`` with each uploaded file's server path replaced by its base name (no server paths shown)."""
    for path in sorted(paths, key=len, reverse=True):
        message = message.replace(path, Path(path).name)
    return message


def download(segmenter: Any, area: ExportArea) -> tuple[str | None, str]:
    """-> (path of a zip of the saved segmenter folder, status)."""
    if segmenter is None:
        return None, "**Error:** synthesize a segmenter first."
    stem = safe_filename(segmenter.info["task"]["name"], default="task") + "-segmenter"
    archive = zip_saved(segmenter.save_pretrained, area, stem)
    return (
        str(archive),
        f"Built `{archive.name}` (plain transformers folder: loads with `pipeline('image-segmentation', model=...)`).",
    )


def push(segmenter: Any, repo_id: str, token: str, private: bool) -> str:
    if segmenter is None:
        return "**Error:** synthesize a segmenter first."
    if not repo_id or "/" not in repo_id:
        return "**Error:** give a Hub repo id like `my-user/polyp-segmenter`."
    try:
        url = segmenter.push_to_hub(repo_id.strip(), token=(token or None), private=bool(private))
    except Exception as exc:  # noqa: BLE001 - network/auth errors of any type become a message, not a crash
        return f"**Error:** push failed ({type(exc).__name__}: {exc})."
    return f"Pushed to `{repo_id}`: {url}"


def build_segmentation_tab(synthesizer: Any = None, exports: ExportArea | None = None) -> None:
    """Add the segmentation tab to the enclosing ``gr.Blocks``; zips go to ``exports`` (a new area if None)."""
    import gradio as gr

    with gr.Tab("Segmentation", elem_id="seg-tab"):
        gr.Markdown(
            "# Synthesize a medical image segmenter, no training\n" + DISCLAIMER + "\n\n"
            f"## 1. Examples\nUp to {MAX_EXAMPLES} images and their binary masks (0/255, 0/1; PNG; same file name "
            "or same order; any size with the image's aspect ratio)."
        )
        with gr.Row():
            name = gr.Textbox(label="Structure name", placeholder="polyp", elem_id="seg-name")
            description = gr.Textbox(label="Clinical text (optional)", elem_id="seg-description")
        with gr.Row():
            images = gr.File(label="Example images", file_count="multiple", elem_id="seg-images")
            masks = gr.File(label="Their masks", file_count="multiple", elem_id="seg-masks")
        run = gr.Button("Synthesize segmenter", variant="primary", elem_id="seg-synthesize")
        status = gr.Markdown(elem_id="seg-status")
        state = gr.State(None)
        gr.Markdown("## 2. Try images")
        query = gr.File(
            label=f"Images to segment (up to {MAX_PREDICT_IMAGES})", file_count="multiple", elem_id="seg-query"
        )
        segment = gr.Button("Segment", variant="primary", elem_id="seg-predict")
        gallery = gr.Gallery(label="Predicted mask (red)", elem_id="seg-gallery", columns=4)
        outcome = gr.Markdown(elem_id="seg-outcome")
        gr.Markdown("## 3. Download or push")
        with gr.Row():
            build_zip = gr.Button("Build zip", elem_id="seg-download")
            archive = gr.File(label="Segmenter (.zip)", interactive=False, elem_id="seg-zip")
        with gr.Row():
            repo_id = gr.Textbox(label="Hub repo id", placeholder="my-user/polyp-segmenter", elem_id="seg-repo-id")
            token = gr.Textbox(
                label="Hub token (write; used once, never stored)", type="password", elem_id="seg-token"
            )
            private = gr.Checkbox(True, label="Private repo")
        upload = gr.Button("Push to Hub", elem_id="seg-push")
        push_status = gr.Markdown(elem_id="seg-push-status")
        with gr.Accordion("Model card", open=False):
            card = gr.Markdown(elem_id="seg-card")

        run.click(
            lambda i, m, n, d: synthesize(i, m, n, d, synthesizer),
            [images, masks, name, description],
            [state, status, card],
            api_name="seg_synthesize",
        )
        segment.click(predict, [state, query], [gallery, outcome], api_name="seg_predict")
        exports = exports or ExportArea()
        build_zip.click(
            lambda segmenter: download(segmenter, exports), [state], [archive, push_status], api_name="seg_download"
        )
        upload.click(push, [state, repo_id, token, private], [push_status], api_name="seg_push")
