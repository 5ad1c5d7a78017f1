"""Write an :class:`~.own_cases.OwnCasesEvaluation` as a report folder.

``report.md`` (Markdown), ``results.json`` (every number), ``predictions.csv`` (one row per image),
``confusion_matrix.png`` and ``reliability.png``.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import OutputPathError
from .own_cases import describe_left_out
from .subgroup_audit import format_group_rows

REPORT_FILES = ("report.md", "results.json", "predictions.csv", "confusion_matrix.png", "reliability.png")


def check_report_folder(out_dir: str | Path) -> Path:
    """``out_dir`` if a report may be written there: missing, empty, or holding only an earlier report's files."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputPathError(f"{str(out)!r} is a file; give a folder for the evaluation report.")
    if out.is_dir():
        others = sorted(p.name for p in out.iterdir() if p.name not in REPORT_FILES)
        if others:
            raise OutputPathError(
                f"{str(out)!r} already holds other files ({', '.join(others[:5])}); choose a new or empty folder "
                "for the report (sgps never overwrites files it did not write)."
            )
    return out


def write_report(evaluation: Any, out_dir: str | Path, title: str | None = None) -> Path:
    """Write the report files into ``out_dir`` (created); returns the path of ``report.md``."""
    out = check_report_folder(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(evaluation.to_dict(), indent=2), encoding="utf-8")
    with (out / "predictions.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(
            handle, fieldnames=["file", "label", "predicted", "confidence", "probability_of_label"]
        )
        writer.writeheader()
        writer.writerows(evaluation.predictions)
    scores = evaluation.scores
    plot_confusion(np.asarray(scores["confusion_matrix"]), scores["label_names"], out / "confusion_matrix.png")
    plot_reliability(scores["reliability"], scores["ece"], out / "reliability.png")
    report = out / "report.md"
    report.write_text(render_markdown(evaluation, title), encoding="utf-8")
    return report


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _interval(entry: dict[str, Any]) -> str:
    if entry.get("value") is None or math.isnan(entry["value"]):
        return "n/a"
    return f"{_fmt(entry['value'])} [{_fmt(entry['low'])}, {_fmt(entry['high'])}]"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    def cell(text: str) -> str:
        return str(text).replace("|", "/")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]


def render_markdown(evaluation: Any, title: str | None = None) -> str:
    s = evaluation.scores
    lines = [
        f"# {title or 'Evaluation of ' + evaluation.task_name}",
        "",
        f"{s['num_images']} labelled images of your own ({', '.join(s['classes_present'])}). These numbers hold for "
        "these cases only; they are an independent test only if none of them was a support image.",
        "",
        *([f"Left out: {describe_left_out(evaluation.left_out)}.", ""] if evaluation.left_out else []),
        *(
            [
                f"**{len(s['support_cases'])} of these images are support images of the classifier** (it was "
                "synthesized from them): the numbers below are optimistic. Leave them out for an independent check.",
                "",
            ]
            if s.get("support_cases")
            else []
        ),
        "| metric | value [95 % interval] |",
        "|---|---|",
        f"| accuracy | {_interval(s['accuracy'])} (Wilson) |",
        f"| balanced accuracy | {_interval(s['balanced_accuracy'])} (bootstrap) |",
        f"| macro-F1 | {_fmt(s['macro_f1'])} |",
        f"| AUROC (macro one-vs-rest) | {_fmt(s['auroc'])} |",
        f"| ECE (10 bins) | {_fmt(s['ece'])} |",
        "",
        "## Per class",
        "",
    ]
    rows = [
        [name, str(c["support"]), _interval(c["sensitivity"]), _interval(c["specificity"]), _interval(c["ppv"])]
        for name, c in s["per_class"].items()
    ]
    lines += _table(["class", "cases", "sensitivity", "specificity", "PPV"], rows)
    lines += ["", "Intervals: 95 % Wilson score intervals.", "", "## Confusion matrix", ""]
    lines += _table(
        ["true \\ predicted", *s["label_names"]],
        [[name, *map(str, row)] for name, row in zip(s["label_names"], s["confusion_matrix"], strict=True)],
    )
    lines += ["", "![confusion matrix](confusion_matrix.png)", "", "## Calibration", ""]
    lines += [
        f"Expected calibration error {_fmt(s['ece'])}: on average the stated confidence differs from the observed "
        "accuracy by this much. Bars below the diagonal: over-confident.",
        "",
        "![reliability diagram](reliability.png)",
        "",
    ]
    wrong = sorted((p for p in evaluation.predictions if p["predicted"] != p["label"]), key=lambda p: -p["confidence"])
    if wrong:
        lines += ["## Most confident mistakes", ""]
        lines += _table(
            ["file", "true", "predicted", "confidence"],
            [[p["file"], p["label"], p["predicted"], _fmt(p["confidence"])] for p in wrong[:10]],
        )
        lines.append("")
    if evaluation.subgroups:
        lines += ["## Subgroups", ""]
        lines += _table(
            ["column", "group", "n", "accuracy [95 % CI]", "ECE", "classes", "flag"],
            format_group_rows(evaluation.subgroups, s["label_names"]),
        )
        lines += [
            "",
            "A group flagged 'too few images' has an interval too wide to support any conclusion. A group that lacks "
            "some classes is not comparable to the others: its accuracy reflects its class mix as much as the group.",
            "",
        ]
    return "\n".join(lines)


def plot_confusion(matrix: np.ndarray, names: Sequence[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size = 2.5 + 0.6 * len(names)
    fig, ax = plt.subplots(figsize=(size, size))
    rows = matrix.sum(1, keepdims=True)
    shares = np.divide(matrix, rows, out=np.zeros(matrix.shape, dtype=float), where=rows > 0)
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(
                j, i, str(matrix[i, j]), ha="center", va="center", color="white" if shares[i, j] > 0.5 else "black"
            )
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix\n(colour: share of the true class)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_reliability(reliability: dict[str, Any], ece: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = np.asarray(reliability["bin_count"])
    accuracy = np.asarray(reliability["bin_accuracy"], dtype=float)
    n_bins = len(count)
    centres = (np.arange(n_bins) + 0.5) / n_bins
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    filled = count > 0
    ax.bar(centres[filled], accuracy[filled], width=1 / n_bins, edgecolor="black", alpha=0.8, label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    for x, y, n in zip(centres[filled], accuracy[filled], count[filled], strict=True):
        ax.text(x, min(y + 0.02, 0.97), str(int(n)), ha="center", fontsize=7)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top class)")
    ax.set_ylabel("observed accuracy")
    ax.set_title(f"Reliability, ECE {_fmt(ece)}\n(numbers: images per bin)", fontsize=10)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
