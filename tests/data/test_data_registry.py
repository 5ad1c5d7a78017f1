"""Task registry: where the data lives and what each task holds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sgps_hf.data import TaskInfo, default_data_dir, get_task, list_tasks, registry
from sgps_hf.errors import DataError


def test_env_var_wins(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("SGPS_DATA_DIR", str(tmp_path))
    assert default_data_dir() == tmp_path.resolve()


def test_env_var_pointing_nowhere(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("SGPS_DATA_DIR", str(tmp_path / "missing"))
    with pytest.raises(DataError, match="SGPS_DATA_DIR"):
        default_data_dir()


def test_repo_relative_fallback_and_its_error(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("SGPS_DATA_DIR", raising=False)
    fake_module = tmp_path / "repo" / "sgps_hf" / "data" / "registry.py"
    monkeypatch.setattr(registry, "__file__", str(fake_module))
    with pytest.raises(DataError, match="Set the environment variable SGPS_DATA_DIR"):
        default_data_dir()
    (tmp_path / "shared" / "data").mkdir(parents=True)
    assert default_data_dir() == (tmp_path / "shared" / "data").resolve()


def test_manifest_is_read(tmp_path: Path):
    manifest = {
        "tasks": {
            "b-task": {
                "classes": {"x": 3, "y": 4},
                "family": "pathology",
                "modality": "H&E",
                "license": "CC0",
                "source": "s",
            },
            "a-task": {"classes": {"z": 1}, "family": "radiology", "modality": "CT"},
        }
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    tasks = list_tasks(tmp_path)
    assert [t.name for t in tasks] == ["a-task", "b-task"]
    b = tasks[1]
    assert (b.family, b.modality, b.license, b.class_counts) == ("pathology", "H&E", "CC0", {"x": 3, "y": 4})
    assert (b.num_classes, b.num_images, b.class_names) == (2, 7, ["x", "y"])
    assert tasks[0].license == "unknown"


def test_malformed_manifest(tmp_path: Path):
    (tmp_path / "manifest.json").write_text('{"tasks": {"t": {"family": "x"}}}')
    with pytest.raises(DataError, match="Malformed manifest"):
        list_tasks(tmp_path)


def test_scan_without_manifest(make_imagefolder, tmp_path: Path):
    root = tmp_path / "root"
    make_imagefolder({"a": [("L", (10, 10))] * 2, "b": [("RGB", (10, 10))]}, name="t1", root=root)
    (root / "not-a-task").mkdir()
    (root / "t1" / "a" / "notes.txt").write_text("not an image")
    assert list_tasks(root) == [
        TaskInfo(
            name="t1", family="unknown", modality="unknown", class_counts={"a": 2, "b": 1}, source=str(root / "t1")
        )
    ]
    assert get_task("t1", root).num_images == 3
    with pytest.raises(DataError, match="Unknown task 'nope'. Known tasks: t1"):
        get_task("nope", root)


def test_missing_data_dir(tmp_path: Path):
    with pytest.raises(DataError, match="does not exist"):
        list_tasks(tmp_path / "missing")
