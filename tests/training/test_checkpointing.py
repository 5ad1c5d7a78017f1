"""Per-epoch checkpoints of the body adaptation (sgps_hf.training.checkpointing.EpochCheckpoints), in process."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from sgps_testing import tiny_synthesizer

from sgps_hf.data.episodes import ClassPool
from sgps_hf.errors import OutputPathError
from sgps_hf.models.sgps.image_processing_sgps import SGPSImageProcessor
from sgps_hf.training.checkpointing import EpochCheckpoints, TrainerState, list_checkpoints
from sgps_hf.training.config import TrainingConfig
from sgps_hf.training.pretrain import pretrain_body


def pools() -> list[ClassPool]:
    rng = np.random.default_rng(0)
    return [
        ClassPool(task, f"class-{i}", rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8), f"text {i}")
        for i, task in enumerate(("a", "a", "b"))
    ]


def adapt(output, epochs: int, resume: bool = False, rows: list | None = None, keep: int = 2):
    """A fresh tiny body adapted for ``epochs`` epochs with per-epoch checkpoints in ``output``: (body, state)."""
    torch.manual_seed(0)
    synth = tiny_synthesizer()
    config = TrainingConfig(
        pretrain_epochs=epochs, pretrain_batch_size=5, pretrain_samples_per_epoch=10, pretrain_learning_rate=3e-3
    )
    state = TrainerState()
    checkpoints = EpochCheckpoints(
        output, state, keep=keep, resume=resume, on_epoch=(rows if rows is not None else []).append
    )
    processor = SGPSImageProcessor.from_sgps_config(synth.config)
    pretrain_body(Accelerator(cpu=True), synth.target, pools(), processor, config, checkpoints)
    return synth.target, state


def test_resuming_from_an_epoch_checkpoint_gives_the_uninterrupted_weights(tmp_path):
    reference, reference_state = adapt(tmp_path / "reference", epochs=3)
    assert [p.name for p in list_checkpoints(tmp_path / "reference")] == ["checkpoint-2", "checkpoint-3"]
    assert reference_state.epoch == 3 and [h["epoch"] for h in reference_state.pretrain_history] == [1, 2, 3]

    adapt(tmp_path / "run", epochs=3, keep=3)
    for name in ("checkpoint-3", "checkpoint-2"):  # as if killed after epoch 1 was checkpointed
        shutil.rmtree(tmp_path / "run" / name)
    rows: list = []
    resumed, state = adapt(tmp_path / "run", epochs=3, resume=True, rows=rows)
    assert [row["epoch"] for row in rows] == [2, 3], "only the epochs after the checkpoint run again"
    assert state.pretrain_history == reference_state.pretrain_history
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in reference.state_dict().items())


def test_a_checkpoint_with_more_epochs_than_the_config_is_refused(tmp_path):
    adapt(tmp_path, epochs=2)
    with pytest.raises(ValueError, match="2 epochs of body adaptation, more than pretrain_epochs \\(1\\)"):
        adapt(tmp_path, epochs=1, resume=True)


def test_an_older_runs_checkpoint_is_refused_by_name(tmp_path):
    old = tmp_path / "checkpoint-1500"
    old.mkdir()
    torch.save({"step": 1500, "best_val_accuracy": 0.59, "history": []}, old / "custom_checkpoint_0.pkl")
    with pytest.raises(OutputPathError, match="checkpoint-1500 is not a body-adaptation checkpoint"):
        adapt(tmp_path, epochs=1, resume=True)
