"""Training of the SGPS synthesizer: body adaptation with Accelerate, then calibration of the head on meta-val."""

from __future__ import annotations

from typing import Sequence

from .config import TrainingConfig, parse_training_args
from .meta_train import train

__all__ = ["TrainingConfig", "main", "train"]


def main(argv: Sequence[str] | None = None) -> None:
    config, resume = parse_training_args(argv)
    final = train(config, resume=resume)
    print(f"Exported synthesizer: {final}")
