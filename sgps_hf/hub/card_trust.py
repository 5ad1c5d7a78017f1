"""The classifier card's view of what was measured on the user's own cases and of its conformal prediction sets.

Every user string (metadata column and group names) goes through the card's Markdown escaping; numbers are
formatted here, so a hand-edited ``sgps_task.json`` with odd values renders as "n/a" rather than breaking the card.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _fmt(value: Any) -> str:
    number = _number(value)
    return "n/a" if number is None else f"{number:.3f}"


def _interval(metrics: Mapping[str, Any], key: str) -> str:
    bounds = metrics.get(f"{key}_ci95")
    if isinstance(bounds, list) and len(bounds) == 2 and all(_number(b) is not None for b in bounds):
        return f" (95 % interval {_fmt(bounds[0])}-{_fmt(bounds[1])})"
    return ""


def trust_view(info: Mapping[str, Any], escape: Callable[[Any], str]) -> dict[str, Any]:
    """``evaluation_lines`` (extra metrics), ``subgroup_rows`` and ``conformal`` for the classifier card template."""
    metrics = info.get("metrics") if isinstance(info.get("metrics"), Mapping) else {}
    lines = []
    if metrics:
        lines.append(f"accuracy {_fmt(metrics.get('accuracy'))}{_interval(metrics, 'accuracy')}")
        for key, label in (("balanced_accuracy", "balanced accuracy"), ("auroc", "AUROC"), ("ece", "ECE")):
            if key in metrics:
                lines.append(f"{label} {_fmt(metrics.get(key))}{_interval(metrics, key)}")
    rows = []
    subgroups = metrics.get("subgroups") if metrics else None
    if isinstance(subgroups, Mapping):
        for column, groups in subgroups.items():
            if not isinstance(groups, Mapping):
                continue
            for group, entry in groups.items():
                entry = entry if isinstance(entry, Mapping) else {}
                n = entry.get("n")
                rows.append(
                    {
                        "column": escape(column).replace("|", "/"),
                        "group": escape(group).replace("|", "/"),
                        "n": int(n) if _number(n) is not None else "n/a",
                        "accuracy": _fmt(entry.get("accuracy")),
                        "flag": "too few images to conclude" if entry.get("too_small") else "",
                    }
                )
    conformal = info.get("conformal") if isinstance(info.get("conformal"), Mapping) else None
    conformal_view = None
    if conformal and _number(conformal.get("coverage")) is not None:
        conformal_view = {
            "coverage": f"{100 * float(conformal['coverage']):g}",
            "method": escape(conformal.get("method", "")),
            "num_cases": int(conformal["num_cases"]) if _number(conformal.get("num_cases")) is not None else "n/a",
            "threshold": _fmt(conformal.get("threshold")),
        }
    return {"evaluation_lines": lines, "subgroup_rows": rows, "conformal": conformal_view}
