"""The Gradio app: build a task class by class, synthesize, try images, adapt, download or push.

``demo/app.py`` (the Hugging Face Space) and ``sgps demo`` both call :func:`build_demo`. The app lives in the
package, not only in ``demo/``, so ``sgps demo`` works from a plain ``pip install``. All validation and actions
are in :mod:`.inputs`, :mod:`.prediction`, :mod:`.export`, :mod:`.examples` and :mod:`.limits`; the tabs are
:mod:`.classification` and :mod:`.segmentation`; this module builds the page and launches it.

Safety settings: a request queue with a concurrency limit and a bounded size, a per-request time limit,
upload size/count limits, one synthesis at a time, no run history in the browser (it would keep the Hub
token), analytics off, and nothing a user sends is logged.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from ..hub.checkpoints import display_name
from ..hub.model_card import md_code
from .classification import AppStats, Context, SynthesizerHandle, build_classification_tab
from .examples import example_tasks
from .export import ExportArea
from .limits import DEFAULT_LIMITS, AppLimits, RequestRunner
from .slides import build_slides_tab

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a hospital network

import gradio as gr  # noqa: E402

logger = logging.getLogger(__name__)


def disclaimer(limits: AppLimits) -> str:
    """What the page promises about the classifiers and the visitor's files (``limits.file_max_age_s``)."""
    minutes = round(limits.file_max_age_s / 60)
    return (
        "**Research use only.** A synthesized classifier is not a medical device; validate it on your own cases "
        "before relying on it. Uploaded images are not logged; this server deletes them, and every file it made for "
        f"you, once they are {minutes} minutes old (checked every {minutes} minutes) and when it stops."
    )


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
            f"The bundled synthesizer {path} is not installed yet; pass --synthesizer <folder or Hub id>, or train "
            "one with `accelerate launch scripts/train.py --config scripts/configs/default.yaml`."
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
    ctx = Context(
        handle,
        limits,
        RequestRunner(2 * limits.concurrency_limit, limits.request_timeout_s),
        ExportArea(max_age_s=limits.file_max_age_s),
        AppStats(),
    )
    examples = example_tasks(data_dir) if show_examples else []
    # gradio's cache holds every upload and every file served (zips, overlays): swept like the export area, and
    # emptied when the server stops.
    delete_cache = (limits.file_max_age_s, limits.file_max_age_s)
    with gr.Blocks(
        title="SGPS: synthesize a medical image classifier", analytics_enabled=False, delete_cache=delete_cache
    ) as demo:
        gr.Markdown("# Synthesize a medical image classifier, no training\n" + disclaimer(limits))
        gr.Markdown(f"Synthesizer: {md_code(display_name(handle.name))}")  # never the server's path
        with gr.Tab("Classification", elem_id="cls-tab"):
            build_classification_tab(ctx, examples)
        from .segmentation import build_segmentation_tab

        build_segmentation_tab(exports=ctx.exports)
        build_slides_tab(handle, ctx.exports)
    demo.queue(default_concurrency_limit=limits.concurrency_limit, max_size=limits.queue_size)
    demo.sgps_stats = ctx.stats
    demo.sgps_synthesizer_path = handle.name  # for tests: the page must never show it
    demo.sgps_limits = limits
    demo.sgps_exports = ctx.exports
    return demo


def launch_demo(demo: gr.Blocks, host: str = "127.0.0.1", port: int | None = None, share: bool = False, **kwargs: Any):
    """Launch with the app's limits (upload size) and without browser run history (it would keep the token).

    In the main thread it blocks until Ctrl+C or SIGTERM (how a Space, a container or ``timeout`` stops a process),
    then closes the app fully: only a full close deletes the visitors' files (:func:`build_demo`).
    ``prevent_thread_lock=True`` returns at once, as in Gradio.
    """
    limits: AppLimits = getattr(demo, "sgps_limits", DEFAULT_LIMITS)
    settings = dict(
        server_name=host,
        server_port=port,
        share=share,
        max_file_size=limits.max_upload_bytes,
        run_history=False,
        footer_links=["api", "gradio"],
        show_error=False,
        mcp_server=False,
    )
    if kwargs.get("prevent_thread_lock") or threading.current_thread() is not threading.main_thread():
        return demo.launch(**settings, **kwargs)
    launched = demo.launch(**settings, **{**kwargs, "prevent_thread_lock": True})
    _serve_until_stopped(demo)
    return launched


def _serve_until_stopped(demo: gr.Blocks) -> None:
    """Block until Ctrl+C or SIGTERM, then ``demo.close()``. Gradio's own wait only stops the HTTP server, whose
    open event streams can outlast its 5-second join, and the process then exits before the cache is emptied."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        while demo.is_running:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        demo.close()
