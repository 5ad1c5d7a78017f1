"""What the Gradio app does, without Gradio: input validation, limits, prediction with abstention, export, push.

The UI (:mod:`sgps_hf.app.ui`) only wires these functions to components, so everything a browser or API
client can send is validated here, where it is unit-tested and fuzzed (tests/demo/test_app_logic.py). Every
rejection is an :class:`AppInputError` (an :class:`~sgps_hf.errors.SGPSError`) whose message is shown to the
user as is: it names the offending file by its base name only (never a server path) and says what to fix.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import shutil
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence, TypeVar

from PIL import Image

from ..errors import DataError, ImageLoadError, SGPSError
from ..imaging import load_image
from ..task import ClassSpec, TaskSpec

if TYPE_CHECKING:
    from ..models.sgps.classifier import SynthesizedClassifier

T = TypeVar("T")

#: The formats the app accepts, sniffed from the file's first bytes (DICOM files often have no extension).
ACCEPTED_FORMATS = "PNG, JPEG, TIFF or DICOM"
UNCERTAIN = "uncertain"


class AppInputError(SGPSError, ValueError):
    """Something a user sent to the app is unusable; the message is shown to them."""


class AppTimeoutError(SGPSError, TimeoutError):
    """A request ran past the app's per-request time limit."""


@dataclass(frozen=True)
class AppLimits:
    """Limits that keep one user from exhausting a shared (2-core) server; all user-visible in messages."""

    max_classes: int = 8
    max_images_per_class: int = 5
    max_support_per_class: int = 20  # after continuous-adaptation updates
    max_predict_images: int = 16
    max_upload_bytes: int = 16 * 2**20
    max_image_pixels: int = 40_000_000
    max_name_chars: int = 100
    max_text_chars: int = 2_000
    max_repo_id_chars: int = 96
    request_timeout_s: float = 120.0
    concurrency_limit: int = 2
    queue_size: int = 256


DEFAULT_LIMITS = AppLimits()


# --------------------------------------------------------------------------------------------------
# Uploaded files


def sniff_format(head: bytes) -> str | None:
    """The image format from magic bytes: PNG, JPEG, TIFF, DICOM (Part 10 preamble), or None."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    if head[128:132] == b"DICM":
        return "DICOM"
    return None


def upload_path(item: Any) -> Path:
    """The local path of one uploaded file as Gradio hands it over (a path string, or a dict/object with ``path``)."""
    if isinstance(item, (str, os.PathLike)):
        return Path(item)
    path = item.get("path") if isinstance(item, dict) else getattr(item, "path", None)
    if isinstance(path, (str, os.PathLike)):
        return Path(path)
    raise AppInputError(f"Unrecognised upload ({type(item).__name__}); upload image files ({ACCEPTED_FORMATS}).")


def read_upload(item: Any, limits: AppLimits = DEFAULT_LIMITS, roots: Sequence[Path] = ()) -> tuple[bytes, Image.Image]:
    """Validate one uploaded image; returns its bytes (for fingerprints) and its decoded RGB image.

    ``roots``: folders uploads must live in (Gradio's upload cache); anything else is refused, so an API
    caller cannot make the server read arbitrary files.
    """
    path = upload_path(item)
    name = display_name(path)
    resolved = path.resolve()
    if roots and not any(resolved.is_relative_to(Path(root).resolve()) for root in roots):
        raise AppInputError(f"{name}: not an uploaded file; upload the image through the app.")
    if not resolved.is_file():
        raise AppInputError(f"{name}: the uploaded file is missing; upload it again.")
    size = resolved.stat().st_size
    if size == 0:
        raise AppInputError(f"{name}: the file is empty.")
    if size > limits.max_upload_bytes:
        raise AppInputError(f"{name}: {size / 2**20:.1f} MiB is above the {limits.max_upload_bytes / 2**20:.0f} MiB upload limit.")
    data = resolved.read_bytes()
    kind = sniff_format(data[:132])
    if kind is None:
        raise AppInputError(f"{name}: not a {ACCEPTED_FORMATS} image. Export it in one of these formats and upload again.")
    if kind != "DICOM":
        _check_header_size(data, name, limits)
    try:
        image = load_image(data, max_pixels=limits.max_image_pixels)  # DICOM too: checked from its header, before decoding
    except ImageLoadError as exc:
        raise AppInputError(f"{name}: {_without_placeholder(str(exc))}") from None
    if image.width * image.height > limits.max_image_pixels:
        raise AppInputError(f"{name}: {image.width}x{image.height} pixels is above the app's {limits.max_image_pixels / 1e6:.0f} MP limit; downscale it.")
    return data, image


def display_name(path: Path) -> str:
    """The file's base name, printable and short, for messages (server paths are never echoed)."""
    name = "".join(ch if ch.isprintable() else "?" for ch in path.name)[:80]
    return repr(name) if name else "'(unnamed file)'"


def _check_header_size(data: bytes, name: str, limits: AppLimits) -> None:
    """Reject decompression bombs from the header, before any pixel is decoded."""
    import io

    try:
        with Image.open(io.BytesIO(data)) as header:
            width, height = header.size
    except Exception:  # undecodable: load_image reports it with a precise message
        return
    if width * height > limits.max_image_pixels:
        raise AppInputError(f"{name}: {width}x{height} pixels is above the app's {limits.max_image_pixels / 1e6:.0f} MP limit; downscale it.")


def _without_placeholder(message: str) -> str:
    """load_image names in-memory input ``<bytes>``; the app prefixes the file's name instead."""
    return message.replace("Image <bytes>", "The image").replace("<bytes>", "the file")


def _as_list(files: Any) -> list[Any]:
    if files is None:
        return []
    if isinstance(files, (list, tuple)):
        return [f for f in files if f is not None]
    return [files]


# --------------------------------------------------------------------------------------------------
# The task form


@dataclass
class ClassRow:
    """One class of the app's form: what the user typed and uploaded."""

    name: str | None = ""
    description: str | None = ""
    files: Any = None

    @property
    def is_empty(self) -> bool:
        return not (self.name or "").strip() and not (self.description or "").strip() and not _as_list(self.files)


def build_task(
    rows: Sequence[ClassRow], task_name: str | None = "", modality: str | None = "", limits: AppLimits = DEFAULT_LIMITS, roots: Sequence[Path] = ()
) -> TaskSpec:
    """The TaskSpec of the form; blank rows are skipped. Raises AppInputError / InvalidTaskError with the fix."""
    for what, text, limit in (("Task name", task_name, limits.max_name_chars), ("Modality", modality, limits.max_name_chars)):
        _check_text(text, what, limit)
    filled = [(index, row) for index, row in enumerate(rows, start=1) if not row.is_empty]
    if len(filled) > limits.max_classes:
        raise AppInputError(f"{len(filled)} classes: the app takes at most {limits.max_classes}.")
    if len(filled) < 2:
        raise AppInputError(f"{len(filled)} class(es) filled in: a task needs at least 2 classes, each with a name and an image or clinical text.")
    classes = [_class_spec(index, row, limits, roots) for index, row in filled]
    return TaskSpec(classes=classes, name=task_name or "custom-task", modality=modality or "")


def _class_spec(index: int, row: ClassRow, limits: AppLimits, roots: Sequence[Path]) -> ClassSpec:
    _check_text(row.name, f"Name of class {index}", limits.max_name_chars)
    _check_text(row.description, f"Clinical text of class {index}", limits.max_text_chars)
    name = (row.name or "").strip()
    if not name:
        raise AppInputError(f"Class {index} has images or text but no name; give it a label such as 'melanoma'.")
    files = _as_list(row.files)
    if len(files) > limits.max_images_per_class:
        raise AppInputError(f"Class {name!r} has {len(files)} images; the app takes at most {limits.max_images_per_class} per class.")
    images = [read_upload(item, limits, roots)[0] for item in files]
    return ClassSpec(name=name, description=row.description or "", images=images)


def _check_text(text: Any, what: str, limit: int) -> None:
    if text is not None and not isinstance(text, str):
        raise AppInputError(f"{what} must be text.")
    if text and len(text) > limit:
        raise AppInputError(f"{what} is {len(text)} characters; keep it under {limit}.")


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
        raise AppInputError(f"Confidence threshold {threshold!r} is not a number; pick a value between 0 and 1.") from None
    if not 0.0 <= value <= 1.0:  # also rejects NaN
        raise AppInputError(f"Confidence threshold {value} is outside 0-1; pick a value between 0 and 1.")
    return value


def predict_files(
    classifier: "SynthesizedClassifier | None", files: Any, threshold: Any, limits: AppLimits = DEFAULT_LIMITS, roots: Sequence[Path] = ()
) -> list[Prediction]:
    """Classify uploaded images; every input problem is an AppInputError, checked before the model runs."""
    if classifier is None:
        raise AppInputError("No classifier yet: synthesize one first (step 2).")
    value = check_threshold(threshold)
    items = _as_list(files)
    if not items:
        raise AppInputError(f"Upload at least one image ({ACCEPTED_FORMATS}) to classify.")
    if len(items) > limits.max_predict_images:
        raise AppInputError(f"{len(items)} images: classify at most {limits.max_predict_images} at a time.")
    images = [read_upload(item, limits, roots)[1] for item in items]
    names = [display_name(upload_path(item)).strip("'\"") for item in items]
    results = []
    for name, probs in zip(names, classifier.predict(images)):
        top = max(probs, key=probs.get)
        results.append(Prediction(name, probs, top, probs[top], value))
    return results


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


def update_from_app(synthesizer: Any, classifier: "SynthesizedClassifier | None", class_name: Any, files: Any,
                    limits: AppLimits = DEFAULT_LIMITS, roots: Sequence[Path] = ()) -> "SynthesizedClassifier":
    """Add uploaded verified cases to one class and re-synthesize (see :mod:`sgps_hf.synthesis`)."""
    if classifier is None:
        raise AppInputError("No classifier yet: synthesize one first.")
    if not isinstance(class_name, str) or class_name not in classifier.label_names:
        raise AppInputError(f"Pick the class the new cases belong to (one of {classifier.label_names}).")
    items = _as_list(files)
    if not items:
        raise AppInputError(f"Upload at least one verified case ({ACCEPTED_FORMATS}) for {class_name!r}.")
    support = classifier.support or {}
    room = limits.max_support_per_class - len(support.get(class_name, []))
    if len(items) > max(room, 0):
        raise AppInputError(f"Class {class_name!r} can take {max(room, 0)} more image(s) in the app; add fewer cases.")
    images = [read_upload(item, limits, roots)[0] for item in items]
    return synthesizer.update(classifier, {class_name: images})


# --------------------------------------------------------------------------------------------------
# Download and push


def safe_filename(name: str, default: str = "classifier") -> str:
    """A file name made only of [A-Za-z0-9._-], never starting with a dot: no traversal, no hidden files."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name or "").strip(".-")[:60]
    return slug or default


class ExportArea:
    """A private temp folder for zips; exports older than ``max_age_s`` are removed as new ones are made."""

    def __init__(self, root: Path | None = None, max_age_s: float = 3600.0) -> None:
        self.root = Path(root or tempfile.mkdtemp(prefix="sgps-app-exports-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_age_s = max_age_s

    def new_folder(self) -> Path:
        self._prune()
        return Path(tempfile.mkdtemp(dir=self.root))

    def _prune(self) -> None:
        cutoff = time.time() - self.max_age_s
        for entry in self.root.iterdir():
            try:
                if entry.stat().st_mtime < cutoff:
                    shutil.rmtree(entry, ignore_errors=True)
            except OSError:
                continue


def export_zip(classifier: "SynthesizedClassifier | None", area: ExportArea, include_support: bool) -> Path:
    """Save the classifier and zip it; the archive holds only relative paths under one top folder."""
    if classifier is None:
        raise AppInputError("No classifier yet: synthesize one first.")
    folder = area.new_folder()
    stem = safe_filename(classifier.info["task"]["name"])
    saved = classifier.save_pretrained(folder / stem, include_support=include_support)
    archive = folder / f"{stem}.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(saved.rglob("*")):
            if path.is_file() and not path.is_symlink():
                zf.write(path, arcname=f"{stem}/{path.relative_to(saved).as_posix()}")
    shutil.rmtree(saved, ignore_errors=True)
    return archive


_TOKEN_PATTERN = re.compile(r"hf_[A-Za-z0-9]{8,}")


def scrub_token(message: str, token: str | None) -> str:
    """``message`` with the token (and anything shaped like a Hub token) replaced by ***."""
    if token:
        message = message.replace(token, "***")
    return _TOKEN_PATTERN.sub("***", message)


def push_from_app(classifier: "SynthesizedClassifier | None", repo_id: Any, token: Any, private: bool, include_support: bool,
                  limits: AppLimits = DEFAULT_LIMITS) -> str:
    """Push to the Hub (HF_ENDPOINT is respected) with the token typed in the app, used once and never stored.

    The app never falls back to a server-side token (HF_TOKEN, saved login): on a shared Space that would let
    any visitor push to the Space owner's account.
    """
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if classifier is None:
        raise AppInputError("No classifier yet: synthesize one first.")
    if not isinstance(repo_id, str) or not repo_id.strip():
        raise AppInputError("Enter the Hub repo id to push to, e.g. my-user/skin-lesions-classifier.")
    repo_id = repo_id.strip()
    if len(repo_id) > limits.max_repo_id_chars or repo_id.count("/") != 1:
        raise AppInputError(f"Repo id {repo_id[:100]!r} must look like <user or org>/<name>.")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise AppInputError(f"Invalid repo id: {exc}") from None
    token = token.strip() if isinstance(token, str) else ""
    if not token:
        raise AppInputError("Paste a Hub access token with write permission; the app never uses a server-side token.")
    try:
        return classifier.push_to_hub(repo_id, token=token, private=bool(private) or None, include_support=bool(include_support))
    except Exception as exc:  # HTTP, network, permission errors: report them without the token
        raise AppInputError(f"Push to {repo_id} failed: {scrub_token(f'{type(exc).__name__}: {exc}', token)[:500]}") from None


# --------------------------------------------------------------------------------------------------
# Example tasks from the shared data


@dataclass
class ExampleTask:
    """A ready-made task: classes with their packaged clinical texts, a few support images and try images."""

    name: str
    modality: str
    classes: list[tuple[str, str, list[Path]]]
    try_images: list[Path] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.name} ({len(self.classes)} classes)"


def example_tasks(data_dir: str | os.PathLike | None = None, num_classes: int = 3, shots: int = 2) -> list[ExampleTask]:
    """Examples built from the held-out tasks of the shared data (never seen in meta-training); [] without data."""
    from ..data.descriptions import load_descriptions
    from ..data.registry import list_tasks, resolve_data_dir
    from ..data.splits import load_splits

    try:
        root = resolve_data_dir(data_dir)
        held_out = load_splits().held_out_tasks
        modalities = {info.name: info.modality for info in list_tasks(root)}
    except (DataError, OSError):
        return []
    examples = []
    for task in held_out:
        try:
            texts = load_descriptions(task)
        except DataError:
            continue
        example = _example_from_folder(root / task, texts, modalities.get(task, ""), num_classes, shots)
        if example is not None:
            examples.append(example)
    return examples


def _example_from_folder(folder: Path, texts: dict[str, str], modality: str, num_classes: int, shots: int) -> ExampleTask | None:
    from ..imaging import IMAGE_SUFFIXES

    if not folder.is_dir():
        return None
    classes, try_images = [], []
    for class_dir in sorted(p for p in folder.iterdir() if p.is_dir() and p.name in texts):
        files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if len(files) > shots:
            classes.append((class_dir.name, texts[class_dir.name], files[:shots]))
            try_images.append(files[shots])
        if len(classes) == num_classes:
            break
    if len(classes) < 2:
        return None
    return ExampleTask(name=folder.name, modality=modality, classes=classes, try_images=try_images)


def stage_files(paths: Iterable[Path], area: ExportArea) -> list[str]:
    """Copy files into the app's temp area, so the app never serves a path outside it."""
    folder = area.new_folder()
    staged = []
    for index, path in enumerate(paths):
        target = folder / f"{index:02d}-{safe_filename(path.name, 'image')}"
        shutil.copyfile(path, target)
        staged.append(str(target))
    return staged


# --------------------------------------------------------------------------------------------------
# Time limits


class RequestRunner:
    """Runs request work in a bounded pool with a per-request time limit.

    Python cannot kill a thread, so a request that times out keeps its worker until it finishes; the pool
    size bounds how much such work can pile up, and the user gets a clear message instead of a hung page.
    """

    def __init__(self, workers: int, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="sgps-app")

    def run(self, what: str, fn: Callable[..., T], *args: Any) -> T:
        future = self._pool.submit(fn, *args)
        try:
            return future.result(timeout=self.timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise AppTimeoutError(
                f"{what} took longer than the app's {self.timeout_s:.0f} s limit; try fewer or smaller images."
            ) from None


#: Synthesis is not thread-safe (it switches the shared synthesizer's BatchNorm layers to train mode to
#: measure support statistics), so the app runs one synthesis at a time; predictions run concurrently.
SYNTHESIS_LOCK = threading.Lock()
