"""Meta-learning splits: the rule, determinism, YAML round trip, lookups, the packaged file."""

from __future__ import annotations

from pathlib import Path

import pytest

from sgps_hf.data import DEFAULT_HELD_OUT_TASKS, TaskInfo, load_splits, make_splits
from sgps_hf.errors import DataError


def _task(name: str, n_classes: int) -> TaskInfo:
    return TaskInfo(name=name, family="f", modality="m", class_counts={f"c{i:02d}": 20 for i in range(n_classes)})


TASKS = [_task("big", 141), _task("five", 5), _task("seven", 7), _task("four", 4), _task("two", 2), _task("held", 3)]


def test_rule_and_coverage():
    splits = make_splits(TASKS, seed=0, held_out_tasks=["held"])
    assert splits.held_out_tasks == ["held"] and splits.held_out_classes == {"held": ["c00", "c01", "c02"]}
    assert {t: len(c) for t, c in splits.meta_val.items()} == {"big": 28, "five": 2, "four": 0, "seven": 2, "two": 0}
    for task in TASKS:
        if task.name == "held":
            assert task.name not in splits.meta_train and task.name not in splits.meta_val
            continue
        train, val = set(splits.meta_train[task.name]), set(splits.meta_val[task.name])
        assert not train & val and train | val == set(task.class_names)


def test_deterministic_seeded_and_stable_when_tasks_are_added():
    a = make_splits(TASKS, seed=0, held_out_tasks=["held"])
    assert make_splits(list(reversed(TASKS)), seed=0, held_out_tasks=["held"]).to_yaml() == a.to_yaml()
    assert make_splits(TASKS, seed=1, held_out_tasks=["held"]).meta_val["big"] != a.meta_val["big"]
    more = make_splits([*TASKS, _task("new", 9)], seed=0, held_out_tasks=["held"])
    assert more.meta_val["big"] == a.meta_val["big"]


def test_yaml_round_trip_and_split_of(tmp_path: Path):
    splits = make_splits(TASKS, seed=3, held_out_tasks=["held"])
    path = tmp_path / "splits.yaml"
    path.write_text(splits.to_yaml())
    loaded = load_splits(path)
    assert loaded == splits
    assert loaded.split_of("held", "c00") == "held_out"
    assert loaded.split_of("five", loaded.meta_val["five"][0]) == "meta_val"
    assert loaded.split_of("two", "c01") == "meta_train"
    with pytest.raises(DataError, match="not part of the splits"):
        loaded.split_of("unknown-task", "c00")
    with pytest.raises(DataError, match="Class 'zzz'"):
        loaded.split_of("two", "zzz")
    assert set(loaded.classes_of("meta_val")) == {"big", "five", "seven"}  # empty slices left out
    assert loaded.classes_of("held_out") == {"held": ["c00", "c01", "c02"]}
    with pytest.raises(DataError, match="Unknown split"):
        loaded.classes_of("test")


def test_unknown_held_out_task():
    with pytest.raises(DataError, match="not among the available tasks"):
        make_splits(TASKS, held_out_tasks=["nope"])


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("seed: 0\n", "malformed"),
        ("held_out_tasks: [a]\nseed: 0\nmeta_train: {a: [x]}\n", "also appear"),
        ("held_out_tasks: []\nseed: 0\nmeta_train: {a: [x]}\nmeta_val: {a: [x]}\n", "both meta_train and meta_val"),
        ("[unclosed", "not valid YAML"),
    ],
)
def test_bad_files(tmp_path: Path, text: str, match: str):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(DataError, match=match):
        load_splits(path)
    with pytest.raises(DataError, match="not found"):
        load_splits(tmp_path / "missing.yaml")


def test_packaged_splits():
    splits = load_splits()
    assert splits.seed == 0
    assert (
        splits.held_out_tasks
        == sorted(DEFAULT_HELD_OUT_TASKS)
        == [
            "cytology-cervical-lbc",
            "derm-smartphone-pad-ufes-20",
            "hematology-wbc-tecom",
            "pathology-prostate-gleason",
            "radiology-brain-tumor-mri",
        ]
    )
