"""``sgps quickstart / synthesize / predict / push / train / update / demo / evaluate``: one register function per
command."""

from __future__ import annotations

import argparse
import sys

# --------------------------------------------------------------------------------------------------
# sgps quickstart / synthesize / predict / push / train


def register_quickstart(subparsers: argparse._SubParsersAction) -> None:
    quick = subparsers.add_parser(
        "quickstart",
        help="synthesize and score classifiers for the held-out tasks with the bundled synthesizer",
        description="For every held-out task of the shared data: pick up to N classes, one (or --shots) image and the "
        "clinical text per class, synthesize a classifier in one forward pass, score it on the other images (mean "
        "over several random draws of the support images) and save it.",
    )
    quick.add_argument(
        "--synthesizer", default=None, help="checkpoint folder or Hub id (default: the bundled DEFAULT_CHECKPOINT)"
    )
    quick.add_argument(
        "--data-dir", default=None, help="folder of task folders (default: SGPS_DATA_DIR or ../shared/data)"
    )
    quick.add_argument("--out", default="outputs/quickstart", help="where the synthesized classifiers are saved")
    quick.add_argument("--ways", type=int, default=5)
    quick.add_argument("--shots", type=int, default=1)
    quick.add_argument("--seed", type=int, default=0)
    quick.add_argument(
        "--draws",
        type=int,
        default=5,
        help=(
            "random draws of the support images per task; the mean and range are reported, the first draw's "
            "classifier saved"
        ),
    )
    quick.set_defaults(handler=_quickstart)


def _quickstart(args: argparse.Namespace) -> int:
    from ..hub.checkpoints import DEFAULT_CHECKPOINT
    from ..quickstart import format_results, run_quickstart

    results = run_quickstart(
        args.synthesizer or DEFAULT_CHECKPOINT,
        args.data_dir,
        args.out,
        n_way=args.ways,
        shots=args.shots,
        seed=args.seed,
        draws=args.draws,
    )
    print(format_results(results))
    print(
        f"Classifiers saved under {args.out}/ (load one with timm.create_model('local-dir:<folder>', "
        "pretrained=True))."
    )
    return 0


def register_synthesize(subparsers: argparse._SubParsersAction) -> None:
    synth = subparsers.add_parser("synthesize", help="synthesize a classifier from a task file (YAML/JSON)")
    synth.add_argument("--task", required=True, help="task file: name, modality, classes (name, description, images)")
    synth.add_argument("--out", required=True, help="output folder of the classifier (timm layout + model card)")
    synth.add_argument("--synthesizer", default=None, help="checkpoint folder or Hub id (default: bundled)")
    synth.add_argument(
        "--force", action="store_true", help="replace an --out classifier that holds updates (its version history)"
    )
    synth.set_defaults(handler=_synthesize)


def _synthesize(args: argparse.Namespace) -> int:
    from ..hub.checkpoints import DEFAULT_CHECKPOINT
    from ..hub.classifier_folder import check_save_target
    from ..hub.classifier_versions import check_history
    from ..models.sgps.modeling_sgps import SGPSSynthesizer
    from ..models.sgps.processing_sgps import SGPSProcessor
    from ..task import TaskSpec

    # before the synthesis: a folder of other files, a file, a read-only place or a classifier with updates
    check_history(check_save_target(args.out), None, args.force)
    task = TaskSpec.from_file(args.task)
    checkpoint = args.synthesizer or DEFAULT_CHECKPOINT
    classifier = SGPSSynthesizer.from_pretrained(checkpoint).synthesize(
        task, processor=SGPSProcessor.from_pretrained(checkpoint)
    )
    print(f"Saved {classifier} to {classifier.save_pretrained(args.out, overwrite=args.force)}")
    return 0


def register_push(subparsers: argparse._SubParsersAction) -> None:
    push = subparsers.add_parser("push", help="upload a saved classifier to a Hub repo (respects HF_ENDPOINT)")
    push.add_argument("--classifier", required=True, help="classifier folder")
    push.add_argument("--repo-id", required=True, help="e.g. my-user/my-classifier")
    push.add_argument("--private", action="store_true")
    push.add_argument(
        "--include-support",
        action="store_true",
        help="also upload the support images (patient data; left out by default, only fingerprints go)",
    )
    push.set_defaults(handler=_push)


def _push(args: argparse.Namespace) -> int:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    from ..errors import UsageError
    from ..models.sgps.classifier import SynthesizedClassifier

    try:
        validate_repo_id(args.repo_id)  # before loading anything or touching the network
        if "/" not in args.repo_id:
            raise HFValidationError("it needs a namespace")
    except HFValidationError as exc:
        raise UsageError(
            f"--repo-id {args.repo_id!r} is not a valid Hub repo id ({exc}); use the form user-or-org/name."
        ) from None
    url = SynthesizedClassifier.from_pretrained(args.classifier).push_to_hub(
        args.repo_id, private=args.private or None, include_support=args.include_support
    )
    print(f"Pushed to {args.repo_id}: {url}")
    return 0


def register_train(subparsers: argparse._SubParsersAction) -> None:
    from ..training.config import add_arguments

    train = subparsers.add_parser("train", help="train a synthesizer (same as scripts/train.py)")
    add_arguments(train)
    train.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> int:
    from ..training import train
    from ..training.config import config_from_args

    print(f"Exported synthesizer: {train(config_from_args(args), resume=args.resume)}")
    return 0


# --------------------------------------------------------------------------------------------------
# sgps update / demo


def register_update(subparsers: argparse._SubParsersAction) -> None:
    update = subparsers.add_parser(
        "update",
        help="add newly verified cases to classes of a classifier and re-synthesize it (keeps a version history)",
        description="Re-synthesize a saved classifier from its stored support images plus new cases. The previous "
        "version's task file goes to versions/, the model card gains a changelog entry.",
    )
    update.add_argument(
        "--classifier", required=True, help="classifier folder written by `sgps synthesize` (with support/)"
    )
    update.add_argument(
        "--add",
        required=True,
        action="append",
        nargs="+",
        metavar="CLASS=IMAGE",
        help="a new case, e.g. --add melanoma=case17.png melanoma=case18.dcm (repeatable)",
    )
    update.add_argument(
        "--out", default=None, help="write the updated classifier here (default: update the folder in place)"
    )
    update.add_argument(
        "--synthesizer",
        default=None,
        help=(
            "checkpoint folder or Hub id (default: the one that made the classifier if it is a local folder, else "
            "the bundled one)"
        ),
    )
    update.set_defaults(handler=_update)


def _update(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..hub.atomic import folder_lock
    from ..hub.checkpoints import DEFAULT_CHECKPOINT, resolve_checkpoint
    from ..hub.classifier_folder import check_save_target
    from ..models.sgps.classifier import SynthesizedClassifier
    from ..models.sgps.modeling_sgps import SGPSSynthesizer
    from ..models.sgps.processing_sgps import SGPSProcessor

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


def register_demo(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser(
        "demo", help="launch the Gradio app (build a task, synthesize, try, adapt, download/push)"
    )
    demo.add_argument(
        "--synthesizer", default=None, help="checkpoint folder or Hub id (default: the bundled DEFAULT_CHECKPOINT)"
    )
    demo.add_argument(
        "--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 exposes it to your network)"
    )
    demo.add_argument("--port", type=int, default=7860)
    demo.add_argument(
        "--share", action="store_true", help="also open a public gradio.live link (off by default: patient data)"
    )
    demo.add_argument(
        "--data-dir", default=None, help="folder of example tasks (default: SGPS_DATA_DIR or ../shared/data; optional)"
    )
    demo.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    from ..app.ui import build_demo, launch_demo

    launch_demo(build_demo(args.synthesizer, data_dir=args.data_dir), host=args.host, port=args.port, share=args.share)
    return 0


def register_evaluate(subparsers: argparse._SubParsersAction) -> None:
    from .evaluate import add_arguments

    evaluate = subparsers.add_parser(
        "evaluate", help="few-shot benchmark against baselines (same as scripts/run_benchmark.py)"
    )
    add_arguments(evaluate)
    evaluate.set_defaults(handler=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluate import run

    results = run(args, sys.argv[1:])
    print(f"Wrote {args.out}/results.json and results.md ({results['run']['wall_seconds']:.0f} s).")
    return 0
