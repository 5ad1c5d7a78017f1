"""Unit tests of the v2 training pieces: augmentations, body pre-training helpers and the feature cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sgps_testing import tiny_synthesizer

from sgps_hf.body.timm_network import batchnorm_layers
from sgps_hf.data.episodes import ClassPool, EpisodeSampler
from sgps_hf.models.sgps.image_processing_sgps import SGPSImageProcessor
from sgps_hf.training.augment import medical_augment, random_flips
from sgps_hf.training.feature_cache import episode_features, pool_features
from sgps_hf.training.pretrain import balanced_weights, interpolate_bodies

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def uint8_batch(seed=0, n=6, size=32):
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def pools(size=32, per_class=(5, 4, 6, 3), tasks=("task-a", "task-a", "task-a", "task-b")):
    rng = np.random.default_rng(0)
    return [
        ClassPool(task, f"class-{i}", rng.integers(0, 256, (m, size, size, 3), dtype=np.uint8), f"text of class {i}")
        for i, (task, m) in enumerate(zip(tasks, per_class, strict=False))
    ]


# -- augment ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make_rng",
    [lambda s: np.random.default_rng(s), lambda s: torch.Generator().manual_seed(s)],
    ids=["numpy", "torch"],
)
def test_random_flips_are_flips_and_reproducible(make_rng):
    images = uint8_batch(n=32)
    out = random_flips(images, make_rng(1))
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert torch.equal(out, random_flips(images, make_rng(1)))
    assert not torch.equal(out, random_flips(images, make_rng(2)))
    kinds = []
    for original, flipped in zip(images, out, strict=False):
        candidates = [original, original.flip(-1), original.flip(-2), original.flip(-1).flip(-2)]
        matches = [j for j, c in enumerate(candidates) if torch.equal(c, flipped)]
        assert matches, "every output is one of the four flips of its input"
        kinds.append(matches[0])
    assert len(set(kinds)) > 1  # 32 images: more than one kind of flip drawn
    assert torch.equal(images, uint8_batch(n=32))  # the input is not modified in place


def test_medical_augment_shapes_dtype_and_determinism():
    images = uint8_batch(n=5)
    out = medical_augment(images, torch.Generator().manual_seed(3))
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert torch.equal(out, medical_augment(images, torch.Generator().manual_seed(3)))
    assert not torch.equal(out, medical_augment(images, torch.Generator().manual_seed(4)))
    assert not torch.equal(out, images)
    assert torch.equal(images, uint8_batch(n=5))  # input untouched
    # a constant image stays (nearly) constant: crops, flips and blur move no mass between values
    flat = torch.full((2, 3, 32, 32), 100, dtype=torch.uint8)
    result = medical_augment(flat, torch.Generator().manual_seed(0)).float()
    assert (result.amax(dim=(1, 2, 3)) - result.amin(dim=(1, 2, 3))).max() <= 1


# -- pretrain helpers ---------------------------------------------------------------------------------------------
def test_balanced_weights_give_every_task_and_every_class_of_a_task_equal_mass():
    chosen = pools()
    weights = balanced_weights(chosen)
    assert weights.dtype == torch.float64 and weights.shape == (sum(len(p) for p in chosen),)
    bounds = np.cumsum([0] + [len(p) for p in chosen])
    mass = [weights[a:b].sum().item() / weights.sum().item() for a, b in zip(bounds[:-1], bounds[1:], strict=False)]
    # task-a has 3 classes (1/2 of the mass between them), task-b one class (the other 1/2)
    assert mass == pytest.approx([1 / 6, 1 / 6, 1 / 6, 1 / 2])
    # within a class every image is equally likely
    assert torch.all(weights[: len(chosen[0])] == weights[0])


def test_interpolate_bodies_mixes_floating_tensors_only():
    adapted = {
        "w": torch.full((3,), 2.0),
        "bn.running_var": torch.full((2,), 4.0),
        "bn.num_batches_tracked": torch.tensor(7),
    }
    start = {"w": torch.zeros(3), "bn.running_var": torch.ones(2), "bn.num_batches_tracked": torch.tensor(1)}
    half = interpolate_bodies(adapted, start, 0.25)
    assert torch.equal(half["w"], torch.full((3,), 0.5)) and torch.equal(
        half["bn.running_var"], torch.full((2,), 1.75)
    )
    assert half["bn.num_batches_tracked"].item() == 7  # integers are copied from the adapted body
    assert all(torch.equal(interpolate_bodies(adapted, start, 1.0)[k], v) for k, v in adapted.items())
    assert all(torch.equal(interpolate_bodies(adapted, start, 0.0)[k], start[k]) for k in ("w", "bn.running_var"))
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="alpha must be in"):
            interpolate_bodies(adapted, start, bad)


# -- feature cache ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synth():
    return tiny_synthesizer(seed=0)


@pytest.fixture(scope="module")
def processor(synth):
    return SGPSImageProcessor(
        image_size=synth.config.image_size, image_mean=synth.config.image_mean, image_std=synth.config.image_std
    )


def test_pool_features_are_the_support_view_features_of_every_image(synth, processor, tmp_path):
    chosen = pools()
    features = pool_features(synth, chosen, processor, cache_dir=tmp_path)
    assert set(features) == {(p.task, p.class_name) for p in chosen}
    for pool in chosen:
        images = processor.normalize_uint8(torch.from_numpy(pool.images).permute(0, 3, 1, 2))
        with torch.no_grad():
            expected = synth.support_view_features(images)
        assert features[(pool.task, pool.class_name)].shape == (
            len(pool),
            len(synth.config.support_views),
            synth.target.num_features,
        )
        torch.testing.assert_close(features[(pool.task, pool.class_name)], expected, rtol=1e-5, atol=1e-6)


def test_pool_features_under_other_views_are_cached_apart(synth, processor, tmp_path):
    chosen = pools()
    default = pool_features(synth, chosen, processor, cache_dir=tmp_path)
    fewer = pool_features(synth, chosen, processor, cache_dir=tmp_path, views=["identity"])
    assert len(sorted((tmp_path / "features").glob("*.safetensors"))) == 2
    for key, tensor in fewer.items():
        assert tensor.shape[1] == 1
        torch.testing.assert_close(tensor[:, 0], default[key][:, 0], rtol=1e-5, atol=1e-6)


def test_episode_features_equal_body_features_of_the_episodes_images(synth, processor, tmp_path):
    chosen = pools()
    features = pool_features(synth, chosen, processor, cache_dir=tmp_path)
    sampler = EpisodeSampler(chosen, n_way=3, k_shot=2, q_query=2, seed=1)
    for index in range(3):
        episode = sampler.episode(index)
        support, query = episode_features(episode, features)
        with torch.no_grad():
            expected_support = synth.support_view_features(processor.normalize_uint8(episode.support))
            expected_query = synth.target(processor.normalize_uint8(episode.query))
        torch.testing.assert_close(support, expected_support, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(query, expected_query, rtol=1e-5, atol=1e-6)


def test_the_cache_is_reused_and_a_changed_body_gets_a_new_key(processor, tmp_path, monkeypatch):
    synth = tiny_synthesizer(seed=0)
    chosen = pools(per_class=(3, 3, 3, 3))
    first = pool_features(synth, chosen, processor, cache_dir=tmp_path)
    files = sorted((tmp_path / "features").glob("*.safetensors"))
    assert len(files) == 1 and not list((tmp_path / "features").glob("*.tmp"))

    calls = []
    original = type(synth).support_view_features
    monkeypatch.setattr(
        type(synth), "support_view_features", lambda self, x, **kw: calls.append(x) or original(self, x, **kw)
    )
    again = pool_features(synth, chosen, processor, cache_dir=tmp_path)
    assert not calls, "the cached features were read, the body did not run"
    assert all(torch.equal(first[k], again[k]) for k in first)

    with torch.no_grad():
        synth.target.conv_stem.weight.mul_(1.5)  # another body
    changed = pool_features(synth, chosen, processor, cache_dir=tmp_path)
    assert calls and len(sorted((tmp_path / "features").glob("*.safetensors"))) == 2
    assert not torch.allclose(changed[("task-a", "class-0")], first[("task-a", "class-0")])
    # other pixels, other key too
    other = pools(per_class=(3, 3, 3, 3))
    other[0].images[0, 0, 0, 0] ^= 1
    pool_features(synth, other, processor, cache_dir=tmp_path)
    assert len(sorted((tmp_path / "features").glob("*.safetensors"))) == 3


# -- body adaptation and distillation ---------------------------------------------------------------------------
def body_config(**overrides):
    from sgps_hf.training.config import TrainingConfig

    return TrainingConfig(
        **{
            "pretrain_epochs": 2,
            "pretrain_batch_size": 6,
            "pretrain_samples_per_epoch": 18,
            "pretrain_learning_rate": 3e-3,
            **overrides,
        }
    )


def state_of(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_pretrain_body_trains_the_body_in_place_and_reports_every_epoch():
    from accelerate import Accelerator

    from sgps_hf.training.pretrain import pretrain_body

    synth = tiny_synthesizer()
    processor = SGPSImageProcessor.from_sgps_config(synth.config)
    before = state_of(synth.target)
    history = pretrain_body(Accelerator(cpu=True), synth.target, pools(), processor, body_config())
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(np.isfinite(h["loss"]) and 0 <= h["accuracy"] <= 1 for h in history)
    after = synth.target.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if before[k].is_floating_point())
    # the BatchNorm momenta the synthesizer runs with are restored after training at ordinary momentum
    assert [bn.momentum for _, bn in batchnorm_layers(synth.target)] == [
        bn.momentum for _, bn in batchnorm_layers(tiny_synthesizer().target)
    ]


def test_distill_body_teaches_the_student_the_teachers_features_and_leaves_the_teacher_alone():
    from accelerate import Accelerator

    from sgps_hf.training.pretrain import distill_body

    teacher = tiny_synthesizer(seed=1, channel_multiplier=0.5).target
    student = tiny_synthesizer(seed=2).target
    processor = SGPSImageProcessor.from_sgps_config(tiny_synthesizer().config)
    teacher_before, student_before = state_of(teacher), state_of(student)
    config = body_config(pretrain_epochs=6, pretrain_learning_rate=1e-2)
    history = distill_body(Accelerator(cpu=True), student, teacher, pools(per_class=(8, 8, 8, 8)), processor, config)
    assert [h["epoch"] for h in history] == list(range(1, 7))
    assert all(abs(h["explained_variance"] - (1 - h["loss"])) < 1e-6 for h in history)
    # the student learns to explain more of the teacher's features (widths differ: a linear map joins them)
    assert teacher.num_features != student.num_features
    assert history[-1]["explained_variance"] > history[0]["explained_variance"]
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_before.items())
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert any(not torch.equal(v, student.state_dict()[k]) for k, v in student_before.items() if v.is_floating_point())
    assert set(student.state_dict()) == set(student_before)  # the projection is not left in the body
