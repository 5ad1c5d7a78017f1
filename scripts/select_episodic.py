#!/usr/bin/env python
"""Choose the episodic adaptation of the body on meta-val tasks (writes benchmarks/episodic_adaptation.md).

Each candidate (episodes, learning rate) runs the training command's episodic stage
(:func:`sgps_hf.training.episodic.episodic_adapt`: meta-train episodes through the closed-form head) from the body of
``--synthesizer`` (a synthesizer trained without the stage), and is scored on the whole meta-val tasks (never trained
on) with that synthesizer's own calibrated head, image only, on cached features (identity + hflip support views, no
task BatchNorm), 300 episodes per shot, paired against the starting body on the same episodes. ``--alphas`` also
scores WiSE-FT mixes of the adapted body with the starting one. With several ``--seeds`` each candidate is trained
once per seed (its episodes and augmentations differ) and scored by its per-episode accuracy averaged over the seeds:
two seeds of one recipe differ by about a point on these episodes. Trained bodies are cached in ``--work-dir``.

The scores are a proxy: one fixed head for every body, two views, no task BatchNorm. A gain here need not survive
each body's own calibration (benchmarks/wide_episodes_metaval_comparison.md: +1.1 / +0.8 points here, level through
the product's path); confirm a winner with ``scripts/compare_checkpoints_metaval.py`` on the trained checkpoint.

    python scripts/select_episodic.py --synthesizer <synthesizer trained without the stage> \\
        --candidates 150:1e-4 300:1e-4 300:3e-5 150:1e-4:family --out benchmarks/episodic_adaptation.md

A candidate is ``EPISODES:LEARNING_RATE``, optionally followed by ``:family`` (the training config's
``episodic_balance: family``, every meta-train family equally likely instead of every task) and ``:<N>way`` (its
``episodic_n_way``: N classes per training episode instead of ``--n-way``), e.g. ``150:1e-4:family:10way``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

from sgps_hf import SGPSSynthesizer
from sgps_hf.data import EpisodeSampler, build_pools, list_tasks
from sgps_hf.models.sgps.image_processing_sgps import SGPSImageProcessor
from sgps_hf.training.config import EPISODIC_BALANCES, TrainingConfig
from sgps_hf.training.episodic import episodic_adapt
from sgps_hf.training.feature_cache import episode_features, pool_features
from sgps_hf.training.pretrain import interpolate_bodies

SHOTS = (1, 5)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--synthesizer", required=True, help="a synthesizer trained without the episodic stage")
    parser.add_argument(
        "--candidates",
        nargs="+",
        default=["150:1e-4"],
        help="EPISODES:LEARNING_RATE[:family][:<N>way] of each candidate stage",
    )
    parser.add_argument("--alphas", type=float, nargs="+", default=[0.5, 1.0], help="WiSE-FT weights of the result")
    parser.add_argument("--episodes", type=int, default=300, help="meta-val episodes per shot")
    parser.add_argument("--n-way", type=int, default=5)
    parser.add_argument("--k-shot", type=int, nargs=2, default=[1, 5])
    parser.add_argument("--q-query", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds of every candidate")
    parser.add_argument("--work-dir", default="runs/episodic-selection")
    parser.add_argument("--out", default="benchmarks/episodic_adaptation.md")
    parser.add_argument("--num-threads", type=int, default=2)
    args = parser.parse_args(argv)
    args.candidates = [parse_candidate(text) for text in args.candidates]
    return args


class Candidate(NamedTuple):
    """One episodic stage to try: episodes, learning rate, task balance (``episodic_balance``) and, when not
    ``--n-way``, classes per episode (``episodic_n_way``)."""

    episodes: int
    rate: float
    balance: str = "task"
    ways: int | None = None

    @property
    def options(self) -> list[str]:
        """The settings that differ from the defaults, as written after ``EPISODES:LEARNING_RATE``."""
        return ([self.balance] if self.balance != "task" else []) + ([f"{self.ways}way"] if self.ways else [])

    @property
    def spec(self) -> str:
        """The ``--candidates`` text that gives this candidate."""
        return ":".join([str(self.episodes), f"{self.rate:g}", *self.options])

    @property
    def label(self) -> str:
        ways = f", {self.ways}-way" if self.ways else ""
        balance = ", every family equally likely" if self.balance == "family" else ""
        return f"{self.episodes} episodes, lr {self.rate:g}{ways}{balance}"


def parse_candidate(text: str) -> Candidate:
    fields = text.split(":")
    try:
        if len(fields) < 2:
            raise ValueError(text)
        candidate = Candidate(int(fields[0]), float(fields[1]))
        for option in fields[2:]:
            if option in EPISODIC_BALANCES:
                candidate = candidate._replace(balance=option)
            elif option.endswith("way") and int(option[: -len("way")]) >= 2:
                candidate = candidate._replace(ways=int(option[: -len("way")]))
            else:
                raise ValueError(option)
        return candidate
    except ValueError:
        raise SystemExit(
            "--candidates takes EPISODES:LEARNING_RATE[:family][:<N>way] (e.g. 150:1e-4 or 150:1e-4:family:10way), "
            f"got {text!r}."
        ) from None


def adapted_body(synthesizer: str, start: dict, candidate: Candidate, seed: int, args) -> tuple[dict, list, float]:
    """The starting body after the episodic stage (trained once, cached in --work-dir): weights, history, minutes."""
    options = "".join(f"-{option}" for option in candidate.options)
    name = f"episodic-{candidate.episodes}-lr{candidate.rate:g}{options}-seed{seed}.safetensors"
    path = Path(args.work_dir) / name
    if not path.is_file():
        model = SGPSSynthesizer.from_pretrained(synthesizer)
        # The stage sees the head a training run gives it (config defaults), not the calibrated one.
        fresh = SGPSSynthesizer(model.config.with_changes(normalize_support_rows=False, text_memory_size=0))
        fresh.target.load_state_dict(start)
        config = TrainingConfig(
            episodic_epochs=1,
            episodic_episodes_per_epoch=candidate.episodes,
            episodic_learning_rate=candidate.rate,
            episodic_balance=candidate.balance,
            episodic_n_way=candidate.ways,
            n_way=args.n_way,
            k_shot=list(args.k_shot),
            q_query=args.q_query,
            seed=seed,
        )
        processor = SGPSImageProcessor.from_sgps_config(fresh.config)
        started = time.monotonic()
        history = episodic_adapt(
            Accelerator(), fresh, build_pools("meta_train", fresh.config.image_size), processor, config
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().contiguous() for k, v in fresh.target.state_dict().items()}, path)
        path.with_suffix(".json").write_text(
            json.dumps({"history": history, "minutes": (time.monotonic() - started) / 60})
        )
    record = json.loads(path.with_suffix(".json").read_text())
    return load_file(path), record["history"], record["minutes"]


@torch.no_grad()
def score(model: SGPSSynthesizer, pools, episodes: int) -> dict[str, list[float]]:
    """Per-episode accuracy of ``model``'s head (image only, cached features), by shot and by shot and family."""
    processor = SGPSImageProcessor.from_sgps_config(model.config)
    features = pool_features(model, pools, processor, views=["identity", "hflip"])
    family = {t.name: t.family for t in list_tasks()}
    results: dict[str, list[float]] = {}
    for k in SHOTS:
        sampler = EpisodeSampler(pools, n_way=5, k_shot=k, q_query=15, seed=1234)
        for i in range(episodes):
            episode = sampler.episode(i)
            support, query = episode_features(episode, features)
            logits = model(
                support_features=support,
                support_labels=episode.support_labels,
                num_classes=episode.n_way,
                query_features=query,
                task_batchnorm_images=None,
            ).logits
            accuracy = (logits.argmax(-1) == episode.query_labels).float().mean().item()
            results.setdefault(f"{k}", []).append(accuracy)
            results.setdefault(f"{k} {family[episode.task]}", []).append(accuracy)
    return results


def paired(scores: list[float], baseline: list[float]) -> tuple[float, float, float]:
    """(mean, mean difference from the baseline, its 95 % CI half-width), on the same episodes."""
    difference = np.array(scores) - np.array(baseline)
    return (
        float(np.mean(scores)),
        float(difference.mean()),
        float(1.96 * difference.std(ddof=1) / np.sqrt(len(difference))),
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.num_threads)
    model = SGPSSynthesizer.from_pretrained(args.synthesizer).eval()
    start = {k: v.detach().clone() for k, v in model.target.state_dict().items()}
    val_pools = build_pools("meta_val", model.config.image_size)
    rows = {"starting body": score(model, val_pools, args.episodes)}
    trained = {}
    for candidate in args.candidates:
        per_seed = {alpha: [] for alpha in args.alphas}
        for seed in args.seeds:
            body, history, minutes = adapted_body(args.synthesizer, start, candidate, seed, args)
            trained[(candidate, seed)] = (history, minutes)
            for alpha in args.alphas:
                model.target.load_state_dict(interpolate_bodies(body, start, alpha))
                per_seed[alpha].append(score(model, val_pools, args.episodes))
        for alpha, scores in per_seed.items():
            rows[f"{candidate.label}, alpha {alpha:g}"] = {
                key: list(np.mean([seed_scores[key] for seed_scores in scores], axis=0)) for key in scores[0]
            }
    model.target.load_state_dict(start)
    write_report(args, rows, trained)
    return 0


def write_report(args, rows: dict[str, dict[str, list[float]]], trained: dict) -> None:
    baseline = rows["starting body"]
    families = sorted({key.split(" ", 1)[1] for key in baseline if " " in key})
    lines = [
        "# Episodic adaptation of the body through the closed-form head (meta-val)",
        "",
        "Generated by `python scripts/select_episodic.py --synthesizer "
        f"{args.synthesizer} --candidates {' '.join(c.spec for c in args.candidates)} --alphas "
        f"{' '.join(f'{a:g}' for a in args.alphas)} --seeds {' '.join(map(str, args.seeds))}`.",
        f"Candidates: the training command's episodic stage ({args.n_way}-way unless the candidate says otherwise, "
        f"{args.k_shot[0]}-{args.k_shot[1]}-shot, {args.q_query} queries per class, augmented meta-train episodes; "
        "AdamW, one-cycle schedule) from the starting synthesizer's body, trained once per seed "
        f"({', '.join(map(str, args.seeds))}). Scores: mean query accuracy of the starting synthesizer's calibrated "
        f"head (image only) on {args.episodes} 5-way episodes per shot from the whole meta-val tasks, cached features "
        "(identity + hflip support views, no task BatchNorm); in brackets the paired difference from the starting "
        "body on the same episodes, in points, with its 95 % CI; a candidate's accuracy on an episode is the mean "
        "over its seeds. alpha is the WiSE-FT weight of the episodically adapted body.",
        "",
        "| body | " + " | ".join(f"{k}-shot" for k in SHOTS) + " |",
        "|---|" + "---|" * len(SHOTS),
    ]
    for name, scores in rows.items():
        cells = []
        for k in SHOTS:
            mean, diff, ci = paired(scores[f"{k}"], baseline[f"{k}"])
            cells.append(
                f"{mean:.3f}" if name == "starting body" else f"{mean:.3f} ({diff * 100:+.1f} ± {ci * 100:.1f})"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for k in SHOTS:
        lines += ["", f"Per family, {k}-shot (difference from the starting body, points):", ""]
        lines += ["| body | " + " | ".join(families) + " |", "|---|" + "---|" * len(families)]
        for name, scores in rows.items():
            if name == "starting body":
                cells = [f"{np.mean(scores[f'{k} {f}']):.3f}" for f in families]
            else:
                cells = [f"{paired(scores[f'{k} {f}'], baseline[f'{k} {f}'])[1] * 100:+.1f}" for f in families]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Training of each candidate:", ""]
    for (candidate, seed), (history, minutes) in trained.items():
        lines.append(f"- {candidate.label}, seed {seed}: {minutes:.1f} min, history {json.dumps(history)}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
