"""The support views of synthesis: deterministic transforms of a batch of square images (see ``SUPPORT_VIEWS``)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .configuration_sgps import ZOOM_FRACTION


def apply_view(images: Tensor, view: str) -> Tensor:
    """One of the ``SUPPORT_VIEWS`` of a batch [N, C, H, W] (square images)."""
    if view == "identity":
        return images
    if view == "hflip":
        return images.flip(-1)
    if view == "vflip":
        return images.flip(-2)
    if view == "transpose":
        return images.transpose(-2, -1)
    if view == "antitranspose":  # the reflection about the other diagonal
        return images.transpose(-2, -1).flip(-2).flip(-1)
    if view in ("zoom", "zoom_hflip"):
        size = images.shape[-1]
        crop = max(1, round(size * ZOOM_FRACTION))
        start = (size - crop) // 2
        zoomed = nn.functional.interpolate(
            images[..., start : start + crop, start : start + crop],
            size=(size, size),
            mode="bilinear",
            align_corners=False,
        )
        return zoomed.flip(-1) if view == "zoom_hflip" else zoomed
    turns = {"rot90": 1, "rot180": 2, "rot270": 3}[view]
    return torch.rot90(images, turns, dims=(-2, -1))
