"""Choose the K-dependent prototype weight of the blended head on the selection tasks (never the held-out ones).

``python scripts/select_seg_head.py [--checkpoint DIR] [--write]``

The blended head (sgps_hf/models/sgps_seg/heads.py) mixes the prototype and ridge margins of the synthesizer's
decoder features; its prototype weight is training-free (no gradient touches it), so it is chosen on whole tasks:
the meta-val task and the five meta-train tasks. The learned decoder channels were meta-trained on the meta-train
tasks' masks (with the ridge head in the loop), so there they would favour ridge for a reason that does not carry
to new tasks: on the meta-train tasks the heads therefore see the decoder features with the learned channels
zeroed (the raw block alone, whose standardisation / principal axes were fitted on meta-train images without masks);
on meta-val they see all features, as deployed (``--meta-train-features all`` gives the other variant, reported).
Per K the weight with the best mean Dice over the six tasks (binary tasks averaged within their task first) is
chosen; a leave-one-task-out run of the same rule estimates what the choice gains on a task it did not see.
K values between the evaluated ones get a linearly interpolated weight. ``--write`` stores the choice as
``prototype_mix`` in the checkpoint's config (the weights are unchanged: the head is computed at synthesis time);
``--write --from-json FILE`` writes the choice recorded in an earlier run's JSON without re-running.
The bundled checkpoint's ``prototype_mix``: ``python scripts/select_seg_head.py --write`` (about 5 minutes, 1 CPU thread;
writes benchmarks/seg_head_selection.json). ``--meta-train-features all --output benchmarks/seg_head_selection_all_features.json``
is the variant with the learned channels kept on the meta-train tasks.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from sgps_hf import DEFAULT_SEG_CHECKPOINT, SGPSSegConfig, SGPSSegSynthesizer
from sgps_hf.data.segmentation import EpisodeSampler, load_seg_dataset, seg_splits, task_arrays
from sgps_hf.training.seg_meta_train import FeatureBank, dice_scores


def decoded_bank(model: SGPSSegSynthesizer, bank: FeatureBank, batch: int = 32) -> dict[str, torch.Tensor]:
    """Decoder features (learned + raw) of every image, computed once (eval mode: per image, batch-independent)."""
    out = {}
    with torch.no_grad():
        for name in sorted(bank.features):
            n = len(bank.masks[name])
            out[name] = torch.cat(
                [model.decode(bank.get(name, range(s, min(s + batch, n)))[0]) for s in range(0, n, batch)]
            )
    return out


def without_learned(model: SGPSSegSynthesizer, decoded: torch.Tensor) -> torch.Tensor:
    """The decoder features with the learned channels zeroed (the head then rests on the raw block alone)."""
    out = decoded.clone()
    out[:, : model.config.hidden_size] = 0
    return out


def episode_dice(model: SGPSSegSynthesizer, decoded: torch.Tensor, masks: torch.Tensor, episode, mix: float) -> float:
    model.config.prototype_mix = [mix]
    head = "ridge" if mix == 0 else "blend"  # weight 0 is exactly the ridge head
    weight, bias = model.head_from_support(decoded[list(episode.support)], masks[list(episode.support)], head=head)
    logits = model.query_logits(decoded[list(episode.query)], weight, bias, tuple(masks.shape[-2:]))
    return float(np.mean(dice_scores(logits[:, 1] > logits[:, 0], masks[list(episode.query)][:, 0])))


def _raw_fit(checkpoint: str) -> dict:
    """How the checkpoint's raw block was fitted (training.json: a post-hoc re-fit if any, else the meta-training fit)."""
    path = Path(checkpoint) / "training.json"
    info = json.loads(path.read_text()) if path.is_file() else {}
    spec = info.get("raw_refit") or info.get("config", {}).get("passthrough", {})
    return {"standardize": bool(spec.get("standardize", True)), "level_norm": str(spec.get("level_norm", "dim"))}


def task_of(binary: str) -> str:
    return binary.split("/")[0]


def choose(scores: dict, tasks: list[str], k: int, grid: list[float]) -> float:
    """The grid weight with the best mean over ``tasks`` of the task Dice at ``k`` (first one on ties)."""
    means = [np.mean([scores[t][str(k)][str(m)] for t in tasks]) for m in grid]
    return grid[int(np.argmax(means))]


def interpolate(chosen: dict[int, float], max_k: int) -> list[float]:
    ks = sorted(chosen)
    return [round(float(np.interp(k, ks, [chosen[j] for j in ks])), 4) for k in range(1, max_k + 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", default=DEFAULT_SEG_CHECKPOINT)
    parser.add_argument("--episodes", type=int, default=16)
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 5, 8])
    parser.add_argument("--grid", type=float, nargs="+", default=[round(0.1 * i, 1) for i in range(11)])
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--output", default="benchmarks/seg_head_selection.json")
    parser.add_argument("--num-threads", type=int, default=1)
    parser.add_argument(
        "--meta-train-features",
        choices=["raw", "all"],
        default="raw",
        help="features of the meta-train tasks (see above)",
    )
    parser.add_argument(
        "--write", action="store_true", help="store the chosen prototype_mix in the checkpoint's config"
    )
    parser.add_argument(
        "--from-json",
        default=None,
        help="with --write: take the choice from an earlier run's JSON instead of re-running",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.num_threads)
    if args.from_json:
        result = json.loads(Path(args.from_json).read_text())
    else:
        result = select(args)
    print("chosen prototype weight per K:", result["chosen"], "-> prototype_mix", result["prototype_mix"])
    print(
        "leave-one-task-out gain over ridge:",
        {k: round(v, 4) for k, v in result["leave_one_task_out_gain_over_ridge"].items()},
    )
    if args.write:
        write_choice(args.checkpoint, result["prototype_mix"])
        print(f"wrote prototype_mix into {args.checkpoint}/config.json")


def write_choice(checkpoint: str, prototype_mix: list[float]) -> None:
    """The post-hoc step: only ``prototype_mix`` of the config changes (weights untouched)."""
    config = SGPSSegConfig.from_pretrained(checkpoint)
    config.prototype_mix = prototype_mix
    config.save_pretrained(checkpoint)


def select(args: argparse.Namespace) -> dict:

    splits = seg_splits()
    names = splits["meta_train"] + splits["meta_val"]
    tasks = task_arrays(load_seg_dataset(args.data_dir, tasks=names), names)
    model = SGPSSegSynthesizer.from_pretrained(args.checkpoint).eval()
    bank = FeatureBank(model, tasks, mirrored=False, dtype=torch.float32)
    decoded = decoded_bank(model, bank)
    if args.meta_train_features == "raw":
        decoded = {n: d if task_of(n) in splits["meta_val"] else without_learned(model, d) for n, d in decoded.items()}
    sampler = EpisodeSampler({n: len(a) for n, a in tasks.items()}, (1, max(args.ks)), 8, args.seed)
    binary: dict = {}
    for name in sorted(tasks):
        binary[name] = {}
        for k in args.ks:
            episodes = sampler.fixed(name, k, args.episodes)
            binary[name][str(k)] = {
                str(m): float(
                    np.mean([episode_dice(model, decoded[name], bank.masks[name], ep, m) for ep in episodes])
                )
                for m in args.grid
            }
            print(f"{name} K={k}: " + " ".join(f"{m}:{v:.3f}" for m, v in binary[name][str(k)].items()), flush=True)
    whole = sorted({task_of(n) for n in binary})
    scores = {
        t: {
            str(k): {
                str(m): float(np.mean([binary[n][str(k)][str(m)] for n in binary if task_of(n) == t]))
                for m in args.grid
            }
            for k in args.ks
        }
        for t in whole
    }
    chosen = {k: choose(scores, whole, k, args.grid) for k in args.ks}
    loto = {}
    for left in whole:
        rest = [t for t in whole if t != left]
        loto[left] = {
            str(k): {
                "weight": (w := choose(scores, rest, k, args.grid)),
                "dice": scores[left][str(k)][str(w)],
                "ridge": scores[left][str(k)]["0.0"],
            }
            for k in args.ks
        }
    result = {
        "checkpoint": args.checkpoint,
        "selection_tasks": whole,
        "meta_val": splits["meta_val"],
        "episodes_per_binary_task_and_k": args.episodes,
        "seed": args.seed,
        "meta_train_features": args.meta_train_features,
        "grid": args.grid,
        "per_binary_task": binary,
        "per_task": scores,
        "mean_over_tasks": {
            str(k): {str(m): float(np.mean([scores[t][str(k)][str(m)] for t in whole])) for m in args.grid}
            for k in args.ks
        },
        "chosen": {str(k): w for k, w in chosen.items()},
        "prototype_mix": interpolate(chosen, max(args.ks)),
        "leave_one_task_out": loto,
        "raw_fit": _raw_fit(args.checkpoint),
        "leave_one_task_out_gain_over_ridge": {
            str(k): float(np.mean([loto[t][str(k)]["dice"] - loto[t][str(k)]["ridge"] for t in whole]))
            for k in args.ks
        },
    }
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
