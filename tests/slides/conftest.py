"""Slides from ../shared/data-wsi and small arranged pyramidal TIFFs written for the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from slide_testing import TINY_SVS, coloured_patches


@pytest.fixture(scope="session")
def tiny_svs() -> Path:
    if not TINY_SVS.is_file():
        pytest.skip("../shared/data-wsi/tiny-16px.svs is not available")
    return TINY_SVS


@pytest.fixture(scope="session")
def arranged_slides(tmp_path_factory) -> dict[str, list[Path]]:
    """Two classes ("pink", "purple") of three 4 x 4-cell arranged slides at 1 um/px."""
    from sgps_hf.slides.arrange import arrange_slide, write_pyramidal_tiff

    root = tmp_path_factory.mktemp("arranged")
    rng = np.random.default_rng(0)
    pools = {"pink": coloured_patches(1, tint=(225, 120, 170)), "purple": coloured_patches(2, tint=(90, 60, 170))}
    slides: dict[str, list[Path]] = {}
    for name, pool in pools.items():
        for i in range(3):
            image, _ = arrange_slide(rng, pool, None, 1.0, grid=4)
            slides.setdefault(name, []).append(write_pyramidal_tiff(root / f"{name}-{i}.tiff", image, mpp=1.0))
    return slides
