"""SGPSSynthesizer: a complete, exact, deterministic, order-equivariant timm state dict from a task."""

import json
import math
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from sgps_testing import (
    last_json_line,
    noise_image,
    run_python,
    synthetic_task,
    tiny_synthesizer,
    with_random_text_memory,
)
from transformers import AutoConfig, AutoModel

from sgps_hf import ClassSpec, SGPSConfig, SGPSProcessor, SGPSSynthesizer, SynthesisError, TaskSpec
from sgps_hf.hub.checkpoints import state_dict_sha256
from sgps_hf.models.sgps.configuration_sgps import SUPPORT_VIEWS
from sgps_hf.models.sgps.heads import fold_linear, ridge_head, standardize
from sgps_hf.models.sgps.modeling_sgps import apply_view

pytestmark = pytest.mark.usefixtures("torch_single_thread")

MIXED = dict(texts=("round pink papule", "dark irregular plaque", "scaly red patch"), images_per_class=(2, 1, 3))
TEXT_ONLY = dict(texts=("round pink papule", "dark irregular plaque", "scaly red patch"), images_per_class=(0, 0, 0))
IMAGE_ONLY = dict(texts=(None, None, None), images_per_class=(2, 2, 1))
PARTIAL = dict(
    texts=("round pink papule", None, "scaly red patch"), images_per_class=(0, 2, 2)
)  # text-only + image-only + both
KINDS = {"mixed": MIXED, "text-only": TEXT_ONLY, "image-only": IMAGE_ONLY, "partial": PARTIAL}


@pytest.fixture(scope="module")
def synth():
    return tiny_synthesizer(seed=0)


@pytest.fixture(scope="module")
def processor(synth):
    return SGPSProcessor.from_sgps_config(synth.config)


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    return {kind: synthetic_task(root / kind, **spec, name=kind) for kind, spec in KINDS.items()}


@pytest.fixture(scope="module")
def queries(processor):
    return processor.image_processor([noise_image(seed) for seed in (101, 102, 103, 104)])["pixel_values"]


def forward(synth, processor, task, **kwargs):
    inputs = processor.prepare_task(task)
    return synth(
        support_pixel_values=inputs["support_pixel_values"],
        support_labels=inputs["support_labels"],
        num_classes=inputs["num_classes"],
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        text_mask=inputs["text_mask"],
        **kwargs,
    )


def test_config_class_and_auto_registration(synth):
    assert SGPSSynthesizer.config_class is SGPSConfig
    assert AutoModel._model_mapping[SGPSConfig] is SGPSSynthesizer
    assert not synth.training  # the fixture is in eval mode


@pytest.mark.parametrize("kind", list(KINDS))
def test_weights_are_exactly_a_timm_state_dict(synth, processor, tasks, kind):
    config = synth.config
    with torch.no_grad():
        weights = forward(synth, processor, tasks[kind]).weights
    reference = timm.create_model(config.target_architecture, num_classes=3, **config.target_model_args).state_dict()
    assert set(weights) == set(reference)
    for name, tensor in reference.items():
        assert weights[name].shape == tensor.shape, name
        assert weights[name].dtype == tensor.dtype, name
        if tensor.is_floating_point():
            assert torch.isfinite(weights[name]).all(), name
    assert weights["classifier.weight"].shape == (3, synth.target.num_features)


@pytest.mark.parametrize("kind", list(KINDS))
def test_functional_path_equals_materialized_classifier(synth, processor, tasks, queries, kind):
    with torch.no_grad():
        logits = forward(synth, processor, tasks[kind], query_pixel_values=queries).logits
        classifier = synth.synthesize(tasks[kind], processor=processor)
        assert not classifier.model.training
        materialized = classifier.model(queries)
    assert logits.shape == (4, 3)
    torch.testing.assert_close(logits, materialized, rtol=1e-5, atol=1e-5)
    # and the classifier's own preprocessing gives the same inputs
    torch.testing.assert_close(
        classifier.image_processor([noise_image(101)])["pixel_values"], queries[:1], rtol=0, atol=0
    )


def test_synthesis_is_deterministic_in_process(synth, processor, tasks):
    first = synth.synthesize(tasks["mixed"], processor=processor)
    second = synth.synthesize(tasks["mixed"])  # default processor built from the config
    digest = state_dict_sha256(first.model.state_dict())
    assert digest == state_dict_sha256(second.model.state_dict())
    assert first.info["weights_sha256"] == digest  # the recorded hash is the hash of the shipped weights
    assert digest != state_dict_sha256(synth.synthesize(tasks["image-only"]).model.state_dict())


def test_synthesize_runs_in_eval_mode_and_leaves_the_synthesizer_unchanged(processor, tasks):
    synth = tiny_synthesizer(seed=0)
    reference = state_dict_sha256(synth.synthesize(tasks["mixed"]).model.state_dict())
    synth.train()  # dropout on, statistics tracking on: synthesize must still be exact and side-effect free
    before = state_dict_sha256(synth.state_dict())
    assert state_dict_sha256(synth.synthesize(tasks["mixed"], processor=processor).model.state_dict()) == reference
    assert synth.training  # mode restored
    assert state_dict_sha256(synth.state_dict()) == before


def test_synthesis_is_bit_identical_in_a_fresh_process(synth, tmp_path):
    folder = tmp_path / "task"
    task = synthetic_task(folder, **MIXED)
    (folder / "task.json").write_text(
        json.dumps(
            {
                "classes": [
                    {"name": c.name, "description": c.description, "images": [Path(p).name for p in c.images]}
                    for c in task.classes
                ]
            }
        )
    )
    synth.save_pretrained(tmp_path / "synth")
    expected = synth.synthesize(TaskSpec.from_file(folder / "task.json"))
    result = run_python(
        """
        import json, sys
        from sgps_hf import SGPSSynthesizer, TaskSpec
        from sgps_hf.hub.checkpoints import state_dict_sha256
        synth = SGPSSynthesizer.from_pretrained(sys.argv[1])
        classifier = synth.synthesize(TaskSpec.from_file(sys.argv[2]))
        model_sha256 = state_dict_sha256(classifier.model.state_dict())
        print(json.dumps({"model": model_sha256, "info": classifier.info["weights_sha256"]}))
        """,
        tmp_path / "synth",
        folder / "task.json",
        env={"HF_HUB_OFFLINE": "1"},
    )
    hashes = last_json_line(result.stdout)
    assert hashes["model"] == hashes["info"] == state_dict_sha256(expected.model.state_dict())


@pytest.mark.parametrize("kind", ["mixed", "partial", "text-only"])
def test_class_order_permutes_head_rows_and_logits(synth, processor, tasks, queries, kind):
    task = tasks[kind]
    perm = [2, 0, 1]
    permuted = TaskSpec([task.classes[i] for i in perm], name=task.name)
    original = synth.synthesize(task, processor=processor)
    shuffled = synth.synthesize(permuted, processor=processor)
    assert shuffled.label_names == [original.label_names[i] for i in perm]
    state, state_perm = original.model.state_dict(), shuffled.model.state_dict()
    torch.testing.assert_close(state_perm["classifier.weight"], state["classifier.weight"][perm], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(state_perm["classifier.bias"], state["classifier.bias"][perm], rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        # batch statistics are summed in another order: equal up to float32 rounding (logits are O(100) here)
        torch.testing.assert_close(shuffled.model(queries), original.model(queries)[:, perm], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_of_task_gives_a_working_classifier(synth, processor, tasks, kind):
    classifier = synth.synthesize(tasks[kind], processor=processor)
    assert classifier.label_names == ["class_0", "class_1", "class_2"]
    probs = classifier.predict_proba([noise_image(7), noise_image(8)])
    assert probs.shape == (2, 3) and torch.isfinite(probs).all()
    torch.testing.assert_close(probs.sum(-1), torch.ones(2))
    (prediction, _) = classifier.predict([noise_image(7), noise_image(8)])
    assert list(prediction) == classifier.label_names


def test_every_classifier_carries_the_synthesizer_body_unchanged(synth, processor, tasks):
    base = synth.target.state_dict()
    for kind in ("mixed", "text-only", "image-only"):
        weights = synth.synthesize(tasks[kind], processor=processor).model.state_dict()
        assert set(weights) - set(base) == {"classifier.weight", "classifier.bias"}
        assert all(torch.equal(weights[k], v) for k, v in base.items()), kind


def test_task_batchnorm_writes_support_statistics_that_the_classifier_itself_uses(processor, tasks, queries):
    synth = tiny_synthesizer(seed=0, task_batchnorm_images=4.0)
    base = synth.target.state_dict()
    classifier = synth.synthesize(tasks["mixed"], processor=processor)
    weights = classifier.model.state_dict()
    changed = {k for k, v in base.items() if not torch.equal(weights[k], v)}
    assert changed and all(k.endswith(("running_mean", "running_var")) for k in changed)
    with torch.no_grad():
        logits = forward(synth, processor, tasks["mixed"], query_pixel_values=queries).logits
        torch.testing.assert_close(logits, classifier.model(queries), rtol=1e-5, atol=1e-5)
    assert state_dict_sha256(synth.synthesize(tasks["mixed"]).model.state_dict()) == state_dict_sha256(weights)
    assert state_dict_sha256(synth.target.state_dict()) == state_dict_sha256(base)  # the synthesizer is untouched
    # A text-only task has no support images to estimate statistics from: the body stays the synthesizer's.
    text_only = synth.synthesize(tasks["text-only"], processor=processor).model.state_dict()
    assert all(torch.equal(text_only[k], v) for k, v in base.items())


def test_task_batchnorm_moves_the_statistics_by_the_share_of_the_support_images(processor, tasks):
    # 6 support images against a body worth 4: the first BatchNorm moves 6/10 of the way to the statistics of
    # its input, the stem's output on every support view.
    synth = tiny_synthesizer(seed=0, task_batchnorm_images=4.0)
    pixels = processor.prepare_task(tasks["mixed"])["support_pixel_values"]
    weights = synth.synthesize(tasks["mixed"], processor=processor).model.state_dict()
    with torch.no_grad():
        stem = synth.target.conv_stem(torch.cat([apply_view(pixels, view) for view in synth.config.support_views]))
    share = 6 / (6 + 4.0)
    torch.testing.assert_close(
        weights["bn1.running_mean"], (1 - share) * synth.target.bn1.running_mean + share * stem.mean((0, 2, 3))
    )
    torch.testing.assert_close(
        weights["bn1.running_var"],
        (1 - share) * synth.target.bn1.running_var + share * stem.var((0, 2, 3), unbiased=False),
    )


def test_head_is_the_ridge_solution_on_the_classifiers_own_features_of_the_support_views(synth, processor, tasks):
    # Untrained: the text generator is zero, so the head is exactly the closed-form ridge head of the support
    # images under identity and hflip, on the features the shipped classifier itself computes.
    classifier = synth.synthesize(tasks["image-only"], processor=processor)
    inputs = processor.prepare_task(tasks["image-only"])
    pixels, labels = inputs["support_pixel_values"], inputs["support_labels"]
    assert synth.config.support_views == ["identity", "hflip"]
    with torch.no_grad():
        views = [
            classifier.model.forward_head(classifier.model.forward_features(x), pre_logits=True)
            for x in (pixels, pixels.flip(-1))
        ]
        rows = torch.stack(views, 1).reshape(-1, views[0].shape[-1])  # per image: identity, then hflip
        shots = torch.tensor(5 / 3)  # images_per_class (2, 2, 1)
        ridge = torch.exp(synth.ridge_coefficients[0] + synth.ridge_coefficients[1] * torch.log1p(shots))
        scale = synth.log_feature_scale.exp()
        mean = rows.mean(0)
        weights = ridge_head(standardize(rows, mean, scale), labels.repeat_interleave(2), 3, ridge)
        expected_weight, expected_bias = fold_linear(weights, mean, scale, synth.log_logit_scale.exp())
    state = classifier.model.state_dict()
    torch.testing.assert_close(state["classifier.weight"], expected_weight, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(state["classifier.bias"], expected_bias, rtol=1e-4, atol=1e-6)


def test_text_only_head_is_centred_on_feature_mean(processor, tasks):
    synth = with_random_text_generator(tiny_synthesizer(seed=0))
    with torch.no_grad():
        centred_at_zero = forward(synth, processor, tasks["text-only"]).weights
        mixed = forward(synth, processor, tasks["mixed"]).weights["classifier.bias"]
        synth.feature_mean.copy_(torch.randn(synth.feature_mean.shape, generator=torch.Generator().manual_seed(5)))
        shifted = forward(synth, processor, tasks["text-only"]).weights
        mixed_again = forward(synth, processor, tasks["mixed"]).weights["classifier.bias"]
    weight = shifted["classifier.weight"]
    assert weight.abs().sum() > 0
    torch.testing.assert_close(weight, centred_at_zero["classifier.weight"], rtol=0, atol=0)
    torch.testing.assert_close(centred_at_zero["classifier.bias"], torch.zeros(3), rtol=0, atol=0)
    # logits = W (f - feature_mean): the bias is -W feature_mean
    torch.testing.assert_close(shifted["classifier.bias"], -(weight @ synth.feature_mean), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mixed, mixed_again, rtol=0, atol=0)  # with images the centre is the support mean


def with_random_text_generator(synth, seed=3):
    """The untrained synthesizer's class memory is empty (text-only heads would be 0): give it random entries."""
    return with_random_text_memory(synth, seed=seed)


def test_support_features_replace_the_pixels_exactly(synth, processor, tasks, queries):
    inputs = processor.prepare_task(tasks["mixed"])
    with torch.no_grad():
        support = synth.support_view_features(inputs["support_pixel_values"])
        from_pixels = forward(synth, processor, tasks["mixed"], query_pixel_values=queries)
        from_features = synth(
            support_features=support,
            support_labels=inputs["support_labels"],
            num_classes=3,
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            text_mask=inputs["text_mask"],
            query_features=synth.support_view_features(queries)[:, 0],
        )
    assert support.shape == (6, 2, synth.target.num_features)
    torch.testing.assert_close(
        from_features.weights["classifier.weight"], from_pixels.weights["classifier.weight"], rtol=0, atol=0
    )
    torch.testing.assert_close(from_features.logits, from_pixels.logits, rtol=1e-6, atol=1e-6)


DIHEDRAL_VIEWS = [view for view in SUPPORT_VIEWS if not view.startswith("zoom")]


@pytest.mark.parametrize("view", DIHEDRAL_VIEWS)
def test_apply_view_is_the_named_dihedral_transform(view):
    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    expected = {
        "identity": images,
        "hflip": torch.flip(images, [-1]),
        "vflip": torch.flip(images, [-2]),
        "rot90": torch.rot90(images, 1, (-2, -1)),
        "rot180": torch.flip(images, [-2, -1]),
        "rot270": torch.rot90(images, -1, (-2, -1)),
        "transpose": images.permute(0, 1, 3, 2),
        "antitranspose": torch.rot90(images.permute(0, 1, 3, 2), 2, (-2, -1)),
    }[view]
    assert torch.equal(apply_view(images, view), expected)
    # each view is a permutation of the pixels of each image and channel
    assert torch.equal(apply_view(images, view).flatten(2).sort(-1).values, images.flatten(2).sort(-1).values)


def test_the_eight_dihedral_views_are_distinct_and_closed_under_composition():
    images = torch.arange(16, dtype=torch.float32).reshape(1, 1, 4, 4)
    outputs = {view: apply_view(images, view) for view in DIHEDRAL_VIEWS}
    assert len({tuple(out.flatten().tolist()) for out in outputs.values()}) == 8
    for first in DIHEDRAL_VIEWS:
        for second in DIHEDRAL_VIEWS:
            composed = apply_view(outputs[first], second)
            assert any(torch.equal(composed, out) for out in outputs.values())


def test_zoom_views_are_the_central_crop_resized_and_its_mirror():
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    zoomed = apply_view(images, "zoom")
    assert zoomed.shape == images.shape
    expected = torch.nn.functional.interpolate(
        images[..., 2:14, 2:14], size=(16, 16), mode="bilinear", align_corners=False
    )
    torch.testing.assert_close(zoomed, expected, rtol=0, atol=0)
    assert torch.equal(apply_view(images, "zoom_hflip"), zoomed.flip(-1))
    # a constant image stays constant; the border (outside the central 75%) does not reach the zoomed view
    framed = torch.zeros(1, 1, 16, 16)
    framed[..., :2, :] = framed[..., -2:, :] = framed[..., :, :2] = framed[..., :, -2:] = 1.0
    assert torch.equal(apply_view(framed, "zoom"), torch.zeros(1, 1, 16, 16))
    assert torch.allclose(apply_view(torch.full((1, 1, 16, 16), 0.3), "zoom"), torch.full((1, 1, 16, 16), 0.3))


def test_support_view_features_take_an_explicit_view_list(processor, tasks):
    synth = tiny_synthesizer(seed=0)
    pixels = processor.prepare_task(tasks["mixed"])["support_pixel_values"]
    with torch.no_grad():
        default = synth.support_view_features(pixels)
        chosen = synth.support_view_features(pixels, views=["identity", "zoom", "antitranspose"])
        direct = synth.target(apply_view(pixels, "zoom"))
    assert default.shape[1] == len(synth.config.support_views) and chosen.shape[1] == 3
    torch.testing.assert_close(chosen[:, 0], default[:, 0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(chosen[:, 1], direct, rtol=1e-5, atol=1e-6)


def test_support_view_features_of_a_flipped_support_set(processor, tasks):
    synth = tiny_synthesizer(seed=0, support_views=["identity", "hflip", "vflip"])
    pixels = processor.prepare_task(tasks["mixed"])["support_pixel_values"]
    with torch.no_grad():
        features = synth.support_view_features(pixels)
        flipped = synth.support_view_features(pixels.flip(-1))
        plain = synth.target(pixels)
    assert features.shape == (pixels.shape[0], 3, synth.target.num_features)
    torch.testing.assert_close(features[:, 0], plain, rtol=1e-5, atol=1e-6)
    # hflip of the flipped set is the original set; its identity view is the original's hflip view
    torch.testing.assert_close(flipped[:, 0], features[:, 1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(flipped[:, 1], features[:, 0], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(features[:, 0], features[:, 1])


def test_set_prior_strength_interpolates_log_linearly_in_shots(processor, tasks):
    synth = tiny_synthesizer(seed=0)
    synth.set_prior_strength(0.5, 2.0)
    a, b = synth.prior_coefficients.tolist()
    strength = lambda shots: math.exp(a + b * math.log(shots))  # noqa: E731
    assert (
        strength(1) == pytest.approx(0.5)
        and strength(5) == pytest.approx(2.0)
        and strength(2) == pytest.approx(0.5 * 4 ** (math.log(2) / math.log(5)))
    )
    synth.set_prior_strength(0.0, 0.0)  # 0: the texts are ignored beside images (up to exp(log 1e-6))
    assert strength(1) > 0 and math.exp(synth.prior_coefficients[0].item()) == pytest.approx(1e-6)
    # the strength is what weights the text prior beside images
    with_random_text_generator(synth)
    with torch.no_grad():
        heads = {}
        for value in (0.0, 1.0):
            synth.set_prior_strength(value, value)
            heads[value] = forward(synth, processor, tasks["mixed"]).weights["classifier.weight"]
        synth.set_prior_strength(1.0, 1.0)
        text_only = forward(synth, processor, tasks["text-only"]).weights["classifier.weight"]
    assert not torch.allclose(heads[0.0], heads[1.0])
    assert text_only.abs().sum() > 0
    # saved and restored with the checkpoint (a buffer)
    assert "prior_coefficients" in synth.state_dict() and "feature_mean" in synth.state_dict()


def test_task_content_drives_the_weights(processor, tmp_path):
    synth = with_random_text_generator(tiny_synthesizer(seed=0))

    def head(task):
        return synth.synthesize(task, processor=processor).model.state_dict()["classifier.weight"]

    images = [noise_image(1), noise_image(2)]
    base = head(TaskSpec([ClassSpec("a", "round pink papule"), ClassSpec("b", "dark irregular plaque")]))
    other_text = head(TaskSpec([ClassSpec("a", "round pink papule"), ClassSpec("b", "yellow crusted erosion")]))
    assert not torch.allclose(base, other_text)
    # image-only: the names are not text, renaming the classes changes nothing
    image_only = head(
        TaskSpec([ClassSpec("a", images=[images[0]]), ClassSpec("b", images=[images[1], noise_image(3)])])
    )
    renamed = head(
        TaskSpec([ClassSpec("melanoma", images=[images[0]]), ClassSpec("nevus", images=[images[1], noise_image(3)])])
    )
    assert torch.equal(image_only, renamed)
    other_image = head(
        TaskSpec([ClassSpec("a", images=[noise_image(9)]), ClassSpec("b", images=[images[1], noise_image(3)])])
    )
    assert not torch.allclose(image_only, other_image)


def test_a_class_without_image_or_text_cannot_be_synthesized(synth, processor, tasks):
    inputs = processor.prepare_task(tasks["image-only"])
    keep = inputs["support_labels"] != 2  # drop the only images of class 2: it has neither image nor text
    with pytest.raises(SynthesisError, match="at least one support image or a clinical text"):
        synth(
            support_pixel_values=inputs["support_pixel_values"][keep],
            support_labels=inputs["support_labels"][keep],
            num_classes=3,
            text_mask=inputs["text_mask"],
        )


def test_num_classes_is_inferred_or_required(synth, processor, tasks):
    inputs = processor.prepare_task(tasks["image-only"])
    with torch.no_grad():
        out = synth(support_pixel_values=inputs["support_pixel_values"], support_labels=inputs["support_labels"])
    assert out.weights["classifier.weight"].shape[0] == 3 and out.logits is None and out.loss is None
    assert (
        synth(
            support_pixel_values=inputs["support_pixel_values"],
            support_labels=inputs["support_labels"],
            return_weights=False,
        ).weights
        is None
    )
    with pytest.raises(ValueError, match="num_classes"):
        synth()


def test_single_support_image_in_a_task(synth, processor):
    task = TaskSpec([ClassSpec("a", images=[noise_image(1)]), ClassSpec("b", "dark irregular plaque")])
    # The default normalises with the meta-learned statistics: one image is enough at any size
    # The body runs in eval mode (running statistics): one support image is enough at any size
    assert torch.isfinite(synth.synthesize(task, processor=processor).predict_proba(noise_image(2))).all()
    one_each = TaskSpec([ClassSpec("a", images=[noise_image(1)]), ClassSpec("b", images=[noise_image(3)])])
    assert torch.isfinite(synth.synthesize(one_each, processor=processor).predict_proba(noise_image(2))).all()


@pytest.mark.parametrize(
    "key", ["target.conv_stem.weight", "log_feature_scale", "ridge_coefficients", "log_logit_scale"]
)
def test_nan_weights_in_a_checkpoint_raise_synthesis_error(synth, tasks, tmp_path, key):
    synth.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors[key].view(-1)[0] = float("nan")
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    corrupt = SGPSSynthesizer.from_pretrained(tmp_path)
    with pytest.raises(SynthesisError, match="NaN/Inf"):
        corrupt.synthesize(tasks["mixed"])


def test_loss_is_differentiable_wrt_the_head_parameters_and_base_weights(processor, tasks, queries):
    synth = with_random_text_generator(tiny_synthesizer(seed=1))
    synth.train()
    labels = torch.tensor([0, 1, 2, 0])

    def grads(kind):
        synth.zero_grad()
        out = forward(synth, processor, tasks[kind], query_pixel_values=queries, query_labels=labels)
        assert out.loss.ndim == 0 and torch.isfinite(out.loss)
        out.loss.backward()
        found = {name: p.grad for name, p in synth.named_parameters()}
        assert all(g is None or torch.isfinite(g).all() for g in found.values())
        return {name for name, g in found.items() if g is not None and g.abs().sum() > 0}

    with_images = grads("mixed")
    for name in [
        "log_feature_scale",
        "ridge_coefficients",
        "log_logit_scale",
        "target.conv_stem.weight",
        "target.conv_head.weight",
        "target.bn2.weight",
    ]:
        assert name in with_images, name
    # beside images the text prior is detached: the zero-shot scale learns from text-only episodes alone
    assert "log_zero_shot_scale" not in with_images
    text_only = grads("text-only")
    for name in [
        "log_zero_shot_scale",
        "log_logit_scale",
        "log_feature_scale",
    ]:
        assert name in text_only, name
    assert "ridge_coefficients" not in text_only


def test_forward_never_changes_the_body_statistics(processor, tasks):
    synth = tiny_synthesizer(seed=0)
    before = state_dict_sha256(synth.target.state_dict())
    with torch.no_grad():
        forward(synth, processor, tasks["mixed"])
        synth.train()
        forward(synth, processor, tasks["mixed"])
    assert state_dict_sha256(synth.target.state_dict()) == before


# -- save / load --------------------------------------------------------------------------------------------------
def test_save_and_load_round_trip_is_bit_exact_and_safetensors_only(synth, tasks, tmp_path):
    synth.save_pretrained(tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["config.json", "model.safetensors"], files
    saved = load_file(tmp_path / "model.safetensors")
    assert set(saved) == set(synth.state_dict())  # the frozen text encoder is not part of the checkpoint
    assert not any("encoder.layer" in k for k in saved)

    assert type(AutoConfig.from_pretrained(tmp_path)) is SGPSConfig
    for loaded in (SGPSSynthesizer.from_pretrained(tmp_path), AutoModel.from_pretrained(tmp_path)):
        assert type(loaded) is SGPSSynthesizer and not loaded.training
        assert state_dict_sha256(loaded.state_dict()) == state_dict_sha256(synth.state_dict())
        weights = loaded.synthesize(tasks["mixed"]).model.state_dict()
        assert state_dict_sha256(weights) == state_dict_sha256(synth.synthesize(tasks["mixed"]).model.state_dict())


def test_from_pretrained_records_provenance(synth, tasks, tmp_path):
    synth.save_pretrained(tmp_path / "ckpt")
    info = SGPSSynthesizer.from_pretrained(tmp_path / "ckpt").synthesize(tasks["mixed"]).info["synthesizer"]
    assert info["name_or_path"] == str(tmp_path / "ckpt")
    assert info["revision"] == "sha256:" + state_dict_sha256(synth.state_dict())[:16]
    assert synth.synthesize(tasks["mixed"]).info["synthesizer"]["name_or_path"] == "unsaved"


# -- the class-memory text generator --------------------------------------------------------------------------------
def memory_synthesizer(entries=5, seed=0):
    synth = tiny_synthesizer(seed=seed, text_generator="class_memory")
    generator = torch.Generator().manual_seed(seed)
    dim, features = synth.config.text_embed_dim, synth.target.num_features
    with torch.no_grad():
        synth.log_feature_scale.normal_(0, 0.3, generator=generator)
    synth.set_text_memory(
        torch.randn(entries, dim, generator=generator), torch.randn(entries, features, generator=generator)
    )
    return synth


def test_class_memory_prototypes_are_the_attention_mixture_of_the_stored_features():
    synth = memory_synthesizer()
    assert not hasattr(synth, "text_to_weight") and synth.config.text_memory_size == 5
    texts = torch.randn(3, synth.config.text_embed_dim, generator=torch.Generator().manual_seed(9))
    cosine = torch.nn.functional.normalize(texts, dim=-1) @ synth.text_memory_keys.T
    attention = torch.softmax(cosine / synth.log_text_temperature.exp(), dim=-1)
    expected = attention @ (synth.text_memory_features * synth.log_feature_scale.exp())
    torch.testing.assert_close(synth.text_prototypes(texts), expected)
    with torch.no_grad():
        synth.log_text_temperature.fill_(math.log(1e-4))  # a text equal to a stored one returns that class's features
    torch.testing.assert_close(
        synth.text_prototypes(synth.text_memory_keys[2:3] * 7.0)[0],
        synth.text_memory_features[2] * synth.log_feature_scale.exp(),
    )


def test_an_empty_class_memory_gives_uninformative_texts():
    synth = tiny_synthesizer(seed=0, text_generator="class_memory")
    assert "text_memory_keys" not in synth.state_dict()
    assert torch.count_nonzero(synth.text_prototypes(torch.randn(2, synth.config.text_embed_dim))) == 0


def test_a_class_memory_synthesizer_round_trips_and_synthesizes_text_only_tasks(tasks, tmp_path):
    synth = memory_synthesizer()
    synth.save_pretrained(tmp_path)
    loaded = SGPSSynthesizer.from_pretrained(tmp_path)
    assert loaded.config.text_generator == "class_memory" and loaded.config.text_memory_size == 5
    assert state_dict_sha256(loaded.state_dict()) == state_dict_sha256(synth.state_dict())
    for kind in ("text-only", "mixed"):
        weights = loaded.synthesize(tasks[kind]).model.state_dict()
        assert state_dict_sha256(weights) == state_dict_sha256(synth.synthesize(tasks[kind]).model.state_dict())
    head = loaded.synthesize(tasks["text-only"]).model.classifier.weight
    assert torch.isfinite(head).all() and head.abs().sum() > 0


# -- the one inference path: per-call settings ----------------------------------------------------------------------
def test_per_call_settings_equal_a_config_that_holds_them(synth, processor, tasks, queries):
    inputs = processor.prepare_task(tasks["mixed"])
    configured = SGPSSynthesizer(
        synth.config.with_changes(task_batchnorm_images=3, support_views=["identity", "vflip"])
    )
    configured.load_state_dict(synth.state_dict())
    configured.eval()
    with torch.no_grad():
        by_argument = forward(
            synth,
            processor,
            tasks["mixed"],
            query_pixel_values=queries,
            task_batchnorm_images=3,
            views=["identity", "vflip"],
        )
        by_config = forward(configured, processor, tasks["mixed"], query_pixel_values=queries)
        plain = forward(synth, processor, tasks["mixed"], query_pixel_values=queries)
    assert synth.config.task_batchnorm_images is None  # the call changed nothing on the model
    assert state_dict_sha256(by_argument.weights) == state_dict_sha256(by_config.weights)
    torch.testing.assert_close(by_argument.logits, by_config.logits, rtol=0, atol=0)
    assert not torch.allclose(by_argument.logits, plain.logits)
    # cached features are those of the body as it is: with task BatchNorm asked for, they are refused
    features = synth.support_view_features(inputs["support_pixel_values"])
    with pytest.raises(ValueError, match="task-adaptive BatchNorm is on"):
        synth.generate_weights(
            3, support_labels=inputs["support_labels"], support_features=features, task_batchnorm_images=3
        )
    with pytest.raises(ValueError, match="unadapted body"):
        synth.query_logits(by_argument.weights, query_features=torch.zeros(4, synth.target.num_features))


def test_a_feature_memo_gives_the_logits_of_the_pixels(synth, processor, tasks, queries):
    calls = []

    def memo(images):
        calls.append(len(images))
        return synth.target(images)

    with torch.no_grad():
        with_memo = forward(synth, processor, tasks["mixed"], query_pixel_values=queries, embed=memo)
        without = forward(synth, processor, tasks["mixed"], query_pixel_values=queries)
    assert calls == [6 * 2, len(queries)]  # the support views in one batch, then the queries
    torch.testing.assert_close(with_memo.logits, without.logits, rtol=1e-5, atol=1e-5)


def test_normalised_support_rows_give_the_cosine_rule_as_one_linear_layer(processor, tasks, queries):
    # With normalize_support_rows the head is fitted on unit-direction rows around the task centre; the materialised
    # linear layer omits the query's normalisation, which divides all of a query's logits by one positive number.
    synth = tiny_synthesizer(seed=0, normalize_support_rows=True)
    inputs = processor.prepare_task(tasks["image-only"])
    with torch.no_grad():
        support = synth.support_view_features(inputs["support_pixel_values"])
        query = synth.support_view_features(queries)[:, 0]
        output = synth(
            support_features=support, support_labels=inputs["support_labels"], num_classes=3, query_features=query
        )
        rows = support.reshape(-1, support.shape[-1])
        mean, scale = rows.mean(0), synth.log_feature_scale.exp()
        z = standardize(rows, mean, scale)
        rms = z.norm(dim=1).pow(2).mean().sqrt()
        unit_rows = z / z.norm(dim=1, keepdim=True) * rms
        shots = torch.tensor(5 / 3)
        ridge = torch.exp(synth.ridge_coefficients[0] + synth.ridge_coefficients[1] * torch.log1p(shots))
        weights = ridge_head(unit_rows, inputs["support_labels"].repeat_interleave(2), 3, ridge)
        centred = standardize(query, mean, scale)
        cosine_logits = centred / centred.norm(dim=1, keepdim=True) * rms @ weights * synth.log_logit_scale.exp()
    norms = centred.norm(dim=1, keepdim=True) / rms
    torch.testing.assert_close(output.logits, cosine_logits * norms, rtol=1e-4, atol=1e-5)
    assert torch.equal(output.logits.argmax(1), cosine_logits.argmax(1))
    unnormalised = tiny_synthesizer(seed=0)(
        support_features=support, support_labels=inputs["support_labels"], num_classes=3, query_features=query
    )
    assert not torch.allclose(unnormalised.logits, output.logits)


@pytest.mark.parametrize("exponent", [0.0, -0.4, 0.5])
def test_the_logit_scale_follows_the_shots_between_one_and_five(exponent):
    synth = tiny_synthesizer(seed=0, logit_scale_shot_exponent=exponent)
    base = synth.log_logit_scale.exp()
    for shots, factor in ((0.0, 1.0), (1.0, 1.0), (3.0, 3.0**exponent), (5.0, 5.0**exponent), (40.0, 5.0**exponent)):
        torch.testing.assert_close(synth.logit_scale_at(torch.tensor(shots)), base * factor)


def test_the_shot_exponent_scales_the_head_of_a_synthesized_classifier(processor, tasks):
    plain = forward(tiny_synthesizer(seed=0), processor, tasks["image-only"]).weights
    scaled = forward(tiny_synthesizer(seed=0, logit_scale_shot_exponent=0.5), processor, tasks["image-only"]).weights
    factor = (5 / 3) ** 0.5  # images_per_class (2, 2, 1)
    for name in ("classifier.weight", "classifier.bias"):
        torch.testing.assert_close(scaled[name], plain[name] * factor, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "field, value, message",
    [("normalize_support_rows", "yes", "true or false"), ("logit_scale_shot_exponent", "big", "must be a float")],
)
def test_head_settings_are_validated(field, value, message):
    with pytest.raises(ValueError, match=message):
        SGPSConfig(**{field: value})
