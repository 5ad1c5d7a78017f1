"""Training throughput: SGPS meta-training vs plain supervised training of the same target network.

Both measurements run in one process, on the same real images (the ``meta_train`` split of the shared
data, decoded once to cached 64 px arrays by ``sgps_hf.data``), with the same torch thread count:

(a) meta-training of ``SGPSSynthesizer`` (default ``SGPSConfig`` unless ``--model`` says otherwise): one
    optimizer step per episode, exactly the per-episode work of ``sgps_hf.training.meta_train`` (episode
    sampling, flip augmentation, normalisation, forward through synthesis + query classification, backward,
    gradient clipping, AdamW step with the trainer's two parameter groups);
(b) supervised training of the target timm EfficientNet-V2 (same architecture, channel/depth multipliers,
    image size) with AdamW and gradient clipping, on batches of as many images as an episode holds
    (support + query), drawn at random from the same class pools, flipped and normalised the same way.

Episode shapes are fixed (``--n-way``/``--k-shot``/``--q-query``; default 5-way 5-shot 5-query = 50 images)
and modality dropout is off, so every step processes the same tensor shapes: the sampler only uses tasks
with at least ``n_way`` classes of ``k_shot + q_query`` images. The first calls with a new shape are slow on
CPU (oneDNN primitive creation), so ``--warmup`` steps of each kind run first and are not timed. The timed
steps are interleaved in rounds (a block of meta steps, then a block of supervised steps, the order
alternating per round), so both see the same machine load; the ratio is reported from the totals and per
round.

    python scripts/bench_training.py --num-threads 1 --steps 20 --rounds 3 --note "..."

writes ``benchmarks/training_throughput.md`` and ``benchmarks/training_throughput.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch import nn

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data-dir", default=None, help="shared data folder (default: sgps_hf's default, ../shared/data)"
    )
    parser.add_argument(
        "--model", type=json.loads, default={}, metavar="JSON", help="SGPSConfig overrides (default: none)"
    )
    parser.add_argument("--n-way", type=int, default=5)
    parser.add_argument("--k-shot", type=int, default=5)
    parser.add_argument("--q-query", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps of each kind before measuring")
    parser.add_argument("--steps", type=int, default=10, help="timed steps of each kind per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--num-threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)"
    )
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(PROJECT_ROOT / "benchmarks" / "training_throughput.md"))
    parser.add_argument(
        "--note", default="", help="free text for the results file (e.g. what else ran on the machine)"
    )
    return parser.parse_args(argv)


# -- the two workloads ----------------------------------------------------------------------------------------


class MetaTraining:
    """One meta-training optimizer step per episode, as ``sgps_hf.training.meta_train.train`` does it."""

    def __init__(self, model_config, pools, args) -> None:
        from sgps_hf import SGPSSynthesizer
        from sgps_hf.data import EpisodeSampler
        from sgps_hf.models.sgps.image_processing_sgps import SGPSImageProcessor
        from sgps_hf.training.augment import episode_seed
        from sgps_hf.training.config import TrainingConfig
        from sgps_hf.training.episode_inputs import TextBank, episode_inputs
        from sgps_hf.training.meta_train import build_optimizer

        self._episode_inputs, self._episode_seed = episode_inputs, episode_seed
        config = TrainingConfig(learning_rate=args.learning_rate, base_learning_rate=args.learning_rate)
        self.model = SGPSSynthesizer(model_config).train()
        self.optimizer = build_optimizer(self.model, config)
        self.max_grad_norm = config.max_grad_norm
        self.processor = SGPSImageProcessor.from_sgps_config(model_config)
        self.texts = TextBank(model_config, [pool.text for pool in pools])
        self.sampler = EpisodeSampler(
            pools, n_way=args.n_way, k_shot=args.k_shot, q_query=args.q_query, seed=args.seed
        )
        self.seed, self.index = args.seed, 0
        self.images_per_step = args.n_way * (args.k_shot + args.q_query)
        self.image_passes_per_step = args.n_way * (
            2 * args.k_shot + args.q_query
        )  # support twice (once forward only), query once
        self.phases = Phases()

    def step(self) -> float:
        clock = self.phases.start()
        episode = self.sampler.episode(self.index)
        assert episode.support.shape[0] + episode.query.shape[0] == self.images_per_step, (
            "episode shapes must be fixed"
        )
        inputs = self._episode_inputs(
            episode, self.processor, self.texts, augment_seed=self._episode_seed(self.seed, self.index)
        )
        self.index += 1
        clock.lap("data")
        loss = self.model(**inputs, return_weights=False).loss
        clock.lap("forward")
        loss.backward()
        clock.lap("backward")
        nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad()
        clock.lap("optimizer")
        return loss.item()


class SupervisedTraining:
    """Plain supervised training of the target EfficientNet-V2 on random batches of the same pools."""

    def __init__(self, model_config, pools, args, batch_size: int) -> None:
        from sgps_hf.body.timm_network import create_target
        from sgps_hf.models.sgps.image_processing_sgps import SGPSImageProcessor

        self.images = np.concatenate([pool.images for pool in pools])  # uint8 [n, H, W, 3]
        self.labels = np.concatenate([np.full(len(pool), i) for i, pool in enumerate(pools)])
        self.model = create_target(model_config, num_classes=len(pools)).train()
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=args.learning_rate, weight_decay=0.01)
        self.processor = SGPSImageProcessor.from_sgps_config(model_config)
        self.rng = np.random.default_rng(args.seed)
        self.batch_size = batch_size
        self.images_per_step = self.image_passes_per_step = batch_size
        self.phases = Phases()

    def step(self) -> float:
        from sgps_hf.training.augment import random_flips

        clock = self.phases.start()
        rows = self.rng.choice(len(self.images), size=self.batch_size, replace=False)
        images = torch.from_numpy(np.ascontiguousarray(self.images[rows].transpose(0, 3, 1, 2)))
        pixels = self.processor.normalize_uint8(random_flips(images, self.rng))
        clock.lap("data")
        loss = nn.functional.cross_entropy(self.model(pixels), torch.from_numpy(self.labels[rows]))
        clock.lap("forward")
        loss.backward()
        clock.lap("backward")
        nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad()
        clock.lap("optimizer")
        return loss.item()


class Phases:
    """Wall time per phase of a step (data, forward, backward, optimizer), summed while ``enabled``."""

    def __init__(self) -> None:
        self.enabled, self.totals, self.steps = False, {}, 0

    def start(self) -> "_Clock":
        if self.enabled:
            self.steps += 1
        return _Clock(self)

    def mean_ms(self) -> dict[str, float]:
        return {name: 1000 * total / max(self.steps, 1) for name, total in self.totals.items()}


class _Clock:
    def __init__(self, phases: Phases) -> None:
        self.phases, self.last = phases, time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        if self.phases.enabled:
            self.phases.totals[name] = self.phases.totals.get(name, 0.0) + now - self.last
        self.last = now


def timed(workload, steps: int) -> dict[str, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    losses = [workload.step() for _ in range(steps)]
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert all(np.isfinite(losses)), "training diverged"
    return {"steps": steps, "wall_s": wall, "cpu_s": cpu, "images": steps * workload.images_per_step}


# -- main --------------------------------------------------------------------------------------------------------


def fixed_shape_pools(pools, n_way: int, per_class: int):
    """The pools of tasks that can always form an ``n_way``-way episode with ``per_class`` images per class."""
    by_task: dict[str, list] = {}
    for pool in pools:
        by_task.setdefault(pool.task, []).append(pool)
    kept = [
        p
        for task_pools in by_task.values()
        if sum(len(p) >= per_class for p in task_pools) >= n_way
        for p in task_pools
        if len(p) >= per_class
    ]
    return kept


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    torch.manual_seed(args.seed)
    load_start = os.getloadavg()

    from sgps_hf import SGPSConfig
    from sgps_hf.data import build_pools

    model_config = SGPSConfig(**args.model)
    started = time.perf_counter()
    all_pools = build_pools("meta_train", model_config.image_size, data_dir=args.data_dir)
    pools = fixed_shape_pools(all_pools, args.n_way, args.k_shot + args.q_query)
    load_s = time.perf_counter() - started
    tasks = sorted({pool.task for pool in pools})
    print(
        f"{len(pools)} classes of {len(tasks)} meta_train tasks ({sum(map(len, pools))} images, {model_config.image_size} px) loaded in {load_s:.1f} s"
    )

    meta = MetaTraining(model_config, pools, args)
    supervised = SupervisedTraining(model_config, pools, args, batch_size=meta.images_per_step)
    for name, workload in (("meta", meta), ("supervised", supervised)):
        warm = timed(workload, args.warmup)
        print(f"warm-up {name}: {args.warmup} steps in {warm['wall_s']:.1f} s (not counted)")

    meta.phases.enabled = supervised.phases.enabled = True  # timed steps only
    rounds = []
    for r in range(args.rounds):
        order = (
            (("meta", meta), ("supervised", supervised))
            if r % 2 == 0
            else (("supervised", supervised), ("meta", meta))
        )
        result = {name: timed(workload, args.steps) for name, workload in order}
        result["ratio_images_per_s"] = (result["meta"]["images"] / result["meta"]["wall_s"]) / (
            result["supervised"]["images"] / result["supervised"]["wall_s"]
        )
        rounds.append(result)
        print(
            f"round {r + 1}: meta {result['meta']['images'] / result['meta']['wall_s']:.1f} img/s, "
            f"supervised {result['supervised']['images'] / result['supervised']['wall_s']:.1f} img/s, "
            f"ratio {result['ratio_images_per_s']:.3f}"
        )

    def total(name: str, key: str) -> float:
        return sum(r[name][key] for r in rounds)

    meta_images_s = total("meta", "images") / total("meta", "wall_s")
    supervised_images_s = total("supervised", "images") / total("supervised", "wall_s")
    results = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": _command(sys.argv[1:] if argv is None else argv),
        "note": args.note,
        "environment": {
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_start": load_start,
            "load_average_end": os.getloadavg(),
        },
        "data": {
            "split": "meta_train",
            "tasks": tasks,
            "classes": len(pools),
            "images": int(sum(map(len, pools))),
            "image_size": model_config.image_size,
            "selection": f"tasks with >= {args.n_way} classes of >= {args.k_shot + args.q_query} images (fixed episode shapes)",
        },
        "model": {
            "sgps_config": {
                k: v
                for k, v in model_config.to_diff_dict().items()
                if not k.startswith("_") and k not in ("transformers_version",)
            },
            "synthesizer_parameters": sum(p.numel() for p in meta.model.parameters()),
            "target_parameters": sum(p.numel() for p in supervised.model.parameters()),
        },
        "episode": {
            "n_way": args.n_way,
            "k_shot": args.k_shot,
            "q_query": args.q_query,
            "images": meta.images_per_step,
            "modality_dropout": "off",
            "augmentation": "random flips (both workloads)",
        },
        "warmup_steps": args.warmup,
        "timed_steps_per_round": args.steps,
        "rounds": rounds,
        "meta_training": {
            "episodes_per_s": total("meta", "steps") / total("meta", "wall_s"),
            "images_per_s": meta_images_s,
            "images_per_cpu_s": total("meta", "images") / total("meta", "cpu_s"),
            "image_passes_per_step": meta.image_passes_per_step,
            "mean_ms_per_step": meta.phases.mean_ms(),
        },
        "supervised": {
            "images_per_s": supervised_images_s,
            "images_per_cpu_s": total("supervised", "images") / total("supervised", "cpu_s"),
            "image_passes_per_step": supervised.image_passes_per_step,
            "mean_ms_per_step": supervised.phases.mean_ms(),
            "optimizer": f"AdamW lr {args.learning_rate}, weight decay 0.01, grad-norm clip 1.0",
        },
        "ratio_images_per_s": meta_images_s / supervised_images_s,
        "ratio_images_per_cpu_s": (total("meta", "images") / total("meta", "cpu_s"))
        / (total("supervised", "images") / total("supervised", "cpu_s")),
        "ratio_per_round": [r["ratio_images_per_s"] for r in rounds],
        "goal_ratio": 0.6,
    }
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    output.write_text(render_markdown(results, output.with_suffix(".json").name), encoding="utf-8")
    print(
        f"ratio (meta / supervised images/s) = {results['ratio_images_per_s']:.3f}; wrote {output} and {output.with_suffix('.json')}"
    )


def _command(argv: list[str]) -> str:
    """The command line, with the value of ``--note`` (printed in the results file anyway) elided."""
    shown, skip = [], False
    for arg in argv:
        if skip:
            shown.append("'...'")
            skip = False
            continue
        skip = arg == "--note"
        shown.append(arg if not arg.startswith("--note=") else "--note='...'")
    return " ".join(
        ["python", "scripts/bench_training.py", *map(lambda a: a if a == "'...'" else shlex.quote(a), shown)]
    )


def render_markdown(r: dict, json_name: str) -> str:
    env, meta, sup, episode = r["environment"], r["meta_training"], r["supervised"], r["episode"]
    verdict = "meets" if r["ratio_images_per_s"] >= r["goal_ratio"] else "does NOT meet"
    per_round = ", ".join(f"{x:.3f}" for x in r["ratio_per_round"])
    config = r["model"]["sgps_config"]
    lines = [
        "# Training throughput: SGPS meta-training vs supervised training of the same target",
        "",
        f"Generated by `scripts/bench_training.py` on {r['created']} (raw numbers: `{json_name}`).",
        "",
        "```",
        r["command"],
        "```",
        "",
        "## Result",
        "",
        "| | steps/s | images/s | images per CPU-second |",
        "|---|---:|---:|---:|",
        f"| (a) SGPS meta-training ({episode['n_way']}-way {episode['k_shot']}-shot {episode['q_query']}-query episodes) "
        f"| {meta['episodes_per_s']:.3f} episodes/s | {meta['images_per_s']:.1f} | {meta['images_per_cpu_s']:.1f} |",
        f"| (b) supervised training, batches of {episode['images']} images | "
        f"{sup['images_per_s'] / episode['images']:.3f} batches/s | {sup['images_per_s']:.1f} | {sup['images_per_cpu_s']:.1f} |",
        "",
        f"**Ratio (a)/(b) in images/s: {r['ratio_images_per_s']:.3f}** (per round: {per_round}; by CPU time: "
        f"{r['ratio_images_per_cpu_s']:.3f}). The project goal is >= {r['goal_ratio']}: this run {verdict} it.",
        "",
        "## Setup",
        "",
        f"- Machine: {env['cpu_count']} CPUs, {env['platform']}, Python {env['python']}, torch {env['torch']}; "
        f"**torch threads: {env['torch_threads']}**. Load average at start {tuple(round(x, 2) for x in env['load_average_start'])}, "
        f"at end {tuple(round(x, 2) for x in env['load_average_end'])}.",
        f"- Data: the same real images for both: {r['data']['images']} images of {r['data']['classes']} classes from "
        f"{len(r['data']['tasks'])} `meta_train` tasks of the shared data, {r['data']['image_size']} px cached uint8 arrays "
        f"(`sgps_hf.data.build_pools`); {r['data']['selection']}.",
        f"- (a) `SGPSSynthesizer` with SGPSConfig {json.dumps(config)} "
        f"({r['model']['synthesizer_parameters']:,} parameters): per step one episode of {episode['images']} images "
        f"({episode['n_way'] * episode['k_shot']} support + {episode['n_way'] * episode['q_query']} query), modality dropout off "
        "(fixed shapes), random flips, forward (base features of the support set, generated weights, modulated support "
        "pass, query classification), backward, grad-norm clip 1.0, AdamW with the trainer's two parameter groups: the "
        "per-episode work of `sgps_hf.training.meta_train`. The support images pass through the body twice per step; "
        "images/s counts each support and query image once.",
        f"- (b) timm `{config.get('target_architecture', 'tf_efficientnetv2_b0')}` with the same channel/depth multipliers and image "
        f"size ({r['model']['target_parameters']:,} parameters, one output per class), random batches of {episode['images']} images "
        f"from the same pools, random flips, cross-entropy, {sup['optimizer']}.",
        f"- Warm-up: {r['warmup_steps']} untimed steps of each kind first (the first call with a new tensor shape is slow on "
        "CPU: oneDNN primitive creation; all timed steps reuse the warmed-up shapes). Then "
        f"{len(r['rounds'])} rounds of {r['timed_steps_per_round']} timed steps of each kind, interleaved (the order "
        "alternates per round) so that both measurements share the same machine load.",
    ]
    phases = ("data", "forward", "backward", "optimizer")
    lines += [
        "",
        "## Where the time goes",
        "",
        "Mean wall milliseconds per timed step:",
        "",
        "| | " + " | ".join(phases) + " | total | image passes through the body |",
        "|---|" + "---:|" * (len(phases) + 2),
    ]
    for label, part in (("(a) meta-training", meta), ("(b) supervised", sup)):
        ms = part["mean_ms_per_step"]
        lines.append(
            f"| {label} | "
            + " | ".join(f"{ms.get(p, 0):.0f}" for p in phases)
            + f" | {sum(ms.values()):.0f} | {part['image_passes_per_step']} |"
        )
    # A backward pass costs about twice its forward pass: weigh passes with a backward 3, forward-only passes 1.
    forward_only = episode["n_way"] * episode["k_shot"]
    bound = 3 * episode["images"] / (3 * (meta["image_passes_per_step"] - forward_only) + forward_only)
    lines += [
        "",
        f"A meta-training step sends the support set through the body twice (base features for the task context, "
        f"forward only; then the modulated body whose features form the prototypes) and the queries once: "
        f"{meta['image_passes_per_step']} image passes for {episode['images']} images, "
        f"{meta['image_passes_per_step'] - forward_only} of them with a backward pass. Counting body passes alone "
        f"(a backward pass costing about two forward passes), the ratio would be about {bound:.2f}; the hypernetwork itself (context transformer, FiLM and "
        "low-rank generators, the functional calls) and the smaller batches per pass "
        f"({episode['n_way'] * episode['k_shot']} support or {episode['n_way'] * episode['q_query']} query images instead of "
        f"{episode['images']}) cost the rest.",
    ]
    if r["note"]:
        lines += ["", "## Conditions", "", r["note"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
