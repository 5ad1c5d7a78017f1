"""The raw encoder pass-through: the wide exported UperNet computes exactly the synthesizer's features, the head
folds the block weights and shift into the 1x1 conv, and the saved network still loads with plain transformers."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from seg_testing import PLAIN_TRANSFORMERS, blob_pair, check_plain, tiny_seg_synthesizer, write_query_images
from sgps_testing import last_json_line, run_python
from transformers import UperNetForSemanticSegmentation

from sgps_hf import SegmentationTask, SGPSSegConfig
from sgps_hf.errors import SynthesisError
from sgps_hf.evaluation.segmentation import bootstrap_ci, paired_difference

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def raw_synth(seed=0, **overrides):
    """A tiny synthesizer with a raw block, its learned BatchNorms randomised, the pass-through fitted on noise."""
    settings = dict(raw_levels=[0, 1, 2, 3], raw_dims=[24, 8, 8, 16], raw_weight=3.0, learned_energy_norm=True)
    synth = tiny_seg_synthesizer(seed, **{**settings, **overrides})
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in synth.segmenter.decode_head.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.1, generator=g)
                module.running_var.uniform_(0.5, 2.0, generator=g)
                module.weight.uniform_(0.5, 1.5, generator=g)
                module.bias.normal_(0, 0.1, generator=g)
    synth.fit_raw_passthrough(synth.encode(torch.randn(6, 3, 32, 32, generator=g)))
    return synth


def test_config_validates_the_raw_block():
    with pytest.raises(ValueError, match="raw_levels"):
        SGPSSegConfig(raw_levels=[4])
    with pytest.raises(ValueError, match="raw_levels"):
        SGPSSegConfig(raw_levels=[1, 1])
    with pytest.raises(ValueError, match="raw_dims"):
        SGPSSegConfig(raw_levels=[0, 1], raw_dims=[4])
    with pytest.raises(ValueError, match="raw_weight"):
        SGPSSegConfig(raw_levels=[0], raw_weight=0)
    assert SGPSSegConfig(raw_levels=[3, 0]).raw_levels == [0, 3]
    assert SGPSSegConfig().segmenter_config(10).hidden_size == 64 + 10


@pytest.mark.parametrize("levels,dims", [([0, 1, 2, 3], [24, 8, 8, 16]), ([0, 1], None), ([3], [5])])
def test_wide_upernet_equals_the_synthesizers_decoder_and_head(levels, dims):
    synth = raw_synth(0, raw_levels=levels, raw_dims=dims)
    full = list(synth.segmenter.backbone.channels)
    assert synth.raw_channels == sum(
        full[level] if dims is None else min(d, full[level])
        for level, d in zip(levels, dims or [None] * len(levels), strict=False)
    )
    torch.manual_seed(1)
    x = torch.randn(6, 3, 32, 32)
    masks = (torch.rand(3, 1, 32, 32) > 0.6).float()
    for head in ("ridge", "prototype"):
        state = synth.synthesize_state_dict(x[:3], masks, head=head)
        net = UperNetForSemanticSegmentation(synth.config.segmenter_config(synth.raw_channels))
        net.load_state_dict(state)  # strict: every tensor of the wide network is written
        net.eval()
        with torch.no_grad():
            exported = net(pixel_values=x[3:]).logits
            decoded = synth.decode(synth.encode(x))
            weight, bias = synth.head_from_support(decoded[:3], masks, head=head)
            reference = synth.query_logits(decoded[3:], weight, bias, (32, 32))
            # the learned channels of the wide network are the synthesizer's own decoder, unchanged
            plain = synth.segmenter.decode_head
            classifier, plain.classifier = plain.classifier, torch.nn.Identity()
            learned = plain(list(synth.encode(x)))
            plain.classifier = classifier
        assert decoded.shape[1] == synth.config.hidden_size + synth.raw_channels
        torch.testing.assert_close(decoded[:, : synth.config.hidden_size], learned)
        torch.testing.assert_close(exported, reference, rtol=1e-4, atol=1e-4 * float(reference.abs().max()))
        assert torch.equal(exported[:, 1] > exported[:, 0], reference[:, 1] > reference[:, 0])
        assert reference.std() > 0


def test_raw_block_is_the_standardised_encoder_stage():
    synth = raw_synth(2, raw_levels=[0], raw_dims=None)
    x = torch.randn(4, 3, 32, 32)
    features = synth.encode(x)
    synth.fit_raw_passthrough(features)
    stage = features[0].double()
    flat = stage.permute(0, 2, 3, 1).reshape(-1, stage.shape[1])
    z = (flat - flat.mean(0)) / flat.std(0) / np.sqrt(stage.shape[1])
    raw = synth.raw_features(features).double() - synth.raw_offset().double()[None, :, None, None]
    torch.testing.assert_close(raw.permute(0, 2, 3, 1).reshape(-1, stage.shape[1]), z, rtol=1e-4, atol=1e-5)
    assert (synth.raw_features(features) > 0).all()  # the shift keeps the ReLUs of the exported network inactive


def test_head_folds_block_weights_and_shift_into_the_conv():
    synth = raw_synth(3)
    hidden, raw = synth.config.hidden_size, synth.raw_channels
    torch.manual_seed(4)
    feats = (
        torch.rand(2, hidden + raw, 4, 4) + torch.cat([torch.zeros(hidden), synth.raw_offset()])[None, :, None, None]
    )
    masks = (torch.rand(2, 1, 4, 4) > 0.5).float()
    masks[0, 0, 0, 0], masks[0, 0, 0, 1] = 1, 0
    x = feats.permute(0, 2, 3, 1).reshape(-1, hidden + raw).double()
    y = masks.reshape(-1).double()
    gain = torch.ones(hidden + raw, dtype=torch.double)
    gain[:hidden] = 1 / (x[:, :hidden] ** 2).sum(1).mean().sqrt()
    gain[hidden:] = synth.config.raw_weight
    offset = torch.cat([torch.zeros(hidden), synth.raw_offset()]).double()
    xt = (x - offset) * gain
    logits = {
        h: F.conv2d(feats, *synth.head_from_support(feats, masks, head=h)).permute(0, 2, 3, 1).reshape(-1, 2).double()
        for h in ("prototype", "ridge")
    }
    # prototype: PANet's distance rule on the weighted, unshifted features
    p_fg, p_bg = xt[y.bool()].mean(0), xt[~y.bool()].mean(0)
    s = synth.scale.double()
    expected = -s * ((xt - p_fg) ** 2).sum(1) + s * ((xt - p_bg) ** 2).sum(1)
    torch.testing.assert_close(
        logits["prototype"][:, 1] - logits["prototype"][:, 0],
        expected.detach(),
        rtol=1e-3,
        atol=2e-3 * float(expected.abs().max()),
    )
    # ridge: the weighted least squares on the same transformed features
    a = 0.5 * y / y.sum() + 0.5 * (1 - y) / (1 - y).sum()
    xa = torch.cat([xt, torch.ones_like(xt[:, :1])], 1)
    gram = xa.T @ (xa * a[:, None])
    energy = torch.diagonal(gram)[:-1].mean()
    reg = torch.eye(len(gram), dtype=torch.double) * synth.log_ridge_lambda.double().exp().detach() * energy
    reg[-1, -1] = 1e-6 * energy
    solution = torch.linalg.solve(gram + reg, xa.T @ (a * (2 * y - 1)))
    margin = s.detach() * (xa @ solution)
    # (float32 conv on features that carry the shift: a few 1e-4 of the logit range)
    torch.testing.assert_close(
        logits["ridge"][:, 1] - logits["ridge"][:, 0], margin, rtol=1e-3, atol=2e-3 * float(margin.abs().max())
    )


@pytest.mark.e2e
def test_saved_wide_segmenter_loads_with_plain_transformers_in_a_fresh_process(tmp_path):
    synth = raw_synth(5)
    synth.fit_raw_passthrough(
        synth.encode(
            torch.stack(
                [
                    torch.from_numpy(np.array(blob_pair(i)[0].resize((32, 32)))).permute(2, 0, 1).float() / 127.5 - 1
                    for i in range(8)
                ]
            )
        )
    )
    segmenter = synth.synthesize(SegmentationTask("blob", [blob_pair(i) for i in range(3)]))
    assert segmenter.model.config.hidden_size == synth.config.hidden_size + synth.raw_channels
    assert segmenter.info["segmenter"]["raw_channels"] == synth.raw_channels
    files = write_query_images(tmp_path, 60)
    folder = segmenter.save_pretrained(tmp_path / "seg")
    out = last_json_line(run_python(PLAIN_TRANSFORMERS, str(folder), *files).stdout)
    check_plain(out, segmenter, files)


def test_bootstrap_intervals_and_paired_differences():
    scores = [[0.2, 0.4, 0.6, 0.8], [0.5, 0.5, 0.5, 0.5]]
    lo, hi = bootstrap_ci(scores, 500, 0)
    assert lo < np.mean([0.5, 0.5]) < hi and hi - lo < 0.5
    assert bootstrap_ci(scores, 500, 0) == [lo, hi]  # seeded

    def cell(values):
        return {"episode_dice": values}

    per_task = {
        "t1": {"a": {"5": cell([0.6, 0.7, 0.8])}, "b": {"5": cell([0.5, 0.6, 0.7])}},
        "t2": {"a": {"5": cell([0.3, 0.3, 0.3])}, "b": {"5": cell([0.3, 0.3, 0.3])}},
    }
    diff = paired_difference(per_task, "a", "b", 5, 500)
    assert diff["diff"] == pytest.approx(0.05) and diff["ci"] == pytest.approx(
        [0.05, 0.05]
    )  # paired: constant gap, no spread
    same = paired_difference(per_task, "b", "b", 5, 500)
    assert same["diff"] == 0 and same["ci"] == [0.0, 0.0]


def test_finetune_baseline_trains_learned_decoder_and_wide_classifier():
    from sgps_hf.data.segmentation import SegEpisode, TaskArrays
    from sgps_hf.evaluation.segmentation import finetune_predict, synth_predict
    from sgps_hf.training.seg_meta_train import FeatureBank

    synth = raw_synth(6)
    pairs = [blob_pair(70 + i, (32, 32)) for i in range(6)]
    arrays = TaskArrays(
        "blob",
        np.stack([np.asarray(p[0]) for p in pairs]),
        np.stack([p[1] for p in pairs]),
        [str(i) for i in range(6)],
    )
    bank = FeatureBank(synth, {"blob": arrays}, mirrored=True, dtype=torch.float32)
    episode = SegEpisode("blob", (0, 1), (2, 3, 4, 5))
    before = synth_predict(synth, bank, episode)
    untouched = {k: v.clone() for k, v in synth.state_dict().items()}
    zero_steps = finetune_predict(synth, bank, episode, steps=0, lr=1e-3, init_head=True, seed=0)
    assert torch.equal(zero_steps, before)  # the wide classifier starts from the synthesized head
    tuned = finetune_predict(synth, bank, episode, steps=5, lr=1e-2, init_head=True, seed=0)
    assert tuned.shape == before.shape and not torch.equal(tuned, before)
    assert all(torch.equal(v, synth.state_dict()[k]) for k, v in untouched.items())  # works on a copy


def test_raw_fit_variants_scale_each_stage_as_documented():
    synth = raw_synth(2)
    g = torch.Generator().manual_seed(7)
    features = synth.encode(torch.randn(6, 3, 32, 32, generator=g))

    def block(j, level):
        x = features[level].permute(0, 2, 3, 1).reshape(-1, features[level].shape[1]).double()
        u = (
            x @ getattr(synth, f"raw_projection_{j}").double().T
            + getattr(synth, f"raw_bias_{j}").double()
            - getattr(synth, f"raw_offset_{j}").double()
        )
        return x, u

    synth.fit_raw_passthrough(features, level_norm="energy")
    for j, level in enumerate(synth.config.raw_levels):  # each stage keeps a mean pixel energy of exactly 1
        torch.testing.assert_close(
            block(j, level)[1].pow(2).sum(1).mean(), torch.tensor(1.0, dtype=torch.float64), rtol=1e-4, atol=1e-4
        )
    synth.fit_raw_passthrough(features, standardize=False)
    x, u = block(
        0, 0
    )  # stage 0 keeps all its channels: without standardisation u is a rotation of x - mean, scaled once
    ratio = u.pow(2).sum(1) / (x - x.mean(0)).pow(2).sum(1).clamp_min(1e-12)
    assert float(ratio.std() / ratio.mean()) < 1e-3
    synth.fit_raw_passthrough(features)
    _, u_std = block(0, 0)
    assert not torch.allclose(
        u_std.pow(2).sum(1), u.pow(2).sum(1) * float(u_std.pow(2).sum(1).mean() / u.pow(2).sum(1).mean()), rtol=1e-2
    )
    with pytest.raises(SynthesisError, match="level_norm"):
        synth.fit_raw_passthrough(features, level_norm="pixel")
