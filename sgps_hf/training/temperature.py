"""Temperature scaling of a synthesizer's heads on meta-validation tasks (the last steps of
:func:`sgps_hf.training.calibration.calibrate`): the logit scale of the head with images, with its shot exponent, and
the scale of the text-only head. Least query NLL on a grid; a temperature never changes an argmax."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..data.episodes import Episode
from ..models.sgps.heads import temperature_shots
from ..models.sgps.image_processing_sgps import SGPSImageProcessor
from ..models.sgps.modeling_sgps import SGPSSynthesizer
from .episode_inputs import TextBank
from .feature_cache import PoolKey
from .meta_val import query_logits, text_only

#: Candidate multipliers of the logit scale (a log-spaced grid from 1/16 to 16: it starts at ``logit_scale_init``).
LOGIT_SCALE_MULTIPLIERS = tuple(float(v) for v in np.exp(np.linspace(np.log(1 / 16), np.log(16.0), 81)))
#: The zero-shot scale starts far from its fit when the text generator is not meta-trained: a wider grid.
ZERO_SHOT_SCALE_MULTIPLIERS = tuple(float(v) for v in np.exp(np.linspace(np.log(1 / 64), np.log(64.0), 61)))
#: Candidate exponents of the number of shots in the logit scale (0: one temperature for every shot count).
SHOT_EXPONENTS = tuple(round(float(v), 3) for v in np.linspace(-1.0, 1.0, 41))


@torch.no_grad()
def calibrate_logit_scale(
    model: SGPSSynthesizer,
    episodes: list[Episode],
    processor: SGPSImageProcessor,
    texts: TextBank,
    features: dict[PoolKey, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Temperature scaling on meta-val episodes with images: the logit-scale multiplier and shot exponent of least
    query NLL, set on ``model`` (:func:`fit_logit_scale`).

    The meta-learned scale fits the support views of meta-training; synthesis may use more views per image (a
    tighter ridge fit, so more confident logits), so the scale is refitted where the model is selected. Logits are
    linear in the scale, so one pass over the episodes serves every candidate. Accuracy is unchanged.
    """
    with_images = [e for e in episodes if e.use_images]
    pairs = query_logits(model, with_images, processor, texts, features)
    return fit_logit_scale(model, pairs, [e.k_shot for e in with_images])


@torch.no_grad()
def fit_logit_scale(
    model: SGPSSynthesizer, pairs: list[tuple[torch.Tensor, torch.Tensor]], shots: Sequence[int]
) -> dict[str, Any]:
    """Set the logit-scale multiplier and the extra shot exponent (``SGPSConfig.logit_scale_shot_exponent``) of least
    mean NLL over (query logits, labels) of episodes with images, ``shots`` support images per class each.

    One temperature for every shot count left 1-shot classifiers over-confident (ECE 0.105 on held-out tasks against
    0.066 at 5 shots), so the scale may grow or shrink with the shots: ``multiplier * clamp(shots, 1, 5) ** exponent``
    multiplies the logits."""
    if not pairs:
        return {"note": "no meta-val episodes with images: logit scale left as meta-trained"}
    best, exponent, nll = nll_best_scale(pairs, shots)
    model.log_logit_scale.add_(math.log(best))
    model.config = model.config.with_changes(
        logit_scale_shot_exponent=model.config.logit_scale_shot_exponent + exponent
    )
    return {"nll": {f"{m:.3f}": v for m, v in nll.items()}, "chosen": round(best, 4), "shot exponent": exponent}


def nll_best_scale(
    pairs: list[tuple[torch.Tensor, torch.Tensor]],
    shots: Sequence[int],
    multipliers: Sequence[float] = LOGIT_SCALE_MULTIPLIERS,
    exponents: Sequence[float] = SHOT_EXPONENTS,
) -> tuple[float, float, dict[float, float]]:
    """(multiplier, exponent) of least mean query NLL when episode ``i``'s logits are multiplied by
    ``multiplier * clamp(shots[i], 1, 5) ** exponent``, and the NLL of every multiplier at that exponent.

    Ties go to the exponent nearest 0, then to the multiplier nearest 1 (the scale as it is)."""
    grid = torch.tensor([[m * 1.0 for m in multipliers]], dtype=torch.float64).T  # [M, 1]
    table = torch.zeros(len(multipliers), len(exponents), dtype=torch.float64)
    for (logits, labels), count in zip(pairs, shots, strict=True):
        shots_at = temperature_shots(torch.tensor(float(count), dtype=torch.float64))
        factors = grid * shots_at ** torch.tensor(exponents, dtype=torch.float64)  # [M, X]
        scaled = factors.reshape(-1, 1, 1) * logits.double().unsqueeze(0)  # [M * X, Q, C]
        losses = nn.functional.cross_entropy(
            scaled.flatten(0, 1), labels.repeat(factors.numel()), reduction="none"
        ).view(factors.numel(), -1)
        table += losses.mean(1).view_as(factors)
    table /= len(pairs)
    best_m, best_x = min(
        ((i, j) for i in range(len(multipliers)) for j in range(len(exponents))),
        key=lambda ij: (round(float(table[ij]), 6), abs(exponents[ij[1]]), abs(math.log(multipliers[ij[0]]))),
    )
    nll = {m: float(table[i, best_x]) for i, m in enumerate(multipliers)}
    return float(multipliers[best_m]), float(exponents[best_x]), nll


@torch.no_grad()
def calibrate_zero_shot_scale(
    model: SGPSSynthesizer,
    episodes: list[Episode],
    processor: SGPSImageProcessor,
    texts: TextBank,
    features: dict[PoolKey, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Temperature scaling of the text-only head (least NLL on the meta-val episodes with their images withheld).

    Zero-shot logits are linear in the zero-shot scale, so the same one-pass fit as :func:`calibrate_logit_scale`
    applies, on a wider grid. Accuracy is unchanged."""
    withheld = text_only(episodes)
    if not withheld:
        return {"note": "no meta-val episodes with texts: zero-shot scale left as it was"}
    best, nll = nll_best_multiplier(
        query_logits(model, withheld, processor, texts, features), ZERO_SHOT_SCALE_MULTIPLIERS
    )
    model.log_zero_shot_scale.add_(math.log(best))
    return {
        "chosen": round(best, 4),
        "nll at chosen": round(nll[best], 4),
        "nll before": round(nll[min(nll, key=lambda m: abs(math.log(m)))], 4),
    }


def nll_best_multiplier(
    pairs: list[tuple[torch.Tensor, torch.Tensor]], multipliers: Sequence[float] = LOGIT_SCALE_MULTIPLIERS
) -> tuple[float, dict[float, float]]:
    """(the ``multipliers`` entry of least mean query NLL over ``(logits, labels)`` pairs, every NLL).

    Ties go to the multiplier nearest 1 (the scale as it is)."""
    nll = {
        m: float(np.mean([nn.functional.cross_entropy(m * logits, labels).item() for logits, labels in pairs]))
        for m in multipliers
    }
    return min(multipliers, key=lambda m: (round(nll[m], 6), abs(math.log(m)))), nll
