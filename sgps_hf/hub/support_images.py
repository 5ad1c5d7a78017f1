"""The support set a classifier was synthesized from, stored inside its folder so it can be re-synthesized.

Continuous adaptation (:mod:`sgps_hf.synthesis`) re-runs the synthesizer on the old support images plus
newly verified cases, so a saved classifier keeps its support images as ``support/<NNN>-<class>/<sha256>.png``:
the 8-bit RGB pixels that :func:`sgps_hf.imaging.load_image` produced, written losslessly and without any
metadata (DICOM tags, EXIF, ICC profiles are dropped). Reading them back gives exactly the pixels the
synthesizer saw, so an update with no new case reproduces the original weights bit for bit.

``sgps_task.json`` references the files (``info["support"]``); the file name is the sha256 of the decoded
pixels (:func:`~sgps_hf.imaging.image_fingerprint`), checked on load. Paths are validated against a strict
pattern, so a tampered task file cannot make the library read outside the classifier folder.

These images are patient data: ``push_to_hub`` leaves them out unless asked (see the model card section).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from PIL import Image

from ..errors import CheckpointError
from ..imaging import image_fingerprint, load_image

SUPPORT_DIR = "support"
SUPPORT_FORMAT = "png-rgb8"
_SLUG_CHARS = re.compile(r"[^A-Za-z0-9_-]+")
_PATH_PATTERN = re.compile(r"support/[0-9]{3,}-[A-Za-z0-9_-]{0,40}/[0-9a-f]{64}\.png")

Support = dict[str, list[Image.Image]]


def class_folder(index: int, name: str) -> str:
    """``support/<index>-<slug>``: the index keeps folders unique, the slug keeps them readable and path-safe."""
    slug = _SLUG_CHARS.sub("_", name).strip("_")[:40]
    return f"{SUPPORT_DIR}/{index:03d}-{slug}"


def clean_image(image: Image.Image) -> Image.Image:
    """A metadata-free 8-bit RGB copy (no EXIF/ICC/text chunks can leak into the stored PNG)."""
    rgb = load_image(image)
    return Image.frombytes("RGB", rgb.size, rgb.tobytes())


def support_manifest(class_names: Sequence[str], support: Mapping[str, Sequence[Image.Image]]) -> dict[str, Any]:
    """The ``info["support"]`` entry: for each class, the relative paths of its stored images."""
    files = {}
    for index, name in enumerate(class_names):
        folder = class_folder(index, name)
        files[name] = [f"{folder}/{image_fingerprint(image)}.png" for image in support.get(name, [])]
    return {"format": SUPPORT_FORMAT, "files": files}


def write_support(folder: Path, manifest: Mapping[str, Any], support: Mapping[str, Sequence[Image.Image]]) -> None:
    """Write every support image to the path its manifest names (inside ``folder``)."""
    for name, paths in manifest["files"].items():
        for relative, image in zip(paths, support[name], strict=True):
            target = _checked_path(folder, relative)
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():  # the same image listed twice is stored once
                image.save(target, format="PNG", optimize=False)


def check_manifest(manifest: Any, task: Mapping[str, Any], source: str = "sgps_task.json") -> None:
    """The ``support`` entry must list, for every class of the task (same names, same order), one file per image.

    An edited manifest would otherwise make an update silently drop a class's images.
    """
    if manifest is None:
        return
    where = f"{source}: key 'support'"
    if not isinstance(manifest, Mapping) or not isinstance(manifest.get("files"), Mapping):
        raise CheckpointError(
            f"{where} must be an object with 'format' and 'files'; restore the file or re-synthesize the classifier."
        )
    if manifest.get("format") != SUPPORT_FORMAT:
        raise CheckpointError(
            f"{where}.format is {manifest.get('format')!r}, not {SUPPORT_FORMAT!r}; restore the file or re-synthesize "
            "the classifier."
        )
    files = manifest["files"]
    classes = task.get("classes") if isinstance(task, Mapping) else None
    names = (
        [c.get("name") for c in classes]
        if isinstance(classes, list) and all(isinstance(c, Mapping) for c in classes)
        else None
    )
    if names is None or list(files) != names:
        raise CheckpointError(
            f"{where}.files lists the classes {list(files)[:10]} but task.classes has "
            f"{names if names is None else names[:10]}; the task file was edited. Restore it from a backup or "
            "re-synthesize the classifier."
        )
    for entry in classes:
        paths = files[entry["name"]]
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise CheckpointError(
                f"{where}.files[{entry['name']!r}] must be a list of support/... paths; restore the task file."
            )
        if entry.get("num_images") != len(paths):
            raise CheckpointError(
                f"{where}.files[{entry['name']!r}] lists {len(paths)} image(s) but task.classes says "
                f"num_images={entry.get('num_images')!r}; the task file was edited. Restore it from a backup or "
                "re-synthesize the classifier."
            )
        for relative in paths:
            _checked_path(Path("."), relative)


def support_available(folder: Path, manifest: Mapping[str, Any] | None) -> bool:
    """Whether the support images the manifest lists are all present (False when none are: a pushed copy).

    A folder holding only some of them is refused (``CheckpointError`` naming the missing files) rather than
    treated as having none, which would make the next save drop the rest.
    """
    if not manifest or manifest.get("format") != SUPPORT_FORMAT:
        return False
    listed = [p for paths in manifest["files"].values() for p in paths]
    missing = [p for p in listed if not _checked_path(folder, p).is_file()]
    if missing and len(missing) < len(listed):
        raise CheckpointError(
            f"{len(missing)} of the {len(listed)} support images listed in {folder / 'sgps_task.json'} are missing "
            f"(e.g. {missing[:3]}). Restore them from a backup (nothing was deleted by sgps_hf), or move the whole "
            "support/ folder away to use the classifier without adaptation."
        )
    return bool(listed) and not missing


def read_support(folder: Path, manifest: Mapping[str, Any]) -> Support:
    """Load and verify the stored support images (``CheckpointError`` when one is missing or was modified)."""
    from ..errors import ImageLoadError

    support: Support = {}
    for name, paths in manifest["files"].items():
        images = []
        for relative in paths:
            path = _checked_path(folder, relative)
            try:
                image = load_image(path)  # the same size, aspect and memory bounds as any user image
            except ImageLoadError as exc:
                raise CheckpointError(f"Support image {relative} of class {name!r} cannot be read ({exc}).") from exc
            if image_fingerprint(image) != Path(relative).stem:
                raise CheckpointError(
                    f"Support image {relative} of class {name!r} does not match its sha256: it was modified. "
                    "Restore it from a backup or re-synthesize the classifier from the original images."
                )
            images.append(image)
        support[name] = images
    return support


def _checked_path(folder: Path, relative: str) -> Path:
    if not isinstance(relative, str) or not _PATH_PATTERN.fullmatch(relative):
        raise CheckpointError(
            f"Support path {relative!r} in sgps_task.json is not of the form support/<NNN>-<class>/<sha256>.png; "
            "the task file was edited or corrupted."
        )
    return folder / relative
