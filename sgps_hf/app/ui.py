"""The Gradio app: build a task class by class, synthesize, try images, adapt, download or push.

``demo/app.py`` (the Hugging Face Space) and ``sgps demo`` both call :func:`build_demo`. The app lives in the
package, not only in ``demo/``, so ``sgps demo`` works from a plain ``pip install``. All validation and actions
are in :mod:`.inputs`, :mod:`.prediction`, :mod:`.export`, :mod:`.examples` and :mod:`.limits`; this module only lays out components and turns errors into messages.

Safety settings: a request queue with a concurrency limit and a bounded size, a per-request time limit,
upload size/count limits, one synthesis at a time, no run history in the browser (it would keep the Hub
token), analytics off, and nothing a user sends is logged.
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

from ..errors import CheckpointError, SGPSError
from ..hub.model_card import md_code, md_escape
from .examples import example_tasks, stage_files
from .export import ExportArea, export_zip, push_from_app
from .inputs import ClassRow, build_task
from .limits import ACCEPTED_FORMATS, DEFAULT_LIMITS, SYNTHESIS_LOCK, AppInputError, AppLimits, RequestRunner
from .prediction import predict_files, predictions_markdown, update_from_app
from .slides import build_slides_tab

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a hospital network

import gradio as gr  # noqa: E402

logger = logging.getLogger(__name__)

INITIAL_CLASSES = 2
DISCLAIMER = (
    "**Research use only.** A synthesized classifier is not a medical device; validate it on your own cases "
    "before relying on it. Uploaded images are processed in memory on this server and are not logged."
)


@dataclass
class AppStats:
    """Counters the load tests read: user errors are expected, internal errors never."""

    user_errors: int = 0
    internal_errors: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, kind: str) -> None:
        with self._lock:
            setattr(self, kind, getattr(self, kind) + 1)


@dataclass
class SynthesizerHandle:
    """The loaded synthesizer and processor (loaded once, shared by all sessions)."""

    model: Any
    processor: Any
    name: str


def load_synthesizer(source: Any = None) -> SynthesizerHandle:
    """A synthesizer from a folder/Hub id (default: the bundled checkpoint) or an already loaded model."""
    from ..hub.checkpoints import DEFAULT_CHECKPOINT
    from ..models.sgps.modeling_sgps import SGPSSynthesizer
    from ..models.sgps.processing_sgps import SGPSProcessor

    if isinstance(source, SGPSSynthesizer):
        return SynthesizerHandle(
            source.eval(),
            SGPSProcessor.from_sgps_config(source.config),
            str(source.config.name_or_path or "in-memory"),
        )
    path = str(source or DEFAULT_CHECKPOINT)
    if source is None and not Path(path).is_dir():
        raise CheckpointError(
            f"The bundled synthesizer {path} is not installed yet; pass --synthesizer <folder or Hub id>, or train one "
            "with `accelerate launch scripts/train.py --config scripts/configs/default.yaml`."
        )
    return SynthesizerHandle(SGPSSynthesizer.from_pretrained(path).eval(), SGPSProcessor.from_pretrained(path), path)


def build_demo(
    synthesizer: Any = None,
    data_dir: str | os.PathLike | None = None,
    limits: AppLimits = DEFAULT_LIMITS,
    show_examples: bool = True,
) -> gr.Blocks:
    """The app's Blocks (queue configured); ``demo.sgps_stats`` counts user and internal errors."""
    handle = load_synthesizer(synthesizer)
    ctx = _Context(
        handle, limits, RequestRunner(2 * limits.concurrency_limit, limits.request_timeout_s), ExportArea(), AppStats()
    )
    examples = example_tasks(data_dir) if show_examples else []
    with gr.Blocks(title="SGPS: synthesize a medical image classifier", analytics_enabled=False) as demo:
        gr.Markdown("# Synthesize a medical image classifier, no training\n" + DISCLAIMER)
        gr.Markdown(f"Synthesizer: `{handle.name}`")
        ui = _layout(examples, limits)
        _wire(ui, ctx, examples)
        from .segmentation import build_segmentation_tab

        build_segmentation_tab()
        build_slides_tab(handle)
    demo.queue(default_concurrency_limit=limits.concurrency_limit, max_size=limits.queue_size)
    demo.sgps_stats = ctx.stats
    demo.sgps_limits = limits
    return demo


def launch_demo(demo: gr.Blocks, host: str = "127.0.0.1", port: int | None = None, share: bool = False, **kwargs: Any):
    """Launch with the app's limits (upload size) and without browser run history (it would keep the token)."""
    limits: AppLimits = getattr(demo, "sgps_limits", DEFAULT_LIMITS)
    return demo.launch(
        server_name=host,
        server_port=port,
        share=share,
        max_file_size=limits.max_upload_bytes,
        run_history=False,
        footer_links=["api", "gradio"],
        show_error=False,
        mcp_server=False,
        **kwargs,
    )


# --------------------------------------------------------------------------------------------------
# Layout


@dataclass
class _Context:
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
    w["status"] = gr.Markdown(elem_id="status")
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
    gr.Markdown("## 4. Add verified cases and re-synthesize")
    with gr.Row():
        w["update_class"] = gr.Dropdown([], label="Class of the new cases", elem_id="update-class")
        w["update_files"] = gr.File(label="Verified cases", file_count="multiple", elem_id="update-images")
    w["update"] = gr.Button("Add cases and re-synthesize", elem_id="update")
    w["update_status"] = gr.Markdown(elem_id="update-status")
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


def _wire(ui: _UI, ctx: _Context, examples: list) -> None:
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
        task = build_task(class_rows, task_name, modality, ctx.limits, ctx.roots)
        progress(0.3, desc="Synthesizing weights (one forward pass)")
        classifier = ctx.runner.run("Synthesis", _locked(ctx.synth.model.synthesize), task, ctx.synth.processor)
        progress(0.9, desc="Writing the model card")
        return _classifier_outputs(
            classifier,
            f"Synthesized **{len(task.classes)}-class** classifier for {md_code(task.name)} "
            f"from {sum(len(c.images) for c in task.classes)} image(s).",
        )

    outputs = [ui.classifier, ui.status, ui.card, ui.update_class]
    ui.synthesize.click(synthesize, [ui.task_name, ui.modality, *rows], outputs, api_name="synthesize")

    @shown
    def predict(classifier: Any, files: Any, threshold: float):
        results = ctx.runner.run("Classification", predict_files, classifier, files, threshold, ctx.limits, ctx.roots)
        first = results[0]
        headline = (
            f"**{md_escape(first.file)}: uncertain**: top class {md_code(first.top_label)} has {first.top_probability:.2f} "
            f"&lt; threshold {first.threshold:.2f}."
            if first.abstained
            else f"**{md_escape(first.file)}: {md_escape(first.top_label)}** ({first.top_probability:.2f})."
        )
        return headline, first.probabilities, predictions_markdown(results)

    ui.predict.click(
        predict, [ui.classifier, ui.try_files, ui.threshold], [ui.outcome, ui.label, ui.table], api_name="predict"
    )

    @shown
    def update(classifier: Any, class_name: str, files: Any, progress: gr.Progress = gr.Progress()):
        progress(0.1, desc="Checking the new cases")
        fn = _locked(functools.partial(update_from_app, ctx.synth.model))
        updated = ctx.runner.run("Re-synthesis", fn, classifier, class_name, files, ctx.limits, ctx.roots)
        summary = updated.info["history"][-1]["summary"]
        return [*_classifier_outputs(updated, f"Version {updated.version}: {summary}"), gr.update(value=None)]

    ui.update.click(
        update, [ui.classifier, ui.update_class, ui.update_files], [*outputs, ui.update_files], api_name="update"
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

    if examples:
        _wire_examples(ui, ctx, examples, shown, visibility)


def _wire_examples(ui: _UI, ctx: _Context, examples: list, shown: Callable, visibility: Callable) -> None:
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
    return [classifier, message, card, gr.update(choices=classifier.label_names, value=classifier.label_names[0])]


def _locked(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def run(*args: Any) -> Any:
        with SYNTHESIS_LOCK:
            return fn(*args)

    return run
