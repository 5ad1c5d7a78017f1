"""The class pools a meta-training run samples episodes from."""

from __future__ import annotations

from collections import Counter
from typing import Any

from ..data.episodes import ClassPool, build_pools
from ..data.registry import list_tasks
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
        splits = load_splits()
        moved, val = split_meta_val(build_pools("meta_val", image_size, data_dir=config.data_dir), config)
        train = build_pools("meta_train", image_size, data_dir=config.data_dir) + moved
        also = f" and the meta-val tasks {', '.join(sorted(config.meta_val_into_train))}" if moved else ""
        summary = {
            "description": (
                f"meta_train split of the sgps-hf shared medical data{also} ({len({p.task for p in train})} public "
                f"tasks; meta-val: {len({p.task for p in val})} whole tasks; see SOURCES.md)"
            ),
            "held_out_tasks": list(splits.held_out_tasks),
        }
    summary.update(num_train_classes=len(train), num_val_classes=len(val))
    return train, val, summary


def split_meta_val(meta_val: list[ClassPool], config: TrainingConfig) -> tuple[list[ClassPool], list[ClassPool]]:
    """(the pools of the meta-val tasks ``config.meta_val_into_train`` moves into training, the pools left for
    calibration); the names are checked against the meta-val split."""
    moved, meta_val_tasks = set(config.meta_val_into_train), load_splits().meta_val_tasks
    unknown = sorted(moved - set(meta_val_tasks))
    if unknown:
        raise ValueError(
            f"meta_val_into_train names {unknown}, which are not meta-val tasks; the meta-val tasks are "
            f"{', '.join(meta_val_tasks)}."
        )
    if moved >= set(meta_val_tasks):
        raise ValueError("meta_val_into_train must leave at least one meta-val task for calibration.")
    return [p for p in meta_val if p.task in moved], [p for p in meta_val if p.task not in moved]


def episode_task_weights(pools: list[ClassPool], config: TrainingConfig) -> dict[str, float] | None:
    """How likely the episodic stage draws each task of ``pools`` (``config.episodic_balance``): None for every task
    equally likely; for ``"family"``, every family of the data directory's registry equally likely and every task
    equally likely within its family. A task the registry does not know (a ``train_sources`` dataset) counts as a
    family of its own."""
    if config.episodic_balance == "task":
        return None
    registry = {} if config.train_sources else {info.name: info.family for info in list_tasks(config.data_dir)}
    family = {pool.task: registry.get(pool.task, f"task:{pool.task}") for pool in pools}
    tasks_per_family = Counter(family.values())
    return {task: 1.0 / tasks_per_family[name] for task, name in family.items()}
