"""Which classes a run trains and calibrates on (``meta_val_into_train``, on the real shared data) and how the episodic
stage weights the meta-train tasks (``episodic_balance``): the real registry and a manifest."""

from __future__ import annotations

import json
from collections import Counter, defaultdict

import numpy as np
import pytest

from sgps_hf.data import list_tasks
from sgps_hf.data.episodes import ClassPool, EpisodeSampler
from sgps_hf.data.splits import load_splits
from sgps_hf.training.config import TrainingConfig
from sgps_hf.training.pools import episode_task_weights, training_pools


def pool(task: str, index: int = 0) -> ClassPool:
    return ClassPool(task, f"class-{index}", np.zeros((3, 8, 8, 3), np.uint8), "text")


def write_manifest(folder, families: dict[str, str]) -> None:
    tasks = {task: {"classes": {"x": 3}, "family": family} for task, family in families.items()}
    (folder / "manifest.json").write_text(json.dumps({"tasks": tasks}), encoding="utf-8")


def test_task_balance_leaves_every_task_equally_likely():
    assert episode_task_weights([pool("a"), pool("b")], TrainingConfig()) is None


def test_family_balance_makes_every_meta_train_family_equally_likely_on_the_shared_data():
    splits = load_splits()
    pools = [pool(task, i) for task, classes in splits.meta_train.items() for i in range(len(classes))]
    weights = episode_task_weights(pools, TrainingConfig(episodic_balance="family"))
    family = {info.name: info.family for info in list_tasks()}
    assert set(weights) == {p.task for p in pools}
    by_family = defaultdict(list)
    for task, weight in weights.items():
        by_family[family[task]].append(weight)
    assert len(by_family) >= 4  # pathology, radiology, hematology and the single-task families
    totals = {name: sum(values) for name, values in by_family.items()}
    assert max(totals.values()) == pytest.approx(min(totals.values()))
    assert all(len(set(values)) == 1 for values in by_family.values())  # equal within a family


def test_the_sampler_draws_families_equally_and_unknown_tasks_count_as_families(tmp_path):
    write_manifest(tmp_path, {"p1": "pathology", "p2": "pathology", "p3": "pathology", "d1": "dermatology"})
    pools = [pool(task, i) for task in ("p1", "p2", "p3", "d1", "extra") for i in range(2)]
    config = TrainingConfig(data_dir=str(tmp_path), episodic_balance="family", n_way=2)
    weights = episode_task_weights(pools, config)
    assert weights == {
        "p1": pytest.approx(1 / 3),
        "p2": pytest.approx(1 / 3),
        "p3": pytest.approx(1 / 3),
        "d1": 1.0,
        "extra": 1.0,
    }
    sampler = EpisodeSampler(pools, n_way=2, k_shot=1, q_query=1, seed=0, task_weights=weights)
    drawn = Counter(sampler.episode(i).task for i in range(3000))
    pathology = drawn["p1"] + drawn["p2"] + drawn["p3"]
    for count in (pathology, drawn["d1"], drawn["extra"]):
        assert count == pytest.approx(1000, rel=0.1)


def test_train_sources_datasets_are_each_a_family_of_their_own():
    config = TrainingConfig(train_sources=["some/dataset"], episodic_balance="family")
    assert episode_task_weights([pool("x"), pool("y"), pool("y", 1)], config) == {"x": 1.0, "y": 1.0}


def test_meta_val_tasks_moved_into_training_leave_calibration_for_the_other_tasks():
    splits = load_splits()
    moved = splits.meta_val_tasks[:2]
    train, val, summary = training_pools(TrainingConfig(meta_val_into_train=moved), image_size=32)
    plain_train, plain_val, _ = training_pools(TrainingConfig(), image_size=32)
    train_tasks, val_tasks = {p.task for p in train}, {p.task for p in val}
    assert train_tasks == {p.task for p in plain_train} | set(moved)
    assert val_tasks == set(splits.meta_val_tasks) - set(moved)
    assert len(train) + len(val) == len(plain_train) + len(plain_val)  # every class once, none lost or doubled
    assert not (train_tasks | val_tasks) & set(splits.held_out_tasks)
    assert all(task in summary["description"] for task in moved)
    assert summary["num_train_classes"] == len(train) and summary["num_val_classes"] == len(val)


@pytest.mark.parametrize(
    ("moved", "message"),
    [(["radiology-brain-tumor-mri"], "not meta-val tasks"), (None, "at least one meta-val task")],
)
def test_meta_val_into_train_refuses_held_out_tasks_and_an_empty_calibration(moved, message):
    config = TrainingConfig(meta_val_into_train=moved or load_splits().meta_val_tasks)
    with pytest.raises(ValueError, match=message):
        training_pools(config, image_size=32)


def test_meta_val_into_train_is_refused_beside_train_sources():
    with pytest.raises(ValueError, match="train_sources"):
        TrainingConfig(train_sources=["some/dataset"], meta_val_into_train=["dental-oral-lesions-teeth"])
