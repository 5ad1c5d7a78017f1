"""Fuzzing checkpoint loading: synthesizer and classifier folders with mutated config.json and model.safetensors.

Property: ``SGPSSynthesizer.from_pretrained`` / ``SynthesizedClassifier.from_pretrained`` either load a model whose
tensors are exactly those the config describes, or raise a CheckpointError that says what to fix. Mutations:
dropped, added, reshaped and re-typed tensors; config keys removed or set to values of the wrong type; bytes of
either file truncated or overwritten.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from fuzzing import assert_actionable
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from sgps_testing import synthetic_task, tiny_synthesizer

from sgps_hf import CheckpointError, SGPSSynthesizer, SynthesizedClassifier

pytestmark = [pytest.mark.usefixtures("torch_single_thread"), pytest.mark.timeout(300)]

DTYPES = [torch.float16, torch.bfloat16, torch.float64, torch.int32, torch.int64, torch.uint8, torch.bool]
JSON_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-10, 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.lists(st.integers(-2, 5), max_size=4),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A saved tiny synthesizer and a saved classifier it made (the unmutated originals)."""
    root = tmp_path_factory.mktemp("originals")
    synth = tiny_synthesizer(seed=0)
    synth.save_pretrained(root / "synth")
    classifier = synth.synthesize(synthetic_task(root / "task", texts=("a", "b"), images_per_class=(1, 1)))
    classifier.save_pretrained(root / "classifier")
    return root


@st.composite
def tensor_mutations(draw, names: list[str]):
    """A list of (operation, tensor name, argument) edits to a state dict."""
    ops = st.tuples(
        st.sampled_from(["drop", "add", "reshape", "retype", "scalar"]),
        st.sampled_from(names),
        st.sampled_from(DTYPES),
    )
    return draw(st.lists(ops, min_size=1, max_size=3))


def apply_tensor_mutations(path, mutations) -> None:
    tensors = load_file(path)
    for op, name, dtype in mutations:
        if name not in tensors:
            continue
        if op == "drop":
            del tensors[name]
        elif op == "add":
            tensors[name + "_extra"] = torch.zeros(2)
        elif op == "reshape":
            tensors[name] = torch.zeros(tensors[name].numel() + 1)
        elif op == "retype":
            tensors[name] = tensors[name].to(dtype)
        else:
            tensors[name] = torch.zeros(())
    save_file(tensors, path, metadata={"format": "pt"})


def apply_byte_mutation(path, cut: float, position: float, value: int) -> None:
    data = bytearray(path.read_bytes())
    data = data[: int(len(data) * cut)] if cut < 1 else data
    if data:
        data[int(position * (len(data) - 1))] = value
    path.write_bytes(bytes(data))


def apply_config_mutation(path, drops: list[str], sets: dict) -> None:
    config = json.loads(path.read_text())
    for key in drops:
        config.pop(key, None)
    config.update(sets)
    path.write_text(json.dumps(config))


def check_loaded(model_state: dict, original_file) -> None:
    """A load that succeeded must have loaded exactly the original tensors (no silent re-initialisation)."""
    original = load_file(original_file)
    assert set(model_state) == set(original)
    for name, tensor in original.items():
        assert model_state[name].dtype == tensor.dtype and torch.equal(model_state[name], tensor), name


SYNTH_KEYS = [
    "image_size",
    "support_views",
    "ridge_init",
    "prior_init",
    "logit_scale_init",
    "text_memory_size",
    "task_batchnorm_images",
    "channel_multiplier",
    "depth_multiplier",
    "target_architecture",
    "text_embed_dim",
    "model_type",
    "image_mean",
    "interpolation",
]


@settings(max_examples=70)
@given(data=st.data(), kind=st.sampled_from(["tensors", "bytes", "config", "config", "none"]))
def test_synthesizer_checkpoints_load_exactly_or_explain(saved, tmp_path_factory, data, kind):
    folder = tmp_path_factory.mktemp("synth") / "ckpt"
    shutil.copytree(saved / "synth", folder)
    weights, config = folder / "model.safetensors", folder / "config.json"
    if kind == "tensors":
        apply_tensor_mutations(weights, data.draw(tensor_mutations(sorted(load_file(weights)))))
    elif kind == "bytes":
        target = data.draw(st.sampled_from([weights, config]))
        apply_byte_mutation(
            target, data.draw(st.floats(0, 1)), data.draw(st.floats(0, 1)), data.draw(st.integers(0, 255))
        )
    elif kind == "config":
        drops = data.draw(st.lists(st.sampled_from(SYNTH_KEYS), max_size=2))
        sets = data.draw(st.dictionaries(st.sampled_from(SYNTH_KEYS), JSON_VALUES, max_size=2))
        apply_config_mutation(config, drops, sets)
    try:
        model = SGPSSynthesizer.from_pretrained(folder)
    except CheckpointError as error:
        assert_actionable(error, CheckpointError)
        return
    check_loaded(model.state_dict(), saved / "synth" / "model.safetensors")


CLASSIFIER_KEYS = [
    "architecture",
    "num_classes",
    "label_names",
    "model_args",
    "pretrained_cfg",
    "pretrained_cfg",
    "num_features",
]
TASK_KEYS = ["task", "target", "data_config", "synthesizer", "weights_sha256"]


@settings(max_examples=100)
@given(data=st.data(), kind=st.sampled_from(["tensors", "bytes", "config", "config", "task", "model_args", "none"]))
def test_classifier_folders_load_exactly_or_explain(saved, tmp_path_factory, data, kind):
    folder = tmp_path_factory.mktemp("clf") / "classifier"
    shutil.copytree(saved / "classifier", folder)
    weights, config, task = folder / "model.safetensors", folder / "config.json", folder / "sgps_task.json"
    if kind == "tensors":
        apply_tensor_mutations(weights, data.draw(tensor_mutations(sorted(load_file(weights)))))
    elif kind == "bytes":
        target = data.draw(st.sampled_from([weights, config, task]))
        apply_byte_mutation(
            target, data.draw(st.floats(0, 1)), data.draw(st.floats(0, 1)), data.draw(st.integers(0, 255))
        )
    elif kind in ("config", "task"):
        keys = CLASSIFIER_KEYS if kind == "config" else TASK_KEYS
        drops = data.draw(st.lists(st.sampled_from(keys), max_size=2))
        sets = data.draw(st.dictionaries(st.sampled_from(keys), JSON_VALUES, max_size=2))
        apply_config_mutation(config if kind == "config" else task, drops, sets)
    elif kind == "model_args":
        args = data.draw(
            st.dictionaries(
                st.sampled_from(["channel_multiplier", "depth_multiplier", "checkpoint_path", "drop_rate", "bogus"]),
                JSON_VALUES,
                min_size=1,
                max_size=2,
            )
        )
        apply_config_mutation(config, [], {"model_args": args})
    try:
        classifier = SynthesizedClassifier.from_pretrained(folder)
    except CheckpointError as error:
        assert_actionable(error, CheckpointError)
        return
    check_loaded(classifier.model.state_dict(), saved / "classifier" / "model.safetensors")


# -- sidecars: any key, at any depth, of sgps_task.json, config.json and a version file -----------------------------
def key_paths(value, prefix=()):
    """Every path to a value inside parsed JSON (dict keys and list indices)."""
    paths = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            paths += key_paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value[:3]):
            paths += key_paths(item, (*prefix, index))
    return paths


def mutate_path(data, path, op, value):
    parent = data
    for step in path[:-1]:
        parent = parent[step]
    if op == "drop" and isinstance(parent, dict):
        parent.pop(path[-1], None)
    elif op == "drop":
        del parent[path[-1]]
    else:
        parent[path[-1]] = value


@settings(max_examples=120)
@given(
    data=st.data(),
    target=st.sampled_from(["sgps_task.json", "sgps_task.json", "config.json", "versions/v1/sgps_task.json"]),
)
def test_any_sidecar_key_is_used_safely_or_refused(saved, versioned, tmp_path_factory, data, target):
    """Whatever key of a sidecar is dropped or replaced, the classifier either loads and then predicts, renders its
    card and reads its support set, or loading raises a CheckpointError that says what to fix. Never another type."""
    from sgps_hf.hub.model_card import classifier_card

    folder = tmp_path_factory.mktemp("sidecar") / "classifier"
    shutil.copytree(versioned, folder)
    path = folder / target
    content = json.loads(path.read_text())
    edits = data.draw(
        st.lists(
            st.tuples(st.sampled_from(key_paths(content)), st.sampled_from(["drop", "set", "set"]), JSON_VALUES),
            min_size=1,
            max_size=3,
        )
    )
    for key_path, op, value in edits:
        try:
            mutate_path(content, key_path, op, value)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit removed or replaced the parent
    path.write_text(json.dumps(content))
    try:
        classifier = SynthesizedClassifier.from_pretrained(folder)
        _ = classifier.support
        classifier.predict([torch.zeros(3, 40, 40).numpy().transpose(1, 2, 0)])
        str(classifier_card(classifier))
    except CheckpointError as error:
        assert_actionable(error, CheckpointError)


@pytest.fixture(scope="module")
def versioned(saved, tmp_path_factory):
    """The saved classifier updated once, so that it has a changelog and a versions/v1 task file."""
    from sgps_testing import noise_image

    root = tmp_path_factory.mktemp("versioned")
    synth = tiny_synthesizer(seed=0)
    classifier = SynthesizedClassifier.from_pretrained(saved / "classifier")
    synth.update(classifier, {classifier.label_names[0]: [noise_image(7)]}).save_pretrained(root / "classifier")
    return root / "classifier"
