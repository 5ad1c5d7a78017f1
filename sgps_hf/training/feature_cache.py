"""Body features of every image of the class pools, computed once per run after the body is frozen.

With a frozen body, an episode's support and query features are the same whichever episode draws the
image, so fitting the head on meta-val episodes of cached features (calibration) is exact and costs matrix
products instead of CNN passes. The cache file is keyed by the body's tensors, the support views and the
pools' pixels, so a changed body or dataset never reads stale features.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm.auto import tqdm

from ..body.timm_network import tensors_fingerprint
from ..data.episodes import ClassPool, Episode
from ..models.sgps.image_processing_sgps import SGPSImageProcessor
from ..models.sgps.modeling_sgps import SGPSSynthesizer

PoolKey = tuple[str, str]


def pool_features(
    model: SGPSSynthesizer,
    pools: list[ClassPool],
    processor: SGPSImageProcessor,
    cache_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 128,
    views: Sequence[str] | None = None,
) -> dict[PoolKey, Tensor]:
    """``{(task, class): features [m, V, D]}`` for every image of ``pools`` under ``views`` (default: the model's
    support views)."""
    from ..data.loading import default_cache_dir

    if not pools:
        return {}
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    views = list(views or model.config.support_views)
    path = root / "features" / f"{_cache_key(model, pools, views)}.safetensors"
    if path.is_file():
        stored = load_file(path)
        return {(pool.task, pool.class_name): stored[str(i)] for i, pool in enumerate(pools)}
    features: dict[PoolKey, Tensor] = {}
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for pool in tqdm(pools, desc="Caching body features", leave=False):
            images = torch.from_numpy(pool.images).permute(0, 3, 1, 2)
            parts = [
                model.support_view_features(processor.normalize_uint8(images[i : i + batch_size]), views=views)
                for i in range(0, len(images), batch_size)
            ]
            features[(pool.task, pool.class_name)] = torch.cat(parts).contiguous()
    model.train(was_training)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    save_file({str(i): features[(pool.task, pool.class_name)] for i, pool in enumerate(pools)}, partial)
    os.replace(partial, path)
    return features


def episode_features(
    episode: Episode, features: dict[PoolKey, Tensor], query_views: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """(support features [N*K, V, D], query features [N*Q, D]) of ``episode``.

    Each query is seen under the support view ``query_views[j]`` (default: the identity view, index 0).
    """
    k = episode.k_shot
    chosen = [features[(episode.task, name)] for name in episode.class_names]
    support = torch.cat([pool[torch.from_numpy(rows[:k])] for pool, rows in zip(chosen, episode.rows, strict=True)])
    query = torch.cat([pool[torch.from_numpy(rows[k:])] for pool, rows in zip(chosen, episode.rows, strict=True)])
    views = torch.zeros(len(query), dtype=torch.long) if query_views is None else query_views
    return support, query[torch.arange(len(query)), views]


def _cache_key(model: SGPSSynthesizer, pools: list[ClassPool], views: list[str]) -> str:
    digest = hashlib.sha256()
    config = model.config
    body = tensors_fingerprint(model.body_tensors())
    digest.update(repr((config.target_architecture, views, config.image_mean, config.image_std, body)).encode())
    for pool in pools:
        digest.update(f"{pool.task}/{pool.class_name}/{pool.images.shape}".encode())
        digest.update(pool.images.tobytes())
    return digest.hexdigest()[:32]
