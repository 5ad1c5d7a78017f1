"""Slide rules (mean, top-k mean, vote) and SlideTask validation."""

from __future__ import annotations

import numpy as np
import pytest

from sgps_hf.errors import CheckpointError, InvalidTaskError
from sgps_hf.slides import SlideClassSpec, SlideRule, SlideTask


def test_rules_aggregate_tile_probabilities():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.1, 0.9]])
    assert SlideRule("mean").aggregate(probs) == pytest.approx([0.625, 0.375])
    assert SlideRule("vote").aggregate(probs) == pytest.approx([0.75, 0.25])
    # top 25 % of 4 tiles = the best tile of each class: 0.9 and 0.9 -> a tie a small tumour region can win.
    assert SlideRule("topk_mean", 0.25).aggregate(probs) == pytest.approx([0.5, 0.5])
    assert SlideRule("topk_mean", 0.5).aggregate(probs) == pytest.approx(np.array([0.85, 0.6]) / 1.45)
    assert SlideRule("mean").aggregate(np.zeros((0, 3))) == pytest.approx([1 / 3] * 3)
    rule = SlideRule("topk_mean", 0.1)
    assert SlideRule.from_dict(rule.to_dict()) == rule
    with pytest.raises(CheckpointError, match="Unknown slide rule 'max'"):
        SlideRule("max")
    with pytest.raises(CheckpointError, match="top_fraction"):
        SlideRule("topk_mean", 0.0)


def test_slide_task_validation(tmp_path, tiny_svs):
    other = tmp_path / "other.svs"
    other.write_bytes(tiny_svs.read_bytes())
    task = SlideTask([SlideClassSpec("a", "text", [tiny_svs]), SlideClassSpec("b", "", other)])
    assert task.class_names == ["a", "b"]
    with pytest.raises(InvalidTaskError, match="between 1 and 10"):
        SlideClassSpec("a", "", [])
    with pytest.raises(InvalidTaskError, match="between 1 and 10"):
        SlideClassSpec("a", "", [tiny_svs] * 11)
    with pytest.raises(InvalidTaskError, match="does not exist"):
        SlideClassSpec("a", "", [tmp_path / "nope.svs"])
    with pytest.raises(InvalidTaskError, match="same slide twice"):
        SlideClassSpec("a", "", [tiny_svs, tiny_svs])
    with pytest.raises(InvalidTaskError, match="labelled both"):
        SlideTask([SlideClassSpec("a", "", [tiny_svs]), SlideClassSpec("b", "", [tiny_svs])])
    with pytest.raises(InvalidTaskError, match="at least two classes"):
        SlideTask([SlideClassSpec("a", "", [tiny_svs])])


def test_slide_task_file_resolves_paths_next_to_it(tmp_path, tiny_svs):
    (tmp_path / "s").mkdir()
    for name in ("x.svs", "y.svs"):
        (tmp_path / "s" / name).write_bytes(tiny_svs.read_bytes())
    path = tmp_path / "task.yaml"
    path.write_text(
        "name: demo\nclasses:\n  - name: tumour\n    description: Nests of atypical cells.\n    slides: [s/x.svs]\n"
        "  - name: normal\n    slides: [s/y.svs]\n"
    )
    task = SlideTask.from_file(path)
    assert task.name == "demo" and task.classes[0].slides == [tmp_path / "s" / "x.svs"]
    path.write_text("classes:\n  - name: a\n    images: [s/x.svs]\n")
    with pytest.raises(InvalidTaskError, match="unknown keys"):
        SlideTask.from_file(path)
