"""Data layer of sgps_hf: task registry, loading and caching, clinical texts, splits, episodes."""

from .descriptions import (
    available_description_tasks,
    class_description,
    load_description_file,
    load_descriptions,
    validate_descriptions,
)
from .episodes import ClassPool, Episode, EpisodeSampler, build_pools
from .loading import (
    ImageArrays,
    default_cache_dir,
    load_image_dataset,
    load_task_arrays,
    prepare_arrays,
    standardize_columns,
    to_rgb_square,
)
from .registry import TaskInfo, default_data_dir, get_task, list_tasks, resolve_data_dir, task_dir
from .splits import (
    DEFAULT_HELD_OUT_TASKS,
    DEFAULT_META_VAL_TASKS,
    MetaSplits,
    default_splits_path,
    load_splits,
    make_splits,
)

__all__ = [
    "DEFAULT_HELD_OUT_TASKS",
    "DEFAULT_META_VAL_TASKS",
    "ClassPool",
    "Episode",
    "EpisodeSampler",
    "ImageArrays",
    "MetaSplits",
    "TaskInfo",
    "available_description_tasks",
    "build_pools",
    "class_description",
    "default_cache_dir",
    "default_data_dir",
    "default_splits_path",
    "get_task",
    "list_tasks",
    "load_description_file",
    "load_descriptions",
    "load_image_dataset",
    "load_splits",
    "load_task_arrays",
    "make_splits",
    "prepare_arrays",
    "resolve_data_dir",
    "standardize_columns",
    "task_dir",
    "to_rgb_square",
    "validate_descriptions",
]
