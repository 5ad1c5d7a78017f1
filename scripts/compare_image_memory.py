#!/usr/bin/env python
"""An image-keyed class memory as the head's prior, on meta-val tasks: does what the synthesizer knows of the
meta-train classes help where a baseline on the same body has only the support images?

The text prior reads the meta-train class memory with a class's text. This reads it with the class's support images
(the mean-calibration half of "distribution calibration", Yang et al. 2021): each class's mean support feature,
centred on the episode's support mean, attends over the meta-train classes' task-centred mean features (softmax at a
temperature, or the mean of the top k), and the readout is the class's prior in the head's standardised space, where
the text prior sits. Variants: that prior alone, and added to today's text prior. The prior's strength is chosen on
one set of seeded meta-val episodes (seed A) and reported on another (seed B), as in ``compare_text_priors.py``;
strength 0 is in the grid, so a prior that does not help is switched off, and the paired difference against image
only is then 0.

Cached body features, identity view, no task BatchNorm: the product's views and task BatchNorm change the image
side for every variant alike.

    python scripts/compare_image_memory.py --out benchmarks/image_memory_prior.md
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from compare_text_priors import (
    STRENGTHS,
    EpisodePrior,
    Scorer,
    TextPriors,
    accuracies,
    choose,
    load_meta_val,
    unit,
)
from torch import Tensor

from sgps_hf.hub.checkpoints import DEFAULT_CHECKPOINT
from sgps_hf.metrics import mean_ci


def class_means(inputs: dict, num_classes: int) -> Tensor:
    support, labels = inputs["support_features"][:, 0].float(), inputs["support_labels"]
    return torch.stack([support[labels == c].mean(0) for c in range(num_classes)])


def image_memory(priors: TextPriors, temperature: float | None = None, top_k: int | None = None) -> EpisodePrior:
    """Each class's centred mean support feature attends over the meta-train classes' task-centred means."""
    keys = unit(priors.centred_values)
    values = priors.centred_values * priors.scale

    def prior(inputs: dict, class_texts: list[str]) -> Tensor:
        means = class_means(inputs, len(class_texts))
        similarity = unit(means - means.mean(0)) @ keys.T
        if top_k is not None:
            return values[similarity.topk(top_k, dim=1).indices].mean(1)
        return torch.softmax(similarity / temperature, -1) @ values

    return prior


def evaluate(scorer: Scorer, prior: EpisodePrior, episodes, image_only: dict[int, list[float]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for shot in (1, 5):
        on_a = {
            s: float(np.mean(accuracies(scorer.logits_of(prior, episodes[shot, "A"], True, s)))) for s in STRENGTHS
        }
        strength = choose(on_a)
        scores = accuracies(scorer.logits_of(prior, episodes[shot, "B"], True, strength))
        out[shot] = mean_ci(scores)
        out[f"gain {shot}"] = mean_ci(np.subtract(scores, image_only[shot]))
        out[f"strength {shot}"] = strength
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--synthesizer", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--config", default="scripts/configs/default.yaml", help="training config (meta-val tasks)")
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--out", default="benchmarks/image_memory_prior.md")
    parser.add_argument("--num-threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.num_threads)
    started = time.time()
    meta_val = load_meta_val(args.synthesizer, args.config, args.episodes)
    priors, scorer, episodes = meta_val.priors, meta_val.scorer, meta_val.episodes
    no_prior = torch.zeros(1, priors.values.shape[1])
    image_only = {
        shot: accuracies(scorer.logits(lambda t: no_prior.expand(len(t), -1), episodes[shot, "B"], True))
        for shot in (1, 5)
    }
    text_memory = priors.memory(math.exp(float(meta_val.model.log_text_temperature)), False, False, False)
    memory_01 = image_memory(priors, temperature=0.1)
    variants: dict[str, EpisodePrior] = {
        "text memory (today)": lambda inputs, class_texts: text_memory(class_texts),
        "image memory, temperature 0.05": image_memory(priors, temperature=0.05),
        "image memory, temperature 0.1": memory_01,
        "image memory, temperature 0.2": image_memory(priors, temperature=0.2),
        "image memory, top 2": image_memory(priors, top_k=2),
        "text memory + image memory (0.1)": lambda inputs, class_texts: (
            text_memory(class_texts) + memory_01(inputs, class_texts)
        ),
    }
    rows = []
    for name, prior in variants.items():
        rows.append((name, evaluate(scorer, prior, episodes, image_only)))
        print(name, rows[-1][1], flush=True)

    def cell(value: dict) -> str:
        return f"{value['mean']:.3f} ± {value['ci95']:.3f}"

    def gain(value: dict) -> str:
        return f"{100 * value['mean']:+.1f} ± {100 * value['ci95']:.1f}"

    tasks = ", ".join(sorted({pool.task for pool in meta_val.val}))
    lines = [
        "# An image-keyed class memory as the head's prior (meta-val)",
        "",
        "Generated by `python scripts/compare_image_memory.py "
        f"--synthesizer {os.path.relpath(args.synthesizer)} --config {args.config} "
        f"--episodes {args.episodes} --out {args.out}` ({time.time() - started:.0f} s, {args.num_threads} threads). "
        f"Meta-val tasks: {tasks}. Identity view on cached features (no task BatchNorm). Strengths chosen on seed A, "
        "scored on seed B; points against image only are paired on the seed-B episodes (95 % CI).",
        "",
        f"Image only: 1 shot {cell(mean_ci(image_only[1]))}, 5 shots {cell(mean_ci(image_only[5]))}.",
        "",
        "| prior | 1 shot (strength) | points vs image only | 5 shots (strength) | points vs image only |",
        "|---|---|---|---|---|",
    ]
    for name, r in rows:
        lines.append(
            f"| {name} | {cell(r[1])} ({r['strength 1']:g}) | {gain(r['gain 1'])} "
            f"| {cell(r[5])} ({r['strength 5']:g}) | {gain(r['gain 5'])} |"
        )
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
