"""Few-shot segmentation benchmark on the held-out seg tasks: ``python scripts/evaluate_seg.py [--checkpoint DIR]``.

Writes ``benchmarks/seg_results.json``, ``benchmarks/SEGMENTATION.md`` (tables) and
``benchmarks/seg_data_efficiency.png``. ``--split meta_val`` runs the same protocol on the meta-validation task
(used to choose the head and the PANet feature levels), ``--split meta_train`` gives the training-task numbers
for the generalization gap. Per method and K the JSON keeps every episode's Dice, a 95% bootstrap interval of the
task-mean Dice (episodes resampled within tasks) and, for the synthesizer, paired differences against the baselines.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from sgps_hf import DEFAULT_SEG_CHECKPOINT, SGPSSegConfig, SGPSSegSynthesizer
from sgps_hf.data.segmentation import load_seg_dataset, seg_splits, task_arrays
from sgps_hf.evaluation.segmentation import SegBenchmarkConfig, paired_difference, run_seg_benchmark, summarize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", default=DEFAULT_SEG_CHECKPOINT)
    parser.add_argument("--split", default="held_out", choices=["held_out", "meta_val", "meta_train"])
    parser.add_argument("--episodes", type=int, default=24)
    parser.add_argument(
        "--finetune-episodes",
        type=int,
        default=8,
        help="the (slow) fine-tuning baselines run on the first n episodes only",
    )
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 5, 8])
    parser.add_argument("--methods", nargs="+", default=None)
    parser.add_argument(
        "--panet-levels",
        type=int,
        nargs="+",
        default=[0, 1],
        help="stages of panet-imagenet (chosen on meta-val); panet-imagenet-all-levels uses 0-3",
    )
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--output", default=None, help="JSON output (default benchmarks/seg_results_<split>.json)")
    parser.add_argument("--num-threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.num_threads)

    split = seg_splits()[args.split]
    tasks = task_arrays(load_seg_dataset(args.data_dir, tasks=split), split)
    model = SGPSSegSynthesizer.from_pretrained(args.checkpoint).eval()
    imagenet = SGPSSegSynthesizer.from_imagenet(
        SGPSSegConfig(**{k: getattr(model.config, k) for k in ("backbone", "hidden_size", "image_size", "head")}),
        seed=0,
    ).eval()
    config = SegBenchmarkConfig(
        ks=args.ks,
        episodes=args.episodes,
        panet_levels=args.panet_levels,
        finetune_episodes=args.finetune_episodes,
        **({"methods": args.methods} if args.methods else {}),
    )
    started = time.time()
    result = run_seg_benchmark(model, tasks, config, imagenet_model=imagenet)
    result["summary"] = summarize(result["per_task"], config.ks, config.bootstrap)
    present = next(iter(result["per_task"].values()))
    result["paired"] = {
        f"synthesizer - {b}": {
            str(k): paired_difference(result["per_task"], "synthesizer", b, k, config.bootstrap) for k in config.ks
        }
        for b in (
            "panet-imagenet-all-levels",
            "panet-imagenet",
            "mean-mask",
            "synthesizer-prototype",
            "synthesizer-ridge",
            "finetune",
        )
        if "synthesizer" in present and b in present
    }
    result["protocol"] = {
        "split": args.split,
        "tasks": sorted(tasks),
        "episodes_per_task_and_k": config.episodes,
        "finetune_episodes": config.finetune_episodes,
        "queries_per_episode": config.n_query,
        "seed": config.seed,
        "ks": config.ks,
        "checkpoint": _relative(args.checkpoint),
        "finetune_steps": config.finetune_steps,
        "finetune_lr": config.finetune_lr,
        "finetune_imagenet_steps": config.finetune_imagenet_steps,
        "finetune_imagenet_lr": config.finetune_imagenet_lr,
        "panet_levels": config.panet_levels,
        "threads": args.num_threads,
        "wall_s": round(time.time() - started, 1),
    }
    out = Path(args.output or f"benchmarks/seg_results_{args.split}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    for method, by_k in result["summary"].items():
        print(f"{method:24s} " + "  ".join(f"K={k}: {v['dice']:.3f}" for k, v in by_k.items()))
    print(f"wrote {out}")


def _relative(path: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(__file__).resolve().parents[1]))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    main()
