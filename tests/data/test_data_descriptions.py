"""Packaged clinical descriptions and user description files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sgps_hf.data import available_description_tasks, class_description, load_description_file, load_descriptions
from sgps_hf.errors import DataError

PACKAGED = "derm-clinical-dermnet"  # the first description file that landed


@pytest.fixture
def packaged_task() -> str:
    if PACKAGED not in available_description_tasks():
        pytest.skip(f"no packaged descriptions for {PACKAGED} yet")
    return PACKAGED


def test_packaged_descriptions(packaged_task: str):
    texts = load_descriptions(packaged_task)
    assert texts and all(isinstance(k, str) and isinstance(v, str) and v.strip() for k, v in texts.items())
    texts.clear()  # a copy: the cache is untouched
    assert load_descriptions(packaged_task)
    name = next(iter(load_descriptions(packaged_task)))
    assert class_description(packaged_task, name) == load_descriptions(packaged_task)[name]


def test_missing_task_or_class():
    with pytest.raises(DataError, match="No packaged descriptions for task 'no-such-task'"):
        load_descriptions("no-such-task")
    with pytest.raises(DataError, match="Invalid task name"):
        load_descriptions("../escape")
    assert class_description("no-such-task", "x") is None
    assert class_description("no-such-task", "x", default="fallback") == "fallback"


def test_user_file_plain_and_packaged_layout(tmp_path: Path):
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps({"pneumonia": "Lobar consolidation.", "normal": "Clear lungs."}))
    assert load_description_file(plain) == {"pneumonia": "Lobar consolidation.", "normal": "Clear lungs."}
    nested = tmp_path / "nested.json"
    nested.write_text(json.dumps({"task": "t", "modality": "m", "classes": {"a": "text a"}}))
    assert load_description_file(nested) == {"a": "text a"}


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("[1, 2]", "expected a JSON object"),
        ('{"a": 3}', "bad entries: 'a'"),
        ('{"a": "  "}', "non-empty string"),
        ("{}", "empty"),
        ("{not json", "not valid JSON"),
    ],
)
def test_user_file_errors(tmp_path: Path, content: str, match: str):
    path = tmp_path / "d.json"
    path.write_text(content)
    with pytest.raises(DataError, match=match):
        load_description_file(path)


def test_user_file_missing(tmp_path: Path):
    with pytest.raises(DataError, match="does not exist"):
        load_description_file(tmp_path / "none.json")
