#!/usr/bin/env python
r"""Synthesis and inference speed of the bundled synthesizer, as ratios against plain timm in the same run.

    python scripts/bench_synthesis.py --task hematology-wbc-tecom --ways 5 --shots 5 \
        --out benchmarks/synthesis_speed.md

Measured (median of ``--repeats`` runs, after a warm-up that loads the text encoder):
- ``synthesize(task)`` end to end (image decoding, texts, one forward pass, the classifier object),
- its irreducible part, the body's forward pass over the support images under every support view, timed
  with a plain timm model of the same architecture, and the ratio of the two;
- images/s of the synthesized classifier (a plain timm model materialised from the weights) against a
  freshly created timm model of the same architecture (the ratio should be 1.0).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import timm
import torch

from sgps_hf import DEFAULT_CHECKPOINT, ClassSpec, SGPSProcessor, SGPSSynthesizer, TaskSpec
from sgps_hf.data.descriptions import class_description
from sgps_hf.data.registry import task_dir


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--synthesizer", default=DEFAULT_CHECKPOINT)
    parser.add_argument("--task", default="hematology-wbc-tecom")
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--num-threads", type=int, default=2)
    parser.add_argument(
        "--fast-views",
        nargs="+",
        default=["identity", "hflip"],
        help="a cheaper support_views setting to time in the same run (the speed/accuracy knob)",
    )
    parser.add_argument(
        "--baseline-synthesizer",
        default=None,
        help="another synthesizer (e.g. the previous bundled one) whose synthesis is timed side by side in this run",
    )
    parser.add_argument("--out", default="benchmarks/synthesis_speed.md")
    return parser.parse_args(argv)


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.num_threads)
    synth = SGPSSynthesizer.from_pretrained(args.synthesizer).eval()
    processor = SGPSProcessor.from_pretrained(args.synthesizer)
    folder = task_dir(args.task)
    classes = sorted(p for p in folder.iterdir() if p.is_dir())[: args.ways]
    task = TaskSpec(
        name=args.task,
        classes=[
            ClassSpec(
                name=c.name,
                description=class_description(args.task, c.name) or "",
                images=sorted(c.iterdir())[: args.shots],
            )
            for c in classes
        ],
    )
    synth.synthesize(task, processor=processor)  # warm-up: text encoder, kernels
    synthesis = median_seconds(lambda: synth.synthesize(task, processor=processor), args.repeats)

    baseline = None
    if args.baseline_synthesizer:
        previous = SGPSSynthesizer.from_pretrained(args.baseline_synthesizer).eval()
        previous.synthesize(task, processor=processor)
        baseline = median_seconds(lambda: previous.synthesize(task, processor=processor), args.repeats)

    config = synth.config
    fast = SGPSSynthesizer.from_pretrained(
        args.synthesizer, config=config.with_changes(support_views=list(args.fast_views))
    ).eval()
    fast.synthesize(task, processor=processor)
    fast_synthesis = median_seconds(lambda: fast.synthesize(task, processor=processor), args.repeats)
    plain = timm.create_model(config.target_architecture, num_classes=0, **config.target_model_args).eval()
    support = processor.prepare_task(task)["support_pixel_values"]
    views = torch.cat([support] * len(config.support_views))
    with torch.no_grad():
        plain(views)
        body_pass = median_seconds(lambda: plain(views), args.repeats)

    classifier = synth.synthesize(task, processor=processor)
    synthesized = classifier.model
    reference = timm.create_model(
        config.target_architecture, num_classes=len(classes), **config.target_model_args
    ).eval()
    batch = torch.randn(64, 3, config.image_size, config.image_size, generator=torch.Generator().manual_seed(0))
    rates = {}
    with torch.no_grad():
        for name, model in (("synthesized", synthesized), ("plain", reference)):
            model(batch)
            rates[name] = 64 / median_seconds(lambda model=model: model(batch), args.repeats)

    result = {
        "task": f"{args.task}, {len(classes)}-way {args.shots}-shot, image + text",
        "threads": args.num_threads,
        "synthesis_seconds": synthesis,
        "body_pass_seconds": body_pass,
        "synthesis_over_body_pass": synthesis / body_pass,
        "synthesized_images_per_s": rates["synthesized"],
        "plain_images_per_s": rates["plain"],
        "inference_ratio": rates["synthesized"] / rates["plain"],
        "support_views": list(config.support_views),
        "fast_views": list(args.fast_views),
        "fast_views_synthesis_seconds": fast_synthesis,
        "baseline_synthesizer": args.baseline_synthesizer,
        "baseline_synthesis_seconds": baseline,
    }
    baseline_row = (
        f"| `synthesize(task)` with `{args.baseline_synthesizer}`, the same run | {baseline:.3f} s "
        f"(this synthesizer / it: {synthesis / baseline:.2f}) |\n"
        if baseline
        else ""
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    out.write_text(
        "# Synthesis speed\n\n"
        f"Generated by `python scripts/bench_synthesis.py --task {args.task} --ways {args.ways} --shots {args.shots}"
        + (f" --baseline-synthesizer {args.baseline_synthesizer}" if args.baseline_synthesizer else "")
        + "` "
        f"({args.num_threads} torch threads, median of {args.repeats}; wall-clock numbers depend on the machine's "
        "load, the ratios much less).\n\n"
        "| measurement | value |\n|---|---|\n"
        f"| task | {result['task']} |\n"
        f"| `synthesize(task)` end to end | {synthesis:.3f} s |\n"
        f"| plain timm body pass over the {len(views)} support views (its irreducible part) | {body_pass:.3f} s |\n"
        f"| ratio synthesis / body pass | {result['synthesis_over_body_pass']:.2f} |\n"
        + baseline_row
        + f"| `synthesize(task)` with `support_views` {', '.join(args.fast_views)} instead of the shipped "
        f"{len(config.support_views)} | {fast_synthesis:.3f} s |\n"
        f"| synthesized classifier, 64-image batches | {rates['synthesized']:.0f} images/s |\n"
        f"| plain timm model of the same architecture | {rates['plain']:.0f} images/s |\n"
        f"| inference ratio (synthesized / plain) | {result['inference_ratio']:.2f} |\n",
        encoding="utf-8",
    )
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
