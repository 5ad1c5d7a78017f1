"""Tasks from a folder with one sub-folder of images per class (the shared data's layout, a user's own dataset)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..imaging import IMAGE_SUFFIXES
from ..task import ClassSpec, TaskSpec
from .descriptions import class_description


def class_image_files(folder: Path) -> dict[str, list[Path]]:
    """Class name -> its image files (sorted), for every sub-folder of ``folder`` (sorted by name)."""
    return {
        class_dir.name: sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for class_dir in sorted(p for p in folder.iterdir() if p.is_dir())
    }


def task_from_folder(
    folder: Path, *, n_way: int, shots: int, rng: np.random.Generator
) -> tuple[TaskSpec, dict[str, list[Path]]]:
    """A TaskSpec with ``shots`` random images per class (+ packaged texts) and the remaining images."""
    files_by_class = class_image_files(folder)
    names = sorted(files_by_class)
    if len(names) > n_way:
        names = sorted(rng.choice(names, size=n_way, replace=False).tolist())
    specs, rest = [], {}
    for name in names:
        files = files_by_class[name]
        order = rng.permutation(len(files))
        rest[name] = [files[i] for i in order[shots:]]
        text = class_description(folder.name, name) or ""
        specs.append(ClassSpec(name=name, description=text, images=[files[i] for i in order[:shots]]))
    return TaskSpec(classes=specs, name=folder.name), rest
