"""The ``sgps`` command line.

Each command group is a function that adds its subparsers and sets ``handler`` on each of them;
adding a command means writing one ``_register_*`` function and listing it in :data:`COMMANDS`.
Handlers import what they need lazily, so ``sgps --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Collection, Sequence
from typing import Any

from .errors import SGPSError

Subparsers = Any  # argparse's _SubParsersAction is private; this alias documents intent


# --------------------------------------------------------------------------------------------------
# sgps data ...


def _register_data(subparsers: Subparsers) -> None:
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
    from .data.loading import load_task_arrays
    from .data.registry import list_tasks
    from .data.splits import load_splits

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
            c.rjust(w) if i in right_aligned else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows[:-1]), rule, line(rows[-1])])


# --------------------------------------------------------------------------------------------------
# sgps quickstart / synthesize / predict / push / train


def _register_quickstart(subparsers: Subparsers) -> None:
    quick = subparsers.add_parser(
        "quickstart",
        help="synthesize and score classifiers for the held-out tasks with the bundled synthesizer",
        description="For every held-out task of the shared data: pick up to N classes, one (or --shots) image and the "
        "clinical text per class, synthesize a classifier in one forward pass, score it on the other images and save it.",
    )
    quick.add_argument("--synthesizer", default=None, help="checkpoint folder or Hub id (default: the bundled DEFAULT_CHECKPOINT)")
    quick.add_argument("--data-dir", default=None, help="folder of task folders (default: SGPS_DATA_DIR or ../shared/data)")
    quick.add_argument("--out", default="outputs/quickstart", help="where the synthesized classifiers are saved")
    quick.add_argument("--ways", type=int, default=5)
    quick.add_argument("--shots", type=int, default=1)
    quick.add_argument("--seed", type=int, default=0)
    quick.set_defaults(handler=_quickstart)


def _quickstart(args: argparse.Namespace) -> int:
    from . import DEFAULT_CHECKPOINT
    from .quickstart import format_results, run_quickstart

    results = run_quickstart(args.synthesizer or DEFAULT_CHECKPOINT, args.data_dir, args.out, n_way=args.ways, shots=args.shots, seed=args.seed)
    print(format_results(results))
    print(f"Classifiers saved under {args.out}/ (load one with timm.create_model('local-dir:<folder>', pretrained=True)).")
    return 0


def _register_synthesize(subparsers: Subparsers) -> None:
    synth = subparsers.add_parser("synthesize", help="synthesize a classifier from a task file (YAML/JSON)")
    synth.add_argument("--task", required=True, help="task file: name, modality, classes (name, description, images)")
    synth.add_argument("--out", required=True, help="output folder of the classifier (timm layout + model card)")
    synth.add_argument("--synthesizer", default=None, help="checkpoint folder or Hub id (default: bundled)")
    synth.set_defaults(handler=_synthesize)


def _synthesize(args: argparse.Namespace) -> int:
    from . import DEFAULT_CHECKPOINT, SGPSProcessor, SGPSSynthesizer, TaskSpec

    task = TaskSpec.from_file(args.task)
    checkpoint = args.synthesizer or DEFAULT_CHECKPOINT
    classifier = SGPSSynthesizer.from_pretrained(checkpoint).synthesize(task, processor=SGPSProcessor.from_pretrained(checkpoint))
    print(f"Saved {classifier} to {classifier.save_pretrained(args.out)}")
    return 0


def _register_predict(subparsers: Subparsers) -> None:
    predict = subparsers.add_parser("predict", help="classify images with a synthesized classifier")
    predict.add_argument("--classifier", required=True, help="classifier folder or Hub id")
    predict.add_argument("images", nargs="+", help="image files")
    predict.add_argument("--top-k", type=int, default=3)
    predict.set_defaults(handler=_predict)


def _predict(args: argparse.Namespace) -> int:
    from .classifier import SynthesizedClassifier

    classifier = SynthesizedClassifier.from_pretrained(args.classifier)
    for path, probs in zip(args.images, classifier.predict(args.images)):
        top = sorted(probs.items(), key=lambda kv: -kv[1])[: args.top_k]
        print(f"{path}: " + ", ".join(f"{label} {p:.3f}" for label, p in top))
    return 0


def _register_push(subparsers: Subparsers) -> None:
    push = subparsers.add_parser("push", help="upload a saved classifier to a Hub repo (respects HF_ENDPOINT)")
    push.add_argument("--classifier", required=True, help="classifier folder")
    push.add_argument("--repo-id", required=True, help="e.g. my-user/my-classifier")
    push.add_argument("--private", action="store_true")
    push.set_defaults(handler=_push)


def _push(args: argparse.Namespace) -> int:
    from .classifier import SynthesizedClassifier

    url = SynthesizedClassifier.from_pretrained(args.classifier).push_to_hub(args.repo_id, private=args.private or None)
    print(f"Pushed to {args.repo_id}: {url}")
    return 0


def _register_train(subparsers: Subparsers) -> None:
    from .training.config import add_arguments

    train = subparsers.add_parser("train", help="meta-train a synthesizer (same as scripts/train.py)")
    add_arguments(train)
    train.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> int:
    from .training import train
    from .training.config import config_from_args

    print(f"Exported synthesizer: {train(config_from_args(args), resume=args.resume)}")
    return 0


# --------------------------------------------------------------------------------------------------
# Entry point

#: Functions that add one command group each to the top-level subparsers.
COMMANDS: list[Callable[[Subparsers], None]] = [
    _register_data, _register_quickstart, _register_synthesize, _register_predict, _register_push, _register_train,
]


def build_parser() -> argparse.ArgumentParser:
    """The ``sgps`` argument parser with every registered command."""
    parser = argparse.ArgumentParser(prog="sgps", description="Synthesize few-shot medical image classifiers.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in COMMANDS:
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``sgps`` command line; returns the exit status (2 for a user error)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except SGPSError as exc:
        print(f"sgps: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
