"""sgps_hf.body.timm_network: the timm target network, its functional forward and its materialisation."""

import pytest
import torch
from sgps_testing import tiny_config
from torch import nn

from sgps_hf.body.timm_network import (
    HEAD_BIAS,
    HEAD_WEIGHT,
    batchnorm_layers,
    body_features,
    classify,
    create_target,
    materialize,
    task_batchnorm,
    training_mode,
)

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def config():
    return tiny_config()


@pytest.fixture(scope="module")
def body(config):
    torch.manual_seed(0)
    return create_target(config, num_classes=0).eval()


def body_tensors(body):
    return {**dict(body.named_parameters()), **dict(body.named_buffers())}


def random_weights(config, body, num_classes=4, seed=0):
    """A complete state dict with non-trivial statistics and head, as the synthesizer would produce."""
    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for name, tensor in body_tensors(body).items():
        if name.endswith("num_batches_tracked"):
            weights[name] = tensor.clone()
        elif name.endswith("running_var"):
            weights[name] = torch.rand(tensor.shape, generator=generator) + 0.5
        else:
            weights[name] = tensor.detach() + 0.05 * torch.randn(tensor.shape, generator=generator)
    weights[HEAD_WEIGHT] = torch.randn(num_classes, body.num_features, generator=generator)
    weights[HEAD_BIAS] = torch.randn(num_classes, generator=generator)
    return weights


def test_create_target_builds_the_configured_timm_model(config, body):
    assert body.num_classes == 0 and isinstance(body.classifier, nn.Identity)
    x = torch.randn(2, 3, config.image_size, config.image_size)
    with torch.no_grad():
        assert body(x).shape == (2, body.num_features)
    with_head = create_target(config, num_classes=5)
    assert with_head.classifier.out_features == 5
    assert set(with_head.state_dict()) == set(body.state_dict()) | {HEAD_WEIGHT, HEAD_BIAS}


def test_batchnorm_layers_lists_every_norm_in_order(body):
    layers = batchnorm_layers(body)
    names = [name for name, _ in layers]
    assert names[0] == "bn1" and names[-1] == "bn2"
    expected = [n for n, m in body.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert names == expected and len(names) > 10
    assert all(isinstance(m, nn.BatchNorm2d) for _, m in layers)


def test_training_mode_restores_the_previous_mode_even_on_error(body):
    assert not body.training
    with training_mode(body, True):
        assert body.training and body.bn1.training
    assert not body.training and not body.bn1.training
    with pytest.raises(RuntimeError):
        with training_mode(body, True):
            raise RuntimeError("boom")
    assert not body.training


def test_classify_equals_the_materialized_timm_model(config, body):
    weights = random_weights(config, body)
    images = torch.randn(3, 3, config.image_size, config.image_size)
    model = materialize(config, weights)
    assert not model.training and isinstance(model, type(body))
    with torch.no_grad():
        expected = model(images)
        torch.testing.assert_close(classify(body, weights, images), expected, rtol=1e-5, atol=1e-5)
        features = body_features(body, {k: v for k, v in weights.items() if not k.startswith("classifier")}, images)
    torch.testing.assert_close(features @ weights[HEAD_WEIGHT].T + weights[HEAD_BIAS], expected, rtol=1e-5, atol=1e-5)
    # body_features uses the given running statistics (eval mode), not the body's own
    with torch.no_grad():
        own = body(images)
    assert not torch.allclose(own, features)


def test_classify_is_differentiable_wrt_the_given_weights(config, body):
    weights = {
        k: v.clone().requires_grad_(v.is_floating_point() and "running" not in k)
        for k, v in random_weights(config, body).items()
    }
    logits = classify(body, weights, torch.randn(2, 3, config.image_size, config.image_size))
    logits.sum().backward()
    assert weights["conv_stem.weight"].grad is not None and weights["conv_stem.weight"].grad.abs().sum() > 0
    assert weights[HEAD_WEIGHT].grad is not None
    assert body.conv_stem.weight.grad is None  # the module's own parameters were not used


def test_materialize_requires_every_tensor(config, body):
    weights = random_weights(config, body)
    materialized = materialize(config, weights)
    weights["conv_stem.weight"].add_(1.0)  # materialize copies: later edits do not leak into the classifier
    assert not torch.equal(materialized.conv_stem.weight, weights["conv_stem.weight"])
    del weights["bn2.running_var"]
    with pytest.raises(RuntimeError, match="bn2.running_var"):
        materialize(config, weights)


# -- task-adaptive BatchNorm ---------------------------------------------------------------------------------------
def test_task_batchnorm_features_are_those_of_the_adapted_body_and_the_input_is_untouched(config, body):
    images = torch.randn(6, 3, config.image_size, config.image_size, generator=torch.Generator().manual_seed(1))
    tensors = body_tensors(body)
    before = {name: tensor.clone() for name, tensor in tensors.items()}
    with torch.no_grad():
        adapted, features = task_batchnorm(body, tensors, images, 0.4)
        model = materialize(
            config, {**adapted, HEAD_WEIGHT: torch.zeros(2, body.num_features), HEAD_BIAS: torch.zeros(2)}
        )
        expected = model.forward_head(model.forward_features(images), pre_logits=True)
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-5)
    assert all(torch.equal(tensors[name], value) for name, value in before.items())  # the caller's tensors
    changed = [name for name in adapted if not torch.equal(adapted[name], before[name])]
    assert changed and all(name.endswith(("running_mean", "running_var")) for name in changed)


def test_task_batchnorm_mixes_each_layer_towards_the_statistics_of_its_input(config, body):
    images = torch.randn(5, 3, config.image_size, config.image_size, generator=torch.Generator().manual_seed(2))
    first_name, first = batchnorm_layers(body)[0]
    inputs = []
    hook = first.register_forward_pre_hook(lambda module, args: inputs.append(args[0].detach().clone()))
    try:
        with torch.no_grad():
            adapted, _ = task_batchnorm(body, body_tensors(body), images, 1.0)
    finally:
        hook.remove()
    x = inputs[0]
    torch.testing.assert_close(adapted[f"{first_name}.running_mean"], x.mean((0, 2, 3)))
    torch.testing.assert_close(adapted[f"{first_name}.running_var"], x.var((0, 2, 3), unbiased=False))
    with torch.no_grad():
        unchanged, features = task_batchnorm(body, body_tensors(body), images, 0.0)
    assert all(torch.equal(unchanged[name], value) for name, value in body_tensors(body).items())
    torch.testing.assert_close(features, body_features(body, body_tensors(body), images))
