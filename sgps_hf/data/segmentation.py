"""Segmentation data: ``../shared/data-seg`` (or any dataset with an image and a mask column) in ``datasets``.

* :func:`load_seg_dataset` reads the ``<task>/images/<nnnn>.*`` + ``<task>/masks/<label>/<nnnn>.png`` layout
  into a :class:`datasets.Dataset` with :class:`datasets.Image` features, one row per (task, label, image):
  columns ``image``, ``mask``, ``task``, ``label``, ``binary_task`` (``"<task>/<label>"``), ``stem``,
  ``family``, ``foreground`` (fraction of mask pixels).
* :func:`from_hf_dataset` turns any dataset with an image column and a mask column into the same schema.
* :func:`seg_splits` is the fixed split (``configs/splits.yaml``): meta-train / meta-val / held-out tasks.
* :func:`task_arrays` decodes a split into uint8 arrays per binary task (empty masks left out);
  :class:`SegEpisodeSampler` draws seeded episodes of K in 1..8 examples plus queries from them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import yaml
from datasets import Dataset, Features, Image, Value
from PIL import Image as PILImage

from ..errors import DataError
from ..imaging import PIL_IMAGE_SUFFIXES

SEG_DATA_ENV = "SGPS_SEG_DATA_DIR"
SPLITS_FILE = Path(__file__).resolve().parent / "configs" / "seg_splits.yaml"
SPLIT_NAMES = ("meta_train", "meta_val", "held_out")
FEATURES = Features(
    {
        "image": Image(),
        "mask": Image(),
        "task": Value("string"),
        "label": Value("string"),
        "binary_task": Value("string"),
        "stem": Value("string"),
        "family": Value("string"),
        "foreground": Value("float32"),
    }
)


def seg_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The segmentation data root: ``data_dir``, ``$SGPS_SEG_DATA_DIR``, else ``<repo>/../shared/data-seg``."""
    candidates = [
        data_dir,
        os.environ.get(SEG_DATA_ENV),
        Path(__file__).resolve().parents[2] / ".." / "shared" / "data-seg",
    ]
    for candidate in candidates:
        if candidate is not None and Path(candidate).is_dir():
            return Path(candidate).resolve()
        if candidate is not None and candidate is not candidates[-1]:
            raise DataError(f"Segmentation data directory {candidate} does not exist.")
    raise DataError(
        f"No segmentation data found; set {SEG_DATA_ENV} to a folder in the <task>/images + <task>/masks/<label> "
        "layout."
    )


def seg_splits(path: str | os.PathLike | None = None) -> dict[str, list[str]]:
    """The fixed task-level splits: ``{"meta_train": [...], "meta_val": [...], "held_out": [...]}``."""
    raw = yaml.safe_load(Path(path or SPLITS_FILE).read_text(encoding="utf-8"))
    splits = {name: list(raw.get(name) or []) for name in SPLIT_NAMES}
    seen: dict[str, str] = {}
    for name, tasks in splits.items():
        for task in tasks:
            if task in seen:
                raise DataError(f"Task {task!r} is in both {seen[task]} and {name}; splits must be disjoint.")
            seen[task] = name
    return splits


def list_pairs(task_dir: Path) -> dict[str, list[tuple[str, Path, Path]]]:
    """``{label: [(stem, image path, mask path), ...]}`` of one task folder in the images/ + masks/<label>/ layout."""
    images_dir, masks_dir = task_dir / "images", task_dir / "masks"
    if not images_dir.is_dir() or not masks_dir.is_dir():
        raise DataError(f"{task_dir} is not in the segmentation layout: it needs images/ and masks/<label>/ folders.")
    images = {p.stem: p for p in sorted(images_dir.iterdir()) if p.suffix.lower() in PIL_IMAGE_SUFFIXES}
    labels = sorted(p.name for p in masks_dir.iterdir() if p.is_dir())
    if not labels:
        raise DataError(f"{masks_dir} has no label folders; put masks in masks/<label>/<stem>.png.")
    pairs: dict[str, list[tuple[str, Path, Path]]] = {}
    for label in labels:
        masks = {p.stem: p for p in sorted((masks_dir / label).iterdir()) if p.suffix.lower() in PIL_IMAGE_SUFFIXES}
        pairs[label] = [(stem, images[stem], masks[stem]) for stem in sorted(masks) if stem in images]
    return pairs


def load_seg_dataset(data_dir: str | os.PathLike | None = None, tasks: Iterable[str] | None = None) -> Dataset:
    """Rows of (image, binary mask) per (task, label, image) as a :class:`datasets.Dataset` with Image features."""
    root = seg_data_dir(data_dir)
    manifest_file = root / "manifest.json"
    manifest = json.loads(manifest_file.read_text()) if manifest_file.is_file() else {"tasks": {}}
    names = list(tasks) if tasks is not None else sorted(p.name for p in root.iterdir() if (p / "images").is_dir())
    columns: dict[str, list[Any]] = {name: [] for name in FEATURES}
    for task in names:
        if not (root / task).is_dir():
            raise DataError(f"Unknown segmentation task {task!r} in {root}.")
        family = manifest["tasks"].get(task, {}).get("family", "")
        for label, pairs in list_pairs(root / task).items():
            for stem, image_path, mask_path in pairs:
                with PILImage.open(mask_path) as mask:
                    foreground = float((np.asarray(mask.convert("L")) > 127).mean())
                columns["image"].append(str(image_path))
                columns["mask"].append(str(mask_path))
                columns["task"].append(task)
                columns["label"].append(label)
                columns["binary_task"].append(f"{task}/{label}")
                columns["stem"].append(stem)
                columns["family"].append(family)
                columns["foreground"].append(foreground)
    if not columns["image"]:
        raise DataError(f"No image/mask pairs found for tasks {names} in {root}.")
    return Dataset.from_dict(columns, features=FEATURES)


def from_hf_dataset(
    dataset: Dataset | str,
    image_column: str = "image",
    mask_column: str = "mask",
    task_name: str | None = None,
    label: str = "foreground",
    split: str = "train",
    foreground_values: Sequence[int] | None = None,
) -> Dataset:
    """Any dataset (or Hub / local dataset name) with an image and a mask column -> the schema of
    :func:`load_seg_dataset`.

    The mask's foreground is ``mask > 0`` (or ``mask in foreground_values``, e.g. one class id of a label map).
    """
    if isinstance(dataset, str):
        from datasets import load_dataset

        name = dataset
        dataset = load_dataset(dataset, split=split)
    else:
        name = task_name or "dataset"
    for column in (image_column, mask_column):
        if column not in dataset.column_names:
            raise DataError(f"Column {column!r} not in the dataset (columns: {dataset.column_names}).")
    task = task_name or name.replace("/", "--")

    def convert(row: dict[str, Any], index: int) -> dict[str, Any]:
        mask = np.asarray(
            _as_pil(row[mask_column]).convert("L")
            if not isinstance(row[mask_column], np.ndarray)
            else row[mask_column]
        )
        binary = np.isin(mask, list(foreground_values)) if foreground_values is not None else mask > 0
        return {
            "image": _as_pil(row[image_column]).convert("RGB"),
            "mask": PILImage.fromarray(binary.astype(np.uint8) * 255),
            "task": task,
            "label": label,
            "binary_task": f"{task}/{label}",
            "stem": f"{index:05d}",
            "family": "",
            "foreground": float(binary.mean()),
        }

    return dataset.map(convert, with_indices=True, remove_columns=dataset.column_names, features=FEATURES)


def _as_pil(value: Any) -> PILImage.Image:
    if isinstance(value, PILImage.Image):
        return value
    if isinstance(value, np.ndarray):
        return PILImage.fromarray(value)
    if isinstance(value, dict) and (value.get("bytes") or value.get("path")):
        import io

        return PILImage.open(io.BytesIO(value["bytes"])) if value.get("bytes") else PILImage.open(value["path"])
    raise DataError(f"Cannot read a {type(value).__name__} as an image.")


@dataclass
class TaskArrays:
    """One binary task decoded: ``images`` uint8 ``(N, S, S, 3)``, ``masks`` bool ``(N, S, S)``, source ``stems``."""

    name: str
    images: np.ndarray
    masks: np.ndarray
    stems: list[str]

    def __len__(self) -> int:
        return len(self.stems)


def task_arrays(
    dataset: Dataset, tasks: Iterable[str] | None = None, image_size: int = 128, min_pairs: int = 9
) -> dict[str, TaskArrays]:
    """Decode the rows of ``tasks`` (whole task names or ``task/label``) into arrays per binary task.

    Pairs with an empty mask are left out (Dice is undefined on them and an example must show the structure);
    binary tasks with fewer than ``min_pairs`` non-empty pairs (8 examples + 1 query) are skipped.
    """
    wanted = set(tasks) if tasks is not None else None
    selected = dataset.filter(
        lambda task, binary, fg: fg > 0 and (wanted is None or task in wanted or binary in wanted),
        input_columns=["task", "binary_task", "foreground"],
    )
    out: dict[str, TaskArrays] = {}
    names = sorted(set(selected["binary_task"]))
    all_names = selected["binary_task"]
    for name in names:
        rows = selected.select([i for i, n in enumerate(all_names) if n == name])
        if len(rows) < min_pairs:
            continue
        images = np.stack([_square(r.convert("RGB"), image_size, PILImage.BILINEAR) for r in rows["image"]])
        masks = np.stack([_square(r.convert("L"), image_size, PILImage.NEAREST) > 127 for r in rows["mask"]])
        out[name] = TaskArrays(name, images, masks, list(rows["stem"]))
    if not out:
        raise DataError(f"No binary task with at least {min_pairs} non-empty pairs among {sorted(wanted or [])}.")
    return out


def _square(image: PILImage.Image, size: int, resample: int) -> np.ndarray:
    if image.size != (size, size):
        image = image.resize((size, size), resample)
    return np.asarray(image)


@dataclass(frozen=True)
class SegEpisode:
    task: str
    support: tuple[int, ...]
    query: tuple[int, ...]

    @property
    def k(self) -> int:
        return len(self.support)


class SegEpisodeSampler:
    """Seeded episodes over binary tasks: K examples (uniform in ``k_range``) plus ``n_query`` other images.

    ``episode(i)`` depends only on (seed, i, the tasks and their sizes): the same index gives the same episode.
    """

    def __init__(
        self, sizes: Mapping[str, int], k_range: tuple[int, int] = (1, 8), n_query: int = 4, seed: int = 0
    ) -> None:
        low, high = k_range
        if not 1 <= low <= high:
            raise DataError(f"k_range must satisfy 1 <= low <= high, got {k_range}.")
        small = {name: n for name, n in sizes.items() if n < high + n_query}
        if small:
            raise DataError(f"Tasks too small for {high} examples + {n_query} queries: {small}.")
        if not sizes:
            raise DataError("SegEpisodeSampler needs at least one task.")
        self.names = sorted(sizes)
        self.sizes = dict(sizes)
        self.k_range, self.n_query, self.seed = (low, high), n_query, seed

    def episode(self, index: int, task: str | None = None, k: int | None = None) -> SegEpisode:
        rng = np.random.default_rng([self.seed, index])
        name = task if task is not None else self.names[int(rng.integers(len(self.names)))]
        k = int(k) if k is not None else int(rng.integers(self.k_range[0], self.k_range[1] + 1))
        order = rng.permutation(self.sizes[name])
        return SegEpisode(name, tuple(int(i) for i in order[:k]), tuple(int(i) for i in order[k : k + self.n_query]))

    def fixed(self, task: str, k: int, n_episodes: int) -> list[SegEpisode]:
        """``n_episodes`` evaluation episodes of ``task`` with exactly ``k`` examples (same for every method)."""
        return [self.episode(1_000_000 * (1 + k) + i, task=task, k=k) for i in range(n_episodes)]
