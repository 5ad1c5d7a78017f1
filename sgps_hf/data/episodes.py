"""Episodic N-way K-shot sampling for meta-training and evaluation.

An episode is one few-shot task drawn from one real task: pick a task, then ``N`` of its classes,
then ``K`` support and ``Q`` query images per class, disjoint. Episode ``i`` is a pure function of
``(seed, i)``: training resumes exactly at episode ``i``, and data-parallel ranks take disjoint
indices (``sampler.iter_from(start=rank, step=world_size)``).

Fallbacks, so that small tasks and classes still contribute instead of failing:

* ``K`` is drawn uniformly from the ``k_shot`` range per episode. A class is *eligible* for that
  ``K`` when it has at least ``K + 1`` images (one left for the query). A task needs at least two
  eligible classes; tasks with fewer are skipped for that episode. If no task is eligible at the
  drawn ``K``, the largest smaller ``K`` that has one is used.
* ``N = min(n_way, eligible classes of the chosen task)``.
* ``Q = min(q_query, smallest (images - K) among the chosen classes)``.
* If no task is eligible even at the smallest ``K``, the sampler refuses to start
  (:class:`~sgps_hf.errors.DataError` naming the tasks and classes that were too small).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import count

import numpy as np
import torch

from ..errors import DataError
from .descriptions import load_descriptions
from .loading import load_task_arrays
from .splits import SPLIT_NAMES, MetaSplits, load_splits

logger = logging.getLogger(__name__)


@dataclass
class ClassPool:
    """All images of one class of one task, with its clinical text."""

    task: str
    class_name: str
    images: np.ndarray  # uint8 [m, H, W, 3]
    text: str

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class Episode:
    """One N-way K-shot episode; images are uint8 channels-first, class-major within support/query.

    ``support_labels[j]`` / ``query_labels[j]`` index ``class_names`` and ``class_texts``.
    ``use_text`` / ``use_images`` are modality-dropout flags: an image-only episode has
    ``use_text=False``, a text-only (zero-shot) episode ``use_images=False`` (its support images are
    still sampled, so that the rest of the episode does not depend on the dropout draw).
    """

    support: torch.Tensor  # uint8 [N*K, 3, H, W]
    support_labels: torch.Tensor  # int64 [N*K]
    query: torch.Tensor  # uint8 [N*Q, 3, H, W]
    query_labels: torch.Tensor  # int64 [N*Q]
    class_names: list[str]
    class_texts: list[str]
    task: str
    n_way: int
    k_shot: int
    q_query: int
    use_text: bool = True
    use_images: bool = True
    index: int = -1
    #: Per class: the rows of its pool that were drawn (first ``k_shot`` support, then the queries), so cached
    #: per-image data (body features) can be looked up as ``cache[(task, class_name)][rows[j]]``.
    rows: list[np.ndarray] = field(default_factory=list, compare=False, repr=False)


class EpisodeSampler:
    """Draws :class:`Episode` objects from class pools; see the module docstring for the rules.

    Args:
        pools: the classes to sample from (any number of tasks).
        n_way: classes per episode (fewer when the chosen task has fewer eligible classes).
        k_shot: support images per class: an int, or an inclusive ``(low, high)`` range drawn per
            episode.
        q_query: query images per class (fewer when a chosen class is small).
        seed: with the episode index, determines everything about the episode.
        text_dropout: probability that an episode is image-only (``use_text=False``).
        image_dropout: probability that an episode is text-only (``use_images=False``). The two are
            exclusive events, so ``text_dropout + image_dropout`` must be at most 1.
        task_weights: relative probability of picking each task; tasks not in the mapping get
            weight 0. ``None``: every task equally likely.

    ``sampler[i]`` is ``sampler.episode(i)``, so the sampler also works as a map-style dataset:
    ``DataLoader(sampler, batch_size=None, sampler=range(start, stop), num_workers=2)``.
    """

    def __init__(
        self,
        pools: Sequence[ClassPool],
        n_way: int = 5,
        k_shot: int | tuple[int, int] = (1, 5),
        q_query: int = 5,
        seed: int = 0,
        text_dropout: float = 0.0,
        image_dropout: float = 0.0,
        task_weights: Mapping[str, float] | None = None,
    ) -> None:
        self.n_way = _positive_int(n_way, "n_way", minimum=2)
        self.k_range = _k_range(k_shot)
        self.q_query = _positive_int(q_query, "q_query")
        self.seed = int(seed)
        self.text_dropout, self.image_dropout = _dropouts(text_dropout, image_dropout)
        self._tasks = _group_by_task(pools)
        self._task_names = sorted(self._tasks)
        self._weights = _task_weight_array(self._task_names, task_weights)
        self._eligible = {k: self._eligible_tasks(k) for k in range(self.k_range[0], self.k_range[1] + 1)}
        if not self._eligible[self.k_range[0]]:
            raise DataError(self._nothing_eligible_message())

    # -- public API ---------------------------------------------------------------------------------

    @property
    def tasks(self) -> list[str]:
        """Names of the tasks in the pools, sorted."""
        return list(self._task_names)

    def episode(self, index: int) -> Episode:
        """Episode number ``index`` (>= 0): the same ``(seed, index)`` always gives the same episode."""
        if index < 0:
            raise ValueError(f"episode index must be >= 0, got {index}")
        rng = np.random.default_rng([self.seed, index])
        # The draw order is fixed (K, modality, task, classes, images) so that it never shifts.
        k = self._feasible_k(int(rng.integers(self.k_range[0], self.k_range[1] + 1)))
        use_text, use_images = self._modalities(rng.random())
        task = self._pick_task(rng, k)
        eligible = [pool for pool in self._tasks[task] if len(pool) >= k + 1]
        chosen = [eligible[j] for j in rng.choice(len(eligible), size=min(self.n_way, len(eligible)), replace=False)]
        q = min(self.q_query, min(len(pool) - k for pool in chosen))
        picks = [rng.choice(len(pool), size=k + q, replace=False) for pool in chosen]
        return Episode(
            support=_stack([pool.images[idx[:k]] for pool, idx in zip(chosen, picks, strict=True)]),
            support_labels=torch.arange(len(chosen)).repeat_interleave(k),
            query=_stack([pool.images[idx[k:]] for pool, idx in zip(chosen, picks, strict=True)]),
            query_labels=torch.arange(len(chosen)).repeat_interleave(q),
            class_names=[pool.class_name for pool in chosen],
            class_texts=[pool.text for pool in chosen],
            task=task,
            n_way=len(chosen),
            k_shot=k,
            q_query=q,
            use_text=use_text,
            use_images=use_images,
            index=index,
            rows=picks,
        )

    def __getitem__(self, index: int) -> Episode:
        return self.episode(int(index))

    def iter_from(self, start: int = 0, step: int = 1) -> Iterator[Episode]:
        """Endless episodes ``start, start + step, ...`` (resume at ``start``; ``step`` = world size)."""
        if start < 0 or step < 1:
            raise ValueError(f"need start >= 0 and step >= 1, got start={start}, step={step}")
        return (self.episode(i) for i in count(start, step))

    def __iter__(self) -> Iterator[Episode]:
        return self.iter_from(0, 1)

    # -- internals ----------------------------------------------------------------------------------

    def _eligible_tasks(self, k: int) -> list[int]:
        """Indices (into the sorted task names) of tasks with weight > 0 and >= 2 classes of >= k+1 images."""
        return [
            i
            for i, task in enumerate(self._task_names)
            if self._weights[i] > 0 and sum(len(pool) >= k + 1 for pool in self._tasks[task]) >= 2
        ]

    def _feasible_k(self, k: int) -> int:
        while not self._eligible[k]:  # terminates: the smallest K is checked in __init__
            k -= 1
        return k

    def _modalities(self, u: float) -> tuple[bool, bool]:
        # One uniform draw split into [image-only | text-only | both]: the two are never combined.
        if u < self.text_dropout:
            return False, True
        if u < self.text_dropout + self.image_dropout:
            return True, False
        return True, True

    def _pick_task(self, rng: np.random.Generator, k: int) -> str:
        candidates = self._eligible[k]
        weights = self._weights[candidates]
        return self._task_names[candidates[rng.choice(len(candidates), p=weights / weights.sum())]]

    def _nothing_eligible_message(self) -> str:
        k = self.k_range[0]
        lines = [
            f"No task can form an episode with k_shot={k}: a task needs >= 2 classes with >= {k + 1} "
            "images each (K support + at least 1 query), and a task weight > 0."
        ]
        for i, task in enumerate(self._task_names):
            sizes = ", ".join(f"{pool.class_name}={len(pool)}" for pool in self._tasks[task])
            note = " (weight 0)" if self._weights[i] <= 0 else ""
            lines.append(f"  {task}{note}: {sizes}")
        lines.append("Lower k_shot, add images or classes to these tasks, or give other tasks a weight.")
        return "\n".join(lines)


def _stack(parts: list[np.ndarray]) -> torch.Tensor:
    """[n, H, W, 3] uint8 arrays -> one channels-first uint8 tensor [sum n, 3, H, W]."""
    return torch.from_numpy(np.ascontiguousarray(np.concatenate(parts).transpose(0, 3, 1, 2)))


def _positive_int(value: int, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DataError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def _k_range(k_shot: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(k_shot, (int, np.integer)) and not isinstance(k_shot, bool):
        k = _positive_int(k_shot, "k_shot")
        return k, k
    try:
        low, high = k_shot  # type: ignore[misc]
    except (TypeError, ValueError) as exc:
        raise DataError(f"k_shot must be an int or a (low, high) pair, got {k_shot!r}.") from exc
    low, high = _positive_int(low, "k_shot low"), _positive_int(high, "k_shot high")
    if low > high:
        raise DataError(f"k_shot range ({low}, {high}) is empty: low must be <= high.")
    return low, high


def _dropouts(text_dropout: float, image_dropout: float) -> tuple[float, float]:
    text_dropout, image_dropout = float(text_dropout), float(image_dropout)
    if not (0.0 <= text_dropout <= 1.0 and 0.0 <= image_dropout <= 1.0):
        raise DataError(f"dropout probabilities must lie in [0, 1], got {text_dropout}, {image_dropout}.")
    if text_dropout + image_dropout > 1.0 + 1e-9:
        raise DataError(
            "text_dropout + image_dropout must be <= 1: an episode is image-only, text-only or both, "
            f"never without either modality (got {text_dropout} + {image_dropout})."
        )
    return text_dropout, image_dropout


def _group_by_task(pools: Iterable[ClassPool]) -> dict[str, list[ClassPool]]:
    """Task -> its pools sorted by class name (sorting makes episodes independent of input order)."""
    grouped: dict[str, dict[str, ClassPool]] = {}
    shapes = set()
    for pool in pools:
        if pool.images.ndim != 4 or pool.images.shape[-1] != 3 or pool.images.dtype != np.uint8:
            raise DataError(
                f"{pool.task}/{pool.class_name}: images must be uint8 [m, H, W, 3], got "
                f"{pool.images.dtype} {pool.images.shape}."
            )
        if pool.class_name in grouped.setdefault(pool.task, {}):
            raise DataError(f"Class {pool.class_name!r} of task {pool.task!r} appears in two pools.")
        grouped[pool.task][pool.class_name] = pool
        shapes.add(pool.images.shape[1:])
    if not grouped:
        raise DataError("No class pools given: the split or task selection is empty.")
    if len(shapes) > 1:
        raise DataError(f"All images must share one size to be batched; found {sorted(shapes)}.")
    return {task: [classes[c] for c in sorted(classes)] for task, classes in grouped.items()}


def _task_weight_array(task_names: list[str], task_weights: Mapping[str, float] | None) -> np.ndarray:
    if task_weights is None:
        return np.ones(len(task_names))
    unknown = sorted(set(task_weights) - set(task_names))
    if unknown:
        raise DataError(f"task_weights names unknown tasks {unknown}; tasks: {', '.join(task_names)}.")
    weights = np.array([float(task_weights.get(task, 0.0)) for task in task_names])
    if (weights < 0).any() or not np.isfinite(weights).all():
        raise DataError("task_weights must be finite and >= 0.")
    return weights


# --------------------------------------------------------------------------------------------------
# Pools from the shared data


def build_pools(
    split_name: str,
    image_size: int,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    splits: MetaSplits | None = None,
    tasks: Iterable[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> list[ClassPool]:
    """Class pools of ``split_name`` (``meta_train``, ``meta_val`` or ``held_out``) at ``image_size``.

    Images come from :func:`~sgps_hf.data.loading.load_task_arrays` (cached), texts from the
    packaged descriptions; a class without a description gets its name with spaces (and a warning).
    ``tasks`` restricts the pools to some tasks of the split; ``splits`` defaults to
    :func:`~sgps_hf.data.splits.load_splits`.
    """
    if split_name not in SPLIT_NAMES:
        raise DataError(f"Unknown split {split_name!r}; choose one of {', '.join(SPLIT_NAMES)}.")
    splits = splits if splits is not None else load_splits()
    wanted = _select_tasks(split_name, splits, tasks)
    pools: list[ClassPool] = []
    for task, classes in wanted.items():
        arrays = load_task_arrays(task, image_size, data_dir, cache_dir=cache_dir)
        classes = classes or arrays.class_names  # a held-out task without recorded classes: all of them
        missing = sorted(set(classes) - set(arrays.class_names))
        if missing:
            raise DataError(
                f"Classes {missing} of {task!r} in the splits are not in the data; "
                "regenerate the splits with scripts/make_splits.py."
            )
        texts = _class_texts(task, classes)
        pools.extend(ClassPool(task, name, arrays.images_of(name), texts[name]) for name in classes)
    return pools


def _select_tasks(split_name: str, splits: MetaSplits, tasks: Iterable[str] | None) -> dict[str, list[str]]:
    if split_name == "held_out":
        wanted = {task: splits.held_out_classes.get(task, []) for task in splits.held_out_tasks}
    else:
        wanted = splits.classes_of(split_name)
    if tasks is None:
        return wanted
    tasks = list(tasks)
    unknown = sorted(set(tasks) - set(wanted))
    if unknown:
        raise DataError(
            f"Tasks {unknown} have no classes in split {split_name!r}; its tasks: {', '.join(sorted(wanted))}."
        )
    return {task: wanted[task] for task in tasks}


def _class_texts(task: str, classes: list[str]) -> dict[str, str]:
    try:
        known = load_descriptions(task)
    except DataError:
        known = {}
    missing = [name for name in classes if name not in known]
    if missing:
        logger.warning(
            "No clinical description for %d class(es) of %s (%s): using the class name as text.",
            len(missing),
            task,
            ", ".join(missing),
        )
    return {name: known.get(name) or name.replace("_", " ") for name in classes}
