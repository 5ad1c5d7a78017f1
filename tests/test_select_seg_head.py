"""scripts/select_seg_head.py: the selection rule, its interpolation over K and the post-hoc config step."""

from __future__ import annotations

import pytest
from seg_testing import tiny_seg_synthesizer
from sgps_testing import load_script

from sgps_hf import SGPSSegSynthesizer

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def test_choice_is_the_best_mean_over_tasks_and_interpolates_between_ks():
    script = load_script("select_seg_head")
    grid = [0.0, 0.5, 1.0]
    scores = {  # task a prefers 0.5 strongly at K=1, task b mildly prefers ridge: the mean picks 0.5; at K=2 ridge
        "a": {"1": {"0.0": 0.2, "0.5": 0.6, "1.0": 0.1}, "2": {"0.0": 0.5, "0.5": 0.4, "1.0": 0.3}},
        "b": {"1": {"0.0": 0.5, "0.5": 0.4, "1.0": 0.3}, "2": {"0.0": 0.5, "0.5": 0.5, "1.0": 0.5}},
    }
    assert script.choose(scores, ["a", "b"], 1, grid) == 0.5
    assert script.choose(scores, ["b"], 1, grid) == 0.0  # leaving task a out changes the choice
    assert script.choose(scores, ["a", "b"], 2, grid) == 0.0
    assert script.interpolate({1: 0.5, 3: 0.1}, 5) == [0.5, 0.3, 0.1, 0.1, 0.1]
    assert script.task_of("xray-chest-anatomy/airways") == "xray-chest-anatomy"


def test_write_choice_changes_only_prototype_mix(tmp_path):
    script = load_script("select_seg_head")
    synth = tiny_seg_synthesizer(0)
    synth.save_pretrained(tmp_path / "s")
    script.write_choice(str(tmp_path / "s"), [0.3, 0.1])
    loaded = SGPSSegSynthesizer.from_pretrained(tmp_path / "s")
    assert loaded.config.prototype_mix == [0.3, 0.1] and loaded.resolve_head(4) == "blend"
    assert all(loaded.state_dict()[k].equal(v) for k, v in synth.state_dict().items())
