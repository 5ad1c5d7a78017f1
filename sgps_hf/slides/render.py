"""Pictures of a slide prediction: a heatmap of tile probabilities over the thumbnail and a contact sheet of tiles."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw


def heatmap(
    thumbnail: np.ndarray,
    coords: np.ndarray,
    side0: float,
    downsample: float,
    values: np.ndarray,
    alpha: float = 0.55,
    colormap: str = "inferno",
) -> Image.Image:
    """The thumbnail with each tile painted by its value in [0, 1] (matplotlib ``colormap``), plus a colour bar."""
    import matplotlib

    cmap = matplotlib.colormaps[colormap]
    base = thumbnail.astype(np.float32)
    paint = base.copy()
    covered = np.zeros(base.shape[:2], dtype=bool)
    h, w = covered.shape
    for (x, y), value in zip(coords, values, strict=True):
        x0, y0 = int(x / downsample), int(y / downsample)
        x1, y1 = min(w, max(x0 + 1, int((x + side0) / downsample))), min(h, max(y0 + 1, int((y + side0) / downsample)))
        paint[y0:y1, x0:x1] = np.asarray(cmap(float(np.clip(value, 0, 1)))[:3], dtype=np.float32) * 255
        covered[y0:y1, x0:x1] = True
    out = np.where(covered[..., None], (1 - alpha) * base + alpha * paint, base)
    image = Image.fromarray(out.clip(0, 255).astype(np.uint8))
    bar = np.asarray([cmap(v)[:3] for v in np.linspace(0, 1, max(2, image.width))], dtype=np.float32) * 255
    bar_image = Image.fromarray(np.repeat(bar[None], 12, axis=0).astype(np.uint8))
    canvas = Image.new("RGB", (image.width, image.height + 16), "white")
    canvas.paste(image, (0, 0))
    canvas.paste(bar_image, (0, image.height + 4))
    return canvas


def contact_sheet(tiles: Sequence[np.ndarray], captions: Sequence[str], columns: int = 4) -> Image.Image:
    """Tiles in a grid, each with a caption under it (e.g. its probability and position)."""
    if not tiles:
        image = Image.new("RGB", (256, 32), "white")
        ImageDraw.Draw(image).text((6, 10), "no tissue tiles", fill=(0, 0, 0))
        return image
    size = max(t.shape[0] for t in tiles)
    columns = max(1, min(columns, len(tiles)))
    rows = -(-len(tiles) // columns)
    cell_h = size + 16
    sheet = Image.new("RGB", (columns * (size + 4), rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (tile, caption) in enumerate(zip(tiles, captions, strict=True)):
        x, y = (i % columns) * (size + 4), (i // columns) * cell_h
        sheet.paste(Image.fromarray(tile), (x, y))
        draw.text((x + 2, y + size + 2), caption, fill=(0, 0, 0))
    return sheet
