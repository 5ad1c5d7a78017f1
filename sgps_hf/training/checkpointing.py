"""Resumable body adaptation: an Accelerate checkpoint ``checkpoint-<epoch>`` after every epoch, the newest kept.

Each checkpoint holds what ``accelerator.save_state`` saves (the adapted body with its throwaway classifier, the
optimizer, the schedule, every process's RNG states) and the :class:`TrainerState`: the epochs done, their history,
and the state of the ``torch.Generator`` that draws the balanced samples and their augmentations. So a run resumed
from epoch ``e`` draws exactly the batches an uninterrupted run draws after epoch ``e``.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from accelerate import Accelerator

from ..errors import OutputPathError

CHECKPOINT_PREFIX = "checkpoint-"


@dataclass
class TrainerState:
    """Progress that must survive a restart (saved by ``accelerator.save_state``) and the run's calibration reports.

    ``generator``: the body adaptation's sampling/augmentation generator, whose state is saved with the rest (the
    generator itself is the loop's; :class:`EpochCheckpoints` attaches it before a resume).
    """

    epoch: int = 0
    pretrain_history: list[dict[str, float]] = field(default_factory=list)
    episodic_history: list[dict[str, float]] = field(default_factory=list)
    generator: torch.Generator | None = None
    feature_scale_calibration: dict[str, Any] = field(default_factory=dict)
    prior_calibration: dict[str, Any] = field(default_factory=dict)
    temperature_calibration: dict[str, Any] = field(default_factory=dict)
    ridge_calibration: dict[str, Any] = field(default_factory=dict)
    text_calibration: dict[str, Any] = field(default_factory=dict)
    zero_shot_calibration: dict[str, Any] = field(default_factory=dict)
    batchnorm_calibration: dict[str, Any] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"epoch": self.epoch, "pretrain_history": self.pretrain_history}
        if self.generator is not None:
            state["generator"] = self.generator.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.pretrain_history = state["epoch"], list(state["pretrain_history"])
        if self.generator is not None and "generator" in state:
            self.generator.set_state(state["generator"])


@dataclass
class EpochCheckpoints:
    """Per-epoch checkpoints of a training loop in ``output`` (the newest ``keep``), resumed from when ``resume``.

    ``on_epoch(row)`` runs after each epoch, before its checkpoint is written (e.g. a log row; rows of epochs after
    the newest checkpoint are the caller's to drop on resume).
    """

    output: Path
    state: TrainerState
    keep: int
    resume: bool = False
    on_epoch: Callable[[dict[str, float]], None] | None = None

    def start(self, accelerator: Accelerator, generator: torch.Generator) -> int:
        """After ``accelerator.prepare``: register the state, resume if asked; returns the first epoch to run."""
        self.state.generator = generator
        accelerator.register_for_checkpointing(self.state)
        if self.resume:
            resume_state(accelerator, self.output, self.state)
        return self.state.epoch

    def end_epoch(self, accelerator: Accelerator, row: dict[str, float]) -> None:
        self.state.epoch = int(row["epoch"])
        self.state.pretrain_history.append(row)
        if self.on_epoch is not None:
            self.on_epoch(row)
        save_checkpoint(accelerator, self.output, self.state, self.keep)


def list_checkpoints(output: Path) -> list[Path]:
    found = [
        p for p in output.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and p.name[len(CHECKPOINT_PREFIX) :].isdigit()
    ]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def newest_epoch(output: Path) -> int:
    """The epoch of the newest complete checkpoint in ``output`` (0: none)."""
    checkpoints = list_checkpoints(output)
    return int(checkpoints[-1].name[len(CHECKPOINT_PREFIX) :]) if checkpoints else 0


def remove_partial_checkpoints(output: Path) -> None:
    """Staging folders of saves a kill interrupted (never checkpoints)."""
    for stale in output.glob(f".{CHECKPOINT_PREFIX}*.partial"):
        shutil.rmtree(stale, ignore_errors=True)


def save_checkpoint(accelerator: Accelerator, output: Path, state: TrainerState, keep: int) -> None:
    """``save_state`` into a staging folder, then rename: a kill mid-save never corrupts the newest checkpoint."""
    target = output / f"{CHECKPOINT_PREFIX}{state.epoch}"
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
    custom = checkpoints[-1] / "custom_checkpoint_0.pkl"
    saved = torch.load(custom, map_location="cpu", weights_only=True) if custom.is_file() else {}
    if "epoch" not in saved:
        raise OutputPathError(
            f"{checkpoints[-1]} is not a body-adaptation checkpoint of this version (an older run's head "
            "meta-training?): it cannot be resumed. Start the run in a new output_dir."
        )
    accelerator.load_state(str(checkpoints[-1]))
    accelerator.print(f"Resumed from {checkpoints[-1]} at epoch {state.epoch}.")
