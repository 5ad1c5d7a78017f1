"""Slide-sized images arranged from labelled patches, written as tiled pyramidal TIFFs (for benchmarks and tests).

The arrangement is synthetic, the pixels are real: each cell of a grid is one real patch (under a random flip or
rotation), inside an elliptic tissue area on white glass. A slide of a class is mostly that class's tissue, in one
contiguous region, among tissue of a "normal" class; some slides hold only a small region of it. Nothing here claims
to be a scanned slide.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

GLASS = 243


def _dihedral(patch: np.ndarray, k: int) -> np.ndarray:
    out = np.rot90(patch, k % 4)
    return np.ascontiguousarray(out[:, ::-1] if k >= 4 else out)


def arrange_slide(
    rng: np.random.Generator,
    patches: Sequence[np.ndarray],
    normal_patches: Sequence[np.ndarray] | None,
    fraction: float,
    grid: int = 6,
    cell: int = 128,
) -> tuple[np.ndarray, np.ndarray]:
    """(RGB slide [grid*cell, grid*cell, 3], cell labels [grid, grid]: -1 glass, 0 normal, 1 the slide's class).

    ``fraction`` of the tissue cells (the ones nearest a random centre) show ``patches``; the rest ``normal_patches``
    (all cells show ``patches`` when that is None or fraction is 1).
    """
    rows, cols = np.mgrid[0:grid, 0:grid]
    centre = (grid - 1) / 2
    radius = rng.uniform(0.42, 0.5) * grid
    tissue = ((rows - centre) ** 2 + ((cols - centre) * rng.uniform(0.8, 1.0)) ** 2) <= radius**2
    labels = np.where(tissue, 0, -1)
    cells = np.argwhere(tissue)
    count = len(cells) if normal_patches is None else max(1, round(fraction * len(cells)))
    seed_cell = cells[rng.integers(len(cells))]
    order = np.argsort(((cells - seed_cell) ** 2).sum(1) + rng.uniform(0, 0.5, len(cells)))
    for r, c in cells[order[:count]]:
        labels[r, c] = 1
    image = np.full((grid * cell, grid * cell, 3), GLASS, dtype=np.uint8)
    noise = rng.integers(-3, 4, size=image.shape)
    image = np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)
    for r, c in cells:
        pool = patches if labels[r, c] == 1 else normal_patches
        patch = _dihedral(np.asarray(pool[rng.integers(len(pool))]), int(rng.integers(8)))
        if patch.shape[:2] != (cell, cell):
            patch = np.asarray(Image.fromarray(patch).resize((cell, cell), Image.Resampling.BILINEAR))
        image[r * cell : (r + 1) * cell, c * cell : (c + 1) * cell] = patch[..., :3]
    return image, labels


def write_pyramidal_tiff(path: str | Path, image: np.ndarray, mpp: float, tile: int = 256, min_side: int = 64) -> Path:
    """Write an RGB array as a JPEG-compressed tiled pyramidal TIFF (levels halve until ``min_side``) with its mpp."""

    levels = [image]
    while min(levels[-1].shape[:2]) // 2 >= min_side:
        h, w = levels[-1].shape[:2]
        levels.append(np.asarray(Image.fromarray(levels[-1]).resize((w // 2, h // 2), Image.Resampling.BOX)))
    return _write_levels(path, [(lvl.shape[1], lvl.shape[0], _array_tiles(lvl, tile)) for lvl in levels], mpp, tile)


def _array_tiles(array: np.ndarray, tile: int) -> Callable[[], object]:
    def tiles():
        h, w = array.shape[:2]
        for y in range(0, h, tile):
            for x in range(0, w, tile):
                out = np.full((tile, tile, 3), GLASS, dtype=np.uint8)
                part = array[y : y + tile, x : x + tile]
                out[: part.shape[0], : part.shape[1]] = part
                yield out

    return tiles


def _write_levels(path: str | Path, levels: list, mpp: float, tile: int) -> Path:
    import tifffile

    path = Path(path)
    resolution = (1e4 / mpp, 1e4 / mpp)
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for index, (width, height, tiles) in enumerate(levels):
            tif.write(
                tiles(),
                shape=(height, width, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                photometric="rgb",
                compression="jpeg",
                resolution=resolution if index == 0 else (resolution[0] / 2**index, resolution[1] / 2**index),
                resolutionunit="CENTIMETER",
                subfiletype=1 if index else 0,
                metadata=None,
            )
    return path


def write_large_synthetic_slide(
    path: str | Path, patches: Sequence[np.ndarray], side: int = 20_000, mpp: float = 0.5, tile: int = 256
) -> Path:
    """A ``side`` x ``side`` pyramidal TIFF written tile by tile (never whole in memory): an elliptic tissue area of
    real patches (each shown at 2x, so a 128-px patch covers 256 level-0 pixels) on glass, levels halving to ~600 px.
    """
    rng = np.random.default_rng(0)
    cell0 = 256
    n = -(-side // cell0)
    choice = rng.integers(len(patches), size=(n, n))
    rows, cols = np.mgrid[0:n, 0:n]
    tissue = ((rows - n / 2) / (0.45 * n)) ** 2 + ((cols - n / 2) / (0.38 * n)) ** 2 <= 1
    levels = []
    size, scale = side, 1
    while size >= 600:
        levels.append((size, size, _procedural_tiles(patches, choice, tissue, cell0 / scale, size, tile)))
        size, scale = size // 2, scale * 2
    return _write_levels(path, levels, mpp, tile)


def _procedural_tiles(patches, choice, tissue, cell: float, size: int, tile: int) -> Callable[[], object]:
    resized: dict[int, list[np.ndarray]] = {}

    def patch(index: int) -> np.ndarray:
        side = max(1, round(cell))
        if side not in resized:
            resized[side] = [
                np.asarray(Image.fromarray(p).resize((side, side), Image.Resampling.BILINEAR)) for p in patches
            ]
        return resized[side][index]

    def tiles():
        for y in range(0, size, tile):
            for x in range(0, size, tile):
                out = np.full((tile, tile, 3), GLASS, dtype=np.uint8)
                for r in range(int(y // cell), int(min(size, y + tile - 1) // cell) + 1):
                    for c in range(int(x // cell), int(min(size, x + tile - 1) // cell) + 1):
                        if r >= tissue.shape[0] or c >= tissue.shape[1] or not tissue[r, c]:
                            continue
                        p = patch(int(choice[r, c]))
                        top, left = round(r * cell) - y, round(c * cell) - x
                        y0, x0 = max(0, top), max(0, left)
                        y1, x1 = min(tile, top + p.shape[0]), min(tile, left + p.shape[1])
                        if y1 > y0 and x1 > x0:
                            out[y0:y1, x0:x1] = p[y0 - top : y1 - top, x0 - left : x1 - left, :3]
                yield out

    return tiles
