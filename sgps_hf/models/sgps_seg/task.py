"""A segmentation task: a name, an optional clinical text and a few example images with binary masks."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from PIL import Image

from ...errors import AccuracyWarning, ImageLoadError, InvalidTaskError
from ...imaging import IMAGE_SUFFIXES, image_fingerprint
from .processing_sgps_seg import load_mask, load_rgb, mask_fingerprint

#: At most this many examples (the synthesizer is meta-trained on 1..8; more still work, slower).
MAX_EXAMPLES = 64


class SegmentationTask:
    """Examples as ``(image, mask)`` pairs or a folder in the ``images/`` + ``masks/<label>/`` layout.

    Images: a path, a PIL image or a numpy array (read with :func:`sgps_hf.imaging.load_image`).
    Masks: a path, a PIL image or a numpy array, 0/255, 0/1 or boolean, any size with the image's aspect ratio
    (resized with nearest neighbour to the image). An empty mask marks a negative example (an image without the
    structure, e.g. a normal scan): its pixels are background evidence for the head; at least one example must show
    the structure. Everything is validated here, with errors from
    :mod:`sgps_hf.errors` saying what to fix.
    """

    def __init__(
        self,
        name: str,
        examples: Sequence[tuple[Any, Any]] | str | os.PathLike,
        description: str | None = None,
        label: str | None = None,
    ) -> None:
        if not isinstance(name, str) or not name.strip():
            raise InvalidTaskError("A segmentation task needs a non-empty name, e.g. name='polyp'.")
        if description is not None and not isinstance(description, str):
            raise InvalidTaskError(f"description must be a string or None, got {type(description).__name__}.")
        self.name = name.strip()
        self.description = description.strip() if description and description.strip() else None
        if isinstance(examples, (str, os.PathLike)):
            label, examples = folder_pairs(Path(examples), label)
        self.label = label or self.name  # the structure the foreground mask marks
        if isinstance(examples, (str, bytes)) or not isinstance(examples, Iterable):
            raise InvalidTaskError(
                "examples must be a list of (image, mask) pairs or a folder with images/ and masks/<label>/."
            )
        examples = list(examples)
        if not examples:
            raise InvalidTaskError(
                f"Task {self.name!r} has no examples: give at least one (image, mask) pair, e.g. "
                "examples=[('img.png', 'mask.png')]."
            )
        if len(examples) > MAX_EXAMPLES:
            raise InvalidTaskError(
                f"Task {self.name!r} has {len(examples)} examples; at most {MAX_EXAMPLES} are supported."
            )
        self.images: list[Image.Image] = []
        self.masks: list[np.ndarray] = []
        self.fingerprints: list[dict[str, str]] = []
        for i, pair in enumerate(examples):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise InvalidTaskError(f"Example {i} of task {self.name!r} is not an (image, mask) pair.")
            image_source, mask_source = pair
            where = f"example {i} ({image_source})" if isinstance(image_source, (str, os.PathLike)) else f"example {i}"
            try:
                image = load_rgb(image_source)
            except ImageLoadError as exc:
                raise ImageLoadError(f"Task {self.name!r}, {where}: {exc}") from exc
            mask_name = f"mask of {where}" + (
                f" ({mask_source})" if isinstance(mask_source, (str, os.PathLike)) else ""
            )
            mask = load_mask(mask_source, image.size, name=mask_name, allow_empty=True)
            self.images.append(image)
            self.masks.append(mask)
            self.fingerprints.append(
                {"image_sha256": image_fingerprint(image_source), "mask_sha256": mask_fingerprint(mask)}
            )
        if not any(m.any() for m in self.masks):
            raise InvalidTaskError(
                f"Every mask of task {self.name!r} is empty (no foreground pixel): at least one example must show the "
                "structure. Examples with an empty mask are welcome beside it, as negatives (images without it)."
            )
        if all(m.all() for m in self.masks):
            raise InvalidTaskError(
                f"Every mask of task {self.name!r} covers the whole image: the examples need some background pixels "
                "too."
            )

    def __len__(self) -> int:
        return len(self.images)

    @property
    def num_positive(self) -> int:
        """Examples that show the structure (the others, with empty masks, are negatives: background evidence)."""
        return sum(bool(m.any()) for m in self.masks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "label": self.label,
            "num_examples": len(self),
            "num_negative": len(self) - self.num_positive,
            "mean_foreground": round(float(np.mean([m.mean() for m in self.masks])), 4),
            "examples": self.fingerprints,
        }

    def __repr__(self) -> str:
        return f"SegmentationTask(name={self.name!r}, label={self.label!r}, examples={len(self)})"


def folder_pairs(folder: Path, label: str | None) -> tuple[str, list[tuple[Path, Path]]]:
    """(label, (image path, mask path) pairs) of a folder in the segmentation layout, ``images/<stem>.*`` and
    ``masks/<label>/<stem>.png``; ``label`` None takes the folder's only label. Images without a mask are left out
    with a warning; a mask without an image is an error."""
    images_dir, masks_dir = folder / "images", folder / "masks"
    if not folder.is_dir():
        raise InvalidTaskError(f"Task folder {folder} does not exist; check the path.")
    if not images_dir.is_dir() or not masks_dir.is_dir():
        raise InvalidTaskError(
            f"Task folder {folder} must contain images/<stem>.png|jpg and masks/<label>/<stem>.png (the same stem per "
            "pair)."
        )
    labels = sorted(p.name for p in masks_dir.iterdir() if p.is_dir())
    if not labels:
        raise InvalidTaskError(f"{masks_dir} has no label folder: put the masks in masks/<label>/<stem>.png.")
    if label is None:
        if len(labels) > 1:
            raise InvalidTaskError(f"{folder} has several labels ({', '.join(labels)}); choose one with label=...")
        label = labels[0]
    if label not in labels:
        raise InvalidTaskError(f"Label {label!r} not in {masks_dir}; use one of: {', '.join(labels)}.")
    images = {p.stem: p for p in sorted(images_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    pairs, unmatched = [], []
    for mask in sorted((masks_dir / label).iterdir()):
        if mask.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if mask.stem in images:
            pairs.append((images[mask.stem], mask))
        else:
            unmatched.append(mask.name)
    if unmatched:
        raise InvalidTaskError(
            f"Masks without an image of the same stem in {images_dir}: {', '.join(unmatched[:5])}; add the image "
            "(images/<stem>.png|jpg) or remove the mask."
        )
    used = {image.stem for image, _ in pairs}
    dropped = [path.name for stem, path in images.items() if stem not in used]
    if dropped:
        warnings.warn(
            f"{len(dropped)} image(s) in {images_dir.name}/ have no mask in masks/{label}/ and are left out of the "
            f"task ({', '.join(dropped[:5])}{', ...' if len(dropped) > 5 else ''}); add their masks to use them.",
            AccuracyWarning,
            stacklevel=3,
        )
    return label, pairs
