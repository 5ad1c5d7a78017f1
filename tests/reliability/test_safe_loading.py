"""Safe loading: weights only from safetensors, no pickle ever unpickled, no remote code, exact tensors or
CheckpointError.

Each pickle in these tests is a *booby-trapped* pickle that creates a marker file when unpickled, so "refused" is
checked by the marker staying absent, not only by the error message.
"""

from __future__ import annotations

import json
import pickle
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from sgps_testing import synthetic_task, tiny_synthesizer, with_random_text_memory
from transformers import AutoModel

from sgps_hf import CheckpointError, SGPSSynthesizer, SynthesizedClassifier

pytestmark = [pytest.mark.usefixtures("torch_single_thread"), pytest.mark.timeout(180)]


class _Trap:
    """Unpickling this calls ``open(marker, "w")``: proof that someone ran pickle.load on the file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def plant_pickles(folder, marker) -> None:
    for name in ("pytorch_model.bin", "model.pt", "weights.pth", "last.ckpt"):
        (folder / name).write_bytes(pickle.dumps(_Trap(str(marker))))


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    root = tmp_path_factory.mktemp("originals")
    synth = with_random_text_memory(tiny_synthesizer(seed=0))  # a class memory of 5 entries
    synth.save_pretrained(root / "synth")
    synth.synthesize(synthetic_task(root / "task", texts=("a", "b"), images_per_class=(1, 1))).save_pretrained(
        root / "classifier"
    )
    return root


def copy_of(originals, tmp_path, name):
    folder = tmp_path / name
    shutil.copytree(originals / name, folder)
    return folder


def copy_with_config_edit(originals, tmp_path, name, edit):
    """A copy of the saved ``name`` folder whose config.json has the keys of ``edit`` overwritten."""
    folder = copy_of(originals, tmp_path, name)
    config = json.loads((folder / "config.json").read_text())
    config.update(edit)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


LOADERS = {
    "synth": lambda folder: SGPSSynthesizer.from_pretrained(folder),
    "auto": lambda folder: AutoModel.from_pretrained(folder),
    "classifier": lambda folder: SynthesizedClassifier.from_pretrained(folder),
}


def source_of(loader: str) -> str:
    return "classifier" if loader == "classifier" else "synth"


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_pickle_only_checkpoints_are_refused_without_unpickling(originals, tmp_path, loader):
    folder = copy_of(originals, tmp_path, source_of(loader))
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "unpickled"
    plant_pickles(folder, marker)
    with pytest.raises(CheckpointError, match=r"No model.safetensors.*pickle files are refused.*safetensors"):
        LOADERS[loader](folder)
    assert not marker.exists(), "a pickle file was unpickled"


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_safetensors_win_over_pickles_next_to_them(originals, tmp_path, loader):
    folder = copy_of(originals, tmp_path, source_of(loader))
    marker = tmp_path / "unpickled"
    plant_pickles(folder, marker)
    loaded = LOADERS[loader](folder)
    state = (loaded.model if loader == "classifier" else loaded).state_dict()
    reference = load_file(folder / "model.safetensors")
    assert all(torch.equal(state[name], tensor) for name, tensor in reference.items())
    assert not marker.exists(), "a pickle file was unpickled"


def test_remote_code_in_a_config_is_never_run(originals, tmp_path):
    """An ``auto_map`` pointing at code inside the folder is ignored: sgps_hf's own classes are registered."""
    folder = copy_of(originals, tmp_path, "synth")
    marker = tmp_path / "remote-code-ran"
    (folder / "evil.py").write_text(
        f"open({str(marker)!r}, 'w')\nfrom sgps_hf import SGPSSynthesizer as Model, SGPSConfig as Config\n"
    )
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.Config", "AutoModel": "evil.Model"}
    (folder / "config.json").write_text(json.dumps(config))
    for load in (AutoModel.from_pretrained, SGPSSynthesizer.from_pretrained):
        assert type(load(folder)) is SGPSSynthesizer
    assert not marker.exists()


def mutate_tensors(path, edit) -> None:
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


SYNTH_KEY, CLASSIFIER_KEY = "text_memory_keys", "classifier.weight"
MISMATCHES = {
    "missing": (lambda t, k: t.pop(k), r"1 missing tensors \(e\.g\. \['{key}'\]\)"),
    "unexpected": (
        lambda t, k: t.__setitem__("injected.weight", torch.zeros(3)),
        r"1 unexpected tensors \(e\.g\. \['injected\.weight'\]\)",
    ),
    "shape": (lambda t, k: t.__setitem__(k, t[k].T.contiguous()), r"1 tensors with the wrong shape \({key}: "),
    "dtype-f64": (
        lambda t, k: t.__setitem__(k, t[k].double()),
        r"1 tensors with the wrong dtype \({key}: F64 instead of F32\)",
    ),
    "dtype-f16": (
        lambda t, k: t.__setitem__(k, t[k].half()),
        r"1 tensors with the wrong dtype \({key}: F16 instead of F32\)",
    ),
    "dtype-int": (
        lambda t, k: t.__setitem__(k, t[k].to(torch.int32)),
        r"1 tensors with the wrong dtype \({key}: I32 instead of F32\)",
    ),
}


@pytest.mark.parametrize("loader", sorted(LOADERS))
@pytest.mark.parametrize("mismatch", sorted(MISMATCHES))
def test_tensors_that_do_not_match_the_config_are_rejected(originals, tmp_path, loader, mismatch):
    folder = copy_of(originals, tmp_path, source_of(loader))
    key = CLASSIFIER_KEY if loader == "classifier" else SYNTH_KEY
    edit, message = MISMATCHES[mismatch]
    mutate_tensors(folder / "model.safetensors", lambda tensors: edit(tensors, key))
    with pytest.raises(CheckpointError, match=message.format(key=key.replace(".", r"\."))) as info:
        LOADERS[loader](folder)
    assert "save the" in str(info.value) and "again with save_pretrained" in str(info.value)


def test_a_config_from_another_synthesizer_is_rejected_before_allocating(originals, tmp_path):
    """A config.json asking for a huge model is compared with the weights on the meta device, never allocated."""
    # ~70 GB of class memory if it were built
    folder = copy_with_config_edit(originals, tmp_path, "synth", {"text_memory_size": 50_000_000})
    with pytest.raises(CheckpointError, match="wrong shape"):
        SGPSSynthesizer.from_pretrained(folder)


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"text_memory_size": "big"}, "text_memory_size must be a int, got 'big'"),
        ({"text_embed_dim": 0}, "text_embed_dim must be a positive integer"),
        ({"ridge_init": -1}, "ridge_init must be positive"),
        ({"image_size": None}, "image_size must be a int, got None"),
        ({"prior_init": float("nan")}, "prior_init must be a finite number"),
        ({"support_views": ["identity", "shear"]}, "support_views must start with 'identity'"),
        ({"target_architecture": "tf_efficientnet_lite0"}, "cannot be built"),  # lite0 takes no multipliers
    ],
)
def test_invalid_synthesizer_configs_name_the_field(originals, tmp_path, edit, message):
    folder = copy_with_config_edit(originals, tmp_path, "synth", edit)
    with pytest.raises(CheckpointError, match=message):
        SGPSSynthesizer.from_pretrained(folder)


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"pretrained_cfg": 5}, "'pretrained_cfg' must be an object"),
        (
            {"model_args": {"checkpoint_path": "/tmp/x.pth"}},
            "'model_args' must be an object of plain timm model arguments",
        ),
        ({"model_args": {"channel_multiplier": [1]}}, "'model_args' must be"),
        ({"label_names": ["only-one"]}, "'label_names' must be a list of at least 2"),
        ({"num_classes": 7}, "'num_classes' is 7 but there are 2 label_names"),
        ({"architecture": "no_such_timm_model"}, "must be a plain timm model name"),
    ],
)
def test_invalid_classifier_configs_are_rejected(originals, tmp_path, edit, message):
    folder = copy_with_config_edit(originals, tmp_path, "classifier", edit)
    with pytest.raises(CheckpointError, match=message):
        SynthesizedClassifier.from_pretrained(folder)


@pytest.mark.parametrize("loader", sorted(LOADERS))
def test_truncated_weights_are_rejected(originals, tmp_path, loader):
    folder = copy_of(originals, tmp_path, source_of(loader))
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a valid safetensors file.*truncated or corrupt"):
        LOADERS[loader](folder)
