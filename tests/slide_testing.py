"""What the whole-slide tests share: where the real slides are and stain-like patches to arrange slides from."""

from __future__ import annotations

from pathlib import Path

import numpy as np

WSI = Path(__file__).resolve().parents[1] / ".." / "shared" / "data-wsi"
TINY_SVS = WSI / "tiny-16px.svs"


def coloured_patches(seed: int, count: int = 4, tint=(200, 80, 160)) -> list[np.ndarray]:
    """Stain-like 128-px patches: a tint plus noise (saturated, so they count as tissue)."""
    rng = np.random.default_rng(seed)
    base = np.array(tint, dtype=np.int16)
    return [np.clip(base + rng.integers(-40, 41, size=(128, 128, 3)), 0, 255).astype(np.uint8) for _ in range(count)]
