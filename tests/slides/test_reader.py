"""Opening slides: readers chosen at run time, clear errors, level choice from the slide's resolution."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest

from sgps_hf.errors import ImageLoadError
from sgps_hf.slides import SlideReaderMissing, available_backends, open_slide
from sgps_hf.slides.arrange import write_pyramidal_tiff


@pytest.mark.parametrize("backend", ["auto", *available_backends()])
def test_tiny_svs_opens_with_its_resolution(tiny_svs, backend):
    with open_slide(tiny_svs, backend=backend) as slide:
        assert slide.dimensions == (16, 16)
        assert slide.mpp == pytest.approx(0.499) and slide.mpp_recorded
        assert slide.backend in ("tiffslide", "openslide")
        region = slide.read_region((0, 0), 0, (16, 16))
        assert region.shape == (16, 16, 3) and region.dtype == np.uint8
        # Past the slide's edge the reader pads: transparent becomes white glass, not black.
        padded = slide.read_region((8, 8), 0, (16, 16))
        assert padded[12:, 12:].min() == 255
        thumb, downsample = slide.thumbnail(8)
        assert thumb.shape == (8, 8, 3) and downsample == pytest.approx(2.0)


def test_missing_reader_names_the_package(tiny_svs, monkeypatch):
    monkeypatch.setitem(sys.modules, "tiffslide", None)  # import tiffslide -> ImportError
    with pytest.raises(SlideReaderMissing, match="pip install tiffslide"):
        open_slide(tiny_svs, backend="tiffslide")
    monkeypatch.setitem(sys.modules, "openslide", None)
    assert available_backends() == []
    with pytest.raises(SlideReaderMissing, match="No slide reader is installed: pip install tiffslide"):
        open_slide(tiny_svs)
    with pytest.raises(SlideReaderMissing, match="pip install openslide-bin openslide-python"):
        open_slide(tiny_svs, backend="openslide")


def test_bad_inputs_are_refused_with_the_fix(tmp_path, tiny_svs):
    with pytest.raises(ImageLoadError, match="does not exist"):
        open_slide(tmp_path / "missing.svs")
    junk = tmp_path / "junk.svs"
    junk.write_bytes(b"not a slide at all")
    with pytest.raises(ImageLoadError, match="Cannot read junk.svs as a whole-slide image"):
        open_slide(junk)
    with pytest.raises(ImageLoadError, match="Unknown slide reader"):
        open_slide(tiny_svs, backend="vips")


def test_level_and_factor_follow_the_target_resolution(tmp_path):
    image = np.full((512, 512, 3), 200, dtype=np.uint8)
    path = write_pyramidal_tiff(tmp_path / "p.tiff", image, mpp=0.5, min_side=64)
    with open_slide(path) as slide:
        assert slide.level_count == 4 and slide.mpp == pytest.approx(0.5)
        assert slide.level_for_mpp(0.5) == (0, pytest.approx(1.0))
        assert slide.level_for_mpp(1.0) == (1, pytest.approx(1.0))
        assert slide.level_for_mpp(3.0) == (2, pytest.approx(1.5))
        assert slide.level_for_mpp(100.0)[0] == 3
        with pytest.warns(UserWarning, match="coarser than the 0.25 um/px"):
            assert slide.level_for_mpp(0.25) == (0, pytest.approx(0.5))
        with pytest.raises(ImageLoadError, match="must be positive"):
            slide.level_for_mpp(0)


def test_a_bogus_resolution_is_assumed_with_a_warning_or_taken_from_the_user(tmp_path):
    from sgps_hf.errors import InputWarning
    from sgps_hf.slides import DEFAULT_FALLBACK_MPP, tile_slide

    image = np.full((256, 256, 3), 200, dtype=np.uint8)
    path = write_pyramidal_tiff(tmp_path / "dpi.tiff", image, mpp=1e4 / (96 / 2.54))  # a 96-dpi placeholder
    with open_slide(path) as slide:
        assert not slide.mpp_recorded and not slide.mpp_given and slide.mpp == DEFAULT_FALLBACK_MPP
        with pytest.warns(InputWarning, match="records no plausible resolution.*assuming 0.5 um/px"):
            tile_slide(slide, min_tissue=0)
    with open_slide(path, fallback_mpp=0.25) as slide:  # the scanner's value, from the user: nothing to warn of
        assert not slide.mpp_recorded and slide.mpp_given and slide.mpp == 0.25
        with warnings.catch_warnings():
            warnings.simplefilter("error", InputWarning)
            tiles = tile_slide(slide, min_tissue=0)
        assert tiles.side0 == pytest.approx(128 * 1.0 / 0.25)
    for implausible in (0.0, -0.5, 100.0):
        with pytest.raises(ImageLoadError, match="outside 0.05-20; give the scanner's microns per pixel"):
            open_slide(path, fallback_mpp=implausible)
