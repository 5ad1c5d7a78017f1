"""The prototype-weight selection of the blended head (``seg_calibration``; ``scripts/select_seg_head.py`` is its
shim): the selection rule, its interpolation over K and the post-hoc config step."""

from __future__ import annotations

import json

import pytest
import torch
from seg_testing import tiny_seg_synthesizer
from sgps_testing import load_script

from sgps_hf import SGPSSegSynthesizer
from sgps_hf.training.seg_calibration import choose, interpolate, task_of, with_config, write_prototype_mix

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def test_choice_is_the_best_mean_over_tasks_and_interpolates_between_ks():
    grid = [0.0, 0.5, 1.0]
    scores = {  # task a prefers 0.5 strongly at K=1, task b mildly prefers ridge: the mean picks 0.5; at K=2 ridge
        "a": {"1": {"0.0": 0.2, "0.5": 0.6, "1.0": 0.1}, "2": {"0.0": 0.5, "0.5": 0.4, "1.0": 0.3}},
        "b": {"1": {"0.0": 0.5, "0.5": 0.4, "1.0": 0.3}, "2": {"0.0": 0.5, "0.5": 0.5, "1.0": 0.5}},
    }
    assert choose(scores, ["a", "b"], 1, grid) == 0.5
    assert choose(scores, ["b"], 1, grid) == 0.0  # leaving task a out changes the choice
    assert choose(scores, ["a", "b"], 2, grid) == 0.0
    assert interpolate({1: 0.5, 3: 0.1}, 5) == [0.5, 0.3, 0.1, 0.1, 0.1]
    assert task_of("xray-chest-anatomy/airways") == "xray-chest-anatomy"


def test_write_choice_changes_only_prototype_mix(tmp_path):
    synth = tiny_seg_synthesizer(0)
    synth.save_pretrained(tmp_path / "s")
    before = json.loads((tmp_path / "s" / "config.json").read_text())
    write_prototype_mix(tmp_path / "s", [0.3, 0.1])
    loaded = SGPSSegSynthesizer.from_pretrained(tmp_path / "s")
    assert loaded.config.prototype_mix == [0.3, 0.1] and loaded.resolve_head(4) == "blend"
    assert all(loaded.state_dict()[k].equal(v) for k, v in synth.state_dict().items())
    after = json.loads((tmp_path / "s" / "config.json").read_text())
    assert {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)} == {"prototype_mix"}
    assert synth.config.prototype_mix is None  # the live config of the caller's model is not touched


def test_script_writes_an_earlier_runs_choice(tmp_path, capsys):
    synth = tiny_seg_synthesizer(0)
    synth.save_pretrained(tmp_path / "s")
    record = {"chosen": {"1": 0.4}, "prototype_mix": [0.4], "leave_one_task_out_gain_over_ridge": {"1": 0.01}}
    (tmp_path / "choice.json").write_text(json.dumps(record))
    script = load_script("select_seg_head")
    script.main(["--checkpoint", str(tmp_path / "s"), "--write", "--from-json", str(tmp_path / "choice.json")])
    assert SGPSSegSynthesizer.from_pretrained(tmp_path / "s").config.prototype_mix == [0.4]
    assert "prototype_mix [0.4]" in capsys.readouterr().out


def test_prototype_weight_argument_equals_the_configured_mix():
    """Selection passes the weight per call; it gives the head a config holding that weight gives, config untouched."""
    synth = tiny_seg_synthesizer(0).eval()
    torch.manual_seed(0)
    features = synth.decode(synth.encode(torch.randn(3, 3, 32, 32)))
    masks = (torch.rand(3, 1, 32, 32) > 0.6).float()
    configured = with_config(synth, prototype_mix=[0.3])
    expected = configured.head_from_support(features, masks)
    given = synth.head_from_support(features, masks, head="blend", prototype_weight=0.3)
    assert all(torch.equal(a, b) for a, b in zip(expected, given, strict=True))
    assert synth.config.prototype_mix is None and configured.resolve_head(3) == "blend"
