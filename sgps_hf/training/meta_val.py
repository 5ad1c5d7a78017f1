"""Scoring a synthesizer on fixed meta-val episodes through its one inference path (``forward``): the query logits
and accuracy of each episode, and the episode groups calibration chooses on."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..data.episodes import Episode
from ..metrics import episode_accuracy
from ..models.sgps.image_processing_sgps import SGPSImageProcessor
from ..models.sgps.modeling_sgps import FROM_CONFIG, SGPSSynthesizer
from .episode_inputs import TextBank, episode_inputs
from .feature_cache import PoolKey


def evaluate_episodes(
    model: SGPSSynthesizer,
    episodes: list[Episode],
    processor: SGPSImageProcessor,
    texts: TextBank,
    features: dict[PoolKey, torch.Tensor] | None = None,
) -> float:
    """Mean query accuracy over fixed episodes (eval mode: no dropout)."""
    return mean_accuracy(query_logits(model, episodes, processor, texts, features))


def mean_accuracy(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Mean over episodes of the query accuracy of their (logits, labels); NaN for none."""
    return float(np.mean([episode_accuracy(logits, labels) for logits, labels in pairs])) if pairs else float("nan")


def episode_accuracies(
    model: SGPSSynthesizer,
    episodes: list[Episode],
    processor: SGPSImageProcessor,
    texts: TextBank,
    features: dict[PoolKey, torch.Tensor] | None = None,
) -> list[float]:
    """The query accuracy of each episode (eval mode: no dropout)."""
    return [
        episode_accuracy(logits, labels)
        for logits, labels in query_logits(model, episodes, processor, texts, features)
    ]


@torch.no_grad()
def query_logits(
    model: SGPSSynthesizer,
    episodes: list[Episode],
    processor: SGPSImageProcessor,
    texts: TextBank,
    features: dict[PoolKey, torch.Tensor] | None = None,
    task_batchnorm_images: int | None | str = FROM_CONFIG,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(query logits, query labels) of each episode through the model's one inference path (its ``forward``), in
    eval mode (no dropout); the model's mode is restored. ``task_batchnorm_images``: a candidate to try instead of
    the config's."""
    was_training = model.training
    model.eval()
    pairs = []
    for episode in episodes:
        inputs = episode_inputs(episode, processor, texts, augment_seed=None, features=features)
        output = model(**inputs, return_weights=False, task_batchnorm_images=task_batchnorm_images)
        pairs.append((output.logits, inputs["query_labels"]))
    model.train(was_training)
    return pairs


def shot_buckets(episodes: list[Episode]) -> dict[str, list[Episode]]:
    """Episodes of 1-2 shots under "1", of 3 or more under "5" (empty buckets left out)."""
    buckets: dict[str, list[Episode]] = {}
    for episode in episodes:
        buckets.setdefault("1" if episode.k_shot <= 2 else "5", []).append(episode)
    return buckets


def text_only(episodes: list[Episode]) -> list[Episode]:
    return [dataclasses.replace(e, use_images=False) for e in episodes if e.use_text]
