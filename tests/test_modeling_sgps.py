"""SGPSSynthesizer: a complete, exact, deterministic, order-equivariant timm state dict from a task."""

import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from sgps_testing import last_json_line, noise_image, run_python, synthetic_task, tiny_config, tiny_synthesizer
from transformers import AutoConfig, AutoModel

from sgps_hf import ClassSpec, SGPSConfig, SGPSProcessor, SGPSSynthesizer, SynthesisError, TaskSpec
from sgps_hf.classifier import state_dict_sha256

pytestmark = pytest.mark.usefixtures("torch_single_thread")

MIXED = dict(texts=("round pink papule", "dark irregular plaque", "scaly red patch"), images_per_class=(2, 1, 3))
TEXT_ONLY = dict(texts=("round pink papule", "dark irregular plaque", "scaly red patch"), images_per_class=(0, 0, 0))
IMAGE_ONLY = dict(texts=(None, None, None), images_per_class=(2, 2, 1))
PARTIAL = dict(texts=("round pink papule", None, "scaly red patch"), images_per_class=(0, 2, 2))  # text-only + image-only + both
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
    torch.testing.assert_close(classifier.image_processor([noise_image(101)])["pixel_values"], queries[:1], rtol=0, atol=0)


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
    (folder / "task.json").write_text(json.dumps({"classes": [
        {"name": c.name, "description": c.description, "images": [Path(p).name for p in c.images]} for c in task.classes
    ]}))
    synth.save_pretrained(tmp_path / "synth")
    expected = synth.synthesize(TaskSpec.from_file(folder / "task.json"))
    result = run_python(
        """
        import json, sys
        from sgps_hf import SGPSSynthesizer, TaskSpec
        from sgps_hf.classifier import state_dict_sha256
        synth = SGPSSynthesizer.from_pretrained(sys.argv[1])
        classifier = synth.synthesize(TaskSpec.from_file(sys.argv[2]))
        print(json.dumps({"model": state_dict_sha256(classifier.model.state_dict()), "info": classifier.info["weights_sha256"]}))
        """,
        tmp_path / "synth", folder / "task.json", env={"HF_HUB_OFFLINE": "1"},
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


def test_support_statistics_option_measures_image_tasks_and_falls_back_for_text_only(processor, tasks):
    stats_synth = tiny_synthesizer(seed=0, support_statistics=True)
    base = {k: v for k, v in stats_synth.target.state_dict().items() if k.endswith(("running_mean", "running_var"))}
    text_only = stats_synth.synthesize(tasks["text-only"], processor=processor).model.state_dict()
    mixed = stats_synth.synthesize(tasks["mixed"], processor=processor).model.state_dict()
    assert all(torch.equal(text_only[k], v) for k, v in base.items())
    assert not any(torch.equal(mixed[k], v) for k, v in base.items() if k.endswith("running_mean"))


def test_by_default_every_classifier_keeps_the_meta_learned_statistics(synth, processor, tasks):
    assert synth.config.support_statistics is False
    base = {k: v for k, v in synth.target.state_dict().items() if k.endswith(("running_mean", "running_var"))}
    for kind in ("mixed", "text-only", "image-only"):
        weights = synth.synthesize(tasks[kind], processor=processor).model.state_dict()
        assert all(torch.equal(weights[k], v) for k, v in base.items()), kind


def test_image_prototypes_are_the_classifiers_own_features_of_the_support_images(synth, processor, tasks):
    # Untrained: the generators are zero, so the head is exactly the nearest-prototype rule on the features the
    # shipped classifier itself computes (eval mode): support and queries are normalised the same way.
    classifier = synth.synthesize(tasks["image-only"], processor=processor)
    inputs = processor.prepare_task(tasks["image-only"])
    with torch.no_grad():
        features = classifier.model.forward_head(classifier.model.forward_features(inputs["support_pixel_values"]), pre_logits=True)
    labels = inputs["support_labels"]
    prototypes = torch.stack([features[labels == c].mean(0) for c in range(3)])
    scale = synth.log_logit_scale.exp().detach()
    state = classifier.model.state_dict()
    torch.testing.assert_close(state["classifier.weight"], scale * 2 * prototypes, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(state["classifier.bias"], -scale * prototypes.pow(2).sum(-1), rtol=1e-4, atol=1e-6)


def test_task_content_drives_the_weights(synth, processor, tmp_path):
    def head(task):
        return synth.synthesize(task, processor=processor).model.state_dict()["classifier.weight"]

    images = [noise_image(1), noise_image(2)]
    base = head(TaskSpec([ClassSpec("a", "round pink papule"), ClassSpec("b", "dark irregular plaque")]))
    other_text = head(TaskSpec([ClassSpec("a", "round pink papule"), ClassSpec("b", "yellow crusted erosion")]))
    assert not torch.allclose(base, other_text)
    # image-only: the names are not text, renaming the classes changes nothing
    image_only = head(TaskSpec([ClassSpec("a", images=[images[0]]), ClassSpec("b", images=[images[1], noise_image(3)])]))
    renamed = head(TaskSpec([ClassSpec("melanoma", images=[images[0]]), ClassSpec("nevus", images=[images[1], noise_image(3)])]))
    assert torch.equal(image_only, renamed)
    other_image = head(TaskSpec([ClassSpec("a", images=[noise_image(9)]), ClassSpec("b", images=[images[1], noise_image(3)])]))
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
    assert synth(support_pixel_values=inputs["support_pixel_values"], support_labels=inputs["support_labels"], return_weights=False).weights is None
    with pytest.raises(ValueError, match="num_classes"):
        synth()


def test_single_support_image_in_a_task(synth, processor):
    task = TaskSpec([ClassSpec("a", images=[noise_image(1)]), ClassSpec("b", "dark irregular plaque")])
    # The default normalises with the meta-learned statistics: one image is enough at any size
    assert torch.isfinite(synth.synthesize(task, processor=processor).predict_proba(noise_image(2))).all()
    # With support statistics at 32 px the last feature map is 1x1, so a single support image has no batch
    # statistics: a clear error
    stats_synth = tiny_synthesizer(seed=0, support_statistics=True)
    with pytest.raises(SynthesisError, match="at least 2 support images"):
        stats_synth.synthesize(task, processor=processor)
    # 64 px: the last feature map is 2x2 and one image is enough
    synth64 = tiny_synthesizer(seed=0, image_size=64, support_statistics=True)
    classifier = synth64.synthesize(task)
    assert torch.isfinite(classifier.predict_proba(noise_image(2))).all()
    two = TaskSpec([ClassSpec("a", images=[noise_image(1)]), ClassSpec("b", images=[noise_image(3)])])
    assert torch.isfinite(stats_synth.synthesize(two, processor=processor).predict_proba(noise_image(2))).all()


@pytest.mark.parametrize("key", ["target.conv_stem.weight", "head_delta.bias", "log_logit_scale"])
def test_nan_weights_in_a_checkpoint_raise_synthesis_error(synth, tasks, tmp_path, key):
    synth.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors[key].view(-1)[0] = float("nan")
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    corrupt = SGPSSynthesizer.from_pretrained(tmp_path)
    with pytest.raises(SynthesisError, match="NaN/Inf"):
        corrupt.synthesize(tasks["mixed"])


def test_loss_is_differentiable_wrt_generators_and_base_weights(processor, tasks, queries):
    synth = tiny_synthesizer(seed=1)
    synth.train()
    labels = torch.tensor([0, 1, 2, 0])
    # Every consumer of the context starts at zero (generators, prototype gate weight), so the context transformer
    # first receives gradient after one optimizer step, as LoRA's down-projection does after its zero up-projection.
    optimizer = torch.optim.SGD(synth.parameters(), lr=0.1)
    forward(synth, processor, tasks["mixed"], query_pixel_values=queries, query_labels=labels).loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    out = forward(synth, processor, tasks["mixed"], query_pixel_values=queries, query_labels=labels)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    grads = {name: p.grad for name, p in synth.named_parameters()}
    assert all(g is None or torch.isfinite(g).all() for g in grads.values())
    must_learn = [
        "head_delta.weight", "film.2.weight", "lowrank_a.conv_head", "text_to_prototype.0.weight", "prototype_gate.weight",
        "log_logit_scale", "context.layers.0.self_attn.in_proj_weight", "image_to_token.1.weight", "text_to_token.1.weight",
        "target.conv_stem.weight", "target.blocks.0.0.conv.weight", "target.conv_head.weight", "target.bn2.weight",
    ]
    for name in must_learn:
        assert grads[name] is not None and grads[name].abs().sum() > 0, name


@pytest.mark.parametrize("support_statistics", [True, False])
def test_only_support_statistics_training_tracks_fallback_statistics(processor, tasks, support_statistics):
    synth = tiny_synthesizer(seed=0, support_statistics=support_statistics)
    before = synth.target.bn1.running_mean.clone()
    with torch.no_grad():
        forward(synth, processor, tasks["mixed"])  # eval: no tracking
        assert torch.equal(synth.target.bn1.running_mean, before)
        synth.train()
        forward(synth, processor, tasks["mixed"])
    assert torch.equal(synth.target.bn1.running_mean, before) is not support_statistics


@pytest.mark.parametrize("overrides", [{"film_bottleneck": 0, "lowrank_rank": 0}, {"lowrank_modules": ["conv_head", "blocks.1.0.conv_pwl"]}])
def test_generator_options(overrides, processor, tasks):
    synth = tiny_synthesizer(seed=0, **overrides)
    assert (synth.film is None) == (overrides.get("film_bottleneck") == 0)
    assert len(synth.lowrank_a) == (0 if overrides.get("lowrank_rank") == 0 else len(overrides["lowrank_modules"]))
    assert torch.isfinite(synth.synthesize(tasks["mixed"], processor=processor).predict_proba(noise_image(5))).all()


@pytest.mark.parametrize("module", ["conv_stem", "blocks.0.0.conv", "nonexistent", "bn2"])
def test_lowrank_modules_must_be_pointwise_convolutions(module):
    with pytest.raises(ValueError, match="not a pointwise"):
        SGPSSynthesizer(tiny_config(lowrank_modules=[module]))


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
        assert all(bn.momentum == 1.0 for bn in loaded.target.modules() if isinstance(bn, torch.nn.BatchNorm2d))
        weights = loaded.synthesize(tasks["mixed"]).model.state_dict()
        assert state_dict_sha256(weights) == state_dict_sha256(synth.synthesize(tasks["mixed"]).model.state_dict())


def test_from_pretrained_records_provenance(synth, tasks, tmp_path):
    synth.save_pretrained(tmp_path / "ckpt")
    info = SGPSSynthesizer.from_pretrained(tmp_path / "ckpt").synthesize(tasks["mixed"]).info["synthesizer"]
    assert info["name_or_path"] == str(tmp_path / "ckpt")
    assert info["revision"] == "sha256:" + state_dict_sha256(synth.state_dict())[:16]
    assert synth.synthesize(tasks["mixed"]).info["synthesizer"]["name_or_path"] == "unsaved"
