"""The class pools a meta-training run samples episodes from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..data.descriptions import class_description
from ..data.episodes import ClassPool, build_pools
from ..data.loading import load_image_dataset, prepare_arrays
from ..data.splits import load_splits
from .config import TrainingConfig


def training_pools(config: TrainingConfig, image_size: int) -> tuple[list[ClassPool], list[ClassPool], dict[str, Any]]:
    """(meta-train pools, meta-val pools, a summary for the model card)."""
    if config.train_sources:
        train = [pool for source in config.train_sources for pool in source_pools(source, image_size)]
        val = [pool for source in config.val_sources for pool in source_pools(source, image_size)]
        summary = {"description": "datasets " + ", ".join(config.train_sources), "held_out_tasks": []}
    else:
        train = build_pools("meta_train", image_size, data_dir=config.data_dir)
        val = build_pools("meta_val", image_size, data_dir=config.data_dir)
        splits = load_splits()
        summary = {
            "description": f"meta_train split of the sgps-hf shared medical data ({len({p.task for p in train})} public tasks; "
            f"meta-val: {len(splits.meta_val_tasks)} whole tasks; see SOURCES.md)",
            "held_out_tasks": list(splits.held_out_tasks),
        }
    summary.update(num_train_classes=len(train), num_val_classes=len(val))
    return train, val, summary


def source_pools(source: str, image_size: int) -> list[ClassPool]:
    """Every class of an imagefolder directory or Hub dataset, texts from the built-in descriptions
    when the source is one of the shared tasks, else the class name."""
    arrays = prepare_arrays(load_image_dataset(source), image_size)
    task = Path(source).name
    pools = []
    for index, name in enumerate(arrays.class_names):
        text = class_description(task, name) or name.replace("_", " ")
        pools.append(ClassPool(task=task, class_name=name, images=arrays.images[arrays.labels == index], text=text))
    return pools
