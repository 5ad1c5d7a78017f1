"""Episodes as synthesizer inputs, shared by meta-training, the benchmark and the training benchmarks: the text
embeddings of every class (:class:`TextBank`) and :func:`episode_inputs`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..body.text_encoder import embed_texts
from ..data.episodes import Episode
from ..models.sgps.configuration_sgps import SGPSConfig
from ..models.sgps.image_processing_sgps import SGPSImageProcessor
from .augment import random_flips
from .feature_cache import PoolKey, episode_features


class TextBank:
    """Frozen-encoder embeddings of every class text, computed once per run."""

    def __init__(self, model_config: SGPSConfig, texts: list[str]) -> None:
        unique = sorted(set(texts))
        vectors = embed_texts(model_config.text_encoder, unique, model_config.max_text_length)
        self._index = {text: row for text, row in zip(unique, vectors, strict=False)}

    def __call__(self, texts: list[str]) -> torch.Tensor:
        return torch.stack([self._index[t] for t in texts])


def episode_inputs(
    episode: Episode,
    processor: SGPSImageProcessor,
    texts: TextBank,
    augment_seed: int | None,
    features: dict[PoolKey, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Model inputs for one episode (modality dropout applied; optional flips as augmentation).

    With ``features`` (cached body features of a frozen body) the inputs are features, not pixels; the
    augmentation then shows each query under a random one of the cached support views.
    """
    num_classes = len(episode.class_names)
    inputs: dict[str, Any] = {
        "num_classes": num_classes,
        "query_labels": episode.query_labels,
        "text_embeds": texts(episode.class_texts),
        "text_mask": torch.full((num_classes,), bool(episode.use_text)),
    }
    rng = np.random.default_rng(augment_seed) if augment_seed is not None else None
    if features is not None:
        query_views = None
        if rng is not None:
            views = features[(episode.task, episode.class_names[0])].shape[1]  # meta-train and meta-val may differ
            query_views = torch.from_numpy(rng.integers(0, views, size=len(episode.query_labels)))
        support, inputs["query_features"] = episode_features(episode, features, query_views)
        if episode.use_images:
            inputs["support_features"] = support
            inputs["support_labels"] = episode.support_labels
        return inputs
    support, query = episode.support, episode.query
    if rng is not None:
        support, query = random_flips(support, rng), random_flips(query, rng)
    inputs["query_pixel_values"] = processor.normalize_uint8(query)
    if episode.use_images:
        inputs["support_pixel_values"] = processor.normalize_uint8(support)
        inputs["support_labels"] = episode.support_labels
    return inputs
