"""The synthesizer card's training section (sgps_hf.training.export.training_summary) from a run's state."""

from __future__ import annotations

import sgps_testing

from sgps_hf.training.checkpointing import TrainerState
from sgps_hf.training.config import TrainingConfig
from sgps_hf.training.export import training_summary

DATA = {"description": "datasets /a", "num_train_classes": 8, "num_val_classes": 4, "held_out_tasks": []}


def test_the_summary_describes_the_adaptation_and_what_calibration_fitted():
    model = sgps_testing.tiny_synthesizer()
    config = TrainingConfig(pretrain_epochs=2, pretrain_samples_per_epoch=96, body_interpolation=0.5, eval_episodes=30)
    state = TrainerState(
        epoch=2,
        pretrain_history=[
            {"epoch": 1, "loss": 2.5, "accuracy": 0.25, "lr": 1e-3},
            {"epoch": 2, "loss": 2.0, "accuracy": 0.5, "lr": 1e-4},
        ],
        ridge_calibration={"chosen": {"1": 4.0, "5": 0.5}},
        batchnorm_calibration={"episodes": 20, "scores": {"None": 0.6, "25": 0.625}, "chosen": 25},
    )
    summary = training_summary(model, config, state, DATA)
    assert "adapted 2 epoch(s) x 96 task- and class-balanced" in summary["body"]
    assert summary["body"].endswith("last train accuracy 0.500), WiSE-FT weight 0.5; then frozen")
    assert summary["body adaptation per epoch (loss / train accuracy)"] == "1: 2.500 / 0.250, 2: 2.000 / 0.500"
    assert summary["head meta-parameters"].startswith("not trained: fitted on 30 meta-val episodes (5-way, 1-5-shot")
    assert summary["ridge at 1 / 5 shots (chosen on meta-val)"] == '{"1": 4.0, "5": 0.5}'
    assert summary["meta-val accuracy after calibration (image episodes, pixels)"].startswith(
        "0.6250 on 20 episode(s)"
    )
    assert "feature scale (chosen on meta-val)" not in summary, "only when calibration reports one"
    state.feature_scale_calibration = {"chosen": "unit", "accuracy": {"0.0": 0.5, "0.0, normalised rows": 0.52}}
    state.temperature_calibration = {"chosen": 0.5, "shot exponent": 0.4}
    normalised = sgps_testing.tiny_synthesizer(normalize_support_rows=True, logit_scale_shot_exponent=0.4)
    summary = training_summary(normalised, config, state, DATA)
    assert summary["feature scale (chosen on meta-val)"] == '"unit"'
    assert summary["support rows normalised (chosen on meta-val; accuracy by candidate)"] == (
        'true ({"0.0": 0.5, "0.0, normalised rows": 0.52})'
    )
    assert summary["logit scale grows as shots ** (fitted on meta-val)"] == "0.4"


def test_a_run_without_adaptation_or_calibration_reports_say_so():
    model = sgps_testing.tiny_synthesizer()
    summary = training_summary(model, TrainingConfig(), TrainerState(), DATA)
    assert summary["body"] == "tf_efficientnetv2_b0 from 'none' weights; then frozen"
    assert summary["body adaptation per epoch (loss / train accuracy)"] == "none"
    assert "meta-val accuracy after calibration (image episodes, pixels)" not in summary
