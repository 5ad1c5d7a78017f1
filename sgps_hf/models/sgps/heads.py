"""The closed-form classifier head of synthesizer v2, as pure tensor functions.

Given support features, the head is solved inside the forward pass (no gradient step):

1. Features are standardised, ``z = (f - mu) * gamma``: ``mu`` the mean support feature of the task
   (task centering; the meta-train mean for text-only tasks), ``gamma`` a per-feature scale fitted on meta-val tasks.
   Optionally (``SGPSConfig.normalize_support_rows``, chosen on meta-val tasks) every support row is then rescaled to
   the rows' root-mean-square norm, a cosine kernel around the task centre (SimpleShot's "CL2N", Wang et al. 2019):
   one image's bright or large views no longer outweigh the others in the fit.
2. Kernel ridge regression onto centred one-hot targets, around a prior mean ``W0`` (the class weights
   generated from the clinical texts, scaled by a shot-dependent strength fitted on meta-val tasks):
   ``W = W0 + Z^T (Z Z^T / D + lambda I)^-1 (Y - Z W0 / D) / D``. The dual form costs one S x S solve
   (S support rows), and as ``lambda`` grows the image part tends to the class sums of ``z``: the
   nearest-prototype rule is its limit (R2D2, Bertinetto et al. 2019).
3. The whole map is affine in ``f``, so it folds into one ordinary linear layer: centering goes into the
   bias, the scale into the weight (:func:`fold_linear`). Normalising a query's row as well would divide all its
   logits by one positive number, which never changes its argmax, so the linear layer classifies every query exactly
   as the cosine rule would (the temperature, fitted on meta-val, absorbs the typical norm).
"""

from __future__ import annotations

import torch
from torch import Tensor


def standardize(features: Tensor, mean: Tensor, scale: Tensor) -> Tensor:
    """``(features - mean) * scale`` (the head's input space)."""
    return (features - mean) * scale


def normalize_rows(z: Tensor) -> Tensor:
    """Every row of ``z`` [S, D] rescaled to the rows' root-mean-square norm (the units of the ridge stay those of
    ``z``)."""
    norms = z.norm(dim=1, keepdim=True).clamp_min(torch.finfo(z.dtype).tiny)
    return z / norms * norms.pow(2).mean().sqrt()


def ridge_head(
    z: Tensor,
    labels: Tensor,
    num_classes: int,
    ridge: Tensor,
    prior: Tensor | None = None,
    has_images: Tensor | None = None,
) -> Tensor:
    """Class weights ``W`` [D, C] of kernel ridge regression from support rows ``z`` [S, D] to one-hot ``labels``.

    ``prior`` [D, C] is the mean the solution shrinks towards (zeros when None); ``ridge`` the
    positive regulariser ``lambda`` relative to the mean squared feature norm. ``has_images`` [C] marks
    the classes with support rows (default: all); the others (text-only classes of a mixed task) get
    target 0, so their weight is their prior minus its fit to the other classes' images.
    """
    dim = z.shape[1]
    targets = torch.nn.functional.one_hot(labels, num_classes).to(z.dtype)
    if has_images is None:
        targets = targets - 1.0 / num_classes
    else:
        targets = (targets - 1.0 / has_images.sum().clamp(min=1)) * has_images
    if prior is not None:
        targets = targets - z @ prior / dim
    gram = z @ z.T / dim
    eye = torch.eye(z.shape[0], dtype=z.dtype, device=z.device)
    alpha = torch.linalg.solve(gram + ridge * eye, targets)
    weights = z.T @ alpha / dim
    return weights if prior is None else prior + weights


def fold_linear(weights: Tensor, mean: Tensor, scale: Tensor, logit_scale: Tensor) -> tuple[Tensor, Tensor]:
    """``logit_scale * standardize(f) @ weights`` as a linear layer: (weight [C, D], bias [C]) acting on ``f``."""
    scaled = logit_scale * weights * scale.unsqueeze(1)  # [D, C]
    return scaled.T.contiguous(), -(mean @ scaled)


#: The shot counts the head's temperature is fitted on (meta-val episodes of 1 to 5 shots); outside them it is held.
TEMPERATURE_SHOTS = (1.0, 5.0)


def temperature_shots(shots: Tensor) -> Tensor:
    """``shots`` clamped to :data:`TEMPERATURE_SHOTS`, the number the logit scale's shot exponent applies to (the
    synthesizer and its calibration both read it here, so the fitted exponent means what synthesis applies)."""
    return shots.clamp(*TEMPERATURE_SHOTS)


def support_shots(labels: Tensor, num_classes: int) -> Tensor:
    """Mean number of support images per class that has any (0 for a text-only task)."""
    if labels.numel() == 0:
        return torch.zeros(())
    counts = torch.bincount(labels, minlength=num_classes)
    return counts[counts > 0].float().mean()
