"""``sgps data ...``: what the shared data holds (tasks, classes, images per meta-split)."""

from __future__ import annotations

import argparse
from collections.abc import Collection
from typing import Any

# --------------------------------------------------------------------------------------------------
# sgps data ...


def register_data(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="inspect the medical image tasks")
    commands = data.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    summary = commands.add_parser(
        "summary",
        help="table of every task: family, modality, classes, images, split membership",
        description="Print every task with its family, modality, number of classes and images, "
        "and its meta-learning split (held_out, or its number of meta_train/meta_val classes).",
    )
    summary.add_argument(
        "--data-dir", default=None, help="folder of task folders (default: SGPS_DATA_DIR or ../shared/data)"
    )
    summary.add_argument("--splits", default=None, help="splits YAML (default: the packaged splits.yaml)")
    summary.add_argument(
        "--image-size",
        type=int,
        default=None,
        metavar="PX",
        help="also decode every image at PX pixels (building the array cache) and count what was decoded",
    )
    summary.set_defaults(handler=_data_summary)


def _data_summary(args: argparse.Namespace) -> int:
    from ..data.loading import load_task_arrays
    from ..data.registry import list_tasks
    from ..data.splits import load_splits

    tasks = list_tasks(args.data_dir)
    splits = load_splits(args.splits)
    rows = []
    totals = {"classes": 0, "images": 0, "meta_train": 0, "meta_val": 0, "held_out": 0}
    for task in tasks:
        counts = task.class_counts
        if args.image_size is not None:
            counts = load_task_arrays(task.name, args.image_size, args.data_dir).class_counts()
        split = _split_cell(task.name, list(counts), splits, totals)
        totals["classes"] += len(counts)
        totals["images"] += sum(counts.values())
        rows.append([task.name, task.family, str(len(counts)), str(sum(counts.values())), split, task.modality])
    rows.append(
        [
            f"total: {len(tasks)} tasks",
            "",
            str(totals["classes"]),
            str(totals["images"]),
            f"{totals['meta_train']}/{totals['meta_val']}/{totals['held_out']} train/val/held-out classes",
            "",
        ]
    )
    header = ["task", "family", "classes", "images", "split (meta_train/meta_val)", "modality"]
    print(_format_table(header, rows, right_aligned={2, 3}))
    return 0


def _split_cell(task: str, classes: list[str], splits: Any, totals: dict[str, int]) -> str:
    """The split column of one task; adds its class counts to ``totals``."""
    if task in splits.held_out_tasks:
        totals["held_out"] += len(classes)
        return "held_out"
    if task not in splits.meta_train and task not in splits.meta_val:
        return "not in splits"
    n_train = sum(c in splits.meta_train.get(task, ()) for c in classes)
    n_val = sum(c in splits.meta_val.get(task, ()) for c in classes)
    totals["meta_train"] += n_train
    totals["meta_val"] += n_val
    return f"{n_train}/{n_val}"


def _format_table(header: list[str], rows: list[list[str]], right_aligned: Collection[int] = ()) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        parts = [
            c.rjust(w) if i in right_aligned else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows[:-1]), rule, line(rows[-1])])
