"""Load image classification datasets and turn them into cached uint8 arrays.

Two steps, both built on ``datasets``:

1. :func:`load_image_dataset` opens a local ``imagefolder`` directory, a dataset saved with
   ``save_to_disk``, a folder of parquet/arrow files, a Hub dataset name or an existing
   :class:`datasets.Dataset`, finds its image and label columns and returns a dataset with exactly
   two columns: ``image`` (:class:`datasets.Image`) and ``label`` (:class:`datasets.ClassLabel`).
2. :func:`prepare_arrays` decodes every image once to an RGB ``image_size`` square with a batched
   ``Dataset.map`` whose result is cached on disk, so a later call reads pixels instead of decoding
   JPEG/PNG files again.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from datasets import (
    Array3D,
    ClassLabel,
    Dataset,
    DatasetDict,
    Features,
    Image,
    load_dataset,
    load_from_disk,
)
from datasets.exceptions import DatasetsError
from PIL import Image as PILImage

from ..errors import DataError
from ..imaging import load_image, resize_center_crop
from .registry import task_dir

logger = logging.getLogger(__name__)

#: Environment variable that overrides the root of sgps_hf's own caches.
CACHE_DIR_ENV = "SGPS_CACHE_DIR"
#: Bump when the pixel preprocessing changes, so stale cached arrays are never reused.
PREPROCESSING_VERSION = "1"

IMAGE_COLUMN = "image"
LABEL_COLUMN = "label"

# Columnar files mark a local copy of a Hub dataset repo, which ``load_dataset(<dir>)`` reads as is.
# (csv/jsonl are left out on purpose: in an imagefolder they are its ``metadata`` file.)
_TABULAR_SUFFIXES = frozenset({".parquet", ".arrow"})
# Folder names that ``imagefolder`` reads as splits rather than classes.
# imagefolder's metadata file names (https://huggingface.co/docs/datasets/image_dataset#imagefolder).
_METADATA_FILES = ("metadata.csv", "metadata.jsonl")
_SPLIT_NAMES = frozenset(
    {"train", "training", "test", "testing", "eval", "evaluation", "valid", "validation", "val", "dev"}
)


@dataclass
class ImageArrays:
    """Decoded images of one dataset: ``images`` uint8 [n, H, W, 3], ``labels`` int64 [n]."""

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.images.shape[-1] != 3 or self.images.dtype != np.uint8:
            raise DataError(f"images must be uint8 [n, H, W, 3], got {self.images.dtype} {self.images.shape}.")
        if self.labels.shape != (len(self.images),):
            raise DataError(f"labels must have shape ({len(self.images)},), got {self.labels.shape}.")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    def class_counts(self) -> dict[str, int]:
        """Number of images per class name (classes without images included, with 0)."""
        counts = np.bincount(self.labels, minlength=len(self.class_names))
        return {name: int(n) for name, n in zip(self.class_names, counts, strict=True)}

    def images_of(self, class_name: str) -> np.ndarray:
        """All images of ``class_name``, in dataset order."""
        if class_name not in self.class_names:
            raise DataError(f"Unknown class {class_name!r}; classes: {', '.join(self.class_names)}.")
        return self.images[self.labels == self.class_names.index(class_name)]


# --------------------------------------------------------------------------------------------------
# Loading


def load_image_dataset(
    source: str | os.PathLike[str] | Dataset | DatasetDict,
    *,
    split: str = "train",
    image_column: str | None = None,
    label_column: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    keep_metadata: bool = False,
) -> Dataset:
    """Load an image classification dataset with columns ``image`` and ``label``.

    Args:
        source: a local directory (``imagefolder`` layout ``<class>/<image>``, a ``save_to_disk``
            folder, or a folder of parquet/arrow files), a Hub dataset name, or a dataset.
        split: split to load (``imagefolder`` folders without split subfolders only have "train").
        image_column: the column holding images; auto-detected (the only ``Image`` feature) if None.
            A column of paths or bytes is cast to ``Image``.
        label_column: the column holding labels; auto-detected (the only ``ClassLabel`` feature) if
            None. A string or integer column is class-encoded.
        cache_dir: the ``datasets`` cache to use (default: the ``datasets`` default).
        keep_metadata: keep every other column after ``image`` and ``label`` (e.g. the columns of
            an imagefolder's ``metadata.csv``: patient id, sex, age...), for per-subgroup reports.

    Raises:
        DataError: the source cannot be found or opened, or its columns are missing or ambiguous.
    """
    dataset = _open(source, split=split, cache_dir=cache_dir)
    if len(dataset) == 0:
        raise DataError(f"Dataset {_describe(source)} (split {split!r}) has no rows.")
    return standardize_columns(
        dataset, image_column=image_column, label_column=label_column, keep_metadata=keep_metadata
    )


def standardize_columns(
    dataset: Dataset,
    *,
    image_column: str | None = None,
    label_column: str | None = None,
    keep_metadata: bool = False,
) -> Dataset:
    """Name the image and label columns ``image`` and ``label`` and put them first.

    The other columns are dropped unless ``keep_metadata`` is set.
    """
    image_column = _image_column(dataset, image_column)
    label_column = _label_column(dataset, label_column)
    if image_column == label_column:
        raise DataError(f"image_column and label_column are the same column ({image_column!r}).")
    if not isinstance(dataset.features[image_column], Image):
        dataset = dataset.cast_column(image_column, Image())
    if not isinstance(dataset.features[label_column], ClassLabel):
        dataset = dataset.class_encode_column(label_column)
    others = [name for name in dataset.column_names if name not in (image_column, label_column)]
    clashes = {IMAGE_COLUMN, LABEL_COLUMN} & set(others) if keep_metadata else set()
    if clashes:
        raise DataError(f"Metadata column(s) {sorted(clashes)} clash with the image/label columns; rename them.")
    dataset = dataset.select_columns([image_column, label_column, *(others if keep_metadata else [])])
    renames = {old: new for old, new in ((image_column, IMAGE_COLUMN), (label_column, LABEL_COLUMN)) if old != new}
    return dataset.rename_columns(renames) if renames else dataset


def _describe(source: Any) -> str:
    return repr(str(source)) if isinstance(source, (str, os.PathLike)) else type(source).__name__


def _open(source: str | os.PathLike[str] | Dataset | DatasetDict, *, split: str, cache_dir: Any) -> Dataset:
    if isinstance(source, Dataset):
        return source
    if isinstance(source, DatasetDict):
        return _pick_split(source, split, _describe(source))
    path = Path(source).expanduser()
    try:
        if path.is_dir():
            return _open_local(path, split=split, cache_dir=cache_dir)
        if path.exists() or path.is_absolute() or str(source).startswith((".", "~")):
            raise DataError(f"{str(path)!r} is not a directory; pass an imagefolder directory or a Hub dataset name.")
        return load_dataset(str(source), split=split, cache_dir=cache_dir)
    except DataError:
        raise
    except (DatasetsError, FileNotFoundError, ConnectionError, OSError) as exc:
        raise DataError(f"Could not load dataset {_describe(source)}: {exc}") from exc
    except ValueError as exc:  # datasets raises a plain ValueError for an unknown split
        raise DataError(f"Could not load split {split!r} of {_describe(source)}: {exc}") from exc


def _open_local(path: Path, *, split: str, cache_dir: Any) -> Dataset:
    if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
        loaded = load_from_disk(str(path))
        return loaded if isinstance(loaded, Dataset) else _pick_split(loaded, split, repr(str(path)))
    if _has_tabular_files(path):
        return load_dataset(str(path), split=split, cache_dir=cache_dir)
    if any(p.is_dir() and p.name.lower() in _SPLIT_NAMES for p in path.iterdir()):
        # Split folders (train/, test/...) and their metadata files are left to imagefolder's inference.
        return load_dataset("imagefolder", data_dir=str(path), split=split, cache_dir=cache_dir)
    # The plain <class>/<image> layout. One explicit pattern: without data_files, datasets globs the
    # tree once per known split-naming pattern (~5 s for a 3,000-image task, even cached; this ~0.5 s).
    # drop_labels=False: imagefolder otherwise omits the label column when there is a single class.
    dataset = load_dataset(
        "imagefolder",
        data_dir=str(path),
        split=split,
        cache_dir=cache_dir,
        data_files={"train": "*/*"},
        drop_labels=False,
    )
    metadata = _metadata_file(path)
    return _join_metadata(dataset, path, metadata) if metadata is not None else dataset


def _metadata_file(path: Path) -> Path | None:
    found = [path / name for name in _METADATA_FILES if (path / name).is_file()]
    if len(found) > 1:
        raise DataError(f"{str(path)!r} holds several metadata files ({', '.join(p.name for p in found)}); keep one.")
    return found[0] if found else None


def _join_metadata(dataset: Dataset, root: Path, metadata_file: Path) -> Dataset:
    """Add the columns of an imagefolder ``metadata`` file to ``dataset``, matched by ``file_name``.

    imagefolder (datasets >= 4) no longer infers folder labels once a metadata file is present, so
    the folder labels are read as for the plain layout and the metadata is joined beside them.
    Images without a metadata row get None in every metadata column.
    """
    builder = "csv" if metadata_file.suffix == ".csv" else "json"
    table = load_dataset(builder, data_files=str(metadata_file), split="train")
    if "file_name" not in table.column_names:
        raise DataError(f"{metadata_file} has no 'file_name' column; it names each image relative to {str(root)!r}.")
    columns = [name for name in table.column_names if name != "file_name"]
    clashes = {IMAGE_COLUMN, LABEL_COLUMN} & set(columns)
    if clashes:
        raise DataError(
            f"{metadata_file} has column(s) {sorted(clashes)}, which the folder layout defines; rename them."
        )
    rows = table.to_dict()
    index = {Path(name).as_posix(): i for i, name in enumerate(rows["file_name"])}
    paths = dataset.cast_column(IMAGE_COLUMN, Image(decode=False))[IMAGE_COLUMN]
    root = root.resolve()
    positions = [index.get(Path(item["path"]).resolve().relative_to(root).as_posix()) for item in paths]
    for name in columns:
        values = rows[name]
        dataset = dataset.add_column(name, [None if i is None else values[i] for i in positions])
    return dataset


def _has_tabular_files(path: Path) -> bool:
    """True when ``path`` (or a direct subfolder such as ``data/``) holds parquet or arrow files."""
    candidates = [*path.iterdir(), *(p for sub in path.iterdir() if sub.is_dir() for p in sub.iterdir())]
    return any(p.is_file() and p.suffix.lower() in _TABULAR_SUFFIXES for p in candidates)


def _pick_split(splits: DatasetDict, split: str, origin: str) -> Dataset:
    if split not in splits:
        raise DataError(f"Dataset {origin} has no split {split!r}; available: {', '.join(splits)}.")
    return splits[split]


def _image_column(dataset: Dataset, requested: str | None) -> str:
    return _feature_column(
        dataset, requested, Image, "image_column", "an Image", "a column of file paths or image bytes is cast to Image"
    )


def _label_column(dataset: Dataset, requested: str | None) -> str:
    return _feature_column(
        dataset, requested, ClassLabel, "label_column", "a ClassLabel", "a string or integer column is class-encoded"
    )


def _feature_column(
    dataset: Dataset, requested: str | None, feature_type: type, argument: str, feature: str, hint: str
) -> str:
    """The ``requested`` column, else the only column whose feature is a ``feature_type``."""
    if requested is not None:
        _require_column(dataset, requested, argument)
        return requested
    found = [name for name, value in dataset.features.items() if isinstance(value, feature_type)]
    if len(found) == 1:
        return found[0]
    if not found:
        raise DataError(
            f"No column with {feature} feature among {list(dataset.features)}; pass {argument}=... ({hint})."
        )
    raise DataError(f"Several {feature_type.__name__} columns {found}: pass {argument}=... to choose one.")


def _require_column(dataset: Dataset, name: str, argument: str) -> None:
    if name not in dataset.features:
        raise DataError(f"{argument}={name!r} is not a column; columns: {list(dataset.features)}.")


# --------------------------------------------------------------------------------------------------
# Pixels


def default_cache_dir() -> Path:
    """Root of sgps_hf's caches: ``$SGPS_CACHE_DIR``, else ``~/.cache/sgps_hf``."""
    env = os.environ.get(CACHE_DIR_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sgps_hf"


def to_rgb_square(image: PILImage.Image, image_size: int) -> np.ndarray:
    """One image as uint8 [image_size, image_size, 3]: RGB, shorter side resized, centre-cropped.

    The colour conversion is :func:`sgps_hf.imaging.load_image` (grayscale replicated, 16-bit and
    float rescaled, alpha on black, EXIF rotation) and the geometry is
    :func:`sgps_hf.imaging.resize_center_crop` (bilinear): the function the image processor applies at
    synthesis/inference time, so training sees the same pixels a user's image will give.
    """
    return np.asarray(resize_center_crop(load_image(image), image_size), dtype=np.uint8)


def _decode_batch(batch: dict[str, list[Any]], image_size: int) -> dict[str, np.ndarray]:
    """``Dataset.map`` function: decoded PIL images -> a stacked uint8 pixel array."""
    return {"pixels": np.stack([to_rgb_square(image, image_size) for image in batch[IMAGE_COLUMN]])}


def _cache_key(dataset: Dataset, image_size: int) -> str:
    # The fingerprint already encodes the data files and every transform applied to the dataset.
    text = f"{dataset._fingerprint}|{image_size}|v{PREPROCESSING_VERSION}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def prepare_arrays(
    dataset: Dataset,
    image_size: int,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    num_proc: int | None = None,
    batch_size: int = 256,
) -> ImageArrays:
    """Decode every image of ``dataset`` to RGB ``image_size`` squares, cached on disk.

    The decoded pixels are written by a batched ``Dataset.map`` to
    ``<cache_dir>/arrays/<key>.arrow`` (``cache_dir`` defaults to :func:`default_cache_dir`), with
    the key derived from the dataset fingerprint and ``image_size``; a second call with the same
    dataset and size loads that file instead of decoding images again. Columns are auto-detected as
    in :func:`load_image_dataset`.
    """
    if not isinstance(image_size, int) or image_size < 1:
        raise DataError(f"image_size must be a positive integer, got {image_size!r}.")
    dataset = standardize_columns(dataset)
    key = _cache_key(dataset, image_size)
    cache_file = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    cache_file = cache_file / "arrays" / f"{key}.arrow"
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    labels_feature = dataset.features[LABEL_COLUMN]
    processed = dataset.map(
        _decode_batch,
        fn_kwargs={"image_size": image_size},
        batched=True,
        batch_size=batch_size,
        remove_columns=[IMAGE_COLUMN],
        features=Features({LABEL_COLUMN: labels_feature, "pixels": Array3D((image_size, image_size, 3), "uint8")}),
        cache_file_name=str(cache_file),
        load_from_cache_file=True,
        new_fingerprint=key,
        num_proc=num_proc,
        desc=f"Decoding images to {image_size}px",
    )
    columns = processed.with_format("numpy")[:]
    return ImageArrays(
        images=np.ascontiguousarray(columns["pixels"], dtype=np.uint8).reshape(-1, image_size, image_size, 3),
        labels=np.asarray(columns[LABEL_COLUMN], dtype=np.int64),
        class_names=list(labels_feature.names),
    )


def load_task_arrays(
    task_name_or_dir: str | os.PathLike[str],
    image_size: int,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    num_proc: int | None = None,
) -> ImageArrays:
    """:func:`prepare_arrays` of a task: an existing imagefolder directory, or a task name in ``data_dir``."""
    path = Path(task_name_or_dir).expanduser()
    folder = path if path.is_dir() else task_dir(str(task_name_or_dir), data_dir)
    return prepare_arrays(load_image_dataset(folder), image_size, cache_dir=cache_dir, num_proc=num_proc)
