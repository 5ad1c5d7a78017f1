"""The end of a training run: the exported synthesizer folder (weights, processor, card, training config)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..hub.model_card import synthesizer_card
from ..models.sgps.modeling_sgps import SGPSSynthesizer
from ..models.sgps.processing_sgps import SGPSProcessor
from .checkpointing import TrainerState
from .config import TrainingConfig


def export_synthesizer(
    model: SGPSSynthesizer, folder: Path, config: TrainingConfig, state: TrainerState, data_summary: dict[str, Any]
) -> None:
    """save_pretrained + processor + generated synthesizer card, atomically."""
    from ..hub.atomic import atomic_directory

    with atomic_directory(folder) as staging:
        model.save_pretrained(staging)
        SGPSProcessor.from_sgps_config(model.config).save_pretrained(staging)
        synthesizer_card(
            Path(config.output_dir).name, model.config, training_summary(model, config, state, data_summary)
        ).save(staging / "README.md")
        (staging / "training_config.json").write_text(json.dumps(config.to_dict(), indent=2), encoding="utf-8")


def training_summary(
    model: SGPSSynthesizer, config: TrainingConfig, state: TrainerState, data_summary: dict[str, Any]
) -> dict[str, Any]:
    """The card's training section: the data, the body's adaptation, and what calibration fitted on meta-val."""
    history = state.pretrain_history
    body = f"{model.config.target_architecture} from {model.config.body_init!r} weights"
    if history:
        draws = config.pretrain_samples_per_epoch or "all meta-train images"
        body += (
            f", adapted {len(history)} epoch(s) x {draws} task- and class-balanced augmented draws on the meta-train "
            f"classes (Accelerate; AdamW lr {config.pretrain_learning_rate}, batch {config.pretrain_batch_size}, "
            f"seed {config.seed}; last train accuracy {history[-1]['accuracy']:.3f}), WiSE-FT weight "
            f"{config.body_interpolation}"
        )
    episodic = state.episodic_history
    if episodic:
        balance = ", every family equally likely" if config.episodic_balance == "family" else ""
        body += (
            f"; then adapted {len(episodic)} epoch(s) x {config.episodic_episodes_per_epoch} meta-train episodes "
            f"({config.episodic_ways}-way, {config.k_shot[0]}-{config.k_shot[1]}-shot, {config.q_query} "
            f"queries/class, augmented{balance}) through the closed-form head (AdamW lr "
            f"{config.episodic_learning_rate}; last query accuracy {episodic[-1]['accuracy']:.3f})"
        )
    summary = {
        "data": data_summary.get("description", ""),
        "meta-train classes": data_summary.get("num_train_classes"),
        "meta-val classes": data_summary.get("num_val_classes"),
        "held-out tasks (never seen)": ", ".join(data_summary.get("held_out_tasks", [])) or "n/a",
        "body": body + "; then frozen",
        "body adaptation per epoch (loss / train accuracy)": ", ".join(
            f"{int(row['epoch'])}: {row['loss']:.3f} / {row['accuracy']:.3f}" for row in history
        )
        or "none",
        "episodic adaptation per epoch (loss / query accuracy)": ", ".join(
            f"{int(row['epoch'])}: {row['loss']:.3f} / {row['accuracy']:.3f}" for row in episodic
        )
        or "none",
        "head meta-parameters": (
            f"not trained: fitted on {config.eval_episodes} meta-val episodes ({config.n_way}-way, "
            f"{config.k_shot[0]}-{config.k_shot[1]}-shot, {config.q_query} queries/class) by calibration"
        ),
        "ridge at 1 / 5 shots (chosen on meta-val)": json.dumps(state.ridge_calibration.get("chosen", {})),
        "text prior strength at 1 / 5 shots (chosen on meta-val)": json.dumps(
            state.prior_calibration.get("chosen", {})
        ),
        "text generator": f"class memory ({model.config.text_memory_size} meta-train classes, attention "
        f"temperature {state.text_calibration.get('chosen')} chosen on meta-val)",
        ("task-adaptive BatchNorm, images the body's statistics count as (chosen on meta-val; null: off)"): json.dumps(
            model.config.task_batchnorm_images
        ),
        "logit-scale multiplier (temperature, fitted on meta-val)": json.dumps(
            state.temperature_calibration.get("chosen")
        ),
        "zero-shot scale multiplier (fitted on meta-val)": json.dumps(state.zero_shot_calibration.get("chosen")),
    }
    if "chosen" in state.feature_scale_calibration:  # the report of calibration's feature-scale fit
        summary["feature scale (chosen on meta-val)"] = json.dumps(state.feature_scale_calibration["chosen"])
        summary["support rows normalised (chosen on meta-val; accuracy by candidate)"] = (
            f"{json.dumps(model.config.normalize_support_rows)} "
            f"({json.dumps(state.feature_scale_calibration.get('accuracy', {}))})"
        )
    if "shot exponent" in state.temperature_calibration:
        summary["logit scale grows as shots ** (fitted on meta-val)"] = json.dumps(
            model.config.logit_scale_shot_exponent
        )
    batchnorm = state.batchnorm_calibration  # its scores are of the final head on the first meta-val episodes' pixels
    accuracy = batchnorm.get("scores", {}).get(str(batchnorm.get("chosen")))
    if accuracy is not None:
        episodes = batchnorm.get("episodes", "the")
        summary["meta-val accuracy after calibration (image episodes, pixels)"] = (
            f"{accuracy:.4f} on {episodes} episode(s) (chosen by it, so optimistic)"
        )
    return summary
