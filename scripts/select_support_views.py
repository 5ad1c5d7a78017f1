#!/usr/bin/env python
r"""Choose the synthesizer's support views by leave-task-out validation (writes benchmarks/support_views.md).

Every meta-val image (whole tasks never trained on) is featurised once under all candidate views; each
candidate set is then scored by the synthesizer's own closed-form head (image only) on the same seeded
5-way episodes at 1 and 5 shots: accuracy, and the ECE of its logits before and after a temperature
fitted on the same episodes (the training run fits it the same way). A logistic-regression probe on the
identity view (the benchmark's linear-probe baseline) is the reference.

    python scripts/select_support_views.py --synthesizer sgps_hf/checkpoints/sgps-lite0-128 \
        --out benchmarks/support_views.md
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

from sgps_hf import DEFAULT_CHECKPOINT, SGPSSynthesizer
from sgps_hf.data import EpisodeSampler
from sgps_hf.evaluation.baselines import fit_linear_head
from sgps_hf.metrics import calibration
from sgps_hf.models.sgps.configuration_sgps import SUPPORT_VIEWS
from sgps_hf.models.sgps.image_processing_sgps import SGPSImageProcessor
from sgps_hf.training.config import TrainingConfig
from sgps_hf.training.feature_cache import episode_features, pool_features
from sgps_hf.training.pools import training_pools
from sgps_hf.training.temperature import nll_best_multiplier

CANDIDATES = {
    "identity": ["identity"],
    "identity + mirror": ["identity", "hflip"],
    "flips (4)": ["identity", "hflip", "vflip", "rot180"],
    "dihedral (8)": ["identity", "hflip", "vflip", "rot90", "rot180", "rot270", "transpose", "antitranspose"],
    "dihedral + zoom pair (10)": list(SUPPORT_VIEWS),
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--synthesizer", default=DEFAULT_CHECKPOINT)
    parser.add_argument(
        "--config", default="scripts/configs/default.yaml", help="training config naming the meta-val tasks"
    )
    parser.add_argument("--episodes", type=int, default=300, help="episodes per shot count")
    parser.add_argument("--out", default="benchmarks/support_views.md")
    parser.add_argument("--num-threads", type=int, default=2)
    return parser.parse_args(argv)


def score(model, episodes, features, views):
    """(accuracy, ECE as trained, ECE at the NLL-best temperature) of the closed-form head under ``views``."""
    index = torch.tensor([SUPPORT_VIEWS.index(v) for v in views])
    accuracies, pairs = [], []
    for episode in episodes:
        support, query = episode_features(episode, features)
        with torch.no_grad():
            logits = model(
                support_features=support[:, index],
                support_labels=episode.support_labels,
                num_classes=len(episode.class_names),
                query_features=query,
                return_weights=False,
            ).logits
        accuracies.append((logits.argmax(-1) == episode.query_labels).float().mean().item())
        pairs.append((logits, episode.query_labels))
    best, _ = nll_best_multiplier(pairs)
    return float(np.mean(accuracies)), _ece(pairs, 1.0), _ece(pairs, best), best


def _ece(pairs, multiplier):
    width = max(logits.shape[1] for logits, _ in pairs)
    probs = torch.cat(
        [
            torch.nn.functional.pad(torch.softmax(multiplier * logits, -1), (0, width - logits.shape[1]))
            for logits, _ in pairs
        ]
    )
    return float(calibration(probs.numpy(), torch.cat([y for _, y in pairs]).numpy())["ece"])


def probe(episodes, features):
    accuracies = []
    for episode in episodes:
        support, query = episode_features(episode, features)
        head = fit_linear_head(
            support[:, 0], episode.support_labels, len(episode.class_names), steps=100, lr=0.01, weight_decay=1e-4
        )
        with torch.no_grad():
            accuracies.append((head(query).argmax(-1) == episode.query_labels).float().mean().item())
    return float(np.mean(accuracies))


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.num_threads)
    started = time.time()
    model = SGPSSynthesizer.from_pretrained(args.synthesizer).eval()
    processor = SGPSImageProcessor.from_sgps_config(model.config)
    _, val_pools, _ = training_pools(TrainingConfig.from_file(args.config), model.config.image_size)
    features = pool_features(model, val_pools, processor, views=list(SUPPORT_VIEWS))  # every candidate view once
    rows = []
    for shots in (1, 5):
        sampler = EpisodeSampler(val_pools, n_way=5, k_shot=shots, q_query=15, seed=2026 + shots)
        episodes = [sampler.episode(i) for i in range(args.episodes)]
        for name, views in CANDIDATES.items():
            accuracy, ece, ece_fitted, multiplier = score(model, episodes, features, views)
            rows.append((shots, name, accuracy, ece, ece_fitted, multiplier))
            print(rows[-1], flush=True)
        rows.append(
            (shots, "linear probe (identity), reference", probe(episodes, features), math.nan, math.nan, math.nan)
        )
    write_report(args, rows, time.time() - started, [p.task for p in val_pools])


def write_report(args, rows, seconds, tasks) -> None:
    lines = [
        "# Support views of the synthesizer (meta-val)",
        "",
        f"Command: `python scripts/select_support_views.py --synthesizer {args.synthesizer} --episodes "
        f"{args.episodes}`; {seconds / 60:.1f} min on {args.num_threads} threads.",
        "",
        f"Meta-val tasks (whole tasks never trained on): {', '.join(sorted(set(tasks)))}. 5-way episodes (fewer where "
        f"a task has fewer classes), 15 queries per class, {args.episodes} seeded episodes per shot count, the same "
        "for every row. Image-only closed-form head of the synthesizer; queries are seen as they are (identity), as "
        "the synthesized classifier sees them. ECE (15 bins) of the head as meta-trained and after a temperature "
        "fitted on these episodes (least NLL on the grid of `LOGIT_SCALE_MULTIPLIERS`, `nll_best_multiplier`, as the "
        "training run).",
        "",
        "| shots | support views | accuracy | ECE | ECE, fitted temperature | logit-scale multiplier |",
        "|---|---|---|---|---|---|",
    ]
    for shots, name, accuracy, ece, fitted, multiplier in rows:
        extra = "| | |" if math.isnan(ece) else f"| {ece:.3f} | {fitted:.3f} | {multiplier:.3f} |"
        lines.append(f"| {shots} | {name} | {accuracy:.3f} {extra}")
    lines += [
        "",
        "Each view is one more body pass per support image at synthesis time (see `benchmarks/synthesis_speed.md`).",
    ]
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
