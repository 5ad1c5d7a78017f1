"""Closed-form heads of the segmentation synthesizer: support pixel features and masks in, a linear 1x1 classifier out.

All heads act on the (shifted, weighted) pixel features ``x`` ``(N, C)`` and soft foreground fractions ``y`` ``(N,)``
of the examples and return ``(weight (2, C), bias (2,))`` rows for (background, foreground). Every head is linear in
the features, so each folds into the final 1x1 convolution of the plain UperNet export.

* ``ridge``: class-balanced ridge regression of +-1 targets (with intercept).
* ``prototype``: masked average pooling and PANet's squared-distance rule, ``w_c = 2 s p_c``, ``b_c = -s |p_c|^2``.
* ``blend``: a convex mix of the two heads' foreground-minus-background margins, each first divided by its own
  separation on the examples (mean margin on foreground pixels minus that on background pixels) so the mixing
  weight means the same whatever the feature scale; the prototype rule is steadier with few examples, ridge with many.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from ...errors import SynthesisError

HEAD_NAMES = ("ridge", "prototype", "blend")


def class_masses(y: Tensor) -> tuple[Tensor, Tensor]:
    fg, bg = y.sum(), (1 - y).sum()
    if fg <= 0 or bg <= 0:
        raise SynthesisError("The examples need both foreground and background pixels to synthesize a segmenter.")
    return fg, bg


def prototypes(x: Tensor, y: Tensor) -> Tensor:
    """Background and foreground prototypes ``(2, C)`` (masked average pooling with soft masks)."""
    fg, bg = class_masses(y)
    return torch.stack([(x * (1 - y)[:, None]).sum(0) / bg, (x * y[:, None]).sum(0) / fg])


def prototype_margin(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """PANet's squared-distance rule as a margin ``d.f + b`` (foreground minus background score)."""
    p = prototypes(x, y)
    return 2 * (p[1] - p[0]), -((p[1] ** 2).sum() - (p[0] ** 2).sum())


def ridge_margin(x: Tensor, y: Tensor, ridge_lambda: Tensor) -> tuple[Tensor, Tensor]:
    """Class-balanced ridge regression of +-1 targets: ``w = (X^T A X + lambda E I)^-1 X^T A t`` (E: mean feature
    energy)."""
    fg, bg = class_masses(y)
    c = x.shape[1]
    a = 0.5 * y / fg + 0.5 * (1 - y) / bg  # class-balanced pixel weights, summing to 1
    t = 2 * y - 1
    xa = torch.cat([x, torch.ones_like(x[:, :1])], 1)
    gram = xa.T @ (xa * a[:, None])
    energy = torch.diagonal(gram)[:c].mean().clamp_min(1e-12)
    reg = torch.eye(c + 1, dtype=x.dtype, device=x.device) * (ridge_lambda * energy)
    reg[c, c] = 1e-6 * energy  # (almost) no penalty on the intercept
    solution = torch.linalg.solve(gram + reg, xa.T @ (a * t))
    return solution[:c], solution[c]


def margin_separation(x: Tensor, y: Tensor, direction: Tensor, intercept: Tensor) -> Tensor:
    """Mean margin on the examples' foreground pixels minus that on their background pixels (the margin's unit)."""
    fg, bg = class_masses(y)
    m = x @ direction + intercept
    return (m * y).sum() / fg - (m * (1 - y)).sum() / bg


def blend_margin(x: Tensor, y: Tensor, ridge_lambda: Tensor, prototype_weight: float) -> tuple[Tensor, Tensor]:
    """``w_p * prototype / sep_p + (1 - w_p) * ridge / sep_r`` as one margin (both separations positive)."""
    if not 0.0 <= prototype_weight <= 1.0:
        raise SynthesisError(f"The prototype weight of the blended head must be in [0, 1], got {prototype_weight}.")
    parts = []
    for share, (d, b) in (
        (prototype_weight, prototype_margin(x, y)),
        (1.0 - prototype_weight, ridge_margin(x, y, ridge_lambda)),
    ):
        if share > 0:
            parts.append((share, d, b, margin_separation(x, y, d, b).abs().clamp_min(1e-12)))
    direction = sum(share * d / sep for share, d, _, sep in parts)
    intercept = sum(share * b / sep for share, _, b, sep in parts)
    return direction, intercept


def mix_for(mix: Sequence[float], num_examples: int) -> float:
    """Prototype weight for ``num_examples`` examples: entry ``K - 1`` of ``mix``, the last entry beyond its length."""
    if not mix:
        raise SynthesisError(
            "The blended head needs config.prototype_mix (one prototype weight per number of examples)."
        )
    return float(mix[min(num_examples, len(mix)) - 1])


def solve_head(
    head: str, x: Tensor, y: Tensor, scale: Tensor, ridge_lambda: Tensor, prototype_weight: float | None = None
) -> tuple[Tensor, Tensor]:
    """Classifier rows ``(weight (2, C), bias (2,))`` of ``head`` on features ``x`` and soft masks ``y``."""
    if head == "prototype":  # kept in its per-class form (the exports of earlier checkpoints are bit-identical)
        p = prototypes(x, y)
        return 2 * scale * p, -scale * (p**2).sum(1)
    if head == "ridge":
        direction, intercept = ridge_margin(x, y, ridge_lambda)
    elif head == "blend":
        if prototype_weight is None:
            raise SynthesisError("The blended head needs a prototype weight.")
        direction, intercept = blend_margin(x, y, ridge_lambda, prototype_weight)
    else:
        raise SynthesisError(f"Unknown head {head!r}; expected one of {HEAD_NAMES}.")
    weight = torch.stack([-direction, direction]) * (scale / 2)
    bias = torch.stack([-intercept, intercept]) * (scale / 2)
    return weight, bias
