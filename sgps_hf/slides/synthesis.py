"""Synthesize a slide classifier from a :class:`SlideTask`, and update it with newly verified slides.

Each slide is tiled at the target magnification; at most ``tiles_per_slide`` tissue tiles per slide (seeded sample)
become support images of the slide's class, so one large slide cannot dominate its class. The tiles of all slides
then go through the one public synthesis path, :meth:`SGPSSynthesizer.synthesize` (one forward pass), and the
resulting timm tile classifier is paired with the slide rule.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import InvalidTaskError
from ..task import MAX_IMAGES_PER_CLASS, ClassSpec, TaskSpec
from .classifier import DEFAULT_TILES_PER_CLASS, DEFAULT_TILING, SlideClassifier
from .reader import open_slide
from .rules import DEFAULT_RULE, SlideRule
from .task import MAX_SLIDES_PER_CLASS, SlideTask
from .tiling import iter_tiles, tile_slide


def slide_support_tiles(
    path: str | Path,
    tiling: Mapping[str, Any],
    seed: int = 0,
    backend: str = "auto",
    fallback_mpp: float | None = None,
    progress: bool = False,
) -> tuple[list[np.ndarray], dict[str, Any]]:
    """(up to ``tiles_per_slide`` tissue tiles of one slide, its record: file, sha256, tiles, mpp)."""
    with open_slide(path, backend, fallback_mpp) as slide:
        tiles = tile_slide(
            slide,
            target_mpp=tiling["target_mpp"],
            tile_size=tiling["tile_size"],
            max_tiles=tiling["tiles_per_slide"],
            min_tissue=tiling["min_tissue"],
            seed=seed,
        )
        if not len(tiles):
            raise InvalidTaskError(
                f"Slide {slide.path.name} has no tile that is at least {tiling['min_tissue']:g} tissue at "
                f"{tiling['target_mpp']:g} um/px; check the slide, or lower min_tissue."
            )
        arrays = [tile for _, batch in iter_tiles(tiles, progress=progress) for tile in batch]
        record = {"file": slide.path.name, "sha256": slide.fingerprint(), "tiles": len(arrays), "mpp": slide.mpp}
    return arrays, record


def synthesize_slide_classifier(
    synthesizer: Any,
    task: SlideTask,
    processor: Any = None,
    rule: SlideRule = DEFAULT_RULE,
    tiles_per_slide: int = DEFAULT_TILING["tiles_per_slide"],
    target_mpp: float = DEFAULT_TILING["target_mpp"],
    tile_size: int = DEFAULT_TILING["tile_size"],
    min_tissue: float = DEFAULT_TILING["min_tissue"],
    max_tiles: int = DEFAULT_TILING["max_tiles"],
    tiles_per_class: int | None = DEFAULT_TILES_PER_CLASS,
    seed: int = 0,
    backend: str = "auto",
    fallback_mpp: float | None = None,
    progress: bool = False,
) -> SlideClassifier:
    """A :class:`SlideClassifier` for ``task``: tiles of every slide -> one synthesis of a tile classifier.

    ``tiles_per_class`` is a budget per class (None: no budget): each of a class's n slides gives at most
    ``ceil(tiles_per_class / n)`` tiles, never more than ``tiles_per_slide``. The default, 8, was chosen on the
    meta-val pathology task, where 16 scored lower (``benchmarks/slides.md``).
    """
    if not isinstance(task, SlideTask):
        raise InvalidTaskError("synthesize_slide_classifier needs a SlideTask (classes with slides).")
    most = max(len(c.slides) for c in task.classes)
    if tiles_per_slide < 1 or tiles_per_slide * most > MAX_IMAGES_PER_CLASS:
        raise InvalidTaskError(
            f"tiles_per_slide={tiles_per_slide} with {most} slides in a class exceeds the {MAX_IMAGES_PER_CLASS} "
            f"support images a class may have; use tiles_per_slide <= {MAX_IMAGES_PER_CLASS // most}."
        )
    tiling = dict(
        target_mpp=target_mpp,
        tile_size=tile_size,
        min_tissue=min_tissue,
        max_tiles=max_tiles,
        tiles_per_slide=tiles_per_slide,
    )
    if tiles_per_class is not None:
        if tiles_per_class < 1:
            raise InvalidTaskError(f"tiles_per_class must be at least 1 (or None), got {tiles_per_class}.")
        tiling["tiles_per_class"] = int(tiles_per_class)
    classes, slides = [], {}
    for cls in task.classes:
        images, records = [], []
        own = {**tiling, "tiles_per_slide": _per_slide(tiling, len(cls.slides))}
        for path in cls.slides:
            arrays, record = slide_support_tiles(path, own, seed, backend, fallback_mpp, progress)
            images.extend(arrays)
            records.append(record)
        classes.append(ClassSpec(name=cls.name, description=cls.description, images=images))
        slides[cls.name] = records
    tile_task = TaskSpec(classes=classes, name=task.name, modality=task.modality)
    classifier = synthesizer.synthesize(tile_task, processor=processor)
    return SlideClassifier(classifier, rule, tiling, {c.name: slides[c.name] for c in tile_task.classes})


def _per_slide(tiling: Mapping[str, Any], slides: int) -> int:
    budget = tiling.get("tiles_per_class")
    cap = int(tiling["tiles_per_slide"])
    return cap if budget is None else max(1, min(cap, math.ceil(budget / slides)))


def update_slide_classifier(
    synthesizer: Any,
    classifier: SlideClassifier,
    additions: Mapping[str, Sequence[str | Path]],
    processor: Any = None,
    seed: int = 0,
    backend: str = "auto",
    fallback_mpp: float | None = None,
) -> SlideClassifier:
    """Re-synthesize with newly verified slides ({class: [slide paths]}) added to the stored support tiles.

    The tile classifier goes through :meth:`SGPSSynthesizer.update` (versions and changelog kept); the new slides are
    tiled with the classifier's own magnification, tile size and per-slide cap (with a per-class budget: the cap
    its class would have with the new slide count; the old slides keep their tiles).
    """
    if not isinstance(additions, Mapping) or not any(additions.values()):
        raise InvalidTaskError("Pass the new slides as {class name: [slide paths]}, with at least one slide.")
    unknown = sorted(set(additions) - set(classifier.label_names))
    if unknown:
        raise InvalidTaskError(f"Unknown class(es) {unknown}; this slide classifier has {classifier.label_names}.")
    tiling = classifier.tiling
    new_tiles: dict[str, list[np.ndarray]] = {}
    slides = {name: list(entries) for name, entries in classifier.slides.items()}
    for name, paths in additions.items():
        paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
        if len(slides.get(name, [])) + len(paths) > MAX_SLIDES_PER_CLASS:
            raise InvalidTaskError(f"Class {name!r} would have more than {MAX_SLIDES_PER_CLASS} slides.")
        own = {**tiling, "tiles_per_slide": _per_slide(tiling, len(slides.get(name, [])) + len(paths))}
        for path in paths:
            arrays, record = slide_support_tiles(path, own, seed, backend, fallback_mpp)
            new_tiles.setdefault(name, []).extend(arrays)
            slides.setdefault(name, []).append(record)
    updated = synthesizer.update(classifier.tile_classifier, new_tiles, processor=processor)
    return SlideClassifier(updated, classifier.rule, tiling, slides)
