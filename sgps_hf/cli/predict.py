"""``sgps predict``: classify files, folders and glob patterns; text, CSV or JSON Lines; saliency overlays."""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from pathlib import Path
from typing import Any, TextIO

FORMATS = ("text", "csv", "jsonl")


def register(subparsers: argparse._SubParsersAction) -> None:
    predict = subparsers.add_parser(
        "predict",
        help="classify images, folders or glob patterns with a synthesized classifier",
        description="One result per image: top class, probabilities, the conformal prediction set (when the "
        "classifier was calibrated with `sgps calibrate`), whether it abstained (top probability below "
        "--threshold) and, for a file that cannot be read, the error (the other files go on).",
    )
    predict.add_argument("--classifier", required=True, help="classifier folder or Hub id")
    predict.add_argument("images", nargs="+", help="image files, folders (searched recursively) or quoted globs")
    predict.add_argument(
        "--format", choices=FORMATS, default=None, help="output format (default: from --output's suffix, else text)"
    )
    predict.add_argument("--output", default=None, help="write the results to this new file (default: stdout)")
    predict.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="abstain (mark 'uncertain') when the top probability is below this value in [0, 1]",
    )
    predict.add_argument("--top-k", type=int, default=3, help="classes shown per image in the text format")
    predict.add_argument(
        "--explain", metavar="OUTDIR", default=None, help="also write a Grad-CAM saliency overlay PNG per image here"
    )
    predict.add_argument("--batch-size", type=int, default=32)
    predict.add_argument("--quiet", action="store_true", help="no progress bar")
    predict.set_defaults(handler=run)


def _format(args: argparse.Namespace) -> str:
    if args.format:
        return args.format
    suffix = Path(args.output).suffix.lower() if args.output else ""
    return {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl"}.get(suffix, "text")


def run(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ..models.sgps.classifier import SynthesizedClassifier
    from ..trust.batch import check_new_file, classify_files, expand_inputs

    if args.threshold is not None and not 0 <= args.threshold <= 1:
        raise UsageError(f"--threshold must be between 0 and 1, got {args.threshold}.")
    if args.batch_size < 1 or args.top_k < 1:
        raise UsageError("--batch-size and --top-k must be at least 1.")
    output = check_new_file(args.output) if args.output else None
    explain_dir = _check_explain_dir(args.explain) if args.explain else None
    classifier = SynthesizedClassifier.from_pretrained(args.classifier)
    files = expand_inputs(args.images)
    progress = not args.quiet and len(files) > args.batch_size
    rows = classify_files(classifier, files, args.threshold, args.batch_size, progress)
    fmt = _format(args)
    if output is None:
        _write(rows, fmt, classifier.label_names, sys.stdout, args.top_k)
    else:
        with output.open("x", newline="", encoding="utf-8") as handle:
            _write(rows, fmt, classifier.label_names, handle, args.top_k)
    if explain_dir is not None:
        _write_overlays(classifier, files, rows, explain_dir)
    failed = sum(1 for r in rows if r["error"])
    if failed:
        print(
            f"sgps: {failed} of {len(rows)} file(s) could not be classified (see their error rows).", file=sys.stderr
        )
    if output is not None:
        print(f"Wrote {len(rows)} row(s) to {output}", file=sys.stderr)
    return 2 if failed == len(rows) else 0


def _write(rows: list[dict[str, Any]], fmt: str, label_names: list[str], out: TextIO, top_k: int) -> None:
    from ..trust.batch import csv_rows

    if fmt == "jsonl":
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    elif fmt == "csv":
        header, flat = csv_rows(rows, label_names)
        writer = csv.DictWriter(out, fieldnames=header)
        writer.writeheader()
        writer.writerows(flat)
    else:
        for row in rows:
            out.write(_text_line(row, top_k) + "\n")


def _text_line(row: dict[str, Any], top_k: int) -> str:
    if row["error"]:
        return f"{row['file']}\tERROR: {row['error']}"
    top = sorted(row["probabilities"].items(), key=lambda kv: -kv[1])[:top_k]
    text = ", ".join(f"{label} {p:.3f}" for label, p in top)
    if row["prediction_set"] is not None:
        members = ", ".join(row["prediction_set"]) or "none: no class is plausible enough, do not trust this case"
        text += f"; {100 * row['coverage']:g}% set: {{{members}}}"
    if row["abstained"]:
        text = f"UNCERTAIN (top {row['top_probability']:.3f} below the threshold); " + text
    return f"{row['file']}\t{text}"


def _check_explain_dir(folder: str) -> Path:
    from ..errors import OutputPathError

    path = Path(folder)
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise OutputPathError(f"--explain {folder!r} must be a new or empty folder (sgps never overwrites files).")
    return path


def _write_overlays(classifier: Any, files: list[Path], rows: list[dict[str, Any]], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    good = [(i, f) for i, (f, r) in enumerate(zip(files, rows, strict=True)) if not r["error"]]
    for start in range(0, len(good), 32):
        chunk = good[start : start + 32]
        explanations = classifier.explain([f for _, f in chunk])
        for (index, file), explanation in zip(chunk, explanations, strict=True):
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{index:05d}-{file.stem}-{explanation.label}") + ".png"
            explanation.overlay(file).save(folder / name)
    print(f"Wrote {len(good)} saliency overlay(s) to {folder}", file=sys.stderr)
