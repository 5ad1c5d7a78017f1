"""The real shared data: every task loads, the splits are sound, every class has a description."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sgps_testing import load_script

from sgps_hf.data import (
    ClassPool,
    EpisodeSampler,
    available_description_tasks,
    list_tasks,
    load_descriptions,
    load_splits,
    make_splits,
)

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def test_registry_lists_every_manifest_task(real_manifest: dict, real_data_dir: Path):
    tasks = list_tasks(real_data_dir)
    assert sorted(t.name for t in tasks) == sorted(real_manifest["tasks"])
    assert {t.family for t in tasks} == {entry["family"] for entry in real_manifest["tasks"].values()}
    assert {t.name: t.class_counts for t in tasks} == {n: e["classes"] for n, e in real_manifest["tasks"].items()}


def test_pad_ufes_metadata_loads_beside_folder_labels(real_data_dir: Path, real_manifest: dict):
    from sgps_hf.data import load_image_dataset

    ds = load_image_dataset(real_data_dir / "derm-smartphone-pad-ufes-20", keep_metadata=True)
    assert {"patient_id", "age", "sex", "fitzpatrick", "body_region", "biopsied"} <= set(ds.column_names)
    names = ds.features["label"].names
    counts = {name: ds["label"].count(i) for i, name in enumerate(names)}
    assert counts == real_manifest["tasks"]["derm-smartphone-pad-ufes-20"]["classes"]
    assert all(pid is not None for pid in ds["patient_id"]), "every image has a metadata row"
    assert {"MALE", "FEMALE"} <= set(ds["sex"])


def test_every_task_loads_with_manifest_counts(real_arrays: dict, real_manifest: dict):
    assert set(real_arrays) == set(real_manifest["tasks"])
    for name, arrays in real_arrays.items():
        assert arrays.class_counts() == real_manifest["tasks"][name]["classes"], name
        assert arrays.images.shape[1:] == (32, 32, 3) and arrays.images.dtype == np.uint8
        assert arrays.images.std() > 1, f"{name}: images look blank"


def test_splits_disjoint_and_cover_every_class(real_manifest: dict):
    splits = load_splits()
    seen: dict[tuple[str, str], str] = {}
    for task, classes in splits.meta_train.items():
        seen.update({(task, c): "meta_train" for c in classes})
    for task, classes in splits.meta_val.items():
        for c in classes:
            assert (task, c) not in seen, f"{task}/{c} in meta_train and meta_val"
            seen[(task, c)] = "meta_val"
    for task in splits.held_out_tasks:
        assert task not in splits.meta_train and task not in splits.meta_val
        for c in real_manifest["tasks"][task]["classes"]:
            assert (task, c) not in seen
            seen[(task, c)] = "held_out"
    expected = {(t, c) for t, entry in real_manifest["tasks"].items() for c in entry["classes"]}
    assert set(seen) == expected  # every class exactly once (a dict cannot hold a key twice)
    assert all(splits.split_of(t, c) == s for (t, c), s in seen.items())
    family_of = {t: entry["family"] for t, entry in real_manifest["tasks"].items()}
    held_families = [family_of[t] for t in splits.held_out_tasks]
    assert len(set(held_families)) == len(held_families)  # at most one held-out task per family
    for family in set(family_of.values()):
        tasks = [t for t, f in family_of.items() if f == family]
        if len(tasks) > 1:  # a family with several tasks keeps one whole task out of training
            assert family in held_families and any(t in splits.meta_train for t in tasks), family
    # selection happens on whole tasks of several families, never on the held-out ones
    assert len({family_of[t] for t in splits.meta_val_tasks}) >= 5
    assert not set(splits.meta_val_tasks) & set(splits.meta_train)


def test_every_meta_val_task_can_form_a_multi_way_episode():
    splits = load_splits()
    assert all(len(classes) >= 3 for classes in splits.classes_of("meta_val").values())


def test_splits_yaml_is_what_make_splits_regenerates(real_data_dir: Path, tmp_path: Path):
    script = load_script("make_splits")
    out = tmp_path / "splits.yaml"
    assert script.main(["--data-dir", str(real_data_dir), "--output", str(out)]) == 0
    packaged = REPO / "sgps_hf" / "data" / "configs" / "splits.yaml"
    assert out.read_text() == packaged.read_text()
    assert make_splits(list_tasks(real_data_dir)).to_yaml() == packaged.read_text()


def test_every_class_has_a_description(real_manifest: dict):
    missing_files = sorted(set(real_manifest["tasks"]) - set(available_description_tasks()))
    missing_classes = []
    for task, entry in real_manifest["tasks"].items():
        if task in missing_files:
            continue
        texts = load_descriptions(task)
        missing_classes += [f"{task}/{c}" for c in entry["classes"] if c not in texts]
    assert not missing_files and not missing_classes, (
        f"tasks without a description file: {missing_files}; classes without a text: {missing_classes}"
    )


def test_episodes_from_every_meta_train_task(real_arrays: dict):
    splits = load_splits()
    pools = [
        ClassPool(task, name, arrays.images_of(name), name)
        for task, classes in splits.classes_of("meta_train").items()
        for arrays in [real_arrays[task]]
        for name in classes
    ]
    sampler = EpisodeSampler(pools, n_way=5, k_shot=(1, 5), q_query=5, seed=0)
    assert set(sampler.tasks) == set(splits.classes_of("meta_train"))
    episodes = [sampler.episode(i) for i in range(200)]
    assert len({e.task for e in episodes}) >= 15
    assert all(e.support.shape[1:] == (3, 32, 32) for e in episodes)


def test_cli_summary_lists_every_task(real_data_dir: Path, real_manifest: dict):
    script = Path(sys.executable).parent / "sgps"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "sgps_hf.cli"]
    result = subprocess.run(
        [*command, "data", "summary", "--data-dir", str(real_data_dir)],
        check=True,
        capture_output=True,
        text=True,
        timeout=180,
    )
    rows = [line.split()[0] for line in result.stdout.splitlines()]
    assert all(task in rows for task in real_manifest["tasks"])
    n_images = sum(sum(entry["classes"].values()) for entry in real_manifest["tasks"].values())
    assert f"total: {len(real_manifest['tasks'])} tasks" in result.stdout and str(n_images) in result.stdout
    assert result.stdout.count("held_out") == len(load_splits().held_out_tasks)
