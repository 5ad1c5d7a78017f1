#!/usr/bin/env python
"""Text priors on the meta-val tasks (whole tasks never trained on): does a clinical text carry the one-shot case?

Every variant turns the class texts of an episode into pseudo-prototypes in the head's standardised feature space
(what ``SGPSSynthesizer.text_prototypes`` returns) and is scored through the synthesizer's own closed-form head on
cached body features (identity view; the synthesizer's ten views cost 10x to cache and do not change the text side):

* ``class memory`` (today): softmax attention of the text over the 225 meta-train class texts, returning their mean
  features;
* ``task-centred``: the same memory, whose values are each class's mean feature minus its task's mean (what sets a
  class apart from its siblings, the only thing a classifier within one task can use), optionally with keys centred
  the same way (memory keys by meta-train task, an episode's texts across its classes);
* ``clauses``: each description also split into its short attribute phrases (the diagnosis, then clause by clause);
  a text's embedding is the normalised mean of its full and clause embeddings (keys and queries alike);
* ``ridge map``: closed-form ridge regression from text embeddings to (task-centred) class-mean features over all
  meta-train classes (with clauses: one more row per clause);
* ``per-class gate``: the prior of a class scaled by a sigmoid of its text's best cosine similarity to the memory
  keys (an unfamiliar text counts for less);
* ``logit fusion``: image-only logits plus beta times the text-only logits, instead of the ridge prior.

Text only: 5-way (fewer where a task has fewer classes) episodes with their images withheld. Image + text: the prior
strength (or beta) is chosen on one set of 300 seeded episodes (seed A) and reported on another (seed B), both of
the meta-val tasks, so the reported number is not the maximum of a grid on its own episodes.

    python scripts/compare_text_priors.py --out benchmarks/text_priors.md
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from sgps_hf import SGPSSynthesizer
from sgps_hf.body.text_encoder import embed_texts
from sgps_hf.data.episodes import EpisodeSampler
from sgps_hf.hub.checkpoints import DEFAULT_CHECKPOINT
from sgps_hf.metrics import episode_accuracy, mean_ci
from sgps_hf.models.sgps.image_processing_sgps import SGPSImageProcessor
from sgps_hf.training.config import TrainingConfig
from sgps_hf.training.episode_inputs import TextBank, episode_inputs
from sgps_hf.training.feature_cache import pool_features
from sgps_hf.training.pools import training_pools

Prototypes = Callable[[list[str]], Tensor]  # an episode's class texts -> pseudo-prototypes [C, D]
EpisodePrior = Callable[[dict, list[str]], Tensor]  # (an episode's inputs, its class texts) -> prototypes [C, D]
STRENGTHS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
BETAS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
SEEDS = {"A": 101, "B": 202}


def clauses(text: str) -> list[str]:
    """A description's short attribute phrases: the name before the colon, then its clauses (two words or more)."""
    head, _, body = text.partition(":")
    splitter = r";|, (?:with|and|on|in|whose|often|sometimes|usually|surrounded|seen)\b|, |\. "
    parts = [head, *re.split(splitter, body)]
    return [p.strip(" .,;") for p in parts if len(p.strip(" .,;").split()) >= 2]


def unit(x: Tensor) -> Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


class TextPriors:
    """The meta-train memory (texts, class-mean features) and every variant's prototype function."""

    def __init__(self, model: SGPSSynthesizer, train, features, texts: TextBank) -> None:
        self.scale = model.log_feature_scale.exp().detach()
        all_texts = sorted({p.text for p in train} | set(texts._index))
        self.clauses = {t: clauses(t) for t in all_texts}
        flat = sorted({c for cs in self.clauses.values() for c in cs})
        vectors = embed_texts(model.config.text_encoder, flat, model.config.max_text_length)
        self.clause_emb = dict(zip(flat, vectors, strict=True))
        self.full = {t: unit(texts([t])[0]) for t in all_texts}
        means = torch.stack([features[(p.task, p.class_name)][:, 0].float().mean(0) for p in train])
        self.values = means - model.feature_mean.detach()
        tasks = sorted({p.task for p in train})
        self.task_of = torch.tensor([tasks.index(p.task) for p in train])
        self.centred_values = self.task_centre(self.values)
        self.train_texts = [p.text for p in train]

    def task_centre(self, x: Tensor, task_of: Tensor | None = None) -> Tensor:
        task_of = self.task_of if task_of is None else task_of
        out = x.clone()
        for task in task_of.unique():
            rows = task_of == task
            out[rows] = x[rows] - x[rows].mean(0)
        return out

    def embed(self, text: str, use_clauses: bool) -> Tensor:
        if not use_clauses:
            return self.full[text]
        return unit(torch.stack([self.full[text]] + [unit(self.clause_emb[c]) for c in self.clauses[text]]).mean(0))

    def memory(self, temperature: float, centre_values: bool, centre_keys: bool, use_clauses: bool) -> Prototypes:
        keys = torch.stack([self.embed(t, use_clauses) for t in self.train_texts])
        keys = unit(self.task_centre(keys)) if centre_keys else keys
        values = (self.centred_values if centre_values else self.values) * self.scale

        def prototypes(class_texts: list[str]) -> Tensor:
            queries = torch.stack([self.embed(t, use_clauses) for t in class_texts])
            queries = unit(queries - queries.mean(0)) if centre_keys else queries
            return torch.softmax(queries @ keys.T / temperature, -1) @ values

        return prototypes

    def ridge(self, regulariser: float, use_clauses: bool) -> Prototypes:
        rows, targets, row_task = [], [], []
        for i, text in enumerate(self.train_texts):
            for vector in [self.full[text]] + (
                [unit(self.clause_emb[c]) for c in self.clauses[text]] if use_clauses else []
            ):
                rows.append(vector)
                targets.append(self.centred_values[i])
                row_task.append(int(self.task_of[i]))
        x = self.task_centre(torch.stack(rows).double(), torch.tensor(row_task))
        y = torch.stack(targets).double()
        weights = torch.linalg.solve(x.T @ x + regulariser * torch.eye(x.shape[1], dtype=x.dtype), x.T @ y)

        def prototypes(class_texts: list[str]) -> Tensor:
            queries = torch.stack([self.embed(t, use_clauses) for t in class_texts]).double()
            return ((queries - queries.mean(0)) @ weights).float() * self.scale

        return prototypes

    def gated(self, inner: Prototypes, centre: float, width: float = 0.05) -> Prototypes:
        keys = torch.stack([self.full[t] for t in self.train_texts])

        def prototypes(class_texts: list[str]) -> Tensor:
            familiarity = torch.stack([(self.full[t] @ keys.T).max() for t in class_texts])
            return inner(class_texts) * torch.sigmoid((familiarity - centre) / width).unsqueeze(1)

        return prototypes


class Scorer:
    """Query logits of the synthesizer's head on cached features, with a variant's prototypes as the text prior."""

    def __init__(self, model: SGPSSynthesizer, processor, texts: TextBank, features) -> None:
        self.model, self.processor, self.texts, self.features = model, processor, texts, features

    def logits(self, prototypes: Prototypes, episodes, use_images: bool, strength: float = 0.0):
        return self.logits_of(lambda _inputs, class_texts: prototypes(class_texts), episodes, use_images, strength)

    @torch.no_grad()
    def logits_of(self, prior: EpisodePrior, episodes, use_images: bool, strength: float):
        """Like :meth:`logits`, for a prior that also reads the episode's inputs (e.g. its support features)."""
        original = self.model.text_prototypes
        self.model.set_prior_strength(strength, strength)
        pairs = []
        try:
            for episode in episodes:
                episode = dataclasses.replace(episode, use_images=use_images)
                inputs = episode_inputs(episode, self.processor, self.texts, augment_seed=None, features=self.features)
                self.model.text_prototypes = lambda _embeds, i=inputs, t=episode.class_texts: prior(i, t)
                pairs.append((self.model(**inputs, return_weights=False).logits, inputs["query_labels"]))
        finally:
            self.model.text_prototypes = original
        return pairs


@dataclasses.dataclass
class MetaVal:
    """Everything both comparison scripts score on: the synthesizer, its meta-train memory, the meta-val tasks'
    cached features and the seeded episodes (``episodes[shot, "A" | "B"]``)."""

    model: SGPSSynthesizer
    val: list
    priors: TextPriors
    scorer: Scorer
    episodes: dict[tuple[int, str], list]


def load_meta_val(synthesizer: str, config_path: str, num_episodes: int) -> MetaVal:
    config = TrainingConfig.from_file(config_path)
    model = SGPSSynthesizer.from_pretrained(synthesizer).eval()
    processor = SGPSImageProcessor.from_sgps_config(model.config)
    train, val, _ = training_pools(config, model.config.image_size)
    train_features = pool_features(model, train, processor, views=["identity"])
    val_features = pool_features(model, val, processor, views=["identity"])
    texts = TextBank(model.config, [p.text for p in train + val])
    episodes = {
        (shot, key): [
            EpisodeSampler(val, n_way=5, k_shot=shot, q_query=10, seed=seed).episode(i) for i in range(num_episodes)
        ]
        for shot in (1, 5)
        for key, seed in SEEDS.items()
    }
    priors = TextPriors(model, train, train_features, texts)
    return MetaVal(model, val, priors, Scorer(model, processor, texts, val_features), episodes)


def accuracies(pairs) -> list[float]:
    return [episode_accuracy(logits, labels) for logits, labels in pairs]


def fuse(images, texts, beta: float) -> list[float]:
    def centred(x: Tensor) -> Tensor:
        return x - x.mean(1, keepdim=True)

    return [episode_accuracy(centred(a) + beta * centred(b), y) for (a, y), (b, _) in zip(images, texts, strict=True)]


def choose(scores: dict[float, float]) -> float:
    return max(scores, key=lambda v: (round(scores[v], 6), -v))  # ties: the weaker prior


def evaluate(scorer: Scorer, prototypes: Prototypes, episodes) -> dict[str, object]:
    out: dict[str, object] = {"text only": mean_ci(accuracies(scorer.logits(prototypes, episodes[1, "B"], False)))}
    for shot in (1, 5):
        on_a = {
            s: float(np.mean(accuracies(scorer.logits(prototypes, episodes[shot, "A"], True, s)))) for s in STRENGTHS
        }
        best = choose(on_a)
        out[f"image + text, {shot}"] = mean_ci(accuracies(scorer.logits(prototypes, episodes[shot, "B"], True, best)))
        out[f"strength, {shot}"] = best
        images = {k: scorer.logits(prototypes, episodes[shot, k], True, 0.0) for k in "AB"}
        texts = {k: scorer.logits(prototypes, episodes[shot, k], False) for k in "AB"}
        beta = choose({b: float(np.mean(fuse(images["A"], texts["A"], b))) for b in BETAS})
        out[f"fusion, {shot}"] = mean_ci(fuse(images["B"], texts["B"], beta))
        out[f"beta, {shot}"] = beta
        out[f"image only, {shot}"] = mean_ci(accuracies(images["B"]))
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--synthesizer", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument("--config", default="scripts/configs/default.yaml", help="training config (meta-val tasks)")
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--out", default="benchmarks/text_priors.md")
    parser.add_argument("--num-threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.num_threads)
    started = time.time()
    meta_val = load_meta_val(args.synthesizer, args.config, args.episodes)
    model, priors, scorer, episodes = meta_val.model, meta_val.priors, meta_val.scorer, meta_val.episodes
    chance = float(np.mean([1 / len(e.class_names) for e in episodes[1, "B"]]))
    today = math.exp(float(model.log_text_temperature))
    memory_centred = priors.memory(0.2, True, True, True)
    variants: dict[str, Prototypes] = {
        f"class memory (today, temperature {today:g})": priors.memory(today, False, False, False),
        "class memory, task-centred values (0.05)": priors.memory(0.05, True, False, False),
        "class memory, task-centred values and keys (0.2)": priors.memory(0.2, True, True, False),
        "class memory + clauses, task-centred values and keys (0.2)": memory_centred,
        "ridge map, task-centred (lambda 10)": priors.ridge(10.0, False),
        "ridge map + clauses, task-centred (lambda 10)": priors.ridge(10.0, True),
        "clauses + centred memory, per-class gate (0.6)": priors.gated(memory_centred, 0.6),
    }
    rows = []
    for name, prototypes in variants.items():
        result = evaluate(scorer, prototypes, episodes)
        rows.append((name, result))
        print(name, {k: round(v["mean"], 4) if isinstance(v, dict) else v for k, v in result.items()}, flush=True)

    def cell(value: dict) -> str:
        return f"{value['mean']:.3f} ± {value['ci95']:.3f}"

    header = (
        "| variant | text only | 1 shot: image + text (strength) | 1 shot: logit fusion (beta) "
        "| 5 shots: image + text (strength) |"
    )
    lines = [
        "# Text priors on the meta-val tasks",
        "",
        f"Generated by `python scripts/compare_text_priors.py --out {args.out}` ({time.time() - started:.0f} s, "
        f"{args.num_threads} threads). Synthesizer `{Path(args.synthesizer).name}`; meta-val tasks only; identity "
        f"view (cached features, no task BatchNorm). {args.episodes} episodes per set; text-only chance "
        f"{chance:.3f}. Strengths and betas chosen on seed A, scored on seed B. Mean ± 95% CI over episodes.",
        "",
        f"Image only on the same seed-B episodes: 1 shot {cell(rows[0][1]['image only, 1'])}, "
        f"5 shots {cell(rows[0][1]['image only, 5'])}.",
        "",
        header,
        "|---|---|---|---|---|",
    ]
    for name, r in rows:
        lines.append(
            f"| {name} | {cell(r['text only'])} | {cell(r['image + text, 1'])} ({r['strength, 1']:g}) | "
            f"{cell(r['fusion, 1'])} ({r['beta, 1']:g}) | {cell(r['image + text, 5'])} ({r['strength, 5']:g}) |"
        )
    Path(args.out).write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
