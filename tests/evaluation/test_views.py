"""The baselines' SGPS-view variants (support views, task-adaptive BatchNorm) and the report's fair headline."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import sgps_testing
import torch

from sgps_hf.body.timm_network import body_features, create_target, task_batchnorm
from sgps_hf.data.episodes import ClassPool
from sgps_hf.evaluation import baselines as B
from sgps_hf.evaluation.protocol import BenchmarkConfig, build_methods, make_episodes, tune, with_views
from sgps_hf.evaluation.report import headline
from sgps_hf.evaluation.views import TaskEmbedding
from sgps_hf.models.sgps.image_processing_sgps import SGPSImageProcessor
from sgps_hf.models.sgps.modeling_sgps import apply_view
from sgps_hf.training.episode_inputs import TextBank

VIEWS = ("identity", "hflip", "rot90", "zoom")


def _pools(classes: int = 3, per_class: int = 10) -> list[ClassPool]:
    rng = np.random.default_rng(1)
    pools = []
    for c in range(classes):
        images = np.clip(rng.normal(40 + 80 * c, 8, size=(per_class, 32, 32, 3)), 0, 255).astype(np.uint8)
        pools.append(ClassPool("toy", f"c{c}", images, f"class {c}"))
    return pools


@pytest.fixture(scope="module")
def setup():
    synthesizer = sgps_testing.tiny_synthesizer()
    torch.manual_seed(0)
    body = create_target(synthesizer.config, num_classes=0).eval()
    return synthesizer, body, SGPSImageProcessor.from_sgps_config(synthesizer.config)


def _tensors(body):
    return {**dict(body.named_parameters()), **dict(body.named_buffers())}


def test_task_embedding_matches_the_views_and_task_batchnorm_of_the_body(setup):
    _, body, processor = setup
    episode = make_episodes(_pools(), 3, 2, 2, 1, seed=0)[0]
    pixels = processor.normalize_uint8(episode.support)
    plain, embed = TaskEmbedding(body, processor, VIEWS)(episode.support)
    assert plain.shape[:2] == (len(pixels), len(VIEWS))
    for v, view in enumerate(VIEWS):
        expected = body_features(body, _tensors(body), apply_view(pixels, view))
        torch.testing.assert_close(plain[:, v], expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        embed(episode.query), body_features(body, _tensors(body), processor.normalize_uint8(episode.query))
    )

    adapted_features, adapted_embed = TaskEmbedding(body, processor, VIEWS, task_batchnorm_images=4.0)(episode.support)
    batch = torch.cat([apply_view(pixels, view) for view in VIEWS])
    statistics, features = task_batchnorm(body, _tensors(body), batch, len(pixels) / (len(pixels) + 4.0))
    torch.testing.assert_close(adapted_features, features.view(len(VIEWS), len(pixels), -1).transpose(0, 1))
    queries = processor.normalize_uint8(episode.query)
    torch.testing.assert_close(adapted_embed(episode.query), body_features(body, statistics, queries))
    assert not torch.allclose(adapted_embed(episode.query), embed(episode.query))  # the statistics did move
    with pytest.raises(ValueError, match="at least one support view"):
        TaskEmbedding(body, processor, ())


def test_one_identity_view_without_task_batchnorm_is_the_published_baseline(setup):
    _, body, processor = setup
    episode = make_episodes(_pools(), 3, 2, 3, 1, seed=3)[0]
    identity = TaskEmbedding(body, processor, ("identity",))
    for plain, viewed in (
        (B.ProtoNetMethod(body, processor), B.ProtoNetMethod(body, processor, views=identity)),
        (B.NearestNeighbourMethod(body, processor), B.NearestNeighbourMethod(body, processor, views=identity)),
        (B.LinearProbeMethod(body, processor, lr=0.1), B.LinearProbeMethod(body, processor, lr=0.1, views=identity)),
    ):
        torch.testing.assert_close(viewed.adapt(episode)(episode.query), plain.adapt(episode)(episode.query))


@pytest.mark.parametrize("kind", ["protonet", "nn", "probe", "finetune", "finetune-top"])
def test_view_variants_learn_a_separable_task(setup, kind):
    _, body, processor = setup
    episodes = make_episodes(_pools(), 3, 2, 4, 3, seed=0)
    views = TaskEmbedding(body, processor, VIEWS, task_batchnorm_images=8.0)
    tuned = {"steps": 3, "lr": 1e-4, "probe_lr": 0.1, "support_views": VIEWS, "task_batchnorm_images": 8.0}
    method = {
        "protonet": lambda: B.ProtoNetMethod(body, processor, views=views),
        "nn": lambda: B.NearestNeighbourMethod(body, processor, metric="euclidean", views=views),
        "probe": lambda: B.LinearProbeMethod(body, processor, lr=0.1, views=views),
        "finetune": lambda: B.FineTuneMethod(copy.deepcopy(body), processor, **tuned),
        "finetune-top": lambda: B.FineTuneMethod(copy.deepcopy(body), processor, top_blocks=1, **tuned),
    }[kind]()
    before = {k: v.clone() for k, v in body.state_dict().items()}
    accuracy = np.mean([(method.adapt(e)(e.query).argmax(-1) == e.query_labels).float().mean() for e in episodes])
    assert accuracy > 0.9
    assert all(torch.equal(before[k], v) for k, v in body.state_dict().items())  # the shared body is not changed
    facts = method.describe()
    assert "task-adaptive" in facts["BatchNorm statistics"]


def test_finetuning_with_task_batchnorm_changes_the_predictions_not_the_template(setup):
    _, body, processor = setup
    episode = make_episodes(_pools(), 3, 2, 3, 1, seed=1)[0]
    common = {"steps": 2, "lr": 1e-3, "probe_lr": 0.1, "support_views": VIEWS}
    plain = B.FineTuneMethod(copy.deepcopy(body), processor, **common)
    adapted = B.FineTuneMethod(copy.deepcopy(body), processor, task_batchnorm_images=4.0, **common)
    before = {k: v.clone() for k, v in adapted._top.state_dict().items()}
    assert not torch.allclose(plain.adapt(episode)(episode.query), adapted.adapt(episode)(episode.query))
    assert all(torch.equal(before[k], v) for k, v in adapted._top.state_dict().items())


def test_build_methods_adds_every_baseline_with_views_and_tunes_them_apart(setup):
    synthesizer, _, _ = setup
    synthesizer = copy.deepcopy(synthesizer)
    synthesizer.config.support_views = list(VIEWS)
    synthesizer.config.task_batchnorm_images = 10.0
    pools = _pools()
    texts = TextBank(synthesizer.config, [p.text for p in pools])
    bench = BenchmarkConfig(probe_lrs=(0.01, 0.1), finetune_lrs=(1e-3,), finetune_steps=1, tune_episodes=1)
    methods = build_methods(synthesizer, texts, bench)
    for base in ("ProtoNet", "Fine-tune all layers", "Fine-tune top layers", "Fine-tune head (linear probe)"):
        assert base in methods.methods and with_views(base, True) in methods.methods
    viewed = methods.methods[with_views("ProtoNet", True)]
    assert viewed.views.task_batchnorm_images == 10.0 and tuple(viewed.views.views) == VIEWS
    assert with_views("ProtoNet", True) not in methods.cheap_image_methods()
    tune(methods, make_episodes(pools, 3, 2, 2, 1, seed=5), bench)
    probe = with_views("Fine-tune head (linear probe)", True)
    assert set(methods.tuning[probe]["scores"]) == {"0.01", "0.1"}
    assert methods.methods[with_views("Fine-tune all layers", True)].probe_lr == methods.tuning[probe]["chosen"]
    assert methods.temperatures[with_views("Fine-tune all layers", True)] > 0
    off = build_methods(synthesizer, texts, BenchmarkConfig(view_baselines=False))
    assert not any("SGPS views" in name for name in off.methods)


def test_headline_compares_sgps_with_the_best_baseline_of_either_kind():
    def row(accuracy):
        return {"accuracy": {"mean": accuracy}}

    main = {
        "SGPS (image + text)": {"1": row(0.44), "5": row(0.60)},
        "SGPS (text only)": {"0": row(0.3)},
        "ProtoNet": {"1": row(0.39), "5": row(0.54)},
        "Fine-tune head (linear probe)": {"1": row(0.42), "5": row(0.56)},
        "ProtoNet + SGPS views + task BN": {"1": row(0.41), "5": row(0.58)},
        "Nearest neighbour + SGPS views + task BN": {"1": row(0.40), "5": row(0.50)},
    }
    one, five = headline(main)
    assert one["plain"]["method"] == "Fine-tune head (linear probe)" and one["best"] == one["plain"]
    assert five["views"]["method"] == "ProtoNet + SGPS views + task BN" and five["best"] == five["views"]
    assert five["best"]["margin"] == pytest.approx(0.02) and one["best"]["margin"] == pytest.approx(0.02)


def test_task_embedding_runs_the_body_once_per_episode_for_the_methods_sharing_it(setup):
    _, body, processor = setup
    episode = make_episodes(_pools(), 3, 2, 2, 1, seed=2)[0]
    calls = []
    hook = body.register_forward_hook(lambda *_: calls.append(1))
    try:
        shared = TaskEmbedding(body, processor, VIEWS, task_batchnorm_images=4.0)
        first = B.ProtoNetMethod(body, processor, views=shared).adapt(episode)(episode.query)
        passes = len(calls)
        again = B.ProtoNetMethod(body, processor, views=shared).adapt(episode)(episode.query)
        assert len(calls) == passes and torch.equal(first, again)
        fresh = TaskEmbedding(body, processor, VIEWS, task_batchnorm_images=4.0, cache=False)
        torch.testing.assert_close(B.ProtoNetMethod(body, processor, views=fresh).adapt(episode)(episode.query), first)
        assert len(calls) > passes
    finally:
        hook.remove()
