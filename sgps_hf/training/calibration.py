"""Post-hoc calibration of a meta-trained synthesizer on meta-validation tasks (whole tasks never trained on).

What transfers from meta-train episodes to a new task is decided here, where the model is selected, not learned on
the training episodes, whose classes and texts the synthesizer has already seen:

1. the class memory of the text generator: built from the meta-train classes, its
   temperature chosen on text-only meta-val episodes;
2. the ridge regulariser at 1 and 5 shots, under the synthesizer's own support views (meta-training may cache fewer);
3. the strength of the text prior beside images;
4. task-adaptive BatchNorm: how many images the body's own statistics count as beside a task's support images
   (or none of it), on the pixels of the first ``TASK_BATCHNORM_EPISODES`` episodes (cached features are those of
   the unadapted body, and each candidate costs a body pass per episode);
5. the temperature of the head (least NLL; on those episodes' pixels when task BatchNorm is on), then of the zero-shot
head.

Every step but the temperatures is chosen by meta-val accuracy on a small grid; temperatures never change an argmax.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from ..data.episodes import ClassPool, Episode
from ..metrics import episode_accuracy
from ..models.sgps.image_processing_sgps import SGPSImageProcessor
from ..models.sgps.modeling_sgps import FROM_CONFIG, SGPSSynthesizer
from .checkpointing import TrainerState
from .episode_inputs import TextBank, episode_inputs
from .feature_cache import PoolKey, pool_features

#: Candidate multipliers of the logit scale (a log-spaced grid from 1/4 to 4).
LOGIT_SCALE_MULTIPLIERS = tuple(float(v) for v in np.exp(np.linspace(np.log(0.25), np.log(4.0), 41)))
#: The zero-shot scale starts far from its fit when the text generator is not meta-trained: a wider grid.
ZERO_SHOT_SCALE_MULTIPLIERS = tuple(float(v) for v in np.exp(np.linspace(np.log(1 / 64), np.log(64.0), 61)))
#: Candidate strengths of the text prior beside 1 and 5 support images (0 = ignore the texts when images exist).
PRIOR_STRENGTHS = (0.0, 0.25, 0.5, 1.0, 2.0)
#: Candidate multipliers of the meta-learned ridge regulariser at 1 and at 5 shots.
RIDGE_MULTIPLIERS = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0)
#: Candidate values of ``SGPSConfig.task_batchnorm_images`` (None: the body's BatchNorm statistics kept as they are).
TASK_BATCHNORM_IMAGES: tuple[int | None, ...] = (None, 25, 50, 100)
#: Meta-val episodes that choose it: every candidate runs the body on their pixels (about 2.5 s an episode on 2 cores).
TASK_BATCHNORM_EPISODES = 100
#: Candidate softmax temperatures of the class memory's attention over the meta-train texts (cosine similarities).
TEXT_TEMPERATURES = (0.02, 0.03, 0.05, 0.07, 0.1, 0.2, 0.5)


def evaluate_episodes(
    model: SGPSSynthesizer,
    episodes: list[Episode],
    processor: SGPSImageProcessor,
    texts: TextBank,
    features: dict[PoolKey, torch.Tensor] | None = None,
) -> float:
    """Mean query accuracy over fixed episodes (eval mode: no dropout)."""
    return mean_accuracy(query_logits(model, episodes, processor, texts, features))


def mean_accuracy(pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """Mean over episodes of the query accuracy of their (logits, labels); NaN for none."""
    return float(np.mean([episode_accuracy(logits, labels) for logits, labels in pairs])) if pairs else float("nan")


def episode_accuracies(
    model: SGPSSynthesizer,
    episodes: list[Episode],
    processor: SGPSImageProcessor,
    texts: TextBank,
    features: dict[PoolKey, torch.Tensor] | None = None,
) -> list[float]:
    """The query accuracy of each episode (eval mode: no dropout)."""
    return [
        episode_accuracy(logits, labels)
        for logits, labels in query_logits(model, episodes, processor, texts, features)
    ]


@torch.no_grad()
def query_logits(
    model: SGPSSynthesizer,
    episodes: list[Episode],
    processor: SGPSImageProcessor,
    texts: TextBank,
    features: dict[PoolKey, torch.Tensor] | None = None,
    task_batchnorm_images: int | None | str = FROM_CONFIG,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(query logits, query labels) of each episode through the model's one inference path (its ``forward``), in
    eval mode (no dropout); the model's mode is restored. ``task_batchnorm_images``: a candidate to try instead of
    the config's."""
    was_training = model.training
    model.eval()
    pairs = []
    for episode in episodes:
        inputs = episode_inputs(episode, processor, texts, augment_seed=None, features=features)
        output = model(**inputs, return_weights=False, task_batchnorm_images=task_batchnorm_images)
        pairs.append((output.logits, inputs["query_labels"]))
    model.train(was_training)
    return pairs


def calibrate(
    model: SGPSSynthesizer,
    state: TrainerState,
    episodes: list[Episode],
    processor: SGPSImageProcessor,
    texts: TextBank,
    features: dict[PoolKey, torch.Tensor] | None = None,
    train_pools: Sequence[ClassPool] = (),
) -> None:
    """Every post-hoc step of the module docstring, in order, on the meta-val ``episodes``; reports go to ``state``."""
    build_text_memory(model, train_pools, processor, texts, features)
    state.text_calibration = calibrate_text_temperature(model, episodes, processor, texts, features)
    state.ridge_calibration = calibrate_ridge(model, episodes, processor, texts, features)
    state.prior_calibration = calibrate_prior_strength(model, episodes, processor, texts, features)
    state.batchnorm_calibration, chosen_logits = calibrate_task_batchnorm(
        model, episodes[:TASK_BATCHNORM_EPISODES], processor, texts
    )
    if model.config.task_batchnorm_images is None:
        state.temperature_calibration = calibrate_logit_scale(model, episodes, processor, texts, features)
    else:  # the cached features are no longer the classifier's: the logits, on pixels, of the episodes that chose it
        state.temperature_calibration = fit_logit_scale(model, chosen_logits)
    # Text-only synthesis keeps the body as it is, so the cached features still serve the zero-shot head.
    state.zero_shot_calibration = calibrate_zero_shot_scale(model, episodes, processor, texts, features)


# -- text memory --------------------------------------------------------------------------------------------------
@torch.no_grad()
def build_text_memory(
    model: SGPSSynthesizer,
    pools: Sequence[ClassPool],
    processor: SGPSImageProcessor,
    texts: TextBank,
    features: dict[PoolKey, torch.Tensor] | None = None,
) -> None:
    """Fill the class memory: per meta-train class, its text embedding and its mean body feature (identity view)
    minus the synthesizer's ``feature_mean``. ``features`` are the cached ones when present (view 0 is identity)."""
    if not pools:
        raise ValueError("build_text_memory needs the meta-train class pools (none were given).")
    missing = [p for p in pools if features is None or (p.task, p.class_name) not in features]
    if missing:
        features = {**(features or {}), **pool_features(model, list(missing), processor, views=["identity"])}
    means = torch.stack([features[(p.task, p.class_name)][:, 0].float().mean(0) for p in pools])
    model.set_text_memory(texts([p.text for p in pools]), means - model.feature_mean.float().cpu())


def calibrate_text_temperature(
    model: SGPSSynthesizer,
    episodes: list[Episode],
    processor: SGPSImageProcessor,
    texts: TextBank,
    features: dict[PoolKey, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """The class memory's attention temperature of best text-only accuracy on the meta-val episodes (their images
    withheld); ties go to the smoother (larger) temperature."""
    text_only = _text_only(episodes)
    if not text_only:
        return {"note": "no meta-val episodes with texts: text temperature left at its initial value"}
    scores = {}
    for temperature in TEXT_TEMPERATURES:
        model.log_text_temperature.fill_(math.log(temperature))
        scores[temperature] = evaluate_episodes(model, text_only, processor, texts, features)
    best = max(TEXT_TEMPERATURES, key=lambda t: (round(scores[t], 6), t))
    model.log_text_temperature.fill_(math.log(best))
    return {"memory classes": int(model.text_memory_keys.shape[0]), "text-only accuracy": scores, "chosen": best}


# -- ridge and prior ----------------------------------------------------------------------------------------------
def calibrate_ridge(
    model: SGPSSynthesizer,
    episodes: list[Episode],
    processor: SGPSImageProcessor,
    texts: TextBank,
    features: dict[PoolKey, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Multiply the meta-learned ridge regulariser by the grid value of best meta-val accuracy at 1 and at 5 shots.

    The regulariser is meta-learned under the training support views; more views per image enlarge the support
    set, so its best value under the synthesizer's own views is refitted where the model is selected. Between and
    beyond the two shot counts the multiplier is log-linear in ``log(1 + shots)``, as the regulariser itself.
    Ties go to the multiplier nearest 1.
    """
    buckets = _shot_buckets([e for e in episodes if e.use_images])
    if not buckets:
        return {"note": "no meta-val episodes with images: ridge left as meta-trained"}
    original = model.ridge_coefficients.detach().clone()
    scores: dict[str, dict[float, float]] = {}
    for shots, chosen in buckets.items():
        for multiplier in RIDGE_MULTIPLIERS:
            _set_ridge(model, original, multiplier, multiplier)
            scores.setdefault(shots, {})[multiplier] = evaluate_episodes(model, chosen, processor, texts, features)
    best = {
        shots: max(RIDGE_MULTIPLIERS, key=lambda m: (round(by[m], 6), -abs(math.log(m))))
        for shots, by in scores.items()
    }
    _set_ridge(model, original, best.get("1", 1.0), best.get("5", 1.0))
    return {"scores": scores, "chosen": best}


def _set_ridge(model: SGPSSynthesizer, original: torch.Tensor, at_one_shot: float, at_five_shots: float) -> None:
    low, high = math.log(at_one_shot), math.log(at_five_shots)
    slope = (high - low) / (math.log(6.0) - math.log(2.0))  # the regulariser is affine in log(1 + shots)
    with torch.no_grad():
        model.ridge_coefficients.copy_(
            original + torch.tensor([low - slope * math.log(2.0), slope], dtype=original.dtype)
        )


def calibrate_prior_strength(
    model: SGPSSynthesizer,
    episodes: list[Episode],
    processor: SGPSImageProcessor,
    texts: TextBank,
    features: dict[PoolKey, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Choose the text prior's strength at 1 and 5 shots on meta-val episodes (whole unseen tasks); set it on
    ``model``.

    The text generator is learned on meta-train classes, whose texts it has seen, so how far to trust it on a
    new task is a hyperparameter for validation tasks, not a parameter for training episodes. Ties go to the
    weaker prior.
    """
    if not episodes:
        return {"note": "no meta-val episodes: prior strength left at its initial value"}
    buckets = _shot_buckets([e for e in episodes if e.use_images and e.use_text])
    scores: dict[str, dict[float, float]] = {}
    for shots in ("1", "5"):
        for strength in PRIOR_STRENGTHS:
            model.set_prior_strength(strength, strength)
            chosen = buckets.get(shots)
            scores.setdefault(shots, {})[strength] = (
                evaluate_episodes(model, chosen, processor, texts, features) if chosen else 0.0
            )
    best = {shots: max(PRIOR_STRENGTHS, key=lambda v: (round(by[v], 6), -v)) for shots, by in scores.items()}
    model.set_prior_strength(best["1"], best["5"])
    return {"scores": scores, "chosen": best}


def calibrate_task_batchnorm(
    model: SGPSSynthesizer, episodes: list[Episode], processor: SGPSImageProcessor, texts: TextBank
) -> tuple[dict[str, Any], list[tuple[torch.Tensor, torch.Tensor]]]:
    """Choose ``task_batchnorm_images`` (of ``TASK_BATCHNORM_IMAGES``) by meta-val accuracy on the episodes' pixels.

    Whole unseen tasks are the test of whether a handful of support images estimate a new domain's BatchNorm
    statistics better than the body's own. Ties go to no adaptation, then to the larger count (the smaller change).
    Returns the report and the chosen value's (query logits, labels) per episode, so that the temperature is fitted
    without another body pass over the same pixels.
    """
    chosen = [e for e in episodes if e.use_images]
    if not chosen:
        return {"note": "no meta-val episodes with images: the body's BatchNorm statistics kept"}, []
    logits: dict[int | None, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    scores: dict[str, float] = {}
    for count in TASK_BATCHNORM_IMAGES:
        logits[count] = query_logits(model, chosen, processor, texts, task_batchnorm_images=count)
        scores[str(count)] = mean_accuracy(logits[count])
    best = max(TASK_BATCHNORM_IMAGES, key=lambda c: (round(scores[str(c)], 6), math.inf if c is None else c))
    model.config = model.config.with_changes(task_batchnorm_images=best)
    return {"episodes": len(chosen), "scores": scores, "chosen": best}, logits[best]


def _shot_buckets(episodes: list[Episode]) -> dict[str, list[Episode]]:
    """Episodes of 1-2 shots under "1", of 3 or more under "5" (empty buckets left out)."""
    buckets: dict[str, list[Episode]] = {}
    for episode in episodes:
        buckets.setdefault("1" if episode.k_shot <= 2 else "5", []).append(episode)
    return buckets


def _text_only(episodes: list[Episode]) -> list[Episode]:
    return [dataclasses.replace(e, use_images=False) for e in episodes if e.use_text]


# -- temperatures -------------------------------------------------------------------------------------------------
@torch.no_grad()
def calibrate_logit_scale(
    model: SGPSSynthesizer,
    episodes: list[Episode],
    processor: SGPSImageProcessor,
    texts: TextBank,
    features: dict[PoolKey, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Temperature scaling on meta-val episodes with images: the logit-scale multiplier of least query NLL, set on
    ``model``.

    The meta-learned scale fits the support views of meta-training; synthesis may use more views per image (a
    tighter ridge fit, so more confident logits), so the scale is refitted where the model is selected. Logits are
    linear in the scale, so one pass over the episodes serves every candidate. Accuracy is unchanged.
    """
    return fit_logit_scale(
        model, query_logits(model, [e for e in episodes if e.use_images], processor, texts, features)
    )


@torch.no_grad()
def fit_logit_scale(model: SGPSSynthesizer, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, Any]:
    """Set the logit-scale multiplier of least NLL over (query logits, labels) of episodes with images."""
    if not pairs:
        return {"note": "no meta-val episodes with images: logit scale left as meta-trained"}
    best, nll = nll_best_multiplier(pairs)
    model.log_logit_scale.add_(math.log(best))
    return {"nll": {f"{m:.3f}": v for m, v in nll.items()}, "chosen": round(best, 4)}


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
    text_only = _text_only(episodes)
    if not text_only:
        return {"note": "no meta-val episodes with texts: zero-shot scale left as it was"}
    best, nll = nll_best_multiplier(
        query_logits(model, text_only, processor, texts, features), ZERO_SHOT_SCALE_MULTIPLIERS
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
