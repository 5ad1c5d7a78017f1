"""Fitting a synthesizer's head and text prior on meta-validation tasks (whole tasks never trained on).

Nothing of the synthesizer but its body is trained: every other setting is chosen here, on whole tasks that the body
adaptation never saw, in this order:

1. the class memory of the text generator, built from the meta-train classes;
2. the closed-form head: its per-feature scale and its ridge regulariser at 1 and 5 shots, under the synthesizer's own
   support views (:func:`calibrate_head`);
3. the class memory's temperature, on text-only meta-val episodes;
4. the strength of the text prior beside images;
5. task-adaptive BatchNorm: how many images the body's own statistics count as beside a task's support images
   (or none of it), each candidate with the multiple of the ridge that suits it, on the pixels of the first
   ``TASK_BATCHNORM_EPISODES`` episodes (:mod:`sgps_hf.training.batchnorm_calibration`);
6. the temperature of the head (:mod:`sgps_hf.training.temperature`: least NLL, with a shot exponent; on those
   episodes' pixels when task BatchNorm is on), then of the zero-shot head.

Every step but the temperatures is chosen by meta-val accuracy on a small grid; temperatures never change an argmax.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import Any, Callable, Sequence

import torch
from tqdm.auto import tqdm

from ..data.episodes import ClassPool, Episode
from ..models.sgps.image_processing_sgps import SGPSImageProcessor
from ..models.sgps.modeling_sgps import SGPSSynthesizer
from .batchnorm_calibration import TASK_BATCHNORM_EPISODES, calibrate_task_batchnorm
from .checkpointing import TrainerState
from .episode_inputs import TextBank
from .feature_cache import PoolKey, pool_features
from .meta_val import evaluate_episodes, shot_buckets, text_only
from .temperature import calibrate_logit_scale, calibrate_zero_shot_scale, fit_logit_scale

#: Candidate strengths of the text prior beside 1 and 5 support images (0 = ignore the texts when images exist).
PRIOR_STRENGTHS = (0.0, 0.25, 0.5, 1.0, 2.0)
#: Candidate powers of the inverse per-feature standard deviation as the head's feature scale (0: the body's units).
FEATURE_SCALES = (0.0, 0.5, 1.0)
#: Candidate ridge regularisers at 1 and at 5 shots, relative to the mean squared standardised meta-train feature.
RIDGE_GRID = tuple(2.0**k for k in range(-6, 7))
#: Candidate softmax temperatures of the class memory's attention over the meta-train texts (cosine similarities).
TEXT_TEMPERATURES = (0.02, 0.03, 0.05, 0.07, 0.1, 0.2, 0.5)


def calibrate(
    model: SGPSSynthesizer,
    state: TrainerState,
    episodes: list[Episode],
    processor: SGPSImageProcessor,
    texts: TextBank,
    features: dict[PoolKey, torch.Tensor] | None = None,
    train_pools: Sequence[ClassPool] = (),
) -> None:
    """Every post-hoc step of the module docstring, in order, on the meta-val ``episodes``; reports go to ``state``.

    A progress bar names the step running (task-adaptive BatchNorm, a body pass per episode and candidate, takes most
    of the time)."""
    with tqdm(total=7, desc="calibrating on meta-val", unit="step") as bar:

        def step(name: str, fit: Callable[[], Any]) -> Any:
            bar.set_postfix_str(name)
            result = fit()
            bar.update(1)
            return result

        batchnorm_episodes = episodes[:TASK_BATCHNORM_EPISODES]
        step("text memory", lambda: build_text_memory(model, train_pools, processor, texts, features))
        state.feature_scale_calibration, state.ridge_calibration = step(
            "head", lambda: calibrate_head(model, episodes, processor, texts, features, train_pools)
        )
        state.text_calibration = step(
            "text temperature", lambda: calibrate_text_temperature(model, episodes, processor, texts, features)
        )
        state.prior_calibration = step(
            "text prior", lambda: calibrate_prior_strength(model, episodes, processor, texts, features)
        )
        state.batchnorm_calibration, chosen_logits = step(
            "task BatchNorm",
            lambda: calibrate_task_batchnorm(model, batchnorm_episodes, processor, texts),
        )
        # The task-BatchNorm step rescales the ridge: the report keeps the head's fit and gives the final values.
        state.ridge_calibration["fitted before task BatchNorm"] = state.ridge_calibration.get("chosen")
        state.ridge_calibration["chosen"] = {shots: float(f"{model.ridge_at(int(shots)):.6g}") for shots in ("1", "5")}
        # With task BatchNorm the cached features are no longer the classifier's: the temperature is fitted on the
        # logits, on pixels, of the episodes that chose it.
        fit = (
            partial(calibrate_logit_scale, model, episodes, processor, texts, features)
            if model.config.task_batchnorm_images is None
            else partial(fit_logit_scale, model, chosen_logits, [e.k_shot for e in batchnorm_episodes if e.use_images])
        )
        state.temperature_calibration = step("temperature", fit)
        # Text-only synthesis keeps the body as it is, so the cached features still serve the zero-shot head.
        state.zero_shot_calibration = step(
            "zero-shot temperature", lambda: calibrate_zero_shot_scale(model, episodes, processor, texts, features)
        )


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
    means = torch.stack([rows.mean(0) for rows in identity_features(model, pools, processor, features)])
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
    withheld = text_only(episodes)
    if not withheld:
        return {"note": "no meta-val episodes with texts: text temperature left at its initial value"}
    scores = {}
    for temperature in TEXT_TEMPERATURES:
        model.log_text_temperature.fill_(math.log(temperature))
        scores[temperature] = evaluate_episodes(model, withheld, processor, texts, features)
    best = max(TEXT_TEMPERATURES, key=lambda t: (round(scores[t], 6), t))
    model.log_text_temperature.fill_(math.log(best))
    return {"memory classes": int(model.text_memory_keys.shape[0]), "text-only accuracy": scores, "chosen": best}


# -- the head's meta-parameters: feature scale and ridge ----------------------------------------------------------
def calibrate_head(
    model: SGPSSynthesizer,
    episodes: list[Episode],
    processor: SGPSImageProcessor,
    texts: TextBank,
    features: dict[PoolKey, torch.Tensor] | None = None,
    train_pools: Sequence[ClassPool] = (),
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit the closed-form head's per-feature scale, its support-row normalisation and its ridge regulariser at 1 and
    5 shots on meta-val episodes (image only, so that the text prior does not enter); set them on ``model``. Returns
    the two reports.

    The scale candidates (:data:`FEATURE_SCALES`) are powers of the inverse per-feature standard deviation of the
    meta-train images' features (identity view): 0 keeps the body's units, 1 standardises every feature. For each,
    the ridge grid (:data:`RIDGE_GRID`) is relative to the mean squared standardised feature, the units of the head's
    Gram matrix, so one grid serves every scale. The scale of best mean accuracy over the shot buckets wins (ties go
    to the smaller power), with its best ridge per bucket. At that scale, normalised support rows
    (``normalize_support_rows``) are tried with the same grid and kept only if they score higher. These were
    meta-trained by gradient descent before; that left the meta-val curve flat (``benchmarks/head_meta_training.md``),
    so they are chosen where the model is selected.
    """
    image_only = [dataclasses.replace(e, use_text=False) for e in episodes if e.use_images]
    buckets = shot_buckets(image_only)
    if not buckets:
        note = "no meta-val episodes with images: the head's scale and ridge left as they are"
        return {"note": note}, {"note": note}
    rows = _train_rows(model, train_pools, processor, features)
    log_std = _log_feature_std(rows)

    def scores_at(power: float, normalize: bool) -> tuple[dict[str, dict[float, float]], float]:
        _set_feature_scale(model, -power * log_std)
        model.config = model.config.with_changes(normalize_support_rows=normalize)
        by_shots = _ridge_scores(model, _mean_squared_feature(model, rows), buckets, processor, texts, features)
        return by_shots, round(_bucket_accuracy(by_shots, buckets), 6)

    candidates = {(power, False): scores_at(power, False) for power in FEATURE_SCALES}
    power = max(FEATURE_SCALES, key=lambda p: (candidates[(p, False)][1], -p))
    candidates[(power, True)] = scores_at(power, True)
    normalize = candidates[(power, True)][1] > candidates[(power, False)][1]
    _set_feature_scale(model, -power * log_std)
    model.config = model.config.with_changes(normalize_support_rows=normalize)
    chosen_scores, unit = candidates[(power, normalize)][0], _mean_squared_feature(model, rows)
    accuracy = {f"{p}{', normalised rows' if n else ''}": round(a, 4) for (p, n), (_, a) in candidates.items()}
    ridges = {
        shots: unit * max(RIDGE_GRID, key=lambda r, by=by: (round(by[r], 6), -abs(math.log(r))))
        for shots, by in chosen_scores.items()
    }
    model.set_ridge(ridges.get("1", ridges.get("5")), ridges.get("5", ridges.get("1")))
    scale_report = {"accuracy": accuracy, "chosen": power, "normalised support rows": normalize}
    ridge_report = {
        "scores (relative ridge)": chosen_scores,
        "chosen": {shots: float(f"{value:.6g}") for shots, value in ridges.items()},
    }
    return scale_report, ridge_report


def _ridge_scores(
    model: SGPSSynthesizer,
    unit: float,
    buckets: dict[str, list[Episode]],
    processor: SGPSImageProcessor,
    texts: TextBank,
    features: dict[PoolKey, torch.Tensor] | None,
) -> dict[str, dict[float, float]]:
    """Meta-val accuracy of each shot bucket at each ridge ``unit * r``, ``r`` of :data:`RIDGE_GRID`."""
    scores: dict[str, dict[float, float]] = {}
    for shots, chosen in buckets.items():
        for relative in RIDGE_GRID:
            model.set_ridge(unit * relative, unit * relative)
            scores.setdefault(shots, {})[relative] = evaluate_episodes(model, chosen, processor, texts, features)
    return scores


def _bucket_accuracy(scores: dict[str, dict[float, float]], buckets: dict[str, list[Episode]]) -> float:
    """Mean accuracy over the episodes of every bucket, each at its best ridge."""
    total = sum(len(chosen) for chosen in buckets.values())
    return sum(max(scores[shots].values()) * len(chosen) for shots, chosen in buckets.items()) / total


def identity_features(
    model: SGPSSynthesizer,
    pools: Sequence[ClassPool],
    processor: SGPSImageProcessor,
    features: dict[PoolKey, torch.Tensor] | None,
) -> list[torch.Tensor]:
    """Body features (identity view) of each pool's images: the cached ones when present (view 0 is identity), the
    others computed."""
    missing = [p for p in pools if features is None or (p.task, p.class_name) not in features]
    if missing:
        features = {**(features or {}), **pool_features(model, list(missing), processor, views=["identity"])}
    return [features[(p.task, p.class_name)][:, 0].float() for p in pools]


def _train_rows(
    model: SGPSSynthesizer,
    pools: Sequence[ClassPool],
    processor: SGPSImageProcessor,
    features: dict[PoolKey, torch.Tensor] | None,
) -> torch.Tensor:
    """Body features (identity view) of every meta-train image minus the synthesizer's ``feature_mean``."""
    if not pools:
        raise ValueError("The head's feature scale is fitted on the meta-train class pools (none were given).")
    return torch.cat(identity_features(model, pools, processor, features)) - model.feature_mean.float().cpu()


def _log_feature_std(rows: torch.Tensor) -> torch.Tensor:
    return rows.std(0).clamp_min(1e-6).log()


def _mean_squared_feature(model: SGPSSynthesizer, rows: torch.Tensor) -> float:
    """Mean over meta-train images of the squared standardised feature, averaged over features (the Gram diagonal)."""
    return float((rows * model.log_feature_scale.detach().exp().cpu()).pow(2).mean())


def _set_feature_scale(model: SGPSSynthesizer, log_scale: torch.Tensor) -> None:
    with torch.no_grad():
        model.log_feature_scale.copy_(log_scale.to(model.log_feature_scale))


# -- text prior --------------------------------------------------------------------------------------------------
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
    buckets = shot_buckets([e for e in episodes if e.use_images and e.use_text])
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
