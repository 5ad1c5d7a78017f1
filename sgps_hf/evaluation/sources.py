"""Where the benchmark's evaluation episodes come from: a user's dataset or a split of the shared data."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ..data.descriptions import class_description, load_description_file
from ..data.episodes import ClassPool, build_pools
from ..data.loading import load_image_dataset, prepare_arrays
from ..data.registry import resolve_data_dir
from ..errors import DataError

logger = logging.getLogger(__name__)

#: Column names of imagefolder metadata that identify the image or its label, not a subgroup.
_NON_GROUP_COLUMNS = {"file_name", "label", "image", "file", "path"}


def dataset_pools(source: str, image_size: int, descriptions: str | os.PathLike[str] | None = None) -> list[ClassPool]:
    """One task's pools from an imagefolder directory (``<class>/<image>``) or a Hub dataset name.

    Class texts: the ``descriptions`` JSON file (class -> text) when given, else the packaged
    descriptions when the folder is named like a known task, else the class name with spaces.
    """
    arrays = prepare_arrays(load_image_dataset(source), image_size)
    task = Path(str(source)).name or str(source)
    given = load_description_file(descriptions) if descriptions is not None else {}
    unknown = sorted(set(given) - set(arrays.class_names))
    if unknown:
        raise DataError(f"--descriptions names classes {unknown} that are not in {source!r}; its classes: {', '.join(arrays.class_names)}.")
    pools, fallback = [], []
    for index, name in enumerate(arrays.class_names):
        text = given.get(name) or class_description(task, name)
        if not text:
            fallback.append(name)
            text = name.replace("_", " ")
        pools.append(ClassPool(task=task, class_name=name, images=arrays.images[arrays.labels == index], text=text))
    if fallback:
        logger.warning("No description for %s: using the class name as its text.", ", ".join(fallback))
    return pools


def split_pools(split: str, image_size: int, data_dir: str | os.PathLike[str] | None = None) -> list[ClassPool]:
    """Pools of a split of the shared data (``held_out`` for the reported results)."""
    return build_pools(split, image_size, data_dir=data_dir)


def subgroup_metadata(source: str | None, split: str | None, data_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Whether the evaluated data carries per-image subgroup metadata (sex, age, site, skin type...).

    The shared data has none: its ``SOURCES.md`` and ``manifest.json`` describe tasks and classes,
    not patients, and no task folder has an imagefolder ``metadata.csv``/``metadata.jsonl``. A user's
    imagefolder with such a file and extra columns is reported with those columns.
    """
    folders: list[Path] = []
    if source is not None and Path(source).is_dir():
        folders = [Path(source)]
    elif split is not None:
        root = resolve_data_dir(data_dir)
        folders = [p for p in root.iterdir() if p.is_dir()]
    found: dict[str, list[str]] = {}
    for folder in folders:
        for name in ("metadata.csv", "metadata.jsonl"):
            path = folder / name
            if path.is_file():
                columns = _metadata_columns(path)
                extra = sorted(set(columns) - _NON_GROUP_COLUMNS)
                if extra:
                    found[folder.name] = extra
    if not found:
        return {
            "available": False,
            "reason": "no per-image subgroup metadata: the data has no imagefolder metadata.csv/metadata.jsonl with "
            "subgroup columns" + (" (SOURCES.md and manifest.json describe only tasks, classes, sources and licences)" if split else ""),
        }
    return {
        "available": True,
        "columns": found,
        "note": "subgroup columns were found; per-subgroup accuracy is not computed by this version of the benchmark",
    }


def _metadata_columns(path: Path) -> list[str]:
    import json

    first = path.read_text(encoding="utf-8").splitlines()[:1]
    if not first:
        return []
    if path.suffix == ".jsonl":
        return list(json.loads(first[0]))
    return [c.strip() for c in first[0].split(",")]
