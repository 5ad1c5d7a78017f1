"""The class pools a meta-training run samples episodes from."""

from __future__ import annotations

from typing import Any

from ..data.episodes import ClassPool, build_pools
from ..data.sources import dataset_pools
from ..data.splits import load_splits
from .config import TrainingConfig


def training_pools(config: TrainingConfig, image_size: int) -> tuple[list[ClassPool], list[ClassPool], dict[str, Any]]:
    """(meta-train pools, meta-val pools, a summary for the model card)."""
    if config.train_sources:
        train = [pool for source in config.train_sources for pool in dataset_pools(source, image_size)]
        val = [pool for source in config.val_sources for pool in dataset_pools(source, image_size)]
        summary = {"description": "datasets " + ", ".join(config.train_sources), "held_out_tasks": []}
    else:
        train = build_pools("meta_train", image_size, data_dir=config.data_dir)
        val = build_pools("meta_val", image_size, data_dir=config.data_dir)
        splits = load_splits()
        summary = {
            "description": (
                f"meta_train split of the sgps-hf shared medical data ({len({p.task for p in train})} public tasks; "
                f"meta-val: {len(splits.meta_val_tasks)} whole tasks; see SOURCES.md)"
            ),
            "held_out_tasks": list(splits.held_out_tasks),
        }
    summary.update(num_train_classes=len(train), num_val_classes=len(val))
    return train, val, summary
