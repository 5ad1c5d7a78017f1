"""Meta-learning splits: the rule, determinism, YAML round trip, lookups, the packaged file."""

from __future__ import annotations

from pathlib import Path

import pytest

from sgps_hf.data import DEFAULT_HELD_OUT_TASKS, DEFAULT_META_VAL_TASKS, TaskInfo, load_splits, make_splits
from sgps_hf.errors import DataError


def _task(name: str, n_classes: int) -> TaskInfo:
    return TaskInfo(name=name, family="f", modality="m", class_counts={f"c{i:02d}": 20 for i in range(n_classes)})


TASKS = [_task("big", 141), _task("five", 5), _task("val", 4), _task("two", 2), _task("held", 3)]


def test_rule_and_coverage():
    splits = make_splits(TASKS, held_out_tasks=["held"], meta_val_tasks=["val"])
    assert splits.held_out_tasks == ["held"] and splits.held_out_classes == {"held": ["c00", "c01", "c02"]}
    assert splits.meta_val == {"val": ["c00", "c01", "c02", "c03"]} and splits.meta_val_tasks == ["val"]
    assert splits.meta_train == {t.name: t.class_names for t in TASKS if t.name in ("big", "five", "two")}


def test_deterministic_and_order_independent():
    a = make_splits(TASKS, held_out_tasks=["held"], meta_val_tasks=["val"])
    assert make_splits(list(reversed(TASKS)), held_out_tasks=["held"], meta_val_tasks=["val"]).to_yaml() == a.to_yaml()
    more = make_splits([*TASKS, _task("new", 9)], held_out_tasks=["held"], meta_val_tasks=["val"])
    assert more.meta_train["big"] == a.meta_train["big"] and more.meta_train["new"] == _task("new", 9).class_names


def test_yaml_round_trip_and_split_of(tmp_path: Path):
    splits = make_splits(TASKS, held_out_tasks=["held"], meta_val_tasks=["val", "five"])
    path = tmp_path / "splits.yaml"
    path.write_text(splits.to_yaml())
    loaded = load_splits(path)
    assert loaded == splits
    assert loaded.split_of("held", "c00") == "held_out"
    assert loaded.split_of("five", "c04") == "meta_val"
    assert loaded.split_of("two", "c01") == "meta_train"
    with pytest.raises(DataError, match="not part of the splits"):
        loaded.split_of("unknown-task", "c00")
    with pytest.raises(DataError, match="Class 'zzz'"):
        loaded.split_of("two", "zzz")
    assert set(loaded.classes_of("meta_val")) == {"val", "five"}
    assert loaded.classes_of("held_out") == {"held": ["c00", "c01", "c02"]}
    with pytest.raises(DataError, match="Unknown split"):
        loaded.classes_of("test")


def test_a_task_cannot_be_both_held_out_and_meta_val():
    with pytest.raises(DataError, match="both as held-out and as meta-val"):
        make_splits(TASKS, held_out_tasks=["held"], meta_val_tasks=["held"])


def test_unknown_held_out_task():
    with pytest.raises(DataError, match="Held-out tasks .* not among the available tasks"):
        make_splits(TASKS, held_out_tasks=["nope"], meta_val_tasks=[])
    with pytest.raises(DataError, match="Meta-val tasks .* not among the available tasks"):
        make_splits(TASKS, held_out_tasks=[], meta_val_tasks=["nope"])


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("meta_train: {}\n", "malformed"),
        ("held_out_tasks: [a]\nmeta_train: {a: [x]}\n", "also appear"),
        ("held_out_tasks: []\nmeta_train: {a: [x]}\nmeta_val: {a: [x]}\n", "both meta_train and meta_val"),
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
    assert splits.held_out_tasks == sorted(DEFAULT_HELD_OUT_TASKS)
    assert splits.meta_val_tasks == sorted(DEFAULT_META_VAL_TASKS)
