"""Fixtures of the benchmark tests: isolated caches and tiny synthetic imagefolders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sgps_testing import isolated_caches  # noqa: F401  (autouse: the suite's caches stay per session)


def make_imagefolder(root: Path, classes: int, per_class: int, seed: int) -> Path:
    """``classes`` folders of ``per_class`` 40 px PNGs; each class has its own tint, so classes are learnable."""
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed * 100 + c)
        tint = rng.integers(0, 256, 3)
        for i in range(per_class):
            pixels = (rng.integers(0, 256, (40, 40, 3)) // 3 + tint * 2 // 3).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def bench_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Meta-train, meta-val and evaluation imagefolders, plus a saved tiny random synthesizer."""
    import sgps_testing

    root = tmp_path_factory.mktemp("bench")
    data = {
        "train": make_imagefolder(root / "train", 6, 8, seed=1),
        "val": make_imagefolder(root / "val", 3, 6, seed=2),
        "eval": make_imagefolder(root / "eval", 3, 8, seed=3),
        "synth": root / "synth",
    }
    sgps_testing.tiny_synthesizer().save_pretrained(data["synth"])
    return data
