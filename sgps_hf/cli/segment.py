"""``sgps segment synthesize | predict | push``: the segmentation commands of the ``sgps`` CLI."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    segment = subparsers.add_parser(
        "segment", help="few-shot segmentation: synthesize a segmenter from examples with masks"
    )
    commands = segment.add_subparsers(dest="segment_command", required=True, metavar="SEGMENT_COMMAND")

    synth = commands.add_parser("synthesize", help="synthesize a segmenter from a folder (images/ + masks/<label>/)")
    synth.add_argument(
        "--examples", required=True, help="folder with images/<stem>.png|jpg and masks/<label>/<stem>.png"
    )
    synth.add_argument("--out", required=True, help="output folder (plain transformers UperNet + model card)")
    synth.add_argument("--label", default=None, help="which masks/<label> to use when the folder has several")
    synth.add_argument("--name", default=None, help="task name (default: the folder's name)")
    synth.add_argument("--description", default=None, help="clinical text of the structure (goes into the card)")
    synth.add_argument(
        "--evaluate", default=None, help="optional folder of labelled images (same layout): Dice/IoU go into the card"
    )
    synth.add_argument(
        "--synthesizer", default=None, help="segmentation synthesizer folder or Hub id (default: bundled)"
    )
    synth.set_defaults(handler=_synthesize)

    predict = commands.add_parser("predict", help="segment images with a saved segmenter, writing PNG masks (0/255)")
    predict.add_argument("--segmenter", required=True, help="segmenter folder or Hub id")
    predict.add_argument("--out-dir", required=True, help="folder for the <image stem>_mask.png files")
    predict.add_argument("images", nargs="+", help="image files, folders or quoted glob patterns")
    predict.add_argument("--overlay", action="store_true", help="also write <stem>_overlay.png (mask tinted red)")
    predict.add_argument("--batch-size", type=int, default=8, help="images segmented at once (default 8)")
    predict.set_defaults(handler=_predict)

    evaluate = commands.add_parser(
        "evaluate", help="Dice / IoU per image on your own labelled folder, with overlays of the worst cases"
    )
    evaluate.add_argument("--segmenter", required=True, help="segmenter folder or Hub id")
    evaluate.add_argument("--data", required=True, help="folder with images/<stem>.* and masks/<label>/<stem>.png")
    evaluate.add_argument("--out", default="segmenter-evaluation", help="report folder (new or an earlier report)")
    evaluate.add_argument("--worst", type=int, default=5, help="how many worst cases to show as overlays")
    evaluate.set_defaults(handler=_evaluate)

    push = commands.add_parser("push", help="upload a saved segmenter to a Hub repo (respects HF_ENDPOINT)")
    push.add_argument("--segmenter", required=True, help="segmenter folder")
    push.add_argument("--repo-id", required=True, help="e.g. my-user/polyp-segmenter")
    push.add_argument("--private", action="store_true")
    push.set_defaults(handler=_push)


def _synthesize(args: argparse.Namespace) -> int:
    from ..hub.saved_folder import check_save_target
    from ..hub.segmenter_folder import SEGMENTER
    from ..models.sgps_seg import DEFAULT_SEG_CHECKPOINT, SegmentationTask, SGPSSegSynthesizer

    check_save_target(args.out, SEGMENTER)  # before synthesis: a folder of other files, a file or a read-only place
    folder = Path(args.examples)
    task = SegmentationTask(args.name or folder.resolve().name, folder, description=args.description, label=args.label)
    segmenter = SGPSSegSynthesizer.from_pretrained(args.synthesizer or DEFAULT_SEG_CHECKPOINT).synthesize(task)
    if args.evaluate:
        labelled = SegmentationTask(task.name + "-evaluation", Path(args.evaluate), label=task.label)
        scores = segmenter.evaluate(list(zip(labelled.images, labelled.masks, strict=False)))
        print(f"Dice {scores['dice']:.3f}, IoU {scores['iou']:.3f} on {len(labelled)} labelled images")
    print(f"Saved {segmenter} to {segmenter.save_pretrained(args.out)}")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from ..errors import UsageError
    from ..evaluation.seg_own_cases import segment_files
    from ..models.sgps_seg.segmenter import SynthesizedSegmenter
    from ..trust.batch import expand_inputs

    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1.")
    segmenter = SynthesizedSegmenter.from_pretrained(args.segmenter)
    files = expand_inputs(args.images)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = segment_files(segmenter, files, out, args.overlay, progress=len(files) > 20, batch_size=args.batch_size)
    for row in rows:
        if row["error"]:
            print(f"{row['file']}\tERROR: {row['error']}")
        else:
            print(f"{row['file']}\t{row['foreground']:.4f} foreground ({segmenter.label}) -> {row['mask']}")
    failed = sum(1 for r in rows if r["error"])
    if failed:
        print(f"sgps: {failed} of {len(rows)} file(s) could not be segmented (see the ERROR lines).", file=sys.stderr)
    return 2 if failed == len(rows) else 0


def _evaluate(args: argparse.Namespace) -> int:
    from ..evaluation.seg_own_cases import evaluate_segmenter, write_seg_report
    from ..models.sgps_seg.segmenter import SynthesizedSegmenter
    from ..trust.report import check_report_folder

    check_report_folder(args.out)
    segmenter = SynthesizedSegmenter.from_pretrained(args.segmenter)
    result = evaluate_segmenter(segmenter, args.data)
    report = write_seg_report(result, args.out, worst=args.worst)
    print(f"{result['num_images']} images: Dice {result['dice']:.3f}, IoU {result['iou']:.3f}. Report: {report}")
    return 0


def _push(args: argparse.Namespace) -> int:
    from ..models.sgps_seg.segmenter import SynthesizedSegmenter

    url = SynthesizedSegmenter.from_pretrained(args.segmenter).push_to_hub(args.repo_id, private=args.private or None)
    print(f"Pushed to {args.repo_id}: {url}")
    return 0
