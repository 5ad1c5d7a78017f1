"""Negative examples in segmentation (issue 25): ``python scripts/measure_seg_negatives.py --part plain|negatives``.

``plain``: the synthesizer's Dice on the held-out tasks (no negatives: every example shows the structure), the
benchmark's own seeded episodes; run it on two versions of the code to check that accepting negatives changes
nothing on such tasks.

``negatives``: on a task whose images often lack the structure (``endoscopy-colon-polyp/neoplastic``: frames with a
non-neoplastic polyp only have an empty mask), K positive examples plus N negatives (empty masks) through the public
API (``SegmentationTask`` -> ``synthesize`` -> ``predict``); Dice on positive queries and the predicted foreground
fraction on negative queries, per (K, N), averaged over seeded episodes. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from sgps_hf import DEFAULT_SEG_CHECKPOINT, SGPSSegSynthesizer


def plain(model, episodes: int, ks: list[int]) -> dict:
    from sgps_hf.data.segmentation import load_seg_dataset, seg_splits, task_arrays
    from sgps_hf.evaluation.segmentation import SegBenchmarkConfig, run_seg_benchmark

    split = seg_splits()["held_out"]
    tasks = task_arrays(load_seg_dataset(tasks=split), split)
    config = SegBenchmarkConfig(ks=ks, episodes=episodes, methods=["synthesizer"])
    result = run_seg_benchmark(model, tasks, config, log=lambda _: None)
    return {
        task: {k: round(v["dice"], 6) for k, v in methods["synthesizer"].items()}
        for task, methods in result["per_task"].items()
    }


def negatives(model, episodes: int, ks: list[int], ns: list[int], n_query: int, binary_task: str) -> dict:
    from sgps_hf import SegmentationTask
    from sgps_hf.data.segmentation import load_seg_dataset
    from sgps_hf.metrics import dice_iou

    dataset = load_seg_dataset(tasks=[binary_task.split("/")[0]])
    rows = dataset.select([i for i, name in enumerate(dataset["binary_task"]) if name == binary_task])
    images = [image.convert("RGB") for image in rows["image"]]
    masks = [np.asarray(mask.convert("L")) > 127 for mask in rows["mask"]]
    positive = [i for i, m in enumerate(masks) if m.any()]
    empty = [i for i, m in enumerate(masks) if not m.any()]
    out: dict = {"task": binary_task, "positives": len(positive), "negatives": len(empty), "results": {}}
    for k in ks:
        for n in ns:
            dice, false_area, any_fp = [], [], []
            for episode in range(episodes):
                rng = np.random.default_rng([2024, k, episode])  # the same positives and queries for every n
                pos = rng.permutation(positive)
                neg = rng.permutation(empty)
                support = [(images[i], masks[i]) for i in pos[:k]] + [(images[i], masks[i]) for i in neg[:n]]
                pos_queries, neg_queries = pos[k : k + n_query], neg[max(ns) : max(ns) + n_query]
                segmenter = model.synthesize(SegmentationTask("t", support))
                predicted = segmenter.predict([images[i] for i in pos_queries])
                dice.append(dice_iou(predicted, [masks[i] for i in pos_queries])["dice"])
                on_negatives = segmenter.predict([images[i] for i in neg_queries])
                false_area.append(float(np.mean([m.mean() for m in on_negatives])))
                any_fp.append(float(np.mean([m.mean() > 0.01 for m in on_negatives])))
            out["results"][f"K={k},N={n}"] = {
                "dice_positive_queries": round(float(np.mean(dice)), 4),
                "foreground_fraction_on_negatives": round(float(np.mean(false_area)), 4),
                "negatives_with_over_1pct_foreground": round(float(np.mean(any_fp)), 4),
                "episodes": episodes,
            }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--part", choices=["plain", "negatives"], required=True)
    parser.add_argument("--checkpoint", default=DEFAULT_SEG_CHECKPOINT)
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 5, 8])
    parser.add_argument("--ns", type=int, nargs="+", default=[0, 2, 4])
    parser.add_argument("--n-query", type=int, default=8)
    parser.add_argument("--binary-task", default="endoscopy-colon-polyp/neoplastic")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = SGPSSegSynthesizer.from_pretrained(args.checkpoint).eval()
    if args.part == "plain":
        print(json.dumps(plain(model, args.episodes, args.ks)))
    else:
        print(json.dumps(negatives(model, args.episodes, args.ks, args.ns, args.n_query, args.binary_task)))


if __name__ == "__main__":
    main()
