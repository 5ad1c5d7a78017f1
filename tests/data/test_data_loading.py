"""load_image_dataset: sources and column detection; prepare_arrays: pixels and caching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value
from PIL import Image as PILImage

from sgps_hf.data import ImageArrays, load_image_dataset, load_task_arrays, loading, prepare_arrays, to_rgb_square
from sgps_hf.errors import DataError


def _pil(mode: str = "RGB", size: tuple[int, int] = (12, 12), value: int = 0) -> PILImage.Image:
    return PILImage.new(mode, size, value if mode != "RGB" else (value, value, value))


def _dataset(columns: dict, features: dict) -> Dataset:
    return Dataset.from_dict(columns, features=Features(features))


# -- loading ---------------------------------------------------------------------------------------


def test_imagefolder_gives_standard_columns(tiny_folder: Path):
    ds = load_image_dataset(tiny_folder)
    assert list(ds.features) == ["image", "label"]
    assert isinstance(ds.features["image"], Image)
    assert ds.features["label"].names == ["benign", "malignant", "normal"]
    assert np.bincount(ds["label"]).tolist() == [3, 4, 2]


def test_autodetects_nonstandard_column_names():
    ds = _dataset(
        {"img": [_pil(), _pil()], "diagnosis": [0, 1], "note": ["a", "b"]},
        {"img": Image(), "diagnosis": ClassLabel(names=["a", "b"]), "note": Value("string")},
    )
    out = load_image_dataset(ds)
    assert list(out.features) == ["image", "label"]
    assert out.features["label"].names == ["a", "b"]


@pytest.mark.parametrize(
    ("columns", "features", "match"),
    [
        ({"x": [1], "y": [0]}, {"x": Value("int32"), "y": ClassLabel(names=["a"])}, "No column with an Image feature"),
        (
            {"a": [_pil()], "b": [_pil()], "y": [0]},
            {"a": Image(), "b": Image(), "y": ClassLabel(names=["a"])},
            "Several Image",
        ),
        ({"img": [_pil()], "y": [0]}, {"img": Image(), "y": Value("int64")}, "No column with a ClassLabel"),
        (
            {"img": [_pil()], "y": [0], "z": [0]},
            {"img": Image(), "y": ClassLabel(names=["a"]), "z": ClassLabel(names=["b"])},
            "Several ClassLabel",
        ),
    ],
)
def test_missing_or_ambiguous_columns_raise(columns, features, match):
    with pytest.raises(DataError, match=match) as info:
        load_image_dataset(_dataset(columns, features))
    assert isinstance(info.value, ValueError)  # callers that catch ValueError still catch it


def test_explicit_columns_are_cast_and_encoded(tmp_path: Path):
    paths = []
    for i in range(3):
        paths.append(str(tmp_path / f"{i}.png"))
        _pil("L", (10, 10), 40 * i).save(paths[-1])
    ds = Dataset.from_dict({"path": paths, "finding": ["opacity", "normal", "opacity"]})
    out = load_image_dataset(ds, image_column="path", label_column="finding")
    assert isinstance(out.features["image"], Image)
    assert out.features["label"].names == ["normal", "opacity"]
    assert out["label"] == [1, 0, 1]
    with pytest.raises(DataError, match="image_column='nope' is not a column"):
        load_image_dataset(ds, image_column="nope", label_column="finding")


def test_ambiguity_resolved_by_naming_the_column():
    ds = _dataset({"a": [_pil()], "b": [_pil()], "y": [0]}, {"a": Image(), "b": Image(), "y": ClassLabel(names=["c"])})
    assert list(load_image_dataset(ds, image_column="b").features) == ["image", "label"]


def test_missing_local_path_and_unknown_split(tmp_path: Path, tiny_folder: Path):
    with pytest.raises(DataError, match="not a directory"):
        load_image_dataset(tmp_path / "does-not-exist")
    with pytest.raises(DataError, match="split 'test'"):
        load_image_dataset(tiny_folder, split="test")


def test_saved_and_parquet_folders(tmp_path: Path, tiny_folder: Path):
    source = load_image_dataset(tiny_folder).rename_columns({"image": "scan", "label": "grade"})
    saved = tmp_path / "saved"
    DatasetDict({"train": source, "test": source.select([0])}).save_to_disk(str(saved))
    assert len(load_image_dataset(saved, split="test")) == 1
    with pytest.raises(DataError, match="no split 'validation'"):
        load_image_dataset(saved, split="validation")
    parquet = tmp_path / "repo" / "data"
    parquet.mkdir(parents=True)
    source.to_parquet(str(parquet / "train-00000.parquet"))
    out = load_image_dataset(tmp_path / "repo")
    assert list(out.features) == ["image", "label"] and len(out) == 9


def test_single_class_folder_keeps_its_label(make_imagefolder):
    ds = load_image_dataset(make_imagefolder({"only": [("L", (10, 10))] * 2}, name="one"))
    assert ds.features["label"].names == ["only"]


def test_metadata_file_keeps_folder_labels_beside_its_columns(make_imagefolder):
    folder = make_imagefolder({"a": [("L", (10, 10))] * 2, "b": [("RGB", (10, 10))]}, name="meta")
    # b/000.png has no row: its metadata columns are None; a row for a missing file is ignored.
    (folder / "metadata.csv").write_text("file_name,sex,age\na/001.png,F,40\na/000.png,M,71\ngone/x.png,F,1\n")
    plain = load_image_dataset(folder)
    assert list(plain.features) == ["image", "label"] and plain.features["label"].names == ["a", "b"]
    ds = load_image_dataset(folder, keep_metadata=True)
    assert list(ds.features) == ["image", "label", "sex", "age"]
    rows = sorted(zip(ds["label"], ds["sex"], ds["age"], strict=True), key=str)
    assert rows == sorted([(0, "M", 71), (0, "F", 40), (1, None, None)], key=str)


def test_metadata_file_without_file_name_or_with_a_label_column_is_refused(make_imagefolder):
    folder = make_imagefolder({"a": [("L", (10, 10))], "b": [("L", (10, 10))]}, name="badmeta")
    (folder / "metadata.csv").write_text("image,sex\na/000.png,F\n")
    with pytest.raises(DataError, match="file_name"):
        load_image_dataset(folder)
    (folder / "metadata.csv").write_text("file_name,label\na/000.png,b\n")
    with pytest.raises(DataError, match="label"):
        load_image_dataset(folder)


def test_imagefolder_with_split_folders(make_imagefolder, tmp_path: Path):
    spec = {"a": [("L", (10, 10))] * 2, "b": [("L", (10, 10))] * 2}
    make_imagefolder(spec, name="train", root=tmp_path / "splitted")
    make_imagefolder({"a": [("L", (10, 10))], "b": [("L", (10, 10))]}, name="test", root=tmp_path / "splitted")
    assert len(load_image_dataset(tmp_path / "splitted", split="test")) == 2
    assert len(load_image_dataset(tmp_path / "splitted", split="train")) == 4


def test_hub_dataset_by_name(hub_env, tmp_path: Path):
    from huggingface_hub import create_repo, upload_file

    repo_id = hub_env.new_repo_id("images")
    ds = _dataset(
        {"picture": [_pil("L", (10, 10), v) for v in (0, 90, 180)], "dx": [0, 1, 1]},
        {"picture": Image(), "dx": ClassLabel(names=["no", "yes"])},
    )
    # A parquet shard uploaded as a plain file (what a Hub dataset repo holds); the features
    # travel in its schema metadata. (Dataset.push_to_hub relies on LFS pre-upload semantics.)
    ds.to_parquet(str(tmp_path / "train.parquet"))
    create_repo(repo_id, repo_type="dataset")
    upload_file(
        path_or_fileobj=str(tmp_path / "train.parquet"),
        path_in_repo="data/train-00000-of-00001.parquet",
        repo_id=repo_id,
        repo_type="dataset",
    )
    out = load_image_dataset(repo_id, cache_dir=tmp_path / "hf")
    assert list(out.features) == ["image", "label"] and out["label"] == [0, 1, 1]
    arrays = prepare_arrays(out, 8, cache_dir=tmp_path / "cache")
    assert arrays.images.shape == (3, 8, 8, 3) and arrays.images[1].min() == 90


# -- pixels ----------------------------------------------------------------------------------------


def test_prepare_arrays_shapes_and_dtypes(tiny_folder: Path, tmp_path: Path):
    arrays = prepare_arrays(load_image_dataset(tiny_folder), 16, cache_dir=tmp_path)
    assert isinstance(arrays, ImageArrays)
    assert arrays.images.shape == (9, 16, 16, 3) and arrays.images.dtype == np.uint8
    assert arrays.labels.dtype == np.int64 and arrays.labels.tolist() == [0, 0, 0, 1, 1, 1, 1, 2, 2]
    assert arrays.class_names == ["benign", "malignant", "normal"]
    assert arrays.class_counts() == {"benign": 3, "malignant": 4, "normal": 2}
    assert arrays.images_of("normal").shape == (2, 16, 16, 3)
    gray = arrays.images[0]  # an "L" image: the three channels are copies
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    assert arrays.images[7].max() > 200  # the 16-bit image was rescaled, not clipped to white
    assert len(np.unique(arrays.images[7])) > 10


def test_resize_shorter_side_then_centre_crop():
    # 30 x 10: black margins, white centre (a little wider than the crop, for the filter support)
    # -> the centre crop is all white; squashing the whole image would bring black in.
    array = np.zeros((10, 30), dtype=np.uint8)
    array[:, 7:23] = 255
    out = to_rgb_square(PILImage.fromarray(array), 5)
    assert out.shape == (5, 5, 3) and out.min() >= 250
    tall = to_rgb_square(PILImage.fromarray(array.T.copy()), 5)
    assert tall.min() >= 250


def test_second_call_reads_the_cache(tiny_folder: Path, tmp_path: Path, monkeypatch):
    ds = load_image_dataset(tiny_folder)
    first = prepare_arrays(ds, 12, cache_dir=tmp_path)
    cached = list((tmp_path / "arrays").glob("*.arrow"))
    assert len(cached) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("images were decoded again")

    monkeypatch.setattr(loading, "to_rgb_square", no_decoding)
    again = prepare_arrays(load_image_dataset(tiny_folder), 12, cache_dir=tmp_path)
    np.testing.assert_array_equal(first.images, again.images)
    np.testing.assert_array_equal(first.labels, again.labels)
    with pytest.raises(AssertionError, match="decoded again"):  # another size is another cache entry
        prepare_arrays(ds, 10, cache_dir=tmp_path)


def test_in_memory_dataset_is_cached_too(tmp_path: Path, monkeypatch):
    ds = _dataset({"img": [_pil("L", (10, 10), 7)], "y": [0]}, {"img": Image(), "y": ClassLabel(names=["a"])})
    prepare_arrays(ds, 8, cache_dir=tmp_path)
    monkeypatch.setattr(loading, "to_rgb_square", lambda *a: pytest.fail("decoded again"))
    assert prepare_arrays(ds, 8, cache_dir=tmp_path).images[0, 0, 0, 0] == 7


def test_default_cache_dir_follows_env(tmp_path: Path, monkeypatch, tiny_folder: Path):
    monkeypatch.setenv("SGPS_CACHE_DIR", str(tmp_path / "elsewhere"))
    prepare_arrays(load_image_dataset(tiny_folder), 8)
    assert list((tmp_path / "elsewhere" / "arrays").glob("*.arrow"))


def test_bad_image_size(tiny_folder: Path):
    with pytest.raises(DataError, match="image_size"):
        prepare_arrays(load_image_dataset(tiny_folder), 0)


def test_load_task_arrays_by_dir_and_name(tiny_folder: Path, tmp_path: Path):
    by_dir = load_task_arrays(tiny_folder, 8, cache_dir=tmp_path)
    by_name = load_task_arrays("task", 8, data_dir=tiny_folder.parent, cache_dir=tmp_path)
    np.testing.assert_array_equal(by_dir.images, by_name.images)
    with pytest.raises(DataError, match="does not exist"):
        load_task_arrays("no-such-task", 8, data_dir=tiny_folder.parent)


def test_matches_the_inference_image_processor(tiny_folder: Path, tmp_path: Path):
    """Training pixels == what SGPSImageProcessor feeds the model for the same file (before normalising)."""
    processing = pytest.importorskip("sgps_hf.models.sgps.image_processing_sgps")
    processor = processing.SGPSImageProcessor(image_size=16, interpolation="bilinear")
    arrays = prepare_arrays(load_image_dataset(tiny_folder), 16, cache_dir=tmp_path)
    files = sorted(tiny_folder.glob("*/*.png"))
    expected = processor.preprocess([str(f) for f in files])["pixel_values"]
    ours = processor.normalize_uint8(__import__("torch").from_numpy(arrays.images).permute(0, 3, 1, 2))
    assert (ours - expected).abs().max() < 1e-4
