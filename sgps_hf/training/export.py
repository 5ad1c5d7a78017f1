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
        training = {
            "episodes": f"{state.step} optimizer steps x {config.gradient_accumulation_steps} episode(s)",
            "episode shape": (
                f"{config.n_way}-way, {config.k_shot[0]}-{config.k_shot[1]}-shot, {config.q_query} queries/class; "
                f"text-only {config.image_dropout:.0%}, image-only {config.text_dropout:.0%} of episodes"
            ),
            "data": data_summary.get("description", ""),
            "meta-train classes": data_summary.get("num_train_classes"),
            "meta-val classes": data_summary.get("num_val_classes"),
            "held-out tasks (never seen)": ", ".join(data_summary.get("held_out_tasks", [])) or "n/a",
            "best meta-val accuracy": f"{state.best_val_accuracy:.4f}",
            "validation curve": ", ".join(f"{h['step']}: {h['val_accuracy']:.3f}" for h in state.history[-10:]),
            "body": (
                f"{model.config.target_architecture} from {model.config.body_init!r} weights"
                + (
                    f", adapted {config.pretrain_epochs} epoch(s) on the meta-train classes (last train accuracy "
                    f"{state.pretrain_history[-1]['accuracy']:.3f}), WiSE-FT weight {config.body_interpolation}"
                    if state.pretrain_history
                    else ""
                )
                + (
                    "; frozen, head meta-trained on cached features"
                    if config.freeze_body
                    else "; meta-trained end to end"
                )
            ),
            "text generator": f"class memory ({model.config.text_memory_size} meta-train classes, attention "
            f"temperature {state.text_calibration.get('chosen')} chosen on meta-val)",
            "ridge multiplier at 1 / 5 shots (chosen on meta-val)": json.dumps(
                state.ridge_calibration.get("chosen", {})
            ),
            "text prior strength (chosen on meta-val)": json.dumps(state.prior_calibration.get("chosen", {})),
            (
                "task-adaptive BatchNorm, images the body's statistics count as (chosen on meta-val; null: off)"
            ): json.dumps(model.config.task_batchnorm_images),
            "logit-scale multiplier (temperature, fitted on meta-val)": json.dumps(
                state.temperature_calibration.get("chosen")
            ),
            "zero-shot scale multiplier (fitted on meta-val)": json.dumps(state.zero_shot_calibration.get("chosen")),
            "optimizer": (
                f"AdamW lr {config.learning_rate} (base {config.base_learning_rate}), {config.schedule} schedule, "
                f"seed {config.seed}"
            ),
        }
        synthesizer_card(Path(config.output_dir).name, model.config, training).save(staging / "README.md")
        (staging / "training_config.json").write_text(json.dumps(config.to_dict(), indent=2), encoding="utf-8")
