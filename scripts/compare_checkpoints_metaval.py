#!/usr/bin/env python
"""Two synthesizers side by side on a fresh draw of meta-val episodes, through the product's inference path.

Calibration chooses a checkpoint's settings on the training command's own meta-val draw, so its reported meta-val
score is optimistic. This script draws other episodes of the same meta-val tasks (another seed) and runs both
synthesizers on their pixels exactly as ``synthesize`` does (support views, task-adaptive BatchNorm, the text prior):
per shot bucket, accuracy with the paired difference and its 95 % CI, and the pooled ECE. Held-out tasks are never
touched, so it may decide between two candidate checkpoints.

    python scripts/compare_checkpoints_metaval.py --candidate runs/sgps-lite0-128/final --baseline <previous>
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from sgps_hf import DEFAULT_CHECKPOINT, SGPSSynthesizer
from sgps_hf.data.episodes import EpisodeSampler
from sgps_hf.metrics import calibration
from sgps_hf.models.sgps.image_processing_sgps import SGPSImageProcessor
from sgps_hf.training.config import TrainingConfig
from sgps_hf.training.episode_inputs import TextBank
from sgps_hf.training.meta_val import query_logits, shot_buckets
from sgps_hf.training.pools import training_pools


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--candidate", required=True, help="the synthesizer to decide on")
    parser.add_argument("--baseline", default=str(DEFAULT_CHECKPOINT), help="the synthesizer it would replace")
    parser.add_argument("--config", default="scripts/configs/default.yaml", help="the training config (meta-val)")
    parser.add_argument("--episodes", type=int, default=150, help="episodes, 1-5 shots (image + text)")
    parser.add_argument("--seed", type=int, default=12_345, help="not the training command's seed + 9999")
    parser.add_argument("--num-threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/checkpoint_metaval_comparison.md")
    return parser.parse_args(argv)


@torch.no_grad()
def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.num_threads)
    started = time.time()
    config = TrainingConfig.from_file(args.config)
    models = {
        name: SGPSSynthesizer.from_pretrained(path).eval()
        for name, path in (("baseline", args.baseline), ("candidate", args.candidate))
    }
    _, val_pools, _ = training_pools(config, models["candidate"].config.image_size)
    sampler = EpisodeSampler(
        val_pools, n_way=config.n_way, k_shot=tuple(config.k_shot), q_query=config.q_query, seed=args.seed
    )
    episodes = [dataclasses.replace(sampler.episode(i), use_images=True, use_text=True) for i in range(args.episodes)]
    results = {}
    for name, model in models.items():
        processor = SGPSImageProcessor.from_sgps_config(model.config)
        texts = TextBank(model.config, [p.text for p in val_pools])
        results[name] = {
            shots: query_logits(model, chosen, processor, texts) for shots, chosen in shot_buckets(episodes).items()
        }
    torch.save(results, Path(args.out).with_suffix(".logits.pt"))  # the slow part, kept for another summary
    rows = summarise(results)
    write_report(args, rows, len(episodes), time.time() - started)


def summarise(results: dict) -> dict:
    rows = {}
    for shots in results["candidate"]:
        per_model = {}
        for name, pairs in results.items():
            accuracy = np.array([float((lg.argmax(1) == lb).float().mean()) for lg, lb in pairs[shots]])
            width = max(lg.shape[1] for lg, _ in pairs[shots])  # tasks with fewer classes: zero-padded columns
            probs = np.concatenate(
                [
                    np.pad(torch.softmax(lg.double(), 1).numpy(), ((0, 0), (0, width - lg.shape[1])))
                    for lg, _ in pairs[shots]
                ]
            )
            labels = np.concatenate([lb.numpy() for _, lb in pairs[shots]])
            per_model[name] = (accuracy, float(calibration(probs, labels)["ece"]))
        difference = per_model["candidate"][0] - per_model["baseline"][0]
        rows[shots] = {
            "episodes": len(difference),
            **{f"{name} accuracy": float(acc.mean()) for name, (acc, _) in per_model.items()},
            **{f"{name} ECE": ece for name, (_, ece) in per_model.items()},
            "difference": float(difference.mean()),
            "difference ci95": float(1.96 * difference.std(ddof=1) / math.sqrt(len(difference))),
        }
    return rows


def write_report(args, rows: dict, episodes: int, seconds: float) -> None:
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    table = "\n".join(
        f"| {'1-2' if shots == '1' else '3-5'} | {r['episodes']} | {r['baseline accuracy']:.4f} | "
        f"{r['candidate accuracy']:.4f} | {100 * r['difference']:+.2f} ± {100 * r['difference ci95']:.2f} | "
        f"{r['baseline ECE']:.3f} | {r['candidate ECE']:.3f} |"
        for shots, r in sorted(rows.items())
    )
    out.write_text(
        "# Two synthesizers on a fresh draw of meta-val episodes\n\n"
        f"Generated by `python scripts/compare_checkpoints_metaval.py --candidate {args.candidate} --baseline "
        f"{args.baseline} --config {args.config} --episodes {args.episodes} --seed {args.seed}` "
        f"({seconds / 60:.0f} min, {args.num_threads} CPU threads). The meta-val tasks of the training config, "
        "episodes of another seed than the one calibration chose on (5-way, 1-5 shots, image + text, 10 queries per "
        "class), each synthesizer's own inference path on the pixels (support views, task-adaptive BatchNorm, text "
        "prior). Paired difference in points (candidate minus baseline) with its 95 % CI; ECE pooled over the "
        "bucket's queries (15 bins).\n\n"
        "| shots | episodes | baseline | candidate | difference (points) | ECE baseline | ECE candidate |\n"
        "|---|---|---|---|---|---|---|\n" + table + "\n",
        encoding="utf-8",
    )


if __name__ == "__main__":
    main()
