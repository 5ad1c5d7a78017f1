"""Helpers of the trust tests (tests/trust): synthetic images whose class-defining evidence sits at a known place."""

from __future__ import annotations

import numpy as np
from PIL import Image


def patch_image(centre: tuple[int, int] | None, seed: int, size: int = 128) -> Image.Image:
    """Pale skin-like noise with, when ``centre`` is given, a dark round patch of radius 14 px there."""
    rng = np.random.default_rng(seed)
    pixels = np.full((size, size, 3), (225, 190, 170), np.float64) + rng.normal(0, 6, (size, size, 3))
    if centre is not None:
        yy, xx = np.mgrid[0:size, 0:size]
        pixels[(xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 < 14**2] = (70, 40, 30)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
