"""Choosing task-adaptive BatchNorm on meta-val tasks, jointly with the ridge that suits it (a step of
:func:`sgps_hf.training.calibration.calibrate`).

Each candidate count costs one body pass per episode over its pixels (cached features are those of the unadapted body);
the ridge grid then runs on the features that pass gives.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..body.timm_network import body_features
from ..data.episodes import Episode
from ..models.sgps.image_processing_sgps import SGPSImageProcessor
from ..models.sgps.modeling_sgps import SGPSSynthesizer
from .episode_inputs import TextBank, episode_inputs
from .meta_val import mean_accuracy

#: Candidate values of ``SGPSConfig.task_batchnorm_images`` (None: the body's BatchNorm statistics kept as they are).
TASK_BATCHNORM_IMAGES: tuple[int | None, ...] = (None, 25, 50, 100)
#: Multipliers of the fitted ridge tried beside each of them (task statistics change the features' scale).
TASK_BATCHNORM_RIDGE_MULTIPLIERS = tuple(2.0**k for k in range(-3, 6))
#: Meta-val episodes that choose it: every candidate runs the body on their pixels (about 2.5 s an episode on 2 cores).
TASK_BATCHNORM_EPISODES = 100


def calibrate_task_batchnorm(
    model: SGPSSynthesizer, episodes: list[Episode], processor: SGPSImageProcessor, texts: TextBank
) -> tuple[dict[str, Any], list[tuple[torch.Tensor, torch.Tensor]]]:
    """Choose ``task_batchnorm_images`` (of ``TASK_BATCHNORM_IMAGES``) with the ridge that suits it, by meta-val
    accuracy on the episodes' pixels; set both on ``model``.

    Whole unseen tasks are the test of whether a handful of support images estimate a new domain's BatchNorm
    statistics better than the body's own. Task statistics change the features the head is solved on, so each
    candidate is scored with its best multiple (:data:`TASK_BATCHNORM_RIDGE_MULTIPLIERS`, 1/8 to 32) of the ridge
    fitted on the unadapted body, at 1 and at 5 shots: the body runs once per episode and candidate, the ridge grid on
    its features.
    Ties go to no adaptation, then to the larger count (the smaller change), and to the multiplier nearest 1.
    Returns the report and the chosen setting's (query logits, labels) per episode, so that the temperature is fitted
    without another body pass over the same pixels.
    """
    chosen = [e for e in episodes if e.use_images]
    if not chosen:
        return {"note": "no meta-val episodes with images: the body's BatchNorm statistics kept"}, []
    was_training = model.training
    model.eval()
    fitted = {"1": model.ridge_at(1), "5": model.ridge_at(5)}
    buckets = ["1" if e.k_shot <= 2 else "5" for e in chosen]
    inputs = [episode_inputs(e, processor, texts, augment_seed=None) for e in chosen]
    logits: dict[int | None, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    multipliers: dict[int | None, dict[str, float]] = {}
    scores: dict[str, float] = {}
    for count in TASK_BATCHNORM_IMAGES:
        features = [_task_features(model, episode, count) for episode in inputs]
        by_multiplier = {}
        for multiplier in TASK_BATCHNORM_RIDGE_MULTIPLIERS:
            model.set_ridge(fitted["1"] * multiplier, fitted["5"] * multiplier)
            by_multiplier[multiplier] = [
                (_features_logits(model, episode, *pair), episode["query_labels"])
                for episode, pair in zip(inputs, features, strict=True)
            ]
        multipliers[count] = {
            shots: max(
                TASK_BATCHNORM_RIDGE_MULTIPLIERS,
                key=lambda m, shots=shots: (
                    round(mean_accuracy([p for p, b in zip(by_multiplier[m], buckets, strict=True) if b == shots]), 6),
                    -abs(math.log(m)),
                ),
            )
            for shots in sorted(set(buckets))
        }
        logits[count] = [by_multiplier[multipliers[count][b]][i] for i, b in enumerate(buckets)]
        scores[str(count)] = mean_accuracy(logits[count])
    best = max(TASK_BATCHNORM_IMAGES, key=lambda c: (round(scores[str(c)], 6), math.inf if c is None else c))
    model.set_ridge(fitted["1"] * multipliers[best].get("1", 1.0), fitted["5"] * multipliers[best].get("5", 1.0))
    model.config = model.config.with_changes(task_batchnorm_images=best)
    model.train(was_training)
    report = {
        "episodes": len(chosen),
        "scores": scores,
        "ridge multipliers": {str(c): m for c, m in multipliers.items()},
        "chosen": best,
    }
    return report, logits[best]


@torch.no_grad()
def _task_features(
    model: SGPSSynthesizer, inputs: dict[str, Any], count: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(support view features, query features) of one episode's pixels under its task-adapted body (``count``)."""
    body, support = model.task_body(inputs["support_pixel_values"], task_batchnorm_images=count)
    return support, body_features(model.target, body, inputs["query_pixel_values"])


@torch.no_grad()
def _features_logits(
    model: SGPSSynthesizer, inputs: dict[str, Any], support: torch.Tensor, query: torch.Tensor
) -> torch.Tensor:
    """The query logits of the classifier synthesized from those features: what the materialised model computes."""
    return model(
        num_classes=inputs["num_classes"],
        support_features=support,
        support_labels=inputs["support_labels"],
        text_embeds=inputs["text_embeds"],
        text_mask=inputs["text_mask"],
        query_features=query,
        return_weights=False,
        task_batchnorm_images=None,
    ).logits
