"""Example tasks from the shared data, offered in the app's example picker."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..errors import DataError
from .export import ExportArea, safe_filename

# --------------------------------------------------------------------------------------------------
# Example tasks from the shared data


@dataclass
class ExampleTask:
    """A ready-made task: classes with their packaged clinical texts, a few support images and try images."""

    name: str
    modality: str
    classes: list[tuple[str, str, list[Path]]]
    try_images: list[Path] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.name} ({len(self.classes)} classes)"


def example_tasks(
    data_dir: str | os.PathLike | None = None, num_classes: int = 3, shots: int = 2
) -> list[ExampleTask]:
    """Examples built from the held-out tasks of the shared data (never seen in meta-training); [] without data."""
    from ..data.descriptions import load_descriptions
    from ..data.registry import list_tasks, resolve_data_dir
    from ..data.splits import load_splits

    try:
        root = resolve_data_dir(data_dir)
        held_out = load_splits().held_out_tasks
        modalities = {info.name: info.modality for info in list_tasks(root)}
    except (DataError, OSError):
        return []
    examples = []
    for task in held_out:
        try:
            texts = load_descriptions(task)
        except DataError:
            continue
        example = _example_from_folder(root / task, texts, modalities.get(task, ""), num_classes, shots)
        if example is not None:
            examples.append(example)
    return examples


def _example_from_folder(
    folder: Path, texts: dict[str, str], modality: str, num_classes: int, shots: int
) -> ExampleTask | None:
    from ..data.folders import class_image_files

    if not folder.is_dir():
        return None
    classes, try_images = [], []
    for name, files in class_image_files(folder).items():
        if name in texts and len(files) > shots:
            classes.append((name, texts[name], files[:shots]))
            try_images.append(files[shots])
        if len(classes) == num_classes:
            break
    if len(classes) < 2:
        return None
    return ExampleTask(name=folder.name, modality=modality, classes=classes, try_images=try_images)


def stage_files(paths: Iterable[Path], area: ExportArea) -> list[str]:
    """Copy files into the app's temp area, so the app never serves a path outside it."""
    folder = area.new_folder()
    staged = []
    for index, path in enumerate(paths):
        target = folder / f"{index:02d}-{safe_filename(path.name, 'image')}"
        shutil.copyfile(path, target)
        staged.append(str(target))
    return staged
