"""Resumable training state: Accelerate checkpoints ``checkpoint-<step>`` with the trainer state, the newest kept."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accelerate import Accelerator

CHECKPOINT_PREFIX = "checkpoint-"


# TrainingConfig.schedule -> transformers scheduler name ("constant" honours warmup_steps like the others).
@dataclass
class TrainerState:
    """Progress that must survive a restart (saved by ``accelerator.save_state``)."""

    step: int = 0
    best_val_accuracy: float = -1.0
    history: list[dict[str, float]] = field(default_factory=list)
    pretrain_history: list[dict[str, float]] = field(default_factory=list)
    prior_calibration: dict[str, Any] = field(default_factory=dict)
    temperature_calibration: dict[str, Any] = field(default_factory=dict)
    ridge_calibration: dict[str, Any] = field(default_factory=dict)
    text_calibration: dict[str, Any] = field(default_factory=dict)
    zero_shot_calibration: dict[str, Any] = field(default_factory=dict)
    batchnorm_calibration: dict[str, Any] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "best_val_accuracy": self.best_val_accuracy,
            "history": self.history,
            "pretrain_history": self.pretrain_history,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.best_val_accuracy, self.history = state["step"], state["best_val_accuracy"], state["history"]
        self.pretrain_history = state.get("pretrain_history", [])


def list_checkpoints(output: Path) -> list[Path]:
    found = [
        p for p in output.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and p.name[len(CHECKPOINT_PREFIX) :].isdigit()
    ]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def save_checkpoint(accelerator: Accelerator, output: Path, state: TrainerState, keep: int) -> None:
    """``save_state`` into a staging folder, then rename: a kill mid-save never corrupts the newest checkpoint."""
    target = output / f"{CHECKPOINT_PREFIX}{state.step}"
    staging = output / f".{target.name}.partial"
    if accelerator.is_main_process and staging.exists():
        shutil.rmtree(staging)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
        for old in list_checkpoints(output)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def resume_state(accelerator: Accelerator, output: Path, state: TrainerState) -> None:
    checkpoints = list_checkpoints(output)
    if not checkpoints:
        accelerator.print(f"--resume: no checkpoint in {output}; starting from scratch.")
        return
    accelerator.load_state(str(checkpoints[-1]))
    accelerator.print(f"Resumed from {checkpoints[-1]} at step {state.step}.")
