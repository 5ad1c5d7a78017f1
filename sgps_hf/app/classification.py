"""The classification tab: build a task class by class, synthesize, try images, add cases, download or push.

:func:`build_classification_tab` lays out the tab's components and wires its events; the actions themselves are in
:mod:`.inputs`, :mod:`.prediction`, :mod:`.export`, :mod:`.examples` and :mod:`.results_view`.
"""

from __future__ import annotations

import functools
import html
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..errors import SGPSError
from ..hub.model_card import md_code, md_escape
from ..trust.advice import label_conflicts, task_advice
from .calibration import calibration_layout, wire_calibration
from .examples import stage_files
from .export import ExportArea, export_zip, push_from_app
from .inputs import ClassRow, build_task
from .limits import ACCEPTED_FORMATS, SYNTHESIS_LOCK, AppInputError, AppLimits, RequestRunner
from .prediction import predictions_markdown, update_from_app
from .results_view import classify_uploads, results_html, support_html

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a hospital network

import gradio as gr  # noqa: E402

logger = logging.getLogger(__name__)

INITIAL_CLASSES = 2


@dataclass
class SynthesizerHandle:
    """The loaded synthesizer and processor (loaded once, shared by all sessions)."""

    model: Any
    processor: Any
    name: str


@dataclass
class AppStats:
    """Counters the load tests read: user errors are expected, internal errors never."""

    user_errors: int = 0
    internal_errors: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, kind: str) -> None:
        with self._lock:
            setattr(self, kind, getattr(self, kind) + 1)


def build_classification_tab(ctx: "Context", examples: list) -> None:
    """The classification tab's components and events, inside the caller's ``gr.Tab``."""
    ui = _layout(examples, ctx.limits)
    _wire(ui, ctx, examples)


# --------------------------------------------------------------------------------------------------
# Layout


@dataclass
class Context:
    synth: SynthesizerHandle
    limits: AppLimits
    runner: RequestRunner
    exports: ExportArea
    stats: AppStats

    @property
    def roots(self) -> list[Path]:
        from gradio.utils import get_upload_folder

        return [Path(get_upload_folder())]


@dataclass
class _UI:
    task_name: Any
    modality: Any
    count: Any
    groups: list = field(default_factory=list)
    names: list = field(default_factory=list)
    texts: list = field(default_factory=list)
    files: list = field(default_factory=list)
    widgets: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, key: str) -> Any:
        try:
            return self.__dict__["widgets"][key]
        except KeyError:
            raise AttributeError(key) from None


def _layout(examples: list, limits: AppLimits) -> _UI:
    w: dict[str, Any] = {}
    with gr.Row():
        task_name = gr.Textbox(
            label="Task name", placeholder="skin-lesions", max_length=limits.max_name_chars, elem_id="task-name"
        )
        modality = gr.Textbox(
            label="Modality", placeholder="smartphone photo", max_length=limits.max_name_chars, elem_id="modality"
        )
    if examples:
        with gr.Row():
            w["example"] = gr.Dropdown(
                [e.label for e in examples], value=examples[0].label, label="Example task (held-out data)", scale=3
            )
            w["load_example"] = gr.Button("Load example", scale=1, elem_id="load-example")
    gr.Markdown(
        f"## 1. Classes\nEach class: a name, a clinical text and 1-{limits.max_images_per_class} example images "
        f"({ACCEPTED_FORMATS}, grayscale or RGB, any size). A class may also be text-only or image-only."
    )
    ui = _UI(task_name, modality, gr.State(INITIAL_CLASSES), widgets=w)
    for i in range(limits.max_classes):
        with gr.Group(visible=i < INITIAL_CLASSES) as group:
            with gr.Row():
                ui.names.append(
                    gr.Textbox(
                        label=f"Class {i + 1} name",
                        max_length=limits.max_name_chars,
                        elem_id=f"class-{i}-name",
                        scale=1,
                    )
                )
                ui.texts.append(
                    gr.Textbox(
                        label=f"Class {i + 1} clinical text",
                        lines=2,
                        max_length=limits.max_text_chars,
                        elem_id=f"class-{i}-text",
                        scale=3,
                    )
                )
                ui.files.append(
                    gr.File(label=f"Class {i + 1} images", file_count="multiple", elem_id=f"class-{i}-images", scale=2)
                )
        ui.groups.append(group)
    with gr.Row():
        w["add"] = gr.Button("Add class", elem_id="add-class")
        w["remove"] = gr.Button("Remove last class", elem_id="remove-class")
    gr.Markdown("## 2. Synthesize")
    w["synthesize"] = gr.Button("Synthesize classifier", variant="primary", elem_id="synthesize")
    w["status"] = gr.Markdown(elem_id="status", min_height=48)  # room for the progress bar during a synthesis
    w["support"] = gr.HTML(elem_id="support-thumbnails")
    w["classifier"] = gr.State(None)
    gr.Markdown("## 3. Try images")
    with gr.Row():
        w["try_files"] = gr.File(
            label=f"Images to classify (up to {limits.max_predict_images})",
            file_count="multiple",
            elem_id="try-images",
        )
        w["threshold"] = gr.Slider(
            0.0, 1.0, value=0.5, step=0.01, label="Confidence threshold (below it: uncertain)", elem_id="threshold"
        )
    w["predict"] = gr.Button("Classify", variant="primary", elem_id="predict")
    w["outcome"] = gr.Markdown(elem_id="outcome")
    w["label"] = gr.Label(label="Per-class probabilities (first image)", elem_id="probabilities")
    w["table"] = gr.Markdown(elem_id="prediction-table")
    w["results"] = gr.HTML(elem_id="results")
    w.update(calibration_layout(gr))
    gr.Markdown("## 4. Add verified cases and re-synthesize")
    with gr.Row():
        w["update_class"] = gr.Dropdown([], label="Class of the new cases", elem_id="update-class")
        w["update_files"] = gr.File(label="Verified cases", file_count="multiple", elem_id="update-images")
    w["update"] = gr.Button("Add cases and re-synthesize", elem_id="update")
    w["update_status"] = gr.Markdown(elem_id="update-status", min_height=48)
    gr.Markdown("## 5. Download or push")
    with gr.Row():
        w["zip_support"] = gr.Checkbox(
            True, label="Include support images in the zip (patient data; needed to adapt later)"
        )
        w["download"] = gr.Button("Build zip", elem_id="download")
        w["zip"] = gr.File(label="Classifier (.zip)", interactive=False, elem_id="zip")
    with gr.Row():
        w["repo_id"] = gr.Textbox(label="Hub repo id", placeholder="my-user/my-classifier", elem_id="repo-id")
        w["token"] = gr.Textbox(label="Hub token (write; used once, never stored)", type="password", elem_id="token")
        w["private"] = gr.Checkbox(True, label="Private repo")
        w["push_support"] = gr.Checkbox(False, label="Also push support images (patient data)")
    w["push"] = gr.Button("Push to Hub", elem_id="push")
    w["push_status"] = gr.Markdown(elem_id="push-status")
    with gr.Accordion("Model card", open=False):
        w["card"] = gr.Markdown(elem_id="model-card")
    return ui


# --------------------------------------------------------------------------------------------------
# Events


def _user_facing(stats: AppStats) -> Callable[[Callable], Callable]:
    """SGPSError -> its message in the page; anything else -> a generic message, logged with its traceback."""

    def decorate(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except SGPSError as exc:
                stats.count("user_errors")
                raise gr.Error(
                    html.escape(str(exc), quote=False), print_exception=False
                ) from None  # names in messages stay text
            except Exception:
                stats.count("internal_errors")
                logger.exception("Internal error in the app's %s handler", fn.__name__)  # arguments are not logged
                raise gr.Error(
                    "Internal error: it was logged on the server; please report it.", print_exception=False
                ) from None

        return wrapper

    return decorate


def _wire(ui: _UI, ctx: Context, examples: list) -> None:
    shown = _user_facing(ctx.stats)
    n = len(ui.groups)
    rows = [c for i in range(n) for c in (ui.names[i], ui.texts[i], ui.files[i])]

    def visibility(count: int) -> list:
        return [gr.update(visible=i < count) for i in range(n)]

    def add(count: int):
        count = min(count + 1, n)
        return [count, *visibility(count)]

    def remove(count: int):
        count = max(count - 1, INITIAL_CLASSES)
        cleared = [gr.update(value=None) if i >= count else gr.update() for i in range(n) for _ in range(3)]
        return [count, *visibility(count), *cleared]

    ui.add.click(add, ui.count, [ui.count, *ui.groups], api_visibility="private", queue=False)
    ui.remove.click(remove, ui.count, [ui.count, *ui.groups, *rows], api_visibility="private", queue=False)

    @shown
    def synthesize(task_name: str, modality: str, progress: gr.Progress = gr.Progress(), *values: Any):  # noqa: B008
        # (Gradio injects `progress` at its position among the parameters, so it must precede *values.)
        progress(0.05, desc="Checking images and texts")
        class_rows = [ClassRow(*values[i : i + 3]) for i in range(0, len(values), 3)]
        notes: list[str] = []  # e.g. which frame of a multi-frame DICOM is used
        task = build_task(class_rows, task_name, modality, ctx.limits, ctx.roots, notes)
        progress(0.3, desc="Synthesizing weights (one forward pass)")
        classifier = ctx.runner.run("Synthesis", _locked(ctx.synth.model.synthesize), task, ctx.synth.processor)
        progress(0.9, desc="Writing the model card")
        fingerprints = [c["image_sha256"] for c in classifier.info["task"]["classes"]]
        messages = notes + task_advice(task) + label_conflicts(task.class_names, fingerprints)  # poor accuracy ahead
        advice = "".join(f"\n\n**Warning:** {md_escape(m)}" for m in messages)
        return _classifier_outputs(
            classifier,
            f"Synthesized **{len(task.classes)}-class** classifier for {md_code(task.name)} "
            f"from {sum(len(c.images) for c in task.classes)} image(s).{advice}",
        )

    outputs = [ui.classifier, ui.status, ui.card, ui.update_class, ui.support, ui.cal_class]
    clear = {"fn": lambda: "", "inputs": None, "api_visibility": "private", "queue": False}  # no stale message
    ui.synthesize.click(outputs=ui.status, **clear).then(
        synthesize, [ui.task_name, ui.modality, *rows], outputs, api_name="synthesize"
    )

    @shown
    def predict(classifier: Any, files: Any, threshold: float):
        shown_results = ctx.runner.run(
            "Classification", classify_uploads, classifier, files, threshold, ctx.limits, ctx.roots
        )
        results = [r.prediction for r in shown_results if r.prediction is not None]
        first = results[0]
        headline = (
            f"**{md_escape(first.file)}: uncertain**: top class {md_code(first.top_label)} has "
            f"{first.top_probability:.2f} &lt; threshold {first.threshold:.2f}."
            if first.abstained
            else f"**{md_escape(first.file)}: {md_escape(first.top_label)}** ({first.top_probability:.2f})."
        )
        failed = [r for r in shown_results if r.error is not None]
        if failed:
            headline += f" {len(failed)} file(s) could not be read (see below); the others were classified."
        headline += "".join(f"\n\n**Warning:** {md_escape(w)}" for r in shown_results for w in r.warnings)
        table = predictions_markdown(results)
        return headline, first.probabilities, table, results_html(shown_results)

    predicted = [ui.outcome, ui.label, ui.table, ui.results]
    ui.predict.click(lambda: [None, None, "", ""], None, predicted, api_visibility="private", queue=False).then(
        predict, [ui.classifier, ui.try_files, ui.threshold], predicted, api_name="predict"
    )

    @shown
    def update(classifier: Any, class_name: str, files: Any, progress: gr.Progress = gr.Progress()):
        progress(0.1, desc="Checking the new cases")
        fn, notes = _locked(functools.partial(update_from_app, ctx.synth.model)), []
        updated = ctx.runner.run("Re-synthesis", fn, classifier, class_name, files, ctx.limits, ctx.roots, notes)
        summary = updated.info["history"][-1]["summary"] + "".join(f"\n\n**Warning:** {md_escape(m)}" for m in notes)
        return [*_classifier_outputs(updated, f"Version {updated.version}: {summary}"), gr.update(value=None)]

    updated = [ui.classifier, ui.update_status, ui.card, ui.update_class, ui.support, ui.cal_class, ui.update_files]
    ui.update.click(outputs=ui.update_status, **clear).then(
        update, [ui.classifier, ui.update_class, ui.update_files], updated, api_name="update"
    )

    @shown
    def download(classifier: Any, include_support: bool):
        return str(ctx.runner.run("Export", export_zip, classifier, ctx.exports, bool(include_support)))

    ui.download.click(download, [ui.classifier, ui.zip_support], ui.zip, api_name="download")

    @shown
    def push(classifier: Any, repo_id: str, token: str, private: bool, include_support: bool):
        url = ctx.runner.run("Push", push_from_app, classifier, repo_id, token, private, include_support, ctx.limits)
        return f"Pushed to {md_code(repo_id.strip())}: {md_escape(url)}", ""  # the token leaves the page too

    ui.push.click(
        push,
        [ui.classifier, ui.repo_id, ui.token, ui.private, ui.push_support],
        [ui.push_status, ui.token],
        api_name="push",
    )

    wire_calibration(gr, ui, ctx, shown)
    if examples:
        _wire_examples(ui, ctx, examples, shown, visibility)


def _wire_examples(ui: _UI, ctx: Context, examples: list, shown: Callable, visibility: Callable) -> None:
    by_label = {e.label: e for e in examples}
    n = len(ui.groups)

    @shown
    def load_example(label: str):
        example = by_label.get(label)
        if example is None:
            raise AppInputError(f"Unknown example {label!r}; pick one from the list.")
        values: list[Any] = []
        for i in range(n):
            if i < len(example.classes):
                name, text, paths = example.classes[i]
                values += [name, text, stage_files(paths, ctx.exports)]
            else:
                values += ["", "", None]
        count = max(len(example.classes), INITIAL_CLASSES)
        return [
            example.name,
            example.modality,
            count,
            *visibility(count),
            *values,
            stage_files(example.try_images, ctx.exports),
        ]

    rows = [c for i in range(n) for c in (ui.names[i], ui.texts[i], ui.files[i])]
    ui.load_example.click(
        load_example,
        ui.example,
        [ui.task_name, ui.modality, ui.count, *ui.groups, *rows, ui.try_files],
        api_name="load_example",
    )


def _classifier_outputs(classifier: Any, message: str) -> list:
    from ..hub.model_card import classifier_card

    card = classifier_card(classifier).text
    # no default class for new cases: the user must choose (a default once added cases to the wrong class)
    choices = gr.update(choices=classifier.label_names, value=None)
    return [classifier, message, card, choices, support_html(classifier), choices]


def _locked(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def run(*args: Any) -> Any:
        with SYNTHESIS_LOCK:
            return fn(*args)

    return run
