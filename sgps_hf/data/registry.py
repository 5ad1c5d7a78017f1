"""Where the medical image tasks live and what each one contains.

A *task* is one folder in ``imagefolder`` layout (``<data_dir>/<task>/<class>/<image>``). The shared
data directory also carries ``manifest.json`` with the family, modality, licence, source and class
counts of every task; when it is absent (a user's own folder of tasks) the folders are scanned.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataError

#: Environment variable that overrides where the task folders are looked up.
DATA_DIR_ENV = "SGPS_DATA_DIR"

#: File extensions counted as images when a data directory has no manifest.
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"})

_UNKNOWN = "unknown"


@dataclass(frozen=True)
class TaskInfo:
    """Facts about one classification task, as recorded in ``manifest.json`` or found on disk."""

    name: str
    family: str
    modality: str
    class_counts: dict[str, int] = field(default_factory=dict)
    license: str = _UNKNOWN
    source: str = _UNKNOWN

    @property
    def class_names(self) -> list[str]:
        """Class names in sorted order (the order ``imagefolder`` assigns label ids in)."""
        return sorted(self.class_counts)

    @property
    def num_classes(self) -> int:
        return len(self.class_counts)

    @property
    def num_images(self) -> int:
        return sum(self.class_counts.values())


def default_data_dir() -> Path:
    """Return the directory holding the task folders.

    Order: the ``SGPS_DATA_DIR`` environment variable, else ``<repo root>/../shared/data`` found
    relative to this file (the layout of a source checkout). Raises :class:`DataError` saying how
    to point the library at the data when neither exists.
    """
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        path = Path(env).expanduser().resolve()
        if not path.is_dir():
            raise DataError(f"{DATA_DIR_ENV}={env!r} is not a directory; point it at the folder of task folders.")
        return path
    # sgps_hf/data/registry.py -> parents[2] is the repository root in a source checkout.
    candidate = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data").resolve()
    if candidate.is_dir():
        return candidate
    raise DataError(
        f"No data directory found (looked for {candidate}). Set the environment variable "
        f"{DATA_DIR_ENV}=/path/to/data, or pass data_dir=..., pointing at a folder with one "
        "imagefolder-layout subfolder per task (<task>/<class>/<image>)."
    )


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """``data_dir`` as an existing :class:`Path`, or :func:`default_data_dir` when it is ``None``."""
    if data_dir is None:
        return default_data_dir()
    path = Path(data_dir).expanduser().resolve()
    if not path.is_dir():
        raise DataError(f"Data directory {str(path)!r} does not exist or is not a directory.")
    return path


def list_tasks(data_dir: str | os.PathLike[str] | None = None) -> list[TaskInfo]:
    """Every task of ``data_dir`` sorted by name: from ``manifest.json`` when present, else by scanning."""
    root = resolve_data_dir(data_dir)
    manifest = root / "manifest.json"
    if manifest.is_file():
        return _tasks_from_manifest(manifest)
    return _tasks_from_scan(root)


def get_task(name: str, data_dir: str | os.PathLike[str] | None = None) -> TaskInfo:
    """The :class:`TaskInfo` called ``name``; :class:`DataError` listing the known tasks otherwise."""
    tasks = {task.name: task for task in list_tasks(data_dir)}
    if name not in tasks:
        raise DataError(f"Unknown task {name!r}. Known tasks: {', '.join(sorted(tasks)) or '(none)'}.")
    return tasks[name]


def task_dir(name: str, data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The imagefolder directory of task ``name`` (it must exist)."""
    path = resolve_data_dir(data_dir) / name
    if not path.is_dir():
        raise DataError(f"Task folder {str(path)!r} does not exist.")
    return path


def _tasks_from_manifest(path: Path) -> list[TaskInfo]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        entries = raw["tasks"]
        tasks = [
            TaskInfo(
                name=name,
                family=entry.get("family", _UNKNOWN),
                modality=entry.get("modality", _UNKNOWN),
                class_counts={str(c): int(n) for c, n in entry["classes"].items()},
                license=entry.get("license", _UNKNOWN),
                source=entry.get("source", _UNKNOWN),
            )
            for name, entry in entries.items()
        ]
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as exc:
        raise DataError(f"Malformed manifest {str(path)!r}: {exc!r}") from exc
    return sorted(tasks, key=lambda task: task.name)


def _count_images(folder: Path) -> int:
    return sum(1 for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)


def _tasks_from_scan(root: Path) -> list[TaskInfo]:
    """Tasks are subfolders whose own subfolders (the classes) contain at least one image."""
    tasks = []
    for task_path in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        counts = {
            cls.name: _count_images(cls)
            for cls in sorted(task_path.iterdir())
            if cls.is_dir() and not cls.name.startswith(".")
        }
        counts = {name: n for name, n in counts.items() if n > 0}
        if counts:
            tasks.append(
                TaskInfo(
                    name=task_path.name, family=_UNKNOWN, modality=_UNKNOWN, class_counts=counts, source=str(task_path)
                )
            )
    return tasks
