"""Helpers shared by the segmentation tests: a tiny (untrained, 32 px) synthesizer and synthetic images with masks.

Import it as ``import seg_testing`` (tests/conftest.py puts tests/ on ``sys.path``); a module of its own, because
``from conftest import ...`` resolves to whichever test folder's conftest was imported first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

TINY_SEG = dict(hidden_size=8, image_size=32, pool_scales=[1, 2])


def tiny_seg_synthesizer(seed: int = 0, **overrides):
    import torch

    from sgps_hf import SGPSSegConfig, SGPSSegSynthesizer

    torch.manual_seed(seed)
    return SGPSSegSynthesizer(SGPSSegConfig(**{**TINY_SEG, **overrides})).eval()


def blob_pair(seed: int, size: tuple[int, int] = (40, 32)) -> tuple[Image.Image, np.ndarray]:
    """A noisy image with a bright disc and its bool mask (width x height = ``size``)."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[:h, :w]
    cy, cx, r = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w, rng.uniform(0.15, 0.3) * min(w, h)
    mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
    pixels = rng.integers(0, 90, size=(h, w, 3)).astype(np.uint8)
    pixels[mask] = np.clip(pixels[mask] + 150, 0, 255)
    return Image.fromarray(pixels), mask


def write_task_folder(root: Path, n: int, labels: tuple[str, ...] = ("lesion",), seed: int = 0, size=(40, 32)) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    for label in labels:
        (root / "masks" / label).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image, mask = blob_pair(seed + i, size)
        image.save(root / "images" / f"{i:04d}.png")
        for j, label in enumerate(labels):
            m = mask if j == 0 else np.roll(mask, 3, axis=1)
            Image.fromarray(m.astype(np.uint8) * 255).save(root / "masks" / label / f"{i:04d}.png")
    return root
