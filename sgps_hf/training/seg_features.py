"""Cached frozen-encoder features of segmentation tasks and the episode computations on them.

The ImageNet encoder of the segmentation synthesizer is frozen, so the feature maps of every image (and of its
horizontal mirror, the augmentation) are computed once; meta-training, meta-val evaluation, the post-hoc calibration
steps (``seg_calibration``) and the segmentation benchmark then run only the decoder and the closed-form head.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..data.segmentation import SegEpisode, SegEpisodeSampler, TaskArrays
from ..metrics import dice_per_image
from ..models.sgps_seg.modeling_sgps_seg import SGPSSegSynthesizer


class FeatureBank:
    """Frozen-encoder feature maps of every image of some binary tasks, plus their mirrored copies."""

    def __init__(
        self,
        model: SGPSSegSynthesizer,
        tasks: dict[str, TaskArrays],
        mirrored: bool,
        batch_size: int = 32,
        dtype: torch.dtype = torch.float16,
    ) -> None:
        self.tasks = tasks
        self.features: dict[str, list[list[torch.Tensor]]] = {}  # task -> [plain levels, mirrored levels]
        self.masks: dict[str, torch.Tensor] = {}
        model.eval()
        mean = torch.tensor(model.config.image_mean).view(1, 3, 1, 1)
        std = torch.tensor(model.config.image_std).view(1, 3, 1, 1)
        for name, arrays in tasks.items():
            views = []
            for flip in [False, True] if mirrored else [False]:
                levels: list[list[torch.Tensor]] = []
                for start in range(0, len(arrays), batch_size):
                    pixels = (
                        torch.from_numpy(arrays.images[start : start + batch_size]).permute(0, 3, 1, 2).float() / 255
                    )
                    pixels = (pixels - mean) / std
                    if flip:
                        pixels = pixels.flip(-1)
                    levels.append([f.to(dtype) for f in model.encode(pixels)])
                views.append([torch.cat([chunk[i] for chunk in levels]) for i in range(len(levels[0]))])
            self.features[name] = views
            self.masks[name] = torch.from_numpy(arrays.masks).float()[:, None]

    def get(self, name: str, indices: Sequence[int], flip: bool = False) -> tuple[list[torch.Tensor], torch.Tensor]:
        index = torch.tensor(list(indices), dtype=torch.long)
        levels = [f[index].float() for f in self.features[name][1 if flip else 0]]
        masks = self.masks[name][index]
        return levels, masks.flip(-1) if flip else masks


def episode_logits(
    model: SGPSSegSynthesizer,
    bank: FeatureBank,
    episode: SegEpisode,
    flip: bool = False,
    head: str | None = None,
    learned_keep: torch.Tensor | None = None,
):
    """Query logits and masks of one episode; ``learned_keep``: optional 0/1 mask over the learned decoder channels
    (learned-channel dropout in meta-training, the same for examples and queries)."""
    indices = list(episode.support) + list(episode.query)
    levels, masks = bank.get(episode.task, indices, flip=flip)
    decoded = model.decode(levels)
    if learned_keep is not None:
        hidden = model.config.hidden_size
        decoded = torch.cat(
            [decoded[:, :hidden] * learned_keep.to(decoded)[None, :, None, None], decoded[:, hidden:]], 1
        )
    k = episode.k
    weight, bias = model.head_from_support(decoded[:k], masks[:k], head=head)
    logits = model.query_logits(decoded[k:], weight, bias, tuple(masks.shape[-2:]))
    return logits, masks[k:]


def foreground(logits: torch.Tensor) -> torch.Tensor:
    """Predicted masks ``(Q, H, W)`` of two-channel logits (foreground beats background)."""
    return logits[:, 1] > logits[:, 0]


@torch.no_grad()
def evaluate_bank(
    model: SGPSSegSynthesizer,
    bank: FeatureBank,
    sampler: SegEpisodeSampler,
    ks: Sequence[int],
    n_per_k: int,
    head: str | None = None,
) -> dict[str, float]:
    """Mean per-image Dice of the queries of ``n_per_k`` fixed episodes per task and K (``dice_k<K>``) and over K."""
    model.eval()
    out: dict[str, float] = {}
    for k in ks:
        predicted, targets = [], []
        for name in sampler.names:
            for episode in sampler.fixed(name, k, n_per_k):
                logits, target = episode_logits(model, bank, episode, head=head)
                predicted.extend(foreground(logits))
                targets.extend(target[:, 0])
        out[f"dice_k{k}"] = float(np.mean(dice_per_image(predicted, targets)))
    out["dice"] = float(np.mean([out[f"dice_k{k}"] for k in ks]))
    return out
