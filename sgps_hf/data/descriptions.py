"""Clinical text descriptions of classes.

The library ships one JSON file per known task in ``sgps_hf/data/descriptions/<task>.json``
(``{"task": ..., "modality": ..., "classes": {class_name: text}}``); users bring their own texts as a
JSON object mapping class name to text (:func:`load_description_file`).
"""

from __future__ import annotations

import json
import os
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import DataError

_PACKAGE = "sgps_hf.data"
_FOLDER = "descriptions"


def available_description_tasks() -> list[str]:
    """Names of the tasks that have a packaged description file."""
    folder = resources.files(_PACKAGE) / _FOLDER
    if not folder.is_dir():
        return []
    return sorted(entry.name[: -len(".json")] for entry in folder.iterdir() if entry.name.endswith(".json"))


def load_descriptions(task: str) -> dict[str, str]:
    """Class name -> clinical text for a packaged ``task``.

    Raises :class:`DataError` when the task has no packaged file or the file is malformed.
    """
    return dict(_load_packaged(task))  # a copy: callers may mutate it without touching the cache


def class_description(task: str, class_name: str, default: str | None = None) -> str | None:
    """The packaged text of ``class_name`` in ``task``, or ``default`` when the task or class has none."""
    try:
        return _load_packaged(task).get(class_name, default)
    except DataError:
        return default


def load_description_file(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read a user's JSON file mapping class name -> clinical text.

    The packaged layout (an object with a ``"classes"`` object inside) is accepted too, so a copy of
    a shipped file can be edited and passed back. Every key and value must be a non-empty string.
    """
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(f"Description file {str(path)!r} does not exist.") from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"Description file {str(path)!r} is not valid JSON: {exc}") from exc
    return validate_descriptions(raw, origin=str(path))


def validate_descriptions(raw: Any, *, origin: str = "descriptions") -> dict[str, str]:
    """Check that ``raw`` is a mapping of non-empty str -> non-empty str and return it as a dict."""
    if isinstance(raw, dict) and isinstance(raw.get("classes"), dict):
        raw = raw["classes"]
    if not isinstance(raw, dict):
        raise DataError(
            f"{origin}: expected a JSON object mapping class name to text, e.g. "
            f'{{"melanoma": "Asymmetric pigmented lesion ..."}}, got {type(raw).__name__}.'
        )
    bad = [
        repr(key)
        for key, value in raw.items()
        if not (isinstance(key, str) and key.strip() and isinstance(value, str) and value.strip())
    ]
    if bad:
        raise DataError(
            f"{origin}: every class name and text must be a non-empty string; bad entries: {', '.join(bad)}."
        )
    if not raw:
        raise DataError(f"{origin}: no class descriptions found (the object is empty).")
    return dict(raw)


@cache
def _load_packaged(task: str) -> dict[str, str]:
    # Task names become file names: refuse anything that could walk out of the folder.
    if not task or "/" in task or "\\" in task or task.startswith("."):
        raise DataError(f"Invalid task name {task!r}.")
    resource = resources.files(_PACKAGE) / _FOLDER / f"{task}.json"
    if not resource.is_file():
        known = ", ".join(available_description_tasks()) or "(none)"
        raise DataError(f"No packaged descriptions for task {task!r}. Tasks with descriptions: {known}.")
    try:
        raw = json.loads(resource.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"Packaged description file for {task!r} is not valid JSON: {exc}") from exc
    if not (isinstance(raw, dict) and isinstance(raw.get("classes"), dict)):
        raise DataError(f"Packaged description file for {task!r} lacks a 'classes' object.")
    return validate_descriptions(raw["classes"], origin=f"descriptions/{task}.json")
