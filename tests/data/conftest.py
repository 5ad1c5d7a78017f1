"""Fixtures of the data-layer tests: isolated caches, tiny synthetic imagefolders, the real data."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sgps_testing import isolated_caches  # noqa: F401  (autouse: the suite's caches stay per session)

REAL_DATA_DIR = Path(
    os.environ.get("SGPS_DATA_DIR") or Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
).resolve()
REAL_IMAGE_SIZE = 32  # small: the integration tests decode every real image once per session


ImageSpec = tuple[str, tuple[int, int]]  # (PIL mode, (width, height))


def write_image(path: Path, mode: str, size: tuple[int, int], seed: int) -> None:
    """A random image of ``mode`` and ``size`` saved at ``path`` (PNG keeps every mode lossless)."""
    rng = np.random.default_rng(seed)
    width, height = size
    if mode == "RGB":
        array = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    elif mode == "RGBA":
        array = rng.integers(0, 256, (height, width, 4), dtype=np.uint8)
    elif mode == "I;16":
        array = rng.integers(0, 65536, (height, width), dtype=np.uint16)
    else:
        array = rng.integers(0, 256, (height, width), dtype=np.uint8)
    image = Image.fromarray(array)  # uint16 gives mode "I;16"
    image.save(path)


@pytest.fixture
def make_imagefolder(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_imagefolder({"class": [("L", (20, 30)), ...]}, name="task")`` -> folder path."""

    def make(spec: dict[str, list[ImageSpec]], name: str = "task", root: Path | None = None) -> Path:
        folder = (root or tmp_path) / name
        seed = 0
        for class_name, images in spec.items():
            (folder / class_name).mkdir(parents=True, exist_ok=True)
            for i, (mode, size) in enumerate(images):
                write_image(folder / class_name / f"{i:03d}.png", mode, size, seed)
                seed += 1
        return folder

    return make


@pytest.fixture
def tiny_folder(make_imagefolder) -> Path:
    """Three classes mixing grayscale, RGB, RGBA, 16-bit, odd sizes and aspect ratios."""
    return make_imagefolder(
        {
            "benign": [("L", (20, 20)), ("L", (33, 17)), ("RGB", (40, 40))],
            "malignant": [("RGB", (25, 31)), ("RGBA", (16, 16)), ("RGB", (64, 48)), ("L", (9, 50))],
            "normal": [("I;16", (24, 24)), ("RGB", (128, 128))],
        }
    )


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The shared real data; integration tests skip when it is absent."""
    if not (REAL_DATA_DIR / "manifest.json").is_file():
        pytest.skip(f"real data not found at {REAL_DATA_DIR} (set SGPS_DATA_DIR to run integration tests)")
    return REAL_DATA_DIR


@pytest.fixture(scope="session")
def real_manifest(real_data_dir: Path) -> dict:
    import json

    return json.loads((real_data_dir / "manifest.json").read_text())


@pytest.fixture(scope="session")
def real_arrays(real_data_dir: Path) -> dict:
    """Every real task decoded once per session at REAL_IMAGE_SIZE (task name -> ImageArrays)."""
    from sgps_hf.data import list_tasks, load_task_arrays

    return {
        task.name: load_task_arrays(task.name, REAL_IMAGE_SIZE, real_data_dir) for task in list_tasks(real_data_dir)
    }
