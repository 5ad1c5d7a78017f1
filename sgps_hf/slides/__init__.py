"""Whole-slide pathology: read slides, find tissue, tile at a fixed magnification, synthesize and screen."""

from .reader import (
    DEFAULT_FALLBACK_MPP,
    DEFAULT_TARGET_MPP,
    Slide,
    SlideReaderMissing,
    available_backends,
    open_slide,
)
from .tiling import SlideTiles, iter_tiles, read_tile, tile_overlay, tile_slide, tissue_mask

__all__ = [
    "DEFAULT_FALLBACK_MPP",
    "DEFAULT_TARGET_MPP",
    "Slide",
    "SlideReaderMissing",
    "SlideTiles",
    "available_backends",
    "iter_tiles",
    "open_slide",
    "read_tile",
    "tile_overlay",
    "tile_slide",
    "tissue_mask",
]

from .classifier import SlideClassifier, SlidePrediction  # noqa: E402
from .rules import DEFAULT_RULE, RULES, SlideRule  # noqa: E402
from .synthesis import synthesize_slide_classifier, update_slide_classifier  # noqa: E402
from .task import SlideClassSpec, SlideTask  # noqa: E402

__all__ += [
    "DEFAULT_RULE",
    "RULES",
    "SlideClassSpec",
    "SlideClassifier",
    "SlidePrediction",
    "SlideRule",
    "SlideTask",
    "synthesize_slide_classifier",
    "update_slide_classifier",
]
