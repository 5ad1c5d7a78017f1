"""Input validation of the app: uploaded files (sniffed, bounded, decoded once) and the task form."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from PIL import Image

from ..errors import ImageLoadError
from ..imaging import collected_notes, load_image
from ..task import ClassSpec, TaskSpec
from .limits import ACCEPTED_FORMATS, DEFAULT_LIMITS, AppInputError, AppLimits

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


def read_upload(
    item: Any, limits: AppLimits = DEFAULT_LIMITS, roots: Sequence[Path] = ()
) -> tuple[bytes, Image.Image]:
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
        raise AppInputError(
            f"{name}: {size / 2**20:.1f} MiB is above the {limits.max_upload_bytes / 2**20:.0f} MiB upload limit."
        )
    data = resolved.read_bytes()
    kind = sniff_format(data[:132])
    if kind is None:
        raise AppInputError(
            f"{name}: not a {ACCEPTED_FORMATS} image. Export it in one of these formats and upload again."
        )
    if kind != "DICOM":
        _check_header_size(data, name, limits)
    try:
        image = load_image(
            data, max_pixels=limits.max_image_pixels
        )  # DICOM too: checked from its header, before decoding
    except ImageLoadError as exc:
        raise AppInputError(f"{name}: {_without_placeholder(str(exc))}") from None
    if image.width * image.height > limits.max_image_pixels:
        raise AppInputError(
            f"{name}: {image.width}x{image.height} pixels is above the app's {limits.max_image_pixels / 1e6:.0f} MP "
            "limit; downscale it."
        )
    return data, image


def read_with_warnings(
    item: Any, limits: AppLimits = DEFAULT_LIMITS, roots: Sequence[Path] = ()
) -> tuple[bytes, Image.Image, list[str]]:
    """:func:`read_upload` plus the loader's accuracy notes (e.g. which frame of a multi-frame DICOM is used),
    with the file's display name in place of the loader's ``<bytes>``. Collected per thread, not through the
    process-wide ``warnings`` state, so concurrent users never see each other's notes."""
    name = display_name(upload_path(item)).strip("'\"")
    with collected_notes() as notes:
        data, image = read_upload(item, limits, roots)
    return data, image, [m.replace("<bytes>", name) for m in dict.fromkeys(notes)]


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
        raise AppInputError(
            f"{name}: {width}x{height} pixels is above the app's {limits.max_image_pixels / 1e6:.0f} MP limit; "
            "downscale it."
        )


def _without_placeholder(message: str) -> str:
    """load_image names in-memory input ``<bytes>``; the app prefixes the file's name instead."""
    return message.replace("Image <bytes>", "The image").replace("<bytes>", "the file")


def as_list(files: Any) -> list[Any]:
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
        return not (self.name or "").strip() and not (self.description or "").strip() and not as_list(self.files)


def build_task(
    rows: Sequence[ClassRow],
    task_name: str | None = "",
    modality: str | None = "",
    limits: AppLimits = DEFAULT_LIMITS,
    roots: Sequence[Path] = (),
    notes: list[str] | None = None,
) -> TaskSpec:
    """The TaskSpec of the form; blank rows are skipped. Raises AppInputError / InvalidTaskError with the fix.

    ``notes``: gets the images' accuracy notes (e.g. which frame of a multi-frame DICOM is used), named by file.
    """
    for what, text, limit in (
        ("Task name", task_name, limits.max_name_chars),
        ("Modality", modality, limits.max_name_chars),
    ):
        _check_text(text, what, limit)
    filled = [(index, row) for index, row in enumerate(rows, start=1) if not row.is_empty]
    if len(filled) > limits.max_classes:
        raise AppInputError(f"{len(filled)} classes: the app takes at most {limits.max_classes}.")
    if len(filled) < 2:
        raise AppInputError(
            f"{len(filled)} class(es) filled in: a task needs at least 2 classes, each with a name and an image or "
            "clinical text."
        )
    classes = [_class_spec(index, row, limits, roots, notes) for index, row in filled]
    return TaskSpec(classes=classes, name=task_name or "custom-task", modality=modality or "")


def _class_spec(
    index: int, row: ClassRow, limits: AppLimits, roots: Sequence[Path], notes: list[str] | None
) -> ClassSpec:
    _check_text(row.name, f"Name of class {index}", limits.max_name_chars)
    _check_text(row.description, f"Clinical text of class {index}", limits.max_text_chars)
    name = (row.name or "").strip()
    if not name:
        raise AppInputError(f"Class {index} has images or text but no name; give it a label such as 'melanoma'.")
    files = as_list(row.files)
    if len(files) > limits.max_images_per_class:
        raise AppInputError(
            f"Class {name!r} has {len(files)} images; the app takes at most {limits.max_images_per_class} per class."
        )
    images = []
    for item in files:
        data, _, advice = read_with_warnings(item, limits, roots)
        images.append(data)
        if notes is not None:
            notes += advice
    return ClassSpec(name=name, description=row.description or "", images=images)


def _check_text(text: Any, what: str, limit: int) -> None:
    if text is not None and not isinstance(text, str):
        raise AppInputError(f"{what} must be text.")
    if text and len(text) > limit:
        raise AppInputError(f"{what} is {len(text)} characters; keep it under {limit}.")
