"""The benchmark's few-shot methods, episode helpers, temperature fitting and cached baseline training."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import sgps_testing
from sgps_hf.data.episodes import ClassPool
from sgps_hf.evaluation import baselines as B
from sgps_hf.evaluation.benchmark import clip_shot, fit_temperature, make_episodes, max_feasible_shot
from sgps_hf.image_processing_sgps import SGPSImageProcessor
from sgps_hf.target import create_target


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
    return float(np.mean([(method.adapt(e)(e.query).argmax(-1) == e.query_labels).float().mean().item() for e in episodes]))


def test_episode_helpers_clip_and_repeat():
    pools = _pools(per_class=6)
    assert max_feasible_shot(pools) == 5 and clip_shot(20, pools) == 5 and clip_shot(0, pools) == 0
    first, again = make_episodes(pools, 3, 2, 3, 2, seed=4), make_episodes(pools, 3, 2, 3, 2, seed=4)
    assert all(torch.equal(a.support, b.support) and torch.equal(a.query, b.query) for a, b in zip(first, again))
    with pytest.raises(ValueError, match="two classes"):
        max_feasible_shot([ClassPool("t", "a", np.zeros((1, 8, 8, 3), np.uint8), "a")])


@pytest.mark.parametrize("kind", ["protonet", "nn", "probe", "finetune"])
def test_methods_learn_a_separable_task(setup, kind):
    _, body, processor = setup
    episodes = make_episodes(_pools(), 3, 3, 4, 3, seed=0)
    method = {
        "protonet": lambda: B.ProtoNetMethod(body, processor),
        "nn": lambda: B.NearestNeighbourMethod(body, processor, metric="euclidean"),
        "probe": lambda: B.LinearProbeMethod(body, processor, lr=0.1),
        "finetune": lambda: B.FineTuneMethod(body, processor, steps=3, probe_lr=0.1),
    }[kind]()
    assert _accuracy(method, episodes) > 0.9


def test_fomaml_inner_loop_fits_the_support_set(setup):
    # An untrained body's features are ~1e-3, too small for SGD to separate classes in a few steps; the
    # inner loop must still lower the support loss, and leave the meta-learned init untouched.
    _, body, processor = setup
    model = B.HeadedBody(copy.deepcopy(body), 3).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    episode = make_episodes(_pools(), 3, 3, 4, 1, seed=0)[0]
    support = processor.normalize_uint8(episode.support)
    params = {k: v for k, v in model.named_parameters() if not k.startswith("head.")}
    buffers = dict(model.named_buffers())
    start = {**params, **B.zero_head(model, 3)}

    def loss(p):
        return torch.nn.functional.cross_entropy(torch.func.functional_call(model, {**p, **buffers}, (support,)), episode.support_labels).item()

    adapted = B.inner_loop(model, start, buffers, support, episode.support_labels, steps=5, lr=0.5)
    assert loss(adapted) < loss(start)
    logits = B.FOMAMLMethod(model, processor, 0.5, 5).adapt(episode)(episode.query)
    assert logits.shape == (12, 3) and torch.isfinite(logits).all()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_support_statistics_are_measured_on_the_support_only(setup):
    _, body, processor = setup
    support = processor.normalize_uint8(make_episodes(_pools(), 3, 2, 2, 1, seed=0)[0].support)
    measured = B.with_support_statistics(body, support)
    name = "bn1.running_mean"
    assert torch.allclose(measured.state_dict()[name], body.conv_stem(support).mean((0, 2, 3)), atol=1e-5)
    assert not torch.equal(measured.state_dict()[name], body.state_dict()[name]) and not measured.training


def test_finetune_leaves_the_base_untouched_and_traces(setup):
    _, body, processor = setup
    before = {k: v.clone() for k, v in body.state_dict().items()}
    seen = []
    method = B.FineTuneMethod(body, processor, steps=4, support_statistics=True, trace=lambda step, predict: seen.append(step), trace_every=2)
    method.adapt(make_episodes(_pools(), 3, 2, 2, 1, seed=0)[0])
    assert seen == [0, 2, 4]
    assert all(torch.equal(before[k], v) for k, v in body.state_dict().items())


def test_sgps_modes(setup):
    synthesizer, _, _ = setup
    from sgps_hf.training.meta_train import TextBank

    pools = _pools()
    texts = TextBank(synthesizer.config, [p.text for p in pools])
    episode = make_episodes(pools, 3, 1, 2, 1, seed=0)[0]
    logits = {mode: B.SGPSMethod(synthesizer, texts, *mode).adapt(episode)(episode.query) for mode in [(True, True), (False, True), (True, False)]}
    assert all(l.shape == (6, 3) and torch.isfinite(l).all() for l in logits.values())
    assert not torch.equal(logits[True, True], logits[False, True])
    with pytest.raises(ValueError):
        B.SGPSMethod(synthesizer, texts, False, False)


def test_fomaml_meta_gradient_is_the_gradient_at_the_adapted_weights(setup):
    from sgps_hf.evaluation.meta_baselines import _fomaml_loss

    _, body, processor = setup
    model = B.HeadedBody(copy.deepcopy(body), 3).eval()
    episode = make_episodes(_pools(), 3, 2, 2, 1, seed=0)[0]
    support, query = processor.normalize_uint8(episode.support), processor.normalize_uint8(episode.query)
    _fomaml_loss(model, support, episode.support_labels, query, episode.query_labels, 3, steps=2, lr=0.1).backward()
    params = {k: v for k, v in model.named_parameters() if not k.startswith("head.")}
    buffers = dict(model.named_buffers())
    adapted = B.inner_loop(model, {**params, **B.zero_head(model, 3)}, buffers, support, episode.support_labels, 2, 0.1)
    leaves = {k: v.clone().requires_grad_(True) for k, v in adapted.items()}
    loss = torch.nn.functional.cross_entropy(torch.func.functional_call(model, {**leaves, **buffers}, (query,)), episode.query_labels)
    loss.backward()
    name = "body.conv_stem.weight"
    assert torch.allclose(params[name].grad, leaves[name].grad, atol=1e-6)


def test_fit_temperature_recovers_a_known_temperature():
    generator = torch.Generator().manual_seed(0)
    true_logits = torch.randn(4000, 4, generator=generator) * 2
    labels = torch.distributions.Categorical(logits=true_logits).sample()
    fitted = fit_temperature([true_logits * 3], [labels])  # over-confident by a factor 3
    assert fitted == pytest.approx(3.0, rel=0.1)
    assert 1e-4 <= fit_temperature([torch.tensor([[50.0, -50.0]])], [torch.tensor([0])]) <= 1e4


def test_baseline_training_is_cached(tmp_path, setup):
    from sgps_hf.evaluation.meta_baselines import BaselineBudget, meta_train_baseline, pretrained_body
    from sgps_hf.training.config import TrainingConfig

    synthesizer, _, _ = setup
    config = TrainingConfig(pretrain_epochs=1, n_way=3, k_shot=[1, 2], q_query=2, checkpoint_every=2)
    budget = BaselineBudget(steps=3, learning_rate=1e-3, val_episodes=2, eval_every=2, fomaml_inner_steps=1, fomaml_inner_lrs=(0.01,))
    train, val = _pools(4, 8, "train"), _pools(3, 6, "val")
    body, info = pretrained_body(synthesizer.config, config, train, tmp_path)
    assert len(info["history"]) == 1
    model, trained = meta_train_baseline("fomaml", copy.deepcopy(body), info, synthesizer.config, config, budget, train, val, tmp_path)
    assert trained["inner_lr"] == 0.01 and [h["step"] for h in trained["history"]] == [2, 3]
    assert len(list(tmp_path.glob("fomaml-*/checkpoint-*"))) == 1
    again_body, again_info = pretrained_body(synthesizer.config, config, train, tmp_path)
    assert again_info == info and all(torch.equal(a, b) for a, b in zip(body.state_dict().values(), again_body.state_dict().values()))
    again, cached = meta_train_baseline("fomaml", copy.deepcopy(body), info, synthesizer.config, config, budget, train, val, tmp_path)
    assert cached == trained
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
