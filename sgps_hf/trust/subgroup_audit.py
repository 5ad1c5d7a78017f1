"""Per-subgroup accuracy and calibration from per-image metadata columns (sex, skin type, age...).

Used by the evaluation on the user's own cases (:mod:`.own_cases`, ``sgps evaluate-classifier --subgroups``) and by
the benchmark's subgroup criterion on the held-out PAD-UFES-20 task (``benchmarks/trust``).
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import DataError
from .stats import wilson

#: A numeric column with more distinct values than this is binned (ages, sizes); fewer are groups as they are.
MAX_GROUPS = 8
#: Bin edges (years) for columns named like an age.
AGE_EDGES = (40, 60, 80)
UNKNOWN = "unknown"


def audit_subgroups(
    probs: np.ndarray,
    labels: np.ndarray,
    metadata: Mapping[str, Sequence[Any]],
    columns: Sequence[str],
    min_size: int = 30,
    n_bins: int = 10,
) -> dict[str, Any]:
    """``{column: {"binned": ..., "groups": {group: stats}}}`` for each of ``columns``.

    Per group: ``n``, ``accuracy`` (Wilson 95 % interval), ``ece``, ``mean_confidence``, ``class_counts``,
    ``too_small`` (fewer than ``min_size`` images: the interval is too wide to say anything) and
    ``missing_classes`` (classes of the data absent from the group: a difference from the other groups may then
    be the class mix, not the subgroup). Empty and missing values form the group ``"unknown"``.
    """
    missing = [c for c in columns if c not in metadata]
    if missing:
        available = ", ".join(sorted(metadata)) or "none"
        raise DataError(f"No metadata column(s) {missing}; the data's metadata columns are: {available}.")
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    correct = probs.argmax(-1) == labels
    confidence = probs.max(-1)
    all_classes = sorted(set(labels.tolist()))
    out: dict[str, Any] = {}
    for column in columns:
        groups, binned = group_values(column, metadata[column])
        stats = {}
        for group in sorted(set(groups), key=_group_order):
            mask = np.asarray([g == group for g in groups])
            n = int(mask.sum())
            present = sorted(set(labels[mask].tolist()))
            stats[group] = {
                "n": n,
                "accuracy": wilson(int(correct[mask].sum()), n),
                "ece": _ece(confidence[mask], correct[mask], n_bins),
                "mean_confidence": float(confidence[mask].mean()),
                "class_counts": {int(c): int((labels[mask] == c).sum()) for c in present},
                "too_small": n < min_size,
                "missing_classes": [int(c) for c in all_classes if c not in present],
            }
        out[column] = {"binned": binned, "groups": stats}
    return out


def group_values(column: str, values: Sequence[Any]) -> tuple[list[str], bool]:
    """Each value's group name, and whether the column was binned (ages and many-valued numbers)."""
    numbers = [_number(v) for v in values]
    known = [x for x in numbers if x is not None]
    numeric = bool(known) and all(x is not None or _is_missing(v) for x, v in zip(numbers, values, strict=True))
    if numeric and ("age" in column.lower() or len(set(known)) > MAX_GROUPS):
        edges = AGE_EDGES if "age" in column.lower() else _quartile_edges(known)
        return [UNKNOWN if x is None else _bin_name(x, edges) for x in numbers], True
    if numeric:
        return [UNKNOWN if x is None else _format_number(x) for x in numbers], False
    return [UNKNOWN if _is_missing(v) else str(v).strip() for v in values], False


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or str(value).strip() == ""


def _number(value: Any) -> float | None:
    if _is_missing(value) or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _format_number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _quartile_edges(values: list[float]) -> tuple[float, ...]:
    return tuple(sorted(set(float(q) for q in np.quantile(values, [0.25, 0.5, 0.75]))))


def _bin_name(x: float, edges: Sequence[float]) -> str:
    for index, edge in enumerate(edges):
        if x < edge:
            return (
                f"<{_format_number(edge)}"
                if index == 0
                else f"{_format_number(edges[index - 1])}-<{_format_number(edge)}"
            )
    return f">={_format_number(edges[-1])}"


def _group_order(name: str) -> tuple[int, float, str]:
    """Unknown last; bins and numbers in numeric order; texts alphabetically."""
    if name == UNKNOWN:
        return (2, 0.0, name)
    digits = name.lstrip("<>=").split("-")[0]
    number = _number(digits)
    return (0, -math.inf if name.startswith("<") else number, name) if number is not None else (1, 0.0, name)


def _ece(confidence: np.ndarray, correct: np.ndarray, n_bins: int) -> float:
    bins = np.clip(np.ceil(confidence * n_bins).astype(int) - 1, 0, n_bins - 1)
    gap = np.bincount(bins, weights=correct - confidence, minlength=n_bins)
    return float(np.abs(gap).sum() / max(len(confidence), 1))


def format_group_rows(audit: Mapping[str, Any], label_names: Sequence[str]) -> list[list[str]]:
    """Markdown-ready rows: column, group, n, accuracy [95 % CI], ECE, classes present, flag."""
    rows = []
    for column, result in audit.items():
        for group, g in result["groups"].items():
            acc = g["accuracy"]
            flags = []
            if g["too_small"]:
                flags.append("too few images to conclude")
            if g["missing_classes"]:
                flags.append("lacks " + ", ".join(label_names[c] for c in g["missing_classes"]))
            rows.append(
                [
                    column,
                    group,
                    str(g["n"]),
                    f"{acc['value']:.3f} [{acc['low']:.3f}, {acc['high']:.3f}]",
                    f"{g['ece']:.3f}",
                    ", ".join(f"{label_names[int(c)]} {k}" for c, k in g["class_counts"].items()),  # keys: int or text
                    "; ".join(flags),
                ]
            )
    return rows
