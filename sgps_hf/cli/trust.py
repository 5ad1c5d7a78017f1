"""``sgps evaluate-classifier`` and ``sgps calibrate``: check a synthesized classifier on your own labelled cases."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    evaluate = subparsers.add_parser(
        "evaluate-classifier",
        help="evaluate a saved classifier on your own labelled folder (report, confusion matrix, calibration)",
        description="Classify every image of an imagefolder folder (<class>/<image>, optionally with a metadata.csv "
        "of per-image columns) and write report.md, results.json, predictions.csv, confusion_matrix.png and "
        "reliability.png: accuracy and balanced accuracy with 95%% intervals, per-class sensitivity, specificity "
        "and PPV, AUROC, ECE and, with --subgroups, per-subgroup accuracy and calibration. The numbers also go "
        "into the classifier's model card (model-index), stated as measured on your own data.",
    )
    evaluate.add_argument("--classifier", required=True, help="classifier folder (or Hub id, with --no-card)")
    evaluate.add_argument("--data", required=True, help="labelled folder: <class>/<image>, optional metadata.csv")
    evaluate.add_argument(
        "--subgroups",
        nargs="+",
        default=[],
        metavar="COLUMN",
        help="metadata columns to audit, e.g. sex fitzpatrick age",
    )
    evaluate.add_argument("--out", default="classifier-evaluation", help="report folder (new, or an earlier report)")
    evaluate.add_argument(
        "--min-subgroup-size", type=int, default=30, help="flag subgroups with fewer images as too small to conclude"
    )
    evaluate.add_argument("--batch-size", type=int, default=64)
    evaluate.add_argument(
        "--no-card", action="store_true", help="leave the classifier folder and its card as they are"
    )
    evaluate.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_skip_other_classes(evaluate)
    evaluate.set_defaults(handler=_evaluate)

    calibrate = subparsers.add_parser(
        "calibrate",
        help="calibrate conformal prediction sets with a coverage guarantee on your own labelled folder",
        description="Split conformal prediction: from labelled cases the classifier was not synthesized from, store a "
        "threshold in the classifier folder so that `sgps predict` and `predict_sets` return, per image, a set of "
        "classes containing the true class with probability >= --coverage (for cases like these).",
    )
    calibrate.add_argument("--classifier", required=True, help="classifier folder (it is updated in place)")
    calibrate.add_argument("--data", required=True, help="labelled folder: <class>/<image>")
    calibrate.add_argument("--coverage", type=float, default=0.9, help="guaranteed coverage, e.g. 0.9")
    calibrate.add_argument("--method", choices=("lac", "aps"), default="lac", help="conformal score (default lac)")
    calibrate.add_argument("--batch-size", type=int, default=64)
    calibrate.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_skip_other_classes(calibrate)
    calibrate.set_defaults(handler=_calibrate)


def _add_skip_other_classes(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--skip-other-classes",
        action="store_true",
        help="leave out cases of classes the classifier does not have (default: they are an error)",
    )


def _other_classes(args: argparse.Namespace) -> str:
    return "skip" if args.skip_other_classes else "error"


def _print_left_out(left_out: dict[str, int]) -> None:
    from ..trust.own_cases import describe_left_out

    if left_out:
        print(f"Left out {describe_left_out(left_out)}")


def _local_folder(classifier: str, flag: str) -> Path:
    from ..errors import UsageError

    path = Path(classifier)
    if not path.is_dir():
        raise UsageError(
            f"--classifier {classifier!r} is not a local folder, and {flag} writes into the classifier folder: "
            "download it first (huggingface-cli download) or pass --no-card."
        )
    return path


def _evaluate(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ..models.sgps.classifier import SynthesizedClassifier
    from ..trust.own_cases import evaluate_classifier
    from ..trust.report import check_report_folder, write_report

    if args.batch_size < 1 or args.min_subgroup_size < 1:
        raise UsageError("--batch-size and --min-subgroup-size must be at least 1.")
    folder = None if args.no_card else _local_folder(args.classifier, "evaluate-classifier (without --no-card)")
    check_report_folder(args.out)
    classifier = SynthesizedClassifier.from_pretrained(args.classifier)
    evaluation = evaluate_classifier(
        classifier,
        args.data,
        args.subgroups,
        batch_size=args.batch_size,
        progress=not args.quiet,
        min_subgroup_size=args.min_subgroup_size,
        other_classes=_other_classes(args),
    )
    report = write_report(evaluation, args.out)
    _print_left_out(evaluation.left_out)
    summary = evaluation.summary()
    acc, bal = evaluation.scores["accuracy"], evaluation.scores["balanced_accuracy"]
    print(
        f"{evaluation.scores['num_images']} images: "
        f"accuracy {_f(acc['value'])} [{_f(acc['low'])}, {_f(acc['high'])}], "
        f"balanced accuracy {_f(bal['value'])} [{_f(bal['low'])}, {_f(bal['high'])}], "
        f"AUROC {_f(summary['auroc'])}, ECE {_f(summary['ece'])}"
    )
    for column, audit in evaluation.subgroups.items():
        groups = ", ".join(
            f"{name} {g['accuracy']['value']:.3f} (n={g['n']}{', too small' if g['too_small'] else ''})"
            for name, g in audit["groups"].items()
        )
        print(f"  {column}: {groups}")
    print(f"Report: {report}")
    if folder is not None:
        classifier.info["metrics"] = {**summary, "num_images": evaluation.scores["num_images"]}
        classifier.save_pretrained(folder)
        print(f"Model card of {folder} updated with these numbers (as measured on your own data).")
    return 0


def _f(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{value:.3f}"


def _calibrate(args: argparse.Namespace) -> int:
    from ..models.sgps.classifier import SynthesizedClassifier

    folder = _local_folder(args.classifier, "calibrate")
    classifier = SynthesizedClassifier.from_pretrained(folder)
    result = classifier.calibrate_conformal(
        args.data,
        coverage=args.coverage,
        method=args.method,
        batch_size=args.batch_size,
        progress=not args.quiet,
        other_classes=_other_classes(args),
    )
    _print_left_out(result.get("left_out", {}))
    classifier.save_pretrained(folder)
    print(
        f"Calibrated on {result['num_cases']} cases ({result['method']}, threshold {result['threshold']:.4f}): "
        f"prediction sets now hold the true class with probability >= {result['coverage']:g} for cases like these. "
        f"Saved to {folder}."
    )
    return 0
