"""The seg data layer on the real ../shared/data-seg (counts from its manifest), splits and the episodic sampler."""

import json
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset
from datasets import Image as ImageFeature

from sgps_hf.data.segmentation import SegEpisodeSampler, from_hf_dataset, load_seg_dataset, seg_splits, task_arrays
from sgps_hf.errors import DataError

SEG_DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data-seg"
needs_data = pytest.mark.skipif(not SEG_DATA.is_dir(), reason="../shared/data-seg is not available")


def test_splits_are_disjoint_whole_tasks_with_at_least_two_held_out():
    splits = seg_splits()
    tasks = [t for names in splits.values() for t in names]
    assert len(tasks) == len(set(tasks))
    assert len(splits["held_out"]) >= 2 and splits["meta_val"] and splits["meta_train"]


@pytest.mark.integration
@needs_data
def test_real_data_matches_manifest_one_binary_task_per_label():
    manifest = json.loads((SEG_DATA / "manifest.json").read_text())["tasks"]
    ds = load_seg_dataset(SEG_DATA)
    assert isinstance(ds.features["image"], ImageFeature) and isinstance(ds.features["mask"], ImageFeature)
    assert set(ds.unique("task")) == set(manifest) == {t for names in seg_splits().values() for t in names}
    expected_rows = sum(info["pairs"] * len(info["labels"]) for info in manifest.values())
    assert len(ds) == expected_rows
    assert set(ds.unique("binary_task")) == {
        f"{t}/{label}" for t, info in manifest.items() for label in info["labels"]
    }
    row = ds[0]
    assert row["image"].size == row["mask"].size == (128, 128)
    for task, info in manifest.items():
        for label, count in info["empty_masks"].items():
            fg = [
                f
                for t, lab, f in zip(ds["task"], ds["label"], ds["foreground"], strict=False)
                if t == task and lab == label
            ]
            assert sum(f == 0 for f in fg) == count

    held_out = task_arrays(ds, seg_splits()["held_out"])
    assert {name.split("/")[0] for name in held_out} == set(seg_splits()["held_out"])
    for arrays in held_out.values():
        assert arrays.images.shape[1:] == (128, 128, 3) and arrays.masks.any(axis=(1, 2)).all()


def test_episode_sampler_is_seeded_and_respects_k():
    sampler = SegEpisodeSampler({"a": 20, "b": 30}, k_range=(1, 8), n_query=4, seed=3)
    episodes = [sampler.episode(i) for i in range(200)]
    assert episodes == [sampler.episode(i) for i in range(200)]
    assert {e.k for e in episodes} == set(range(1, 9)) and {e.task for e in episodes} == {"a", "b"}
    for e in episodes:
        assert len(e.query) == 4 and not set(e.support) & set(e.query)
    assert SegEpisodeSampler({"a": 20, "b": 30}, seed=4).episode(0) != sampler.episode(0) or SegEpisodeSampler(
        {"a": 20, "b": 30}, seed=4
    ).episode(1) != sampler.episode(1)
    fixed = sampler.fixed("b", 5, 3)
    assert [e.k for e in fixed] == [5, 5, 5] and fixed == sampler.fixed("b", 5, 3)
    with pytest.raises(DataError, match="too small"):
        SegEpisodeSampler({"tiny": 5}, k_range=(1, 8), n_query=4)


def test_any_dataset_with_image_and_mask_columns():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (16, 16, 3), dtype=np.uint8) for _ in range(10)]
    label_maps = [np.where(rng.random((16, 16)) > 0.5, 2, 0).astype(np.uint8) for _ in range(10)]
    source = (
        Dataset.from_dict({"img": images, "seg": label_maps})
        .cast_column("img", ImageFeature())
        .cast_column("seg", ImageFeature())
    )
    ds = from_hf_dataset(source, image_column="img", mask_column="seg", task_name="toy", label="organ")
    assert ds.unique("binary_task") == ["toy/organ"] and isinstance(ds.features["mask"], ImageFeature)
    arrays = task_arrays(ds, ["toy"], image_size=16)["toy/organ"]
    np.testing.assert_array_equal(arrays.masks[3], label_maps[3] == 2)
    with pytest.raises(DataError, match="Column"):
        from_hf_dataset(source, image_column="image")
