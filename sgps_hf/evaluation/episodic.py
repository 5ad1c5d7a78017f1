"""Episode-based evaluation of a synthesizer on whole tasks (held-out tasks by default)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch

from ..body.text_encoder import embed_texts
from ..data.episodes import ClassPool, EpisodeSampler
from ..metrics import episode_accuracy, mean_ci
from ..models.sgps.image_processing_sgps import SGPSImageProcessor
from ..models.sgps.modeling_sgps import SGPSSynthesizer


@dataclass
class EpisodeScore:
    """Mean query accuracy over episodes with its 95% confidence interval (normal approximation)."""

    mean: float
    ci95: float
    episodes: int

    def __str__(self) -> str:
        return f"{self.mean:.3f} +/- {self.ci95:.3f} (n={self.episodes})"


def score(values: Iterable[float]) -> EpisodeScore:
    summary = mean_ci(values)
    return EpisodeScore(summary["mean"], summary["ci95"], summary["n"])


@torch.no_grad()
def evaluate_synthesizer(
    synthesizer: SGPSSynthesizer,
    pools: list[ClassPool],
    *,
    n_way: int = 5,
    k_shot: int = 1,
    q_query: int = 15,
    episodes: int = 100,
    seed: int = 0,
    use_text: bool = True,
    use_images: bool = True,
) -> dict[str, EpisodeScore]:
    """Query accuracy per task and overall, on seeded episodes drawn from ``pools``."""
    processor = SGPSImageProcessor.from_sgps_config(synthesizer.config)
    texts = sorted({p.text for p in pools})
    bank = dict(zip(texts, embed_texts(synthesizer.config.text_encoder, texts, synthesizer.config.max_text_length), strict=False))
    sampler = EpisodeSampler(pools, n_way=n_way, k_shot=k_shot, q_query=q_query, seed=seed)
    synthesizer.eval()
    per_task: dict[str, list[float]] = {}
    for index in range(episodes):
        episode = sampler.episode(index)
        n = len(episode.class_names)
        inputs = {
            "num_classes": n,
            "text_embeds": torch.stack([bank[t] for t in episode.class_texts]),
            "text_mask": torch.full((n,), use_text),
            "query_pixel_values": processor.normalize_uint8(episode.query),
        }
        if use_images:
            inputs["support_pixel_values"] = processor.normalize_uint8(episode.support)
            inputs["support_labels"] = episode.support_labels
        logits = synthesizer(**inputs, return_weights=False).logits
        per_task.setdefault(episode.task, []).append(episode_accuracy(logits, episode.query_labels))
    results = {task: score(values) for task, values in sorted(per_task.items())}
    results["all"] = score(v for values in per_task.values() for v in values)
    return results
