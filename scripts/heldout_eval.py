"""Held-out-task accuracy of synthesizer checkpoints versus chance and untrained synthesizers.

    python scripts/heldout_eval.py --checkpoint sgps_hf/checkpoints/sgps-lite0-128 [--checkpoint other ...] \
        --episodes 100 --out benchmarks/heldout_accuracy.md

Episodes are drawn only from the held-out tasks (never seen in meta-training); the checkpoint to ship is
chosen on meta-validation accuracy, not on these numbers.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from sgps_hf import SGPSConfig, SGPSSynthesizer
from sgps_hf.data.episodes import build_pools
from sgps_hf.evaluation.episodic import evaluate_synthesizer

SETTINGS = [("image+text", True, True), ("image only", False, True), ("text only", True, False)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", action="append", required=True, help="synthesizer folder (repeatable)")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--ways", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/heldout_accuracy.md")
    args = parser.parse_args()
    torch.set_num_threads(args.num_threads)

    models = {}
    # Two untrained references: the default config (random body, so its BatchNorm statistics are meaningless) and
    # one that measures statistics on the support set, which makes a random body a fair nearest-centroid rule.
    for name, support_statistics in (
        ("untrained (random init)", False),
        ("untrained (random init, support statistics)", True),
    ):
        torch.manual_seed(args.seed)
        models[name] = SGPSSynthesizer(SGPSConfig(support_statistics=support_statistics))
    for path in args.checkpoint:
        models[path] = SGPSSynthesizer.from_pretrained(path)
    pools = build_pools("held_out", models["untrained (random init)"].config.image_size)
    rows, raw = [], {}
    started = time.time()
    for name, model in models.items():
        for label, use_text, use_images in SETTINGS:
            for shots in args.shots if use_images else [0]:
                result = evaluate_synthesizer(
                    model,
                    pools,
                    n_way=args.ways,
                    k_shot=max(shots, 1),
                    q_query=15,
                    episodes=args.episodes,
                    seed=args.seed,
                    use_text=use_text,
                    use_images=use_images,
                )
                raw[f"{name} | {label} | {shots}-shot"] = {task: vars(score) for task, score in result.items()}
                per_task = " | ".join(f"{result[t].mean:.3f}" for t in sorted(result) if t != "all")
                rows.append(f"| {name} | {label} | {shots} | {result['all']} | {per_task} |")
    tasks = sorted(t for t in result if t != "all")
    chance = {t: 1 / min(args.ways, sum(p.task == t for p in pools)) for t in tasks}
    lines = [
        "# Held-out-task accuracy of the synthesizer",
        "",
        f"Command: `python scripts/heldout_eval.py {' '.join('--checkpoint ' + c for c in args.checkpoint)} "
        f"--episodes {args.episodes} --shots {' '.join(map(str, args.shots))} --ways {args.ways} --seed {args.seed}`",
        f"Environment: {platform.platform()}, torch {torch.__version__}, {args.num_threads} threads; "
        f"{time.time() - started:.0f} s.",
        "",
        f"{args.ways}-way episodes (fewer where a task has fewer classes), 15 queries per class, drawn only from the "
        "held-out tasks; mean query accuracy +/- 95% CI over episodes. Chance per task: "
        + ", ".join(f"{t} {chance[t]:.2f}" for t in tasks)
        + ".",
        "",
        "| synthesizer | support | shots | all tasks | " + " | ".join(tasks) + " |",
        "|---|---|---|---|" + "---|" * len(tasks),
        *rows,
        "",
    ]
    Path(args.out).write_text("\n".join(lines), encoding="utf-8")
    Path(args.out).with_suffix(".json").write_text(json.dumps(raw, indent=2), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
