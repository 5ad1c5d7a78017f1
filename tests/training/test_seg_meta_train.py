"""Meta-training with the raw pass-through in the loop: the meta-learned raw-block weight, learned-channel dropout,
and a tiny end-to-end run of ``train`` (raw block fitted before the first step, resume, best export, head choice)."""

import json
import math

import pytest
import torch
import yaml
from seg_testing import blob_pair, tiny_seg_synthesizer, write_task_folder
from sgps_testing import isolated_caches  # noqa: F401  (autouse: reads data-seg through datasets)

from sgps_hf import SegmentationTask, SGPSSegSynthesizer
from sgps_hf.training.seg_meta_train import SegTrainingConfig

pytestmark = pytest.mark.usefixtures("torch_single_thread")

RAW = dict(
    raw_levels=[0, 1, 2, 3], raw_dims=[8, 8, 8, 8], raw_weight=4.0, learned_energy_norm=True, learn_raw_weight=True
)


def fitted(seed=0, **overrides):
    synth = tiny_seg_synthesizer(seed, **{**RAW, **overrides})
    g = torch.Generator().manual_seed(seed)
    synth.fit_raw_passthrough(synth.encode(torch.randn(6, 3, 32, 32, generator=g)))
    return synth


def test_raw_weight_is_meta_learned_and_saved_in_the_config(tmp_path):
    synth = fitted()
    assert math.isclose(float(synth.raw_gain().detach()), 4.0, rel_tol=1e-6)
    synth.train()
    torch.manual_seed(0)
    x = torch.randn(5, 3, 32, 32)
    masks = (torch.rand(5, 1, 32, 32) > 0.6).float()
    out = synth(x[:3], masks[:3], x[3:], labels=masks[3:], head="ridge")
    out.loss.backward()
    assert synth.log_raw_weight.grad is not None and synth.log_raw_weight.grad.abs() > 0
    with torch.no_grad():
        synth.log_raw_weight.fill_(math.log(2.5))
    synth.eval()
    synth.save_pretrained(tmp_path / "s")
    saved = json.loads((tmp_path / "s" / "config.json").read_text())
    assert math.isclose(saved["raw_weight"], 2.5, rel_tol=1e-5) and saved["learn_raw_weight"] is True
    again = SGPSSegSynthesizer.from_pretrained(tmp_path / "s").eval()
    assert math.isclose(float(again.raw_gain().detach()), 2.5, rel_tol=1e-5)
    task = SegmentationTask("blob", [blob_pair(i) for i in range(3)])
    a, b = synth.synthesize(task), again.synthesize(task)
    assert torch.allclose(a.model.decode_head.classifier.weight, b.model.decode_head.classifier.weight, atol=1e-5)
    # without the flag there is no such parameter and the config value is used as is
    plain = fitted(learn_raw_weight=False)
    assert not hasattr(plain, "log_raw_weight") and float(plain.raw_gain().detach()) == 4.0


def test_dropping_every_learned_channel_leaves_only_the_raw_block(tmp_path):
    import numpy as np

    from sgps_hf.data.segmentation import SegEpisodeSampler, TaskArrays
    from sgps_hf.training.seg_features import FeatureBank, episode_logits

    synth = fitted()
    pairs = [blob_pair(i, size=(32, 32)) for i in range(6)]
    arrays = TaskArrays(
        "blob",
        np.stack([np.asarray(p[0]) for p in pairs]),
        np.stack([p[1] for p in pairs]),
        [str(i) for i in range(6)],
    )
    bank = FeatureBank(synth, {"blob": arrays}, mirrored=False, dtype=torch.float32)
    episode = SegEpisodeSampler({"blob": 6}, (2, 2), 2, seed=0).episode(0)
    synth.train()
    hidden = synth.config.hidden_size
    logits, _ = episode_logits(synth, bank, episode, head="ridge", learned_keep=torch.zeros(hidden))
    logits[:, 1].sum().backward()  # (the ridge logits are antisymmetric: their plain sum is 0)
    decoder_grads = [p.grad for n, p in synth.named_parameters() if "decode_head" in n and p.grad is not None]
    assert all(float(g.abs().max()) == 0 for g in decoder_grads)  # the learned block got no signal
    synth.zero_grad()
    logits, _ = episode_logits(synth, bank, episode, head="ridge", learned_keep=torch.ones(hidden))
    logits[:, 1].sum().backward()  # (the ridge logits are antisymmetric: their plain sum is 0)
    assert any(
        float(p.grad.abs().max()) > 0 for n, p in synth.named_parameters() if "decode_head" in n and p.grad is not None
    )


def test_train_with_raw_block_in_the_loop_resumes_and_exports_the_best(tmp_path, capsys):
    """The documented command (scripts/train_seg.py: the shared config loader's flags) trains, resumes, exports the
    best step and runs every post-hoc step on it: head per K, raw block re-fit, prototype weight per K."""
    from sgps_testing import load_script

    data = tmp_path / "data"
    for name, seed in (("task-a", 0), ("task-b", 50), ("task-v", 100)):
        write_task_folder(data / name, 10, labels=("lesion",), seed=seed)
    splits = tmp_path / "splits.yaml"
    splits.write_text(yaml.safe_dump({"meta_train": ["task-a", "task-b"], "meta_val": ["task-v"], "held_out": []}))
    config_file = tmp_path / "seg.yaml"
    config_file.write_text(
        yaml.safe_dump(
            {
                "output_dir": str(tmp_path / "run"),
                "data_dir": str(data),
                "splits_file": str(splits),
                "steps": 4,
            }
        )
    )
    flags = ["--config", str(config_file), "--eval-every", "2", "--checkpoint-every", "2", "--log-every", "1"]
    flags += ["--eval-episodes-per-k", "1", "--eval-k", "1", "2", "--k-range", "1", "2", "--n-query", "2"]
    flags += ["--head-selection-episodes", "2", "--learned-dropout", "0.5", "--warmup-steps", "1"]
    flags += ["--passthrough", '{"fit_images_per_task": 6, "fit_seed": 0}']
    flags += ["--raw-refit", '{"standardize": false, "level_norm": "energy"}']
    flags += ["--prototype-mix-selection", '{"episodes": 1, "ks": [1, 2], "grid": [0.0, 1.0], "n_query": 2}']
    model = ["--model", json.dumps({"hidden_size": 8, "image_size": 32, "pool_scales": [1, 2], **RAW})]
    script = load_script("train_seg")
    script.main(flags + model + ["--steps", "2"])
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert first["step"] == 2 and "head_selection" in first["post_hoc"]
    script.main(flags + model + ["--resume"])  # on to the file's 4 steps
    state = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (
        state["step"] == 4
        and state["best_step"] in (2, 4)
        and set(state["post_hoc"])
        == {
            "head_selection",
            "raw_refit",
            "prototype_mix_selection",
        }
    )
    rows = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4"]  # resumed, not restarted
    best = SGPSSegSynthesizer.from_pretrained(tmp_path / "run" / "best")
    assert best.raw_channels == 32 and float(best.raw_projection_0.abs().sum()) > 0
    info = json.loads((tmp_path / "run" / "best" / "training.json").read_text())
    choice = info["head_selection"]
    assert choice["prototype_max_k"] == best.config.prototype_max_k
    assert set(choice["meta_val"]) == {"ridge", "prototype"}
    assert info["raw_refit"]["level_norm"] == "energy" and info["raw_refit"]["standardize"] is False
    mix = info["prototype_mix_selection"]
    assert best.config.prototype_mix == mix["prototype_mix"] and len(mix["prototype_mix"]) == 2
    assert set(mix["prototype_mix"]) <= {0.0, 1.0}
    segmenter = best.synthesize(SegmentationTask("blob", [blob_pair(i) for i in range(2)]))
    assert segmenter.model.config.hidden_size == 8 + best.raw_channels


def test_raw_refit_changes_only_the_raw_block(tmp_path):
    """The re-fit step leaves the decoder and scalars bit for bit and replaces the raw buffers."""
    import numpy as np

    from sgps_hf.data.segmentation import TaskArrays
    from sgps_hf.training.seg_calibration import refit_raw_block
    from sgps_hf.training.seg_features import FeatureBank

    synth = fitted()
    synth.save_pretrained(tmp_path / "s")
    pairs = [blob_pair(i, size=(32, 32)) for i in range(6)]
    arrays = TaskArrays(
        "blob", np.stack([np.asarray(p[0]) for p in pairs]), np.stack([p[1] for p in pairs]), list("abcdef")
    )
    bank = FeatureBank(synth, {"blob": arrays}, mirrored=False)
    spec = refit_raw_block(tmp_path / "s", tmp_path / "r", {"level_norm": "energy", "fit_images_per_task": 4}, bank)
    assert spec == {"level_norm": "energy", "fit_images_per_task": 4}
    before, after = synth.state_dict(), SGPSSegSynthesizer.from_pretrained(tmp_path / "r").state_dict()
    changed = {k for k in before if not before[k].equal(after[k])}
    assert changed and all(k.startswith("raw_") for k in changed)
    assert json.loads((tmp_path / "r" / "training.json").read_text())["raw_refit"] == spec


def test_training_config_is_read_by_the_shared_loader(tmp_path):
    from sgps_hf.training.config import add_arguments, config_from_args

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"steps": 7, "model": {"hidden_size": 8}, "eval_k": [1, 3]}))
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser, SegTrainingConfig)
    args = parser.parse_args(["--config", str(path), "--eval-k", "2", "--max-minutes", "none", "--augment", "false"])
    config = config_from_args(args, SegTrainingConfig)
    assert (config.steps, config.model, config.eval_k, config.max_minutes, config.augment) == (
        7,
        {"hidden_size": 8},
        [2],
        None,
        False,
    )
    path.write_text(yaml.safe_dump({"stepz": 7}))
    with pytest.raises(ValueError, match="stepz"):
        SegTrainingConfig.from_file(path)
    with pytest.raises(ValueError, match="prototype_mix_selection"):
        SegTrainingConfig(prototype_mix_selection={"episode": 3})
    with pytest.raises(ValueError, match="raw_refit"):
        SegTrainingConfig(raw_refit={"level-norm": "energy"})
