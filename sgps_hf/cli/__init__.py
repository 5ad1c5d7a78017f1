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

from ..errors import SGPSError

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
    from ..hub.checkpoints import DEFAULT_CHECKPOINT
    from ..quickstart import format_results, run_quickstart

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
    from ..hub.checkpoints import DEFAULT_CHECKPOINT
    from ..models.sgps.modeling_sgps import SGPSSynthesizer
    from ..models.sgps.processing_sgps import SGPSProcessor
    from ..task import TaskSpec

    from ..hub.classifier_folder import check_save_target

    check_save_target(args.out)  # before the synthesis: a folder of other files, a file or a read-only place
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
    from ..models.sgps.classifier import SynthesizedClassifier

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
    push.add_argument("--include-support", action="store_true",
                      help="also upload the support images (patient data; left out by default, only fingerprints go)")
    push.set_defaults(handler=_push)


def _push(args: argparse.Namespace) -> int:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    from ..models.sgps.classifier import SynthesizedClassifier
    from ..errors import UsageError

    try:
        validate_repo_id(args.repo_id)  # before loading anything or touching the network
        if "/" not in args.repo_id:
            raise HFValidationError("it needs a namespace")
    except HFValidationError as exc:
        raise UsageError(f"--repo-id {args.repo_id!r} is not a valid Hub repo id ({exc}); use the form user-or-org/name.") from None
    url = SynthesizedClassifier.from_pretrained(args.classifier).push_to_hub(
        args.repo_id, private=args.private or None, include_support=args.include_support
    )
    print(f"Pushed to {args.repo_id}: {url}")
    return 0


def _register_train(subparsers: Subparsers) -> None:
    from ..training.config import add_arguments

    train = subparsers.add_parser("train", help="meta-train a synthesizer (same as scripts/train.py)")
    add_arguments(train)
    train.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> int:
    from ..training import train
    from ..training.config import config_from_args

    print(f"Exported synthesizer: {train(config_from_args(args), resume=args.resume)}")
    return 0


# --------------------------------------------------------------------------------------------------
# sgps update / demo


def _register_update(subparsers: Subparsers) -> None:
    update = subparsers.add_parser(
        "update",
        help="add newly verified cases to classes of a classifier and re-synthesize it (keeps a version history)",
        description="Re-synthesize a saved classifier from its stored support images plus new cases. The previous "
        "version's task file goes to versions/, the model card gains a changelog entry.",
    )
    update.add_argument("--classifier", required=True, help="classifier folder written by `sgps synthesize` (with support/)")
    update.add_argument("--add", required=True, action="append", nargs="+", metavar="CLASS=IMAGE",
                        help="a new case, e.g. --add melanoma=case17.png melanoma=case18.dcm (repeatable)")
    update.add_argument("--out", default=None, help="write the updated classifier here (default: update the folder in place)")
    update.add_argument("--synthesizer", default=None,
                        help="checkpoint folder or Hub id (default: the one that made the classifier if it is a local folder, else the bundled one)")
    update.set_defaults(handler=_update)


def _update(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..hub.atomic import folder_lock
    from ..hub.checkpoints import DEFAULT_CHECKPOINT, resolve_checkpoint
    from ..models.sgps.classifier import SynthesizedClassifier
    from ..models.sgps.modeling_sgps import SGPSSynthesizer
    from ..models.sgps.processing_sgps import SGPSProcessor
    from ..hub.classifier_folder import check_save_target

    destination = check_save_target(args.out or args.classifier)
    # The whole load -> re-synthesize -> save cycle holds the destination's writer lock, so two updates of one
    # folder run one after the other and neither loses the other's cases.
    with folder_lock(destination):
        classifier = SynthesizedClassifier.from_pretrained(args.classifier)
        additions = _parse_additions([item for group in args.add for item in group], classifier.label_names)
        recorded = resolve_checkpoint(classifier.info["synthesizer"]["name_or_path"])
        checkpoint = args.synthesizer or (recorded if Path(recorded).is_dir() else DEFAULT_CHECKPOINT)
        synth = SGPSSynthesizer.from_pretrained(checkpoint)
        updated = synth.update(classifier, additions, processor=SGPSProcessor.from_pretrained(checkpoint))
        folder = updated.save_pretrained(args.out or args.classifier)
    print(f"Version {updated.version} saved to {folder}: {updated.info['history'][-1]['summary']}")
    return 0


def _parse_additions(items: list[str], label_names: list[str]) -> dict[str, list[str]]:
    """``CLASS=IMAGE`` items -> {class: [images]}; the class is the longest known name before an '='."""
    from ..errors import InvalidTaskError

    additions: dict[str, list[str]] = {}
    for item in items:
        splits = [i for i, ch in enumerate(item) if ch == "=" and item[:i] in label_names]
        if not splits:
            raise InvalidTaskError(f"--add {item!r} is not CLASS=IMAGE with CLASS one of {label_names}.")
        cut = max(splits)
        additions.setdefault(item[:cut], []).append(item[cut + 1 :])
    return additions


def _register_demo(subparsers: Subparsers) -> None:
    demo = subparsers.add_parser("demo", help="launch the Gradio app (build a task, synthesize, try, adapt, download/push)")
    demo.add_argument("--synthesizer", default=None, help="checkpoint folder or Hub id (default: the bundled DEFAULT_CHECKPOINT)")
    demo.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 exposes it to your network)")
    demo.add_argument("--port", type=int, default=7860)
    demo.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default: patient data)")
    demo.add_argument("--data-dir", default=None, help="folder of example tasks (default: SGPS_DATA_DIR or ../shared/data; optional)")
    demo.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    from ..app.ui import build_demo, launch_demo

    launch_demo(build_demo(args.synthesizer, data_dir=args.data_dir), host=args.host, port=args.port, share=args.share)
    return 0


def _register_evaluate(subparsers: Subparsers) -> None:
    from .evaluate import add_arguments

    evaluate = subparsers.add_parser("evaluate", help="few-shot benchmark against baselines (same as scripts/evaluate.py)")
    add_arguments(evaluate)
    evaluate.set_defaults(handler=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluate import run

    results = run(args, sys.argv[1:])
    print(f"Wrote {args.out}/results.json and results.md ({results['run']['wall_seconds']:.0f} s).")
    return 0


# --------------------------------------------------------------------------------------------------
# Entry point

#: Functions that add one command group each to the top-level subparsers.
COMMANDS: list[Callable[[Subparsers], None]] = [
    _register_data, _register_quickstart, _register_synthesize, _register_predict, _register_push, _register_train,
    _register_update, _register_demo, _register_evaluate,
]

from ..segmentation.cli import register as _register_segment  # noqa: E402  (sgps segment ...)

COMMANDS.append(_register_segment)


def build_parser() -> argparse.ArgumentParser:
    """The ``sgps`` argument parser with every registered command."""
    parser = argparse.ArgumentParser(prog="sgps", description="Synthesize few-shot medical image classifiers.")
    parser.add_argument("--debug", action="store_true", help="on an error, show the full traceback instead of one line (anywhere on the line)")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in COMMANDS:
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``sgps`` command line; returns the exit status (2 for a user error, 1 for a bug).

    Every error is one line on stderr that says what to fix; ``--debug`` (anywhere before ``--``) shows the
    traceback instead.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    end = argv.index("--") if "--" in argv else len(argv)
    debug = "--debug" in argv[:end]
    argv = [a for a in argv[:end] if a != "--debug"] + argv[end:]
    args = build_parser().parse_args(argv)
    return run_handler(args.handler, args, debug)


def run_handler(handler: Callable[[argparse.Namespace], Any], args: argparse.Namespace, debug: bool = False) -> int:
    """Call one command's handler and turn any exception into one ``sgps: error: ...`` line and an exit status."""
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        if debug:
            raise
        print("sgps: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place where every error becomes a message
        if debug:
            raise
        message, status = describe_error(exc)
        print(f"sgps: error: {message}", file=sys.stderr)
        return status


_MAX_MESSAGE = 600


def describe_error(exc: BaseException) -> tuple[str, int]:
    """(one-line message saying what to fix, exit status): 2 for what the user can fix, 1 for a bug in sgps_hf."""
    import errno

    status = 2
    if isinstance(exc, SGPSError):
        message = str(exc)
    elif _is_hub_error(exc):
        message = f"the Hugging Face Hub refused the request ({type(exc).__name__}: {exc}); check the repo id, your token and the network"
    elif isinstance(exc, OSError):
        where = " ".join(str(p) for p in (exc.filename, exc.filename2) if p) or "a file"
        reason = exc.strerror or str(exc)
        hints = {
            errno.ENOSPC: "free some disk space or write elsewhere",
            errno.EDQUOT: "free some space in your quota or write elsewhere",
            errno.EROFS: "the file system is read-only: write elsewhere",
            errno.EACCES: "you lack permission there: choose a folder you can write to (or read)",
            errno.EPERM: "the operation is not permitted there: choose another folder",
            errno.ENOENT: "check the path",
            errno.EEXIST: "choose another output path",
            errno.ENOTDIR: "a part of the path is a file, not a folder: check the path",
            errno.EISDIR: "give a file, not a folder",
            errno.ENAMETOOLONG: "use a shorter path",
        }
        message = f"{reason}: {where}; {hints.get(exc.errno, 'check the path and try again')}"
    elif isinstance(exc, ValueError):  # invalid values from the libraries underneath (configs, arguments)
        message = f"{exc} (rerun with --debug for the traceback)"
    elif isinstance(exc, MemoryError):
        message = "out of memory; use fewer or smaller images, or a machine with more memory"
    else:
        status = 1
        message = f"unexpected {type(exc).__name__}: {exc} (probably a bug in sgps-hf: rerun with --debug for the traceback and report it)"
    message = " ".join(message.split())
    if len(message) > _MAX_MESSAGE:
        message = message[: _MAX_MESSAGE - 3] + "..."
    return message, status


def _is_hub_error(exc: BaseException) -> bool:
    try:
        from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError
    except ImportError:  # older huggingface_hub
        from huggingface_hub.utils import HfHubHTTPError, HFValidationError, LocalEntryNotFoundError
    try:
        from requests import RequestException
    except ImportError:  # pragma: no cover
        RequestException = ()  # type: ignore[assignment]
    return isinstance(exc, (HfHubHTTPError, HFValidationError, LocalEntryNotFoundError, RequestException))


