"""The benchmark's few-shot methods, the shared feature memo, episode helpers and temperature fitting."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import sgps_testing
import torch

from sgps_hf.body.timm_network import create_target
from sgps_hf.data.episodes import ClassPool
from sgps_hf.evaluation import baselines as B
from sgps_hf.evaluation.protocol import clip_shot, fit_temperature, make_episodes, max_feasible_shot
from sgps_hf.models.sgps.image_processing_sgps import SGPSImageProcessor


def _pools(classes: int = 3, per_class: int = 12, task: str = "toy") -> list[ClassPool]:
    """Classes that differ in brightness: any working method separates them."""
    rng = np.random.default_rng(0)
    pools = []
    for c in range(classes):
        level = 40 + 80 * c
        images = np.clip(rng.normal(level, 8, size=(per_class, 32, 32, 3)), 0, 255).astype(np.uint8)
        pools.append(ClassPool(task, f"c{c}", images, f"class {c}"))
    return pools


@pytest.fixture(scope="module")
def setup():
    synthesizer = sgps_testing.tiny_synthesizer()
    torch.manual_seed(0)
    body = create_target(synthesizer.config, num_classes=0).eval()
    return synthesizer, body, SGPSImageProcessor.from_sgps_config(synthesizer.config)


def _accuracy(method, episodes) -> float:
    return float(
        np.mean([(method.adapt(e)(e.query).argmax(-1) == e.query_labels).float().mean().item() for e in episodes])
    )


def test_episode_helpers_clip_and_repeat():
    pools = _pools(per_class=6)
    assert max_feasible_shot(pools) == 5 and clip_shot(20, pools) == 5 and clip_shot(0, pools) == 0
    first, again = make_episodes(pools, 3, 2, 3, 2, seed=4), make_episodes(pools, 3, 2, 3, 2, seed=4)
    assert all(
        torch.equal(a.support, b.support) and torch.equal(a.query, b.query) for a, b in zip(first, again, strict=False)
    )
    with pytest.raises(ValueError, match="two classes"):
        max_feasible_shot([ClassPool("t", "a", np.zeros((1, 8, 8, 3), np.uint8), "a")])


@pytest.mark.parametrize("kind", ["protonet", "nn", "probe", "finetune", "finetune-top"])
def test_methods_learn_a_separable_task(setup, kind):
    _, body, processor = setup
    episodes = make_episodes(_pools(), 3, 3, 4, 3, seed=0)
    method = {
        "protonet": lambda: B.ProtoNetMethod(body, processor),
        "nn": lambda: B.NearestNeighbourMethod(body, processor, metric="euclidean"),
        "probe": lambda: B.LinearProbeMethod(body, processor, lr=0.1),
        "finetune": lambda: B.FineTuneMethod(body, processor, steps=3, lr=1e-4, probe_lr=0.1),
        "finetune-top": lambda: B.FineTuneMethod(body, processor, steps=3, lr=1e-4, probe_lr=0.1, top_blocks=1),
    }[kind]()
    assert _accuracy(method, episodes) > 0.9


def test_finetune_leaves_the_base_untouched_and_traces(setup):
    _, body, processor = setup
    before = {k: v.clone() for k, v in body.state_dict().items()}
    seen = []
    method = B.FineTuneMethod(body, processor, steps=4, trace=lambda step, predict: seen.append(step), trace_every=2)
    method.adapt(make_episodes(_pools(), 3, 2, 2, 1, seed=0)[0])
    assert seen == [0, 2, 4]
    assert all(torch.equal(before[k], v) for k, v in body.state_dict().items())


def test_top_layer_finetuning_trains_only_the_top_and_matches_the_body_before_training(setup):
    _, body, processor = setup
    bottom, top = B.split_body(body, 1)
    images = processor.normalize_uint8(make_episodes(_pools(), 3, 2, 2, 1, seed=0)[0].support)
    with torch.no_grad():
        assert torch.allclose(top(bottom(images)), body(images), atol=1e-6)
    episode = make_episodes(_pools(), 3, 3, 4, 3, seed=0)[0]
    untrained = B.FineTuneMethod(copy.deepcopy(body), processor, steps=0, top_blocks=1, probe_lr=0.1).adapt(episode)(
        episode.query
    )
    probe = B.LinearProbeMethod(body, processor, lr=0.1).adapt(episode)(episode.query)
    assert torch.allclose(untrained, probe, atol=1e-4)  # 0 steps: exactly the probe on the same features
    with pytest.raises(ValueError, match="top_blocks"):
        B.split_body(body, 99)


def test_feature_memo_computes_each_image_once(setup):
    _, body, processor = setup
    calls = []
    memo = B.FeatureMemo(copy.deepcopy(body))
    memo.module.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    images = processor.normalize_uint8(make_episodes(_pools(), 3, 2, 2, 1, seed=0)[0].support)
    first = memo(images)
    again = memo(torch.cat([images[:2], images]))
    assert calls == [len(images)]  # the second call found every image in the memo
    with torch.no_grad():
        assert torch.allclose(first, body(images), atol=1e-6) and torch.equal(again[2:], first)


def test_sgps_modes(setup):
    synthesizer, _, _ = setup
    from sgps_hf.training.episode_inputs import TextBank

    # an untrained synthesizer's class memory is empty: give the texts something to say
    synthesizer = sgps_testing.with_random_text_memory(copy.deepcopy(synthesizer), seed=0)

    pools = _pools()
    texts = TextBank(synthesizer.config, [p.text for p in pools])
    episode = make_episodes(pools, 3, 1, 2, 1, seed=0)[0]
    logits = {
        mode: B.SGPSMethod(synthesizer, texts, *mode).adapt(episode)(episode.query)
        for mode in [(True, True), (False, True), (True, False)]
    }
    assert all(x.shape == (6, 3) and torch.isfinite(x).all() for x in logits.values())
    assert not torch.equal(logits[True, True], logits[False, True])
    with pytest.raises(ValueError):
        B.SGPSMethod(synthesizer, texts, False, False)


def test_fit_temperature_recovers_a_known_temperature():
    generator = torch.Generator().manual_seed(0)
    true_logits = torch.randn(4000, 4, generator=generator) * 2
    labels = torch.distributions.Categorical(logits=true_logits).sample()
    fitted = fit_temperature([true_logits * 3], [labels])  # over-confident by a factor 3
    assert fitted == pytest.approx(3.0, rel=0.1)
    assert 1e-4 <= fit_temperature([torch.tensor([[50.0, -50.0]])], [torch.tensor([0])]) <= 1e4


def test_sgps_with_task_batchnorm_scores_the_queries_through_the_synthesized_body(setup):
    from sgps_hf.training.episode_inputs import TextBank

    synthesizer = copy.deepcopy(setup[0])
    synthesizer.config = synthesizer.config.with_changes(task_batchnorm_images=5)
    pools = _pools()
    texts = TextBank(synthesizer.config, [p.text for p in pools])
    episode = make_episodes(pools, 3, 2, 2, 1, seed=0)[0]
    processor = SGPSImageProcessor.from_sgps_config(synthesizer.config)
    with torch.no_grad():
        output = synthesizer(
            support_pixel_values=processor.normalize_uint8(episode.support),
            support_labels=episode.support_labels,
            text_embeds=texts(episode.class_texts),
            text_mask=torch.ones(3, dtype=torch.bool),
            query_pixel_values=processor.normalize_uint8(episode.query),
        )
    adapted = B.SGPSMethod(synthesizer, texts).adapt(episode)(episode.query)
    torch.testing.assert_close(adapted, output.logits)
    # Without task BatchNorm the memo of the unadapted body serves, through the same path: other logits.
    synthesizer.config = synthesizer.config.with_changes(task_batchnorm_images=None)
    unadapted = B.SGPSMethod(synthesizer, texts).adapt(episode)(episode.query)
    assert not torch.allclose(unadapted, adapted)
    with torch.no_grad():
        plain = synthesizer(
            support_pixel_values=processor.normalize_uint8(episode.support),
            support_labels=episode.support_labels,
            text_embeds=texts(episode.class_texts),
            text_mask=torch.ones(3, dtype=torch.bool),
            query_pixel_values=processor.normalize_uint8(episode.query),
        )
    torch.testing.assert_close(unadapted, plain.logits)
