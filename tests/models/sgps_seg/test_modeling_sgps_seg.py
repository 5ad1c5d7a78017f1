"""The synthesizer on a tiny config: closed-form heads, determinism, predictions at each image's own size."""

import numpy as np
import pytest
import torch
from seg_testing import blob_pair, tiny_seg_synthesizer
from transformers import AutoConfig, AutoModel

from sgps_hf import SegmentationTask, SGPSSegConfig, SGPSSegSynthesizer, SynthesizedSegmenter
from sgps_hf.hub.checkpoints import state_dict_sha256

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def test_config_validation_and_auto_registration(tmp_path):
    with pytest.raises(ValueError, match="head"):
        SGPSSegConfig(head="mlp")
    with pytest.raises(ValueError, match="image_size"):
        SGPSSegConfig(image_size=8)
    synth = tiny_seg_synthesizer(0)
    synth.save_pretrained(tmp_path / "s")
    assert isinstance(AutoConfig.from_pretrained(tmp_path / "s"), SGPSSegConfig)
    loaded = AutoModel.from_pretrained(tmp_path / "s")
    assert isinstance(loaded, SGPSSegSynthesizer)
    assert state_dict_sha256(loaded.state_dict()) == state_dict_sha256(synth.state_dict())


def test_prototype_head_is_the_panet_distance_rule(tiny_synth):
    torch.manual_seed(0)
    feats = torch.randn(2, 5, 4, 4)
    masks = (torch.rand(2, 1, 4, 4) > 0.5).float()
    masks[0, 0, 0, 0], masks[0, 0, 0, 1] = 1, 0
    weight, bias = tiny_synth.head_from_support(feats, masks, head="prototype")
    x = feats.permute(0, 2, 3, 1).reshape(-1, 5)
    y = masks.reshape(-1).bool()
    p_fg, p_bg = x[y].mean(0), x[~y].mean(0)
    s = tiny_synth.scale
    logits = torch.nn.functional.conv2d(feats, weight, bias).permute(0, 2, 3, 1).reshape(-1, 2)
    expected = -s * ((x - p_fg) ** 2).sum(1) + s * ((x - p_bg) ** 2).sum(1)  # fg - bg logit = distance difference
    torch.testing.assert_close(logits[:, 1] - logits[:, 0], expected, rtol=1e-4, atol=1e-4)


def test_ridge_head_solves_the_weighted_least_squares(tiny_synth):
    torch.manual_seed(1)
    feats = torch.randn(3, 6, 4, 4)
    masks = (torch.rand(3, 1, 4, 4) > 0.7).float()
    masks[0, 0, 0, 0] = 1
    with torch.no_grad():
        weight, bias = tiny_synth.head_from_support(feats, masks, head="ridge")
    x = feats.permute(0, 2, 3, 1).reshape(-1, 6).double().numpy()
    y = masks.reshape(-1).double().numpy()
    a = 0.5 * y / y.sum() + 0.5 * (1 - y) / (1 - y).sum()
    xa = np.concatenate([x, np.ones((len(x), 1))], 1)
    gram = xa.T @ (xa * a[:, None])
    lam = np.exp(tiny_synth.log_ridge_lambda.item()) * np.diag(gram)[:6].mean()
    reg = np.diag([lam] * 6 + [1e-6 * np.diag(gram)[:6].mean()])
    solution = np.linalg.solve(gram + reg, xa.T @ (a * (2 * y - 1)))
    s = tiny_synth.scale.item()
    np.testing.assert_allclose(weight[1, :, 0, 0].double().numpy(), s / 2 * solution[:6], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(float(bias[1] - bias[0]), s * solution[6], rtol=1e-4, atol=1e-6)


def test_synthesis_is_deterministic_and_task_specific(tiny_synth, tiny_task):
    first = tiny_synth.synthesize(tiny_task)
    second = tiny_synth.synthesize(tiny_task)
    assert first.info["weights_sha256"] == second.info["weights_sha256"]
    assert all(
        torch.equal(a, b)
        for a, b in zip(first.model.state_dict().values(), second.model.state_dict().values(), strict=False)
    )
    other = tiny_synth.synthesize(SegmentationTask("other", [blob_pair(10), blob_pair(11)]))
    assert other.info["weights_sha256"] != first.info["weights_sha256"]
    w_first = first.model.decode_head.classifier.weight
    assert not torch.equal(w_first, other.model.decode_head.classifier.weight)
    # everything but the task-specific classifier is the synthesizer's shared part
    shared = {
        k: v for k, v in tiny_synth.segmenter.state_dict().items() if not k.startswith("decode_head.classifier.")
    }
    assert all(torch.equal(first.model.state_dict()[k], v) for k, v in shared.items())


def test_predict_gives_bool_masks_at_each_images_own_size(tiny_synth, tiny_task):
    segmenter = tiny_synth.synthesize(tiny_task)
    images = [blob_pair(20, size=(40, 32))[0], blob_pair(21, size=(17, 55))[0], np.zeros((9, 12), np.uint8)]
    masks = segmenter.predict(images)
    assert [m.shape for m in masks] == [(32, 40), (55, 17), (9, 12)]
    assert all(m.dtype == bool for m in masks)
    proba = segmenter.predict_proba(images[0])[0]
    assert proba.shape == (32, 40) and ((proba > 0.5) == masks[0]).mean() > 0.99


def test_forward_loss_backpropagates_into_decoder_not_frozen_encoder(tiny_synth):
    synth = tiny_seg_synthesizer(3)
    synth.train()
    assert not synth.segmenter.backbone.training  # the frozen body stays in eval mode
    torch.manual_seed(0)
    x = torch.randn(3, 3, 32, 32)
    masks = (torch.rand(3, 1, 32, 32) > 0.5).float()
    out = synth(x[:2], masks[:2], x[2:], labels=masks[2:])
    assert out.logits.shape == (1, 2, 32, 32) and torch.isfinite(out.loss)
    out.loss.backward()
    assert synth.segmenter.decode_head.fpn_bottleneck.conv.weight.grad.abs().sum() > 0
    assert synth.log_scale.grad is not None
    assert all(p.grad is None for p in synth.segmenter.backbone.parameters())


def test_evaluate_reports_dice_and_iou_into_the_card(tiny_synth, tiny_task, tmp_path):
    segmenter = tiny_synth.synthesize(tiny_task)
    pairs = [blob_pair(30), blob_pair(31)]
    scores = segmenter.evaluate(pairs)
    predicted = segmenter.predict([p[0] for p in pairs])
    manual = np.mean([2 * (p & m).sum() / (p.sum() + m.sum()) for p, (_, m) in zip(predicted, pairs, strict=False)])
    assert scores["dice"] == pytest.approx(manual) and 0 <= scores["iou"] <= scores["dice"] <= 1
    folder = segmenter.save_pretrained(tmp_path / "seg")
    card = (folder / "README.md").read_text()
    assert "not for clinical use" in card.lower() and "model-index" in card and f"{scores['dice']:.3f}" in card
    assert tiny_task.to_dict()["examples"][0]["image_sha256"][:16] in card
    reloaded = SynthesizedSegmenter.from_pretrained(folder)
    assert all(np.array_equal(a, b) for a, b in zip(reloaded.predict([p[0] for p in pairs]), predicted, strict=False))


def test_tampered_weights_are_refused(tiny_synth, tiny_task, tmp_path):
    from safetensors.torch import load_file, save_file

    from sgps_hf.errors import CheckpointError

    folder = tiny_synth.synthesize(tiny_task).save_pretrained(tmp_path / "seg")
    tensors = load_file(folder / "model.safetensors")
    tensors["decode_head.classifier.bias"] = tensors["decode_head.classifier.bias"] + 1
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="sha256"):
        SynthesizedSegmenter.from_pretrained(folder)


def test_prototype_max_k_switches_the_head_by_number_of_examples(tiny_task):
    synth = tiny_seg_synthesizer(0, head="ridge", prototype_max_k=2)
    assert [synth.resolve_head(k) for k in (1, 2, 3, 8)] == ["prototype", "prototype", "ridge", "ridge"]
    two = SegmentationTask("two", [blob_pair(0), blob_pair(1)])
    assert synth.synthesize(two).info["head"] == "prototype" and synth.synthesize(tiny_task).info["head"] == "ridge"
    forced = synth.synthesize(two, head="ridge")
    assert (
        forced.info["head"] == "ridge"
        and forced.info["weights_sha256"] != synth.synthesize(two).info["weights_sha256"]
    )
