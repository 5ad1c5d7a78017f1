"""Tissue detection and tiling of a whole slide, with tiles streamed from the file in batches.

Tissue is found on a thumbnail (a low-resolution level): Otsu's threshold on the HSV saturation (stained tissue is
coloured, glass is white or black), then connected components smaller than ``min_object_fraction`` of the thumbnail
are dropped and holes filled. A regular grid of ``tile_size``-pixel tiles at ``target_mpp`` covers the slide; a tile
is kept when at least ``min_tissue`` of it is tissue. More tissue tiles than ``max_tiles`` are subsampled with a
seeded generator (the same slide and seed always give the same tiles). Only the thumbnail and one batch of tiles are
ever in memory: :func:`iter_tiles` reads each tile from the level closest to (not coarser than) the target and
shrinks it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage
from tqdm.auto import tqdm

from ..errors import ImageLoadError
from .reader import DEFAULT_TARGET_MPP, Slide, resolve_mpp

DEFAULT_TILE_SIZE = 128
#: Otsu thresholds below this saturation mean the slide is blank (glass only): no tissue instead of noise.
MIN_SATURATION_THRESHOLD = 0.04
#: Stained tissue is more saturated than this; on a field that is all tissue Otsu splits eosin from haematoxylin
#: instead of tissue from glass, so its threshold is capped here.
MAX_SATURATION_THRESHOLD = 0.15


@dataclass
class SlideTiles:
    """The tiles chosen on one slide: level-0 positions and how to read them, plus the thumbnail and tissue mask."""

    slide: Slide
    target_mpp: float
    tile_size: int
    level: int
    read_size: int  # side of the region read at ``level`` (then resized to tile_size)
    side0: float  # side of one tile in level-0 pixels
    coords: np.ndarray  # [N, 2] (x, y) level-0 top-left corners of the kept tiles, in reading order
    grid: np.ndarray  # [N, 2] (column, row) of each kept tile in the grid
    grid_shape: tuple[int, int]  # (columns, rows)
    tissue_fraction: np.ndarray  # [N]
    num_tissue_tiles: int  # before the cap
    thumbnail: np.ndarray = field(repr=False)
    thumbnail_downsample: float = 1.0  # level-0 pixels per thumbnail pixel
    tissue_mask: np.ndarray = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.coords)

    def describe(self) -> dict:
        return {
            **self.slide.describe(),
            "target_mpp": self.target_mpp,
            "tile_size": self.tile_size,
            "read_level": self.level,
            "tiles": len(self),
            "tissue_tiles": self.num_tissue_tiles,
        }


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1] (maximises the between-class variance of the histogram)."""
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    hist = hist.astype(np.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(hist)
    weight_high = weight_low[-1] - weight_low
    mean_low = np.cumsum(hist * centres) / np.maximum(weight_low, 1e-12)
    total = (hist * centres).sum()
    mean_high = (total - np.cumsum(hist * centres)) / np.maximum(weight_high, 1e-12)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


def tissue_mask(thumbnail: np.ndarray, min_object_fraction: float = 0.001) -> np.ndarray:
    """Boolean tissue mask of an RGB thumbnail: Otsu on saturation, small objects removed, holes filled."""
    rgb = thumbnail.astype(np.float32) / 255.0
    high, low = rgb.max(axis=2), rgb.min(axis=2)
    saturation = np.where(high > 0.02, (high - low) / np.maximum(high, 1e-6), 0.0)
    threshold = min(max(otsu_threshold(saturation), MIN_SATURATION_THRESHOLD), MAX_SATURATION_THRESHOLD)
    mask = saturation > threshold
    mask = ndimage.binary_opening(mask, structure=np.ones((3, 3))) if min(mask.shape) >= 8 else mask
    labels, count = ndimage.label(mask)
    if count:
        sizes = np.bincount(labels.ravel())
        keep = sizes >= max(1.0, min_object_fraction * mask.size)
        keep[0] = False
        mask = keep[labels]
    return ndimage.binary_fill_holes(mask)


def tile_slide(
    slide: Slide,
    target_mpp: float = DEFAULT_TARGET_MPP,
    tile_size: int = DEFAULT_TILE_SIZE,
    max_tiles: int | None = None,
    min_tissue: float = 0.5,
    seed: int = 0,
    thumbnail_side: int = 1024,
) -> SlideTiles:
    """The grid of tissue tiles of ``slide`` at ``target_mpp`` (see the module docstring)."""
    if not 16 <= tile_size <= 2048:
        raise ImageLoadError(f"tile_size must be between 16 and 2048 pixels, got {tile_size}.")
    if not 0.0 <= min_tissue <= 1.0:
        raise ImageLoadError(f"min_tissue is a fraction of the tile between 0 and 1, got {min_tissue}.")
    if max_tiles is not None and max_tiles < 1:
        raise ImageLoadError(f"max_tiles must be at least 1 (or None for no cap), got {max_tiles}.")
    mpp = resolve_mpp(slide)
    level, factor = slide.level_for_mpp(target_mpp)
    side0 = tile_size * target_mpp / mpp
    read_size = max(1, round(tile_size * factor))
    width, height = slide.dimensions
    columns, rows = max(1, int(width // side0)), max(1, int(height // side0))
    thumbnail, thumb_ds = slide.thumbnail(thumbnail_side)
    mask = tissue_mask(thumbnail)
    fractions = _tile_fractions(mask, thumb_ds, side0, columns, rows)
    keep = np.flatnonzero(fractions.ravel() >= min_tissue) if min_tissue > 0 else np.arange(columns * rows)
    num_tissue = len(keep)
    if max_tiles is not None and len(keep) > max_tiles:
        keep = np.sort(np.random.default_rng(seed).choice(keep, size=max_tiles, replace=False))
    grid = np.stack([keep % columns, keep // columns], axis=1) if len(keep) else np.zeros((0, 2), dtype=np.int64)
    coords = np.floor(grid * side0).astype(np.int64)
    return SlideTiles(
        slide=slide,
        target_mpp=float(target_mpp),
        tile_size=int(tile_size),
        level=level,
        read_size=read_size,
        side0=float(side0),
        coords=coords,
        grid=grid,
        grid_shape=(columns, rows),
        tissue_fraction=fractions.ravel()[keep],
        num_tissue_tiles=num_tissue,
        thumbnail=thumbnail,
        thumbnail_downsample=thumb_ds,
        tissue_mask=mask,
    )


def _tile_fractions(mask: np.ndarray, thumb_ds: float, side0: float, columns: int, rows: int) -> np.ndarray:
    """[rows, columns] fraction of tissue pixels of the mask inside each grid cell (its part within the slide)."""
    fractions = np.zeros((rows, columns), dtype=np.float32)
    integral = np.pad(mask.astype(np.float64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    h, w = mask.shape
    for r in range(rows):
        y0 = min(h - 1, int(r * side0 / thumb_ds))
        y1 = min(h, max(y0 + 1, int(round((r + 1) * side0 / thumb_ds))))
        for c in range(columns):
            x0 = min(w - 1, int(c * side0 / thumb_ds))
            x1 = min(w, max(x0 + 1, int(round((c + 1) * side0 / thumb_ds))))
            area = (y1 - y0) * (x1 - x0)
            total = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
            fractions[r, c] = total / area
    return fractions


def read_tile(tiles: SlideTiles, index: int) -> np.ndarray:
    """Tile ``index`` as an RGB uint8 array [tile_size, tile_size, 3] (white where it runs past the slide)."""
    x, y = tiles.coords[index]
    region = tiles.slide.read_region((int(x), int(y)), tiles.level, (tiles.read_size, tiles.read_size))
    if tiles.read_size != tiles.tile_size:
        region = np.asarray(
            Image.fromarray(region).resize((tiles.tile_size, tiles.tile_size), Image.Resampling.BILINEAR)
        )
    return region


def iter_tiles(
    tiles: SlideTiles, batch_size: int = 64, progress: bool = False, description: str | None = None
) -> Iterator[tuple[np.ndarray, list[np.ndarray]]]:
    """Yield (indices, tile arrays) batches in reading order; only one batch is held at a time."""
    bar = tqdm(
        total=len(tiles), desc=description or f"tiles of {tiles.slide.path.name}", unit="tile", disable=not progress
    )
    try:
        for start in range(0, len(tiles), batch_size):
            indices = np.arange(start, min(start + batch_size, len(tiles)))
            batch = [read_tile(tiles, int(i)) for i in indices]
            bar.update(len(indices))
            yield indices, batch
    finally:
        bar.close()


def tile_overlay(tiles: SlideTiles, colour: tuple[int, int, int] = (0, 160, 0)) -> Image.Image:
    """The thumbnail with the tissue outline tinted and every kept tile outlined (what was kept, at a glance)."""
    base = tiles.thumbnail.astype(np.float32)
    if tiles.tissue_mask is not None:
        tint = np.array([0, 90, 255], dtype=np.float32)
        base = np.where(tiles.tissue_mask[..., None], 0.85 * base + 0.15 * tint, base)
    image = Image.fromarray(base.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    scale = tiles.thumbnail_downsample
    for x, y in tiles.coords:
        box = (x / scale, y / scale, (x + tiles.side0) / scale - 1, (y + tiles.side0) / scale - 1)
        draw.rectangle(box, outline=colour, width=1)
    return image
