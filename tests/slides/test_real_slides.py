"""All five real slides of ../shared/data-wsi open and tile through the public API, with every installed reader."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from slide_testing import WSI

from sgps_hf.slides import available_backends, iter_tiles, open_slide, tile_overlay, tile_slide

pytestmark = pytest.mark.integration

#: file -> (level-0 size, recorded mpp or None, tissue tiles expected at 1 um/px)
SLIDES = {
    "cmu-1-small-region.svs": ((2220, 2967), 0.499, True),
    "tcga-cr-7395-01a-01-ts1.svs": ((4443, 3567), None, True),
    "fluorescence-dapi.ndpi": ((3968, 4864), 0.228, True),
    "breast-crop-pyramid.tiff": ((2033, 1525), None, True),  # its 96-dpi header is a placeholder
    "tiny-16px.svs": ((16, 16), 0.499, False),
}


@pytest.mark.parametrize("backend", available_backends())
@pytest.mark.parametrize("name", sorted(SLIDES))
def test_real_slide_opens_and_tiles(name, backend):
    path = WSI / name
    if not path.is_file():
        pytest.skip(f"{path} is not available")
    size, mpp, has_tissue = SLIDES[name]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with open_slide(path, backend=backend) as slide:
            assert slide.dimensions == size and slide.backend == backend
            assert slide.mpp_recorded == (mpp is not None)
            assert slide.mpp == pytest.approx(mpp if mpp else 0.5, abs=1e-3)
            tiles = tile_slide(slide, max_tiles=40, seed=0)
            level, factor = slide.level_for_mpp(1.0)
            assert tiles.level == level and factor >= 0.99
            assert (len(tiles) > 0) == has_tissue and len(tiles) <= 40
            assert 0 < tiles.tissue_mask.mean() < 1
            seen = 0
            for indices, batch in iter_tiles(tiles, batch_size=16):
                assert all(t.shape == (128, 128, 3) and t.dtype == np.uint8 for t in batch)
                seen += len(indices)
            assert seen == len(tiles)
            if has_tissue:  # tissue tiles are stained: more saturated than glass
                first = next(iter_tiles(tiles, batch_size=1))[1][0].astype(float)
                assert (first.max(2) - first.min(2)).mean() > 10
            assert tile_overlay(tiles).size == tiles.thumbnail.shape[1::-1]
    fallback = [w for w in caught if "records no plausible resolution" in str(w.message)]
    assert bool(fallback) == (mpp is None)


def test_slide_info_states_an_assumed_resolution_as_one_warning_line(capsys):
    """A slide without a recorded resolution: `sgps slide info` says so in one `sgps: warning:` line (no Python
    warning with a source path); `--fallback-mpp` with the scanner's value is taken without a warning."""
    from sgps_hf import cli

    path = WSI / "breast-crop-pyramid.tiff"
    if not path.is_file():
        pytest.skip(f"{path} is not available")
    assert cli.main(["slide", "info", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "0.5 um/px (assumed)" in out
    assert err.splitlines() == [
        "sgps: warning: breast-crop-pyramid.tiff records no plausible resolution (microns per pixel); assuming "
        "0.5 um/px at level 0. Pass fallback_mpp= (CLI: --fallback-mpp) with the scanner's value if you know it."
    ]
    assert cli.main(["slide", "info", str(path), "--fallback-mpp", "0.25"]) == 0
    out, err = capsys.readouterr()
    assert "0.25 um/px (--fallback-mpp)" in out and err == ""
