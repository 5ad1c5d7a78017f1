"""What SGPS sees of a task, offered to the baselines: its support views and its task-adaptive BatchNorm.

SGPS embeds every support image under its ``support_views`` (dihedral transforms and a central zoom) and, with
``task_batchnorm_images`` set, moves the body's BatchNorm statistics towards those of the support images before it
embeds the support and the queries. A baseline that sees each support image once under the body's own statistics is
not compared on the same evidence. :class:`TaskEmbedding` gives any method the same two test-time steps on the same
body, so the benchmark can run every baseline both ways (see :func:`sgps_hf.evaluation.protocol.build_methods`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..body.timm_network import body_features, task_batchnorm
from ..models.sgps.image_processing_sgps import SGPSImageProcessor
from ..models.sgps.views import apply_view

Embed = Callable[[Tensor], Tensor]  # uint8 images [n, 3, H, W] -> body features [n, D]


@dataclass
class TaskEmbedding:
    """Support features under ``views`` (and the queries' embedding) of one episode, optionally with task BatchNorm.

    ``task_batchnorm_images`` None keeps the body's running statistics (support and queries go through ``memo``, a
    :class:`~sgps_hf.evaluation.baselines.FeatureMemo` of ``body``, when given); a number N moves every BatchNorm's
    statistics ``S / (S + N)`` of the way towards those of the S support images under all views, exactly as SGPS does.
    """

    body: nn.Module
    processor: SGPSImageProcessor
    views: Sequence[str]
    task_batchnorm_images: float | None = None
    memo: Embed | None = field(default=None, repr=False)
    batch_size: int = 256
    # Per support set (by its bytes): its features and a memo of query features under its statistics, so that the
    # methods sharing this embedding pay one body pass per episode between them (set cache=False to hold nothing).
    cache: bool = True
    _episodes: dict[bytes, tuple[Tensor, Embed, dict[bytes, Tensor]]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.views:
            raise ValueError("TaskEmbedding needs at least one support view, e.g. ('identity',).")
        if self.task_batchnorm_images is not None and self.task_batchnorm_images <= 0:
            raise ValueError(f"task_batchnorm_images must be positive or None, got {self.task_batchnorm_images}.")
        self.body = self.body.eval()

    @torch.no_grad()
    def __call__(self, support: Tensor) -> tuple[Tensor, Embed]:
        """(features [S, V, D] of the uint8 ``support`` under every view, the embedding of query images)."""
        if not self.cache:
            return self._embed(support)
        key = _digest(support)
        if key not in self._episodes:
            self._episodes[key] = (*self._embed(support), {})
        features, embed, memo = self._episodes[key]

        def queries(images: Tensor) -> Tensor:
            query_key = _digest(images)
            if query_key not in memo:
                memo[query_key] = embed(images)
            return memo[query_key]

        return features, queries

    def _embed(self, support: Tensor) -> tuple[Tensor, Embed]:
        pixels = self.processor.normalize_uint8(support)
        batch = torch.cat([apply_view(pixels, view) for view in self.views])
        tensors = {**dict(self.body.named_parameters()), **dict(self.body.named_buffers())}
        if self.task_batchnorm_images is None:
            embed = self.memo or (lambda images: body_features(self.body, tensors, images))
            features = self._batched(embed, batch)
            return self._by_image(features, len(support)), lambda images: self._batched(
                embed, self.processor.normalize_uint8(images)
            )
        weight = len(support) / (len(support) + self.task_batchnorm_images)
        adapted, features = task_batchnorm(self.body, tensors, batch, weight)
        return self._by_image(features, len(support)), lambda images: self._batched(
            lambda x: body_features(self.body, adapted, x), self.processor.normalize_uint8(images)
        )

    def clear(self) -> None:
        """Forget the cached episodes."""
        self._episodes.clear()

    def _by_image(self, features: Tensor, count: int) -> Tensor:
        return features.view(len(self.views), count, -1).transpose(0, 1)

    def _batched(self, embed: Embed, images: Tensor) -> Tensor:
        with torch.no_grad():
            return torch.cat([embed(images[i : i + self.batch_size]) for i in range(0, len(images), self.batch_size)])

    def describe(self) -> dict[str, Any]:
        return {
            "support views": f"{len(self.views)} ({', '.join(self.views)}), as SGPS",
            "BatchNorm statistics": (
                "body's running statistics"
                if self.task_batchnorm_images is None
                else f"task-adaptive, as SGPS (the body's count as {self.task_batchnorm_images:g} images)"
            ),
        }


def _digest(images: Tensor) -> bytes:
    return hashlib.blake2b(images.contiguous().numpy().tobytes(), digest_size=16).digest()
