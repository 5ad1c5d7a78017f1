"""Image augmentations shared by body adaptation, meta-training and the trained baselines.

Medical images have no canonical orientation (a smear, a tissue tile, a dermoscopy photo), so every
dihedral transform is label-preserving; crops, colour/contrast jitter and blur mimic what changes
between sites (magnification, staining, exposure, focus). Every function takes uint8 channels-first
batches and an explicit generator, so runs are reproducible.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as TF


def random_flips(images: Tensor, rng: np.random.Generator | torch.Generator) -> Tensor:
    """Each image flipped horizontally and/or vertically with probability 1/2.

    ``rng`` is a numpy generator (episodes derive theirs from the episode seed) or a torch generator.
    """
    if isinstance(rng, torch.Generator):
        flips = torch.rand(images.shape[0], 2, generator=rng) < 0.5
    else:
        flips = torch.from_numpy(rng.random((images.shape[0], 2)) < 0.5)
    images = torch.where(flips[:, 0, None, None, None], images.flip(-1), images)
    return torch.where(flips[:, 1, None, None, None], images.flip(-2), images)


def medical_augment(images: Tensor, generator: torch.Generator, min_scale: float = 0.6) -> Tensor:
    """A random dihedral transform, random resized crop, colour/contrast jitter and blur, per image.

    ``images`` uint8 [B, 3, H, W]; returns uint8 of the same shape.
    """
    out = torch.empty_like(images)
    size = list(images.shape[-2:])
    draws = torch.rand(images.shape[0], 9, generator=generator).tolist()
    for i, (rot, flip, scale, aspect, cx, cy, bright, contrast, blur) in enumerate(draws):
        image = images[i]
        image = torch.rot90(image, int(rot * 4), dims=(-2, -1))
        if flip < 0.5:
            image = image.flip(-1)
        area = min_scale + (1 - min_scale) * scale
        ratio = float(np.exp((aspect - 0.5) * 0.5))  # aspect ratio in [e^-0.25, e^0.25]
        h = min(size[0], max(8, round(size[0] * (area / ratio) ** 0.5)))
        w = min(size[1], max(8, round(size[1] * (area * ratio) ** 0.5)))
        top, left = int(cy * (size[0] - h)), int(cx * (size[1] - w))
        image = TF.resized_crop(image, top, left, h, w, size, antialias=True)
        image = TF.adjust_brightness(image, 0.8 + 0.4 * bright)
        image = TF.adjust_contrast(image, 0.8 + 0.4 * contrast)
        if blur < 0.2:
            image = TF.gaussian_blur(image, [3, 3], [0.8, 0.8])
        out[i] = image
    return out


def episode_seed(seed: int, index: int) -> int:
    """The seed of episode ``index``'s augmentation: a pure function of (run seed, episode), so resumes and the
    baselines trained on the same episodes draw the same flips."""
    return seed * 1_000_003 + index
