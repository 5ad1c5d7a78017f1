"""``sgps segment synthesize | predict | push``: the segmentation commands of the ``sgps`` CLI."""

from __future__ import annotations

import argparse
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
    predict.add_argument("images", nargs="+", help="image files")
    predict.set_defaults(handler=_predict)

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
    import numpy as np
    from PIL import Image

    from ..models.sgps_seg.segmenter import SynthesizedSegmenter

    segmenter = SynthesizedSegmenter.from_pretrained(args.segmenter)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for path, mask in zip(args.images, segmenter.predict(args.images), strict=False):
        target = out / f"{Path(path).stem}_mask.png"
        Image.fromarray(mask.astype(np.uint8) * 255).save(target)
        print(f"{path}: {mask.mean():.4f} foreground ({segmenter.label}) -> {target}")
    return 0


def _push(args: argparse.Namespace) -> int:
    from ..models.sgps_seg.segmenter import SynthesizedSegmenter

    url = SynthesizedSegmenter.from_pretrained(args.segmenter).push_to_hub(args.repo_id, private=args.private or None)
    print(f"Pushed to {args.repo_id}: {url}")
    return 0
