"""Classify many images: one result row per image, bad files as error rows while the others go on.

Used by ``sgps predict`` (folders, globs, CSV / JSON Lines) and the app's results gallery.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..errors import SGPSError, UsageError
from ..imaging import IMAGE_SUFFIXES

#: What a bad file raises while it is read or preprocessed (its row gets the message; the others go on).
FILE_ERRORS = (SGPSError, OSError, ValueError)


def expand_inputs(items: Iterable[str]) -> list[Path]:
    """Files in the order given: a folder gives its images (recursively, sorted), a glob pattern its matches.

    Raises UsageError for an argument that names nothing (a missing path or a pattern without a match).
    """
    found: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            images = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not images:
                raise UsageError(f"The folder {item!r} holds no image ({', '.join(sorted(IMAGE_SUFFIXES))}).")
            found.extend(images)
        elif path.exists():
            found.append(path)
        elif glob.has_magic(item):
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True) if Path(p).is_file())
            if not matches:
                raise UsageError(f"The pattern {item!r} matches no file; check it (quote it so the shell leaves it).")
            found.extend(matches)
        else:
            raise UsageError(f"{item!r} is neither a file, a folder nor a glob pattern that matches; check the path.")
    return found


def classify_files(
    classifier: Any,
    files: Sequence[Any],
    threshold: float | None = None,
    batch_size: int = 32,
    progress: bool = False,
    names: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """One row per file: ``file``, ``top_class``, ``top_probability``, ``probabilities``, ``prediction_set``,
    ``coverage``, ``abstained`` (top probability below ``threshold``) and ``error`` (None, or why the file failed).

    ``prediction_set``/``coverage`` are None when the classifier has no conformal calibration. A failing batch is
    retried image by image, so one bad file costs one error row and the rest are classified.
    """
    from tqdm.auto import tqdm

    names = [str(f) for f in files] if names is None else list(names)
    rows: list[dict[str, Any]] = []
    with tqdm(total=len(files), desc="Classifying", unit="img", disable=not progress) as bar:
        for start in range(0, len(files), batch_size):
            chunk = list(files[start : start + batch_size])
            try:
                results: list[Any] = classifier.predict_sets(chunk, batch_size=batch_size)
            except FILE_ERRORS:
                results = []
                for item in chunk:
                    try:
                        results.append(classifier.predict_sets([item])[0])
                    except FILE_ERRORS as exc:
                        results.append(exc)
            for name, result in zip(names[start : start + batch_size], results, strict=True):
                rows.append(_row(name, result, threshold))
            bar.update(len(chunk))
    return rows


def _row(name: str, result: Any, threshold: float | None) -> dict[str, Any]:
    if isinstance(result, Exception):
        message = " ".join(str(result).split()) or type(result).__name__
        return {
            "file": name,
            "top_class": None,
            "top_probability": None,
            "probabilities": None,
            "prediction_set": None,
            "coverage": None,
            "abstained": None,
            "error": message,
        }
    probabilities = result["probabilities"]
    top = max(probabilities, key=probabilities.get)
    return {
        "file": name,
        "top_class": top,
        "top_probability": probabilities[top],
        "probabilities": probabilities,
        "prediction_set": result["prediction_set"],
        "coverage": result["coverage"],
        "abstained": bool(threshold is not None and probabilities[top] < threshold),
        "error": None,
    }


def csv_rows(rows: Sequence[dict[str, Any]], label_names: Sequence[str]) -> tuple[list[str], list[dict[str, Any]]]:
    """(header, flat rows) for CSV: one ``p_<class>`` column per class, the set joined with ``;``."""
    header = ["file", "top_class", "top_probability", *(f"p_{n}" for n in label_names)]
    header += ["prediction_set", "coverage", "abstained", "error"]
    flat = []
    for row in rows:
        probs = row["probabilities"] or {}
        flat.append(
            {
                "file": row["file"],
                "top_class": row["top_class"] or "",
                "top_probability": _num(row["top_probability"]),
                **{f"p_{n}": _num(probs.get(n)) for n in label_names},
                "prediction_set": ";".join(row["prediction_set"]) if row["prediction_set"] is not None else "",
                "coverage": "" if row["coverage"] is None else row["coverage"],
                "abstained": "" if row["abstained"] is None else str(row["abstained"]).lower(),
                "error": row["error"] or "",
            }
        )
    return header, flat


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def check_new_file(path: str | os.PathLike) -> Path:
    """``path`` if a new output file may be written there (never overwrites a file)."""
    from ..errors import OutputPathError

    target = Path(path)
    if target.exists():
        raise OutputPathError(f"{str(target)!r} already exists; choose a new file name (sgps never overwrites it).")
    if not target.parent.is_dir():
        raise OutputPathError(f"The folder of {str(target)!r} does not exist; create it or choose another path.")
    return target
