"""Grad-CAM saliency maps of a synthesized classifier, computed on its plain timm model.

Grad-CAM (Selvaraju et al., ICCV 2017): the gradient of the class's logit with respect to the last feature map,
averaged over space, weights that map's channels; the positive part of the weighted sum says where the evidence
for that class lies. On timm models (``forward_features`` then ``forward_head``: pooling and the linear
classifier) only the head needs a gradient, so an explanation costs little more than a prediction. Nothing of
this is needed to load or run the classifier: it is plain timm.

The model sees the centre square of each image (resize the shorter side, centre crop, as timm's eval
transform does); overlays are drawn on that square.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..imaging import load_image


@dataclass
class Explanation:
    """A saliency map for one image and one class.

    ``heatmap``: float [H, W] in [0, 1] at the model's input resolution, over the centre square the model saw
    (1: strongest evidence for ``label``). ``probability``: the classifier's probability of ``label``.
    """

    label: str
    probability: float
    heatmap: np.ndarray

    def overlay(self, image: Any, size: int = 256, alpha: float = 0.45) -> Image.Image:
        """The heatmap blended over the centre square of ``image`` (any input ``load_image`` reads), ``size`` px."""
        square = centre_square(load_image(image)).resize((size, size), Image.BILINEAR)
        heat = Image.fromarray(np.uint8(np.clip(self.heatmap, 0, 1) * 255)).resize((size, size), Image.BILINEAR)
        colours = Image.fromarray(colormap(np.asarray(heat, dtype=np.float64) / 255.0))
        return Image.blend(square.convert("RGB"), colours, alpha)

    def peak(self) -> tuple[float, float]:
        """(x, y) of the heatmap's weighted centre, as fractions of the width and height of the square."""
        weights = np.clip(self.heatmap, 0, None)
        total = weights.sum()
        if total <= 0:
            return 0.5, 0.5
        ys, xs = np.mgrid[0 : weights.shape[0], 0 : weights.shape[1]]
        return float((xs * weights).sum() / total / weights.shape[1]), float(
            (ys * weights).sum() / total / weights.shape[0]
        )


def centre_square(image: Image.Image) -> Image.Image:
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side))


def colormap(values: np.ndarray) -> np.ndarray:
    """A blue-to-red heat colour scale for values in [0, 1] (uint8 RGB, same shape plus 3)."""
    anchors = np.array([[0, 0, 128], [0, 128, 255], [0, 220, 120], [255, 230, 0], [220, 0, 0]], dtype=np.float64)
    position = np.clip(values, 0, 1) * (len(anchors) - 1)
    low = np.floor(position).astype(int).clip(0, len(anchors) - 2)
    fraction = (position - low)[..., None]
    return np.uint8(anchors[low] * (1 - fraction) + anchors[low + 1] * fraction)


def gradcam(
    model: nn.Module, pixel_values: torch.Tensor, targets: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(heatmaps [B, H, W] in [0, 1] at the input resolution, probabilities [B, C]) for ``targets`` (default, and
    wherever a target is negative: the top class of that image). ``model``: a timm classifier with
    ``forward_features`` and ``forward_head``."""
    if not (hasattr(model, "forward_features") and hasattr(model, "forward_head")):
        raise TypeError(f"Grad-CAM needs a timm model with forward_features/forward_head, got {type(model).__name__}.")
    with torch.no_grad():
        features = model.forward_features(pixel_values)
    features = features.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model.forward_head(features)
        top = logits.argmax(-1)
        chosen = top if targets is None else torch.where(targets.to(logits.device) < 0, top, targets.to(logits.device))
        (gradients,) = torch.autograd.grad(logits.gather(1, chosen[:, None]).sum(), features)
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    cams = torch.relu((weights * features.detach()).sum(1, keepdim=True))
    cams = nn.functional.interpolate(cams, size=pixel_values.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cams.flatten(1).max(1).values.clamp_min(1e-12)[:, None, None]
    return cams / peak, logits.detach().softmax(-1)


def explain(
    classifier: Any, images: Sequence[Any], labels: Sequence[str | None] | None = None, batch_size: int = 32
) -> list[Explanation]:
    """One :class:`Explanation` per image, for ``labels[i]`` (a class name) or, when None, the predicted class."""
    images = list(images)
    if labels is not None and len(labels) != len(images):
        raise ValueError(f"labels has {len(labels)} entries for {len(images)} images; give one per image (or None).")
    unknown = sorted({name for name in labels or [] if name is not None} - set(classifier.label_names))
    if unknown:
        raise ValueError(f"Unknown classes {unknown}; this classifier knows {classifier.label_names}.")
    out: list[Explanation] = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        pixels = classifier.image_processor(chunk)["pixel_values"]
        wanted = None
        if labels is not None:  # -1: the predicted class, resolved inside the one Grad-CAM pass
            names = labels[start : start + batch_size]
            wanted = torch.tensor([-1 if n is None else classifier.label_names.index(n) for n in names])
        cams, probs = gradcam(classifier.model, pixels, wanted)
        top = probs.argmax(-1)
        chosen = top if wanted is None else torch.where(wanted < 0, top, wanted)
        for cam, row, index in zip(cams, probs, chosen.tolist(), strict=True):
            out.append(Explanation(classifier.label_names[index], float(row[index]), cam.numpy()))
    return out
