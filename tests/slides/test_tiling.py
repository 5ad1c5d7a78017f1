"""Tissue detection, the tile grid, the seeded cap, streaming in batches and the overlay."""

from __future__ import annotations

import numpy as np
import pytest
from slide_testing import coloured_patches

from sgps_hf.errors import ImageLoadError
from sgps_hf.slides import iter_tiles, open_slide, read_tile, tile_overlay, tile_slide, tissue_mask
from sgps_hf.slides.arrange import arrange_slide, write_pyramidal_tiff
from sgps_hf.slides.tiling import otsu_threshold


def test_tiny_svs_tiles_through_the_public_api(tiny_svs):
    with open_slide(tiny_svs) as slide:
        exact = tile_slide(slide, target_mpp=slide.mpp, tile_size=16, min_tissue=0)
        assert len(exact) == 1 and exact.level == 0 and exact.read_size == 16
        tile = read_tile(exact, 0)
        assert np.array_equal(tile, slide.read_region((0, 0), 0, (16, 16)))
        default = tile_slide(slide, min_tissue=0)  # smaller than one 128-px tile at 1 um/px: one padded tile
        (indices, batch), *rest = list(iter_tiles(default))
        assert not rest and list(indices) == [0] and batch[0].shape == (128, 128, 3)
        assert tile_overlay(default).size == (16, 16)


def test_otsu_and_tissue_mask():
    values = np.concatenate([np.full(100, 0.1), np.full(100, 0.7)])
    assert 0.1 < otsu_threshold(values) <= 0.7
    glass = np.full((64, 64, 3), 240, dtype=np.uint8)
    assert not tissue_mask(glass).any()
    image = glass.copy()
    image[16:48, 8:40] = (200, 90, 160)  # stained tissue
    image[2, 60] = (200, 90, 160)  # one speck: a small object, removed
    mask = tissue_mask(image)
    assert mask[16:48, 8:40].all() and mask.sum() == 32 * 32


def test_grid_keeps_tissue_cells_and_caps_with_a_seed(tmp_path):
    rng = np.random.default_rng(3)
    image, labels = arrange_slide(rng, coloured_patches(0), None, 1.0, grid=6)
    path = write_pyramidal_tiff(tmp_path / "s.tiff", image, mpp=0.5)  # 2 level-0 px per um: tiles read at level 1
    with open_slide(path) as slide:
        tiles = tile_slide(slide, target_mpp=1.0)  # level 1 (1 um/px) holds each 128-px cell... at half size
        assert tiles.level == 1 and tiles.side0 == pytest.approx(256)
        assert tiles.grid_shape == (3, 3)
        full = tile_slide(slide, target_mpp=0.5)
        assert full.num_tissue_tiles == len(full) == int((labels >= 0).sum())
        assert {tuple(g) for g in full.grid} == {(c, r) for r, c in np.argwhere(labels >= 0)}
        capped = tile_slide(slide, target_mpp=0.5, max_tiles=5, seed=1)
        again = tile_slide(slide, target_mpp=0.5, max_tiles=5, seed=1)
        other = tile_slide(slide, target_mpp=0.5, max_tiles=5, seed=2)
        assert len(capped) == 5 and capped.num_tissue_tiles == len(full)
        assert np.array_equal(capped.coords, again.coords) and not np.array_equal(capped.coords, other.coords)
        batches = list(iter_tiles(full, batch_size=4, progress=True))
        assert [len(b) for _, b in batches[:-1]] == [4] * (len(batches) - 1)
        r, c = labels.shape[0] // 2, labels.shape[1] // 2
        index = [tuple(g) for g in full.grid].index((c, r))
        expected = image[r * 128 : (r + 1) * 128, c * 128 : (c + 1) * 128].astype(int)
        tile = read_tile(full, index).astype(int)
        assert np.abs(tile - expected).mean() < 20  # JPEG on pixel noise
        assert np.abs(tile.mean((0, 1)) - expected.mean((0, 1))).max() < 3
        overlay = np.asarray(tile_overlay(full))
        assert overlay.shape == full.thumbnail.shape
        for bad in (dict(tile_size=8), dict(min_tissue=1.5), dict(max_tiles=0)):
            with pytest.raises(ImageLoadError):
                tile_slide(slide, **bad)
