"""The blended head: a K-dependent mix of the prototype and ridge margins, each in units of its separation."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from seg_testing import PLAIN_TRANSFORMERS, blob_pair, check_plain, tiny_seg_synthesizer, write_query_images
from sgps_testing import last_json_line, run_python

from sgps_hf import SegmentationTask, SGPSSegConfig
from sgps_hf.errors import SynthesisError
from sgps_hf.models.sgps_seg.heads import blend_margin, margin_separation, mix_for, prototype_margin, ridge_margin

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _support(seed: int, c: int = 6):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(200, c, generator=g, dtype=torch.float64)
    y = (torch.rand(200, generator=g, dtype=torch.float64) > 0.7).double()
    x[y > 0] += 0.8  # a little signal, so both separations are positive
    return x, y


def _margin(x, y, w):
    d, b = blend_margin(x, y, torch.tensor(0.1, dtype=torch.float64), w)
    return x @ d + b


@pytest.mark.parametrize("seed", [0, 1])
def test_blend_is_the_mix_of_the_two_normalised_margins(seed):
    x, y = _support(seed)
    lam = torch.tensor(0.1, dtype=torch.float64)
    parts = {}
    for name, (d, b) in (("prototype", prototype_margin(x, y)), ("ridge", ridge_margin(x, y, lam))):
        sep = margin_separation(x, y, d, b)
        assert sep > 0
        parts[name] = (x @ d + b) / sep
    torch.testing.assert_close(_margin(x, y, 0.0), parts["ridge"])
    torch.testing.assert_close(_margin(x, y, 1.0), parts["prototype"])
    torch.testing.assert_close(_margin(x, y, 0.3), 0.3 * parts["prototype"] + 0.7 * parts["ridge"])
    d, b = blend_margin(x, y, lam, 0.3)
    torch.testing.assert_close(margin_separation(x, y, d, b), torch.tensor(1.0, dtype=torch.float64))


def test_blend_at_the_ends_decides_like_ridge_and_prototype():
    synth = tiny_seg_synthesizer(0)
    torch.manual_seed(3)
    feats = torch.randn(2, synth.config.hidden_size, 4, 4)
    masks = (torch.rand(2, 1, 4, 4) > 0.6).float()
    masks[0, 0, 0, 0], masks[0, 0, 0, 1] = 1, 0
    query = torch.randn(3, synth.config.hidden_size, 4, 4)

    def decision(head, mix=None):
        synth.config.prototype_mix = mix
        with torch.no_grad():
            logits = F.conv2d(query, *synth.head_from_support(feats, masks, head=head))
        return logits[:, 1] > logits[:, 0]

    assert torch.equal(decision("blend", [0.0]), decision("ridge"))
    assert torch.equal(decision("blend", [1.0]), decision("prototype"))
    assert not torch.equal(decision("blend", [0.5]), decision("ridge")) or not torch.equal(
        decision("blend", [0.5]), decision("prototype")
    )


def test_prototype_mix_picks_the_blend_and_its_weight_per_k():
    assert [mix_for([0.5, 0.4, 0.1], k) for k in (1, 2, 3, 8)] == [0.5, 0.4, 0.1, 0.1]
    synth = tiny_seg_synthesizer(0, prototype_mix=[0.6, 0.2])
    assert [synth.resolve_head(k) for k in (1, 5)] == ["blend", "blend"]
    assert tiny_seg_synthesizer(0, prototype_mix=[0.6], prototype_max_k=1).resolve_head(1) == "prototype"
    assert tiny_seg_synthesizer(0).resolve_head(5) == "ridge"  # configs without prototype_mix keep their head
    with pytest.raises(ValueError, match="prototype_mix"):
        SGPSSegConfig(prototype_mix=[1.5])
    with pytest.raises(SynthesisError, match="prototype_mix"):
        mix_for([], 2)
    with pytest.raises(SynthesisError, match="prototype weight"):
        blend_margin(*_support(0), torch.tensor(0.1, dtype=torch.float64), -0.1)


@pytest.mark.e2e
def test_blended_export_loads_with_plain_transformers_in_a_fresh_process_with_the_same_masks(tmp_path):
    synth = tiny_seg_synthesizer(
        4, raw_levels=[0, 1], raw_dims=[24, 8], raw_weight=3.0, learned_energy_norm=True, prototype_mix=[0.7, 0.5, 0.3]
    )
    images = torch.stack(
        [
            torch.from_numpy(np.array(blob_pair(i)[0].resize((32, 32)))).permute(2, 0, 1).float() / 127.5 - 1
            for i in range(8)
        ]
    )
    synth.fit_raw_passthrough(synth.encode(images))
    segmenter = synth.synthesize(SegmentationTask("blob", [blob_pair(i) for i in range(3)]))
    assert segmenter.info["head"] == "blend"
    files = write_query_images(tmp_path, 70)
    folder = segmenter.save_pretrained(tmp_path / "seg")
    check_plain(last_json_line(run_python(PLAIN_TRANSFORMERS, str(folder), *files).stdout), segmenter, files)
