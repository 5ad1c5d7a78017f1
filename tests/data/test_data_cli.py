"""`sgps data summary` on a synthetic data folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from sgps_hf.cli import build_parser, main
from sgps_hf.data import list_tasks, make_splits


@pytest.fixture
def data_root(make_imagefolder, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    img = [("L", (10, 10))]
    make_imagefolder({f"c{i}": img * 2 for i in range(5)}, name="task-a", root=root)
    make_imagefolder({"x": img, "y": img * 3}, name="task-b", root=root)
    make_imagefolder({"p": img, "q": img}, name="task-held", root=root)
    return root


def test_summary_table(data_root: Path, tmp_path: Path, capsys):
    splits = make_splits(list_tasks(data_root), held_out_tasks=["task-held"], meta_val_tasks=["task-b"])
    (tmp_path / "splits.yaml").write_text(splits.to_yaml())
    assert main(["data", "summary", "--data-dir", str(data_root), "--splits", str(tmp_path / "splits.yaml")]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith("task-")}
    assert lines["task-a"][1:5] == ["unknown", "5", "10", "5/0"]
    assert lines["task-b"][1:5] == ["unknown", "2", "4", "0/2"]
    assert lines["task-held"][1:5] == ["unknown", "2", "2", "held_out"]
    assert "total: 3 tasks" in out and "5/2/2 train/val/held-out classes" in out


def test_summary_with_decoding_and_unsplit_tasks(data_root: Path, tmp_path: Path, capsys):
    # The packaged splits know none of these tasks.
    assert main(["data", "summary", "--data-dir", str(data_root), "--image-size", "8"]) == 0
    out = capsys.readouterr().out
    assert out.count("not in splits") == 3 and "16" in out.splitlines()[-1]


def test_user_error_exit_code(tmp_path: Path, capsys):
    assert main(["data", "summary", "--data-dir", str(tmp_path / "missing")]) == 2
    assert "sgps: error:" in capsys.readouterr().err


def test_parser_requires_a_command():
    with pytest.raises(SystemExit):
        build_parser().parse_args([])
