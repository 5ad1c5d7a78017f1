"""Whether evaluated data carries per-image subgroup metadata (sex, age, site, skin type...) for the subgroup
criterion."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..data.registry import resolve_data_dir

#: Column names of imagefolder metadata that identify the image or its label, not a subgroup.
_NON_GROUP_COLUMNS = {"file_name", "label", "image", "file", "path"}


def subgroup_metadata(
    source: str | None, split: str | None, data_dir: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
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
            "subgroup columns"
            + (" (SOURCES.md and manifest.json describe only tasks, classes, sources and licences)" if split else ""),
        }
    return {
        "available": True,
        "columns": found,
        "note": "per-subgroup accuracy and calibration are computed for the held-out PAD-UFES-20 task (its "
        "metadata.csv) with the code of `sgps evaluate-classifier --subgroups`; other tasks' columns are listed only",
    }


def _metadata_columns(path: Path) -> list[str]:
    import json

    first = path.read_text(encoding="utf-8").splitlines()[:1]
    if not first:
        return []
    if path.suffix == ".jsonl":
        return list(json.loads(first[0]))
    return [c.strip() for c in first[0].split(",")]
