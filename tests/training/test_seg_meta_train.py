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
from sgps_hf.training.seg_meta_train import SegTrainingConfig, train

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

    from sgps_hf.data.segmentation import EpisodeSampler, TaskArrays
    from sgps_hf.training.seg_meta_train import FeatureBank, episode_logits

    synth = fitted()
    pairs = [blob_pair(i, size=(32, 32)) for i in range(6)]
    arrays = TaskArrays(
        "blob",
        np.stack([np.asarray(p[0]) for p in pairs]),
        np.stack([p[1] for p in pairs]),
        [str(i) for i in range(6)],
    )
    bank = FeatureBank(synth, {"blob": arrays}, mirrored=False, dtype=torch.float32)
    episode = EpisodeSampler({"blob": 6}, (2, 2), 2, seed=0).episode(0)
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


def test_train_with_raw_block_in_the_loop_resumes_and_exports_the_best(tmp_path):
    data = tmp_path / "data"
    for name, seed in (("task-a", 0), ("task-b", 50), ("task-v", 100)):
        write_task_folder(data / name, 10, labels=("lesion",), seed=seed)
    splits = tmp_path / "splits.yaml"
    splits.write_text(yaml.safe_dump({"meta_train": ["task-a", "task-b"], "meta_val": ["task-v"], "held_out": []}))
    overrides = [
        f"output_dir={tmp_path / 'run'}",
        f"data_dir={data}",
        f"splits_file={splits}",
        "steps=4",
        "eval_every=2",
        "checkpoint_every=2",
        "log_every=1",
        "eval_episodes_per_k=1",
        "eval_k=[1,2]",
        "k_range=[1,2]",
        "n_query=2",
        "head_selection_episodes=2",
        "learned_dropout=0.5",
        "warmup_steps=1",
        "model={hidden_size: 8, image_size: 32, pool_scales: [1, 2], raw_levels: [0, 1, 2, 3], raw_dims: [8, 8, 8, 8], "
        "raw_weight: 8.0, learn_raw_weight: true, learned_energy_norm: true}",
        "passthrough={fit_images_per_task: 6, fit_seed: 0}",
    ]
    config = SegTrainingConfig.from_file(None, overrides)
    first = train(
        SegTrainingConfig.from_file(
            None, overrides[:1] + [o for o in overrides[1:] if not o.startswith("steps=")] + ["steps=2"]
        )
    )
    assert first["step"] == 2 and "head_selection" in first
    state = train(config, resume=True)
    assert state["step"] == 4 and state["best_step"] in (2, 4)
    rows = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4"]  # resumed, not restarted
    best = SGPSSegSynthesizer.from_pretrained(tmp_path / "run" / "best")
    assert best.raw_channels == 32 and float(best.raw_projection_0.abs().sum()) > 0  # fitted before training
    assert best.config.learn_raw_weight and math.isclose(
        float(best.raw_gain().detach()), best.config.raw_weight, rel_tol=1e-5
    )
    info = json.loads((tmp_path / "run" / "best" / "training.json").read_text())
    choice = info["head_selection"]
    assert choice["prototype_max_k"] == best.config.prototype_max_k
    assert set(choice["meta_val"]) == {"ridge", "prototype"}
    segmenter = best.synthesize(SegmentationTask("blob", [blob_pair(i) for i in range(2)]))
    assert segmenter.model.config.hidden_size == 8 + 32
