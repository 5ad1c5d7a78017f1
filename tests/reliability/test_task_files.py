"""Task files: bounded, literal and strict (issue 16). Every case fails with a documented InvalidTaskError."""

from __future__ import annotations

import json
import os

import pytest

from sgps_hf import InvalidTaskError, TaskSpec
from sgps_hf.task_file import MAX_TASK_FILE_BYTES, MAX_TASK_NESTING

pytestmark = pytest.mark.timeout(60)  # a hang (FIFO) or a parse of minutes fails the test


def write(tmp_path, text, name="task.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_devices_are_refused():
    with pytest.raises(InvalidTaskError, match="not a regular file"):
        TaskSpec.from_file("/dev/zero")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_is_refused_without_waiting(tmp_path):
    os.mkfifo(tmp_path / "task.yaml")
    with pytest.raises(InvalidTaskError, match="not a regular file"):
        TaskSpec.from_file(tmp_path / "task.yaml")


def test_folders_are_refused(tmp_path):
    with pytest.raises(InvalidTaskError, match="not a regular file"):
        TaskSpec.from_file(tmp_path)


def test_oversized_files_are_refused_before_parsing(tmp_path):
    path = tmp_path / "task.yaml"
    with open(path, "wb") as stream:
        stream.write(b"classes:\n  - name: a\n    description: '")
        stream.write(b"x" * MAX_TASK_FILE_BYTES)
        stream.write(b"'\n")
    with pytest.raises(InvalidTaskError, match="larger than the limit"):
        TaskSpec.from_file(path)


def test_an_alias_bomb_in_a_value_is_refused(tmp_path):
    lines = ["classes:", "  - name: a", "    description: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"  - name: b{i}\n    description: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    with pytest.raises(InvalidTaskError, match="aliases may only repeat a text"):
        TaskSpec.from_file(write(tmp_path, "\n".join(lines)))


def test_aliases_of_texts_still_work(tmp_path):
    text = "classes:\n  - {name: a, description: &d 'shared text'}\n  - {name: b, description: *d}\n"
    assert TaskSpec.from_file(write(tmp_path, text)).descriptions == ["shared text", "shared text"]


@pytest.mark.parametrize("as_json", [False, True])
def test_deep_nesting_is_refused(tmp_path, as_json):
    depth = 100_000
    text = '{"classes": ' + "[" * depth + "]" * depth + "}" if as_json else "classes: " + "[" * depth + "]" * depth
    with pytest.raises(InvalidTaskError, match="nested"):
        TaskSpec.from_file(write(tmp_path, text))
    shallow = "classes: " + "[" * (MAX_TASK_NESTING - 1) + "]" * (MAX_TASK_NESTING - 1)
    with pytest.raises(InvalidTaskError, match="Class #1 must be a mapping"):  # within the limit: the ordinary check
        TaskSpec.from_file(write(tmp_path, shallow))


def test_class_names_are_the_text_the_user_wrote(tmp_path):
    text = "name: 2024\nclasses:\n" + "".join(
        f"  - {{name: {n}, description: {n}}}\n" for n in ["yes", "no", "null", "0123", "1e3", "~", "on"]
    )
    task = TaskSpec.from_file(write(tmp_path, text))
    assert task.class_names == ["yes", "no", "null", "0123", "1e3", "~", "on"]
    assert task.descriptions == task.class_names and task.name == "2024"


def test_json_booleans_as_names_are_refused(tmp_path):
    text = json.dumps({"classes": [{"name": True, "description": "x"}, {"name": "b", "description": "y"}]})
    with pytest.raises(InvalidTaskError, match="name of class #1 must be text.*quotes"):
        TaskSpec.from_file(write(tmp_path, text, "task.json"))


@pytest.mark.parametrize(
    "text, name",
    [
        ("classes:\n  - {name: a, description: x, description: y}\n  - {name: b, description: y}\n", "task.yaml"),
        (
            "name: one\nname: two\nclasses:\n  - {name: a, description: x}\n  - {name: b, description: y}\n",
            "task.yaml",
        ),
        (
            '{"classes": [{"name": "a", "name": "c", "description": "x"}, {"name": "b", "description": "y"}]}',
            "task.json",
        ),
    ],
)
def test_duplicate_keys_are_refused(tmp_path, text, name):
    with pytest.raises(InvalidTaskError, match="appears twice"):
        TaskSpec.from_file(write(tmp_path, text, name))


def test_merge_keys_and_tags_do_not_smuggle_values(tmp_path):
    text = "base: &b {description: x}\nclasses:\n  - {name: a, <<: *b}\n  - {name: b, description: y}\n"
    with pytest.raises(InvalidTaskError):
        TaskSpec.from_file(write(tmp_path, text))
    text = "classes:\n  - {name: !!int 5, description: x}\n  - {name: !!bool yes, description: y}\n"
    with pytest.raises(InvalidTaskError, match="must be text"):
        TaskSpec.from_file(write(tmp_path, text))
