"""The target network: a timm EfficientNet whose weights the synthesizer writes.

The synthesizer keeps one copy of the target body (classifier head removed) as its meta-learned
base and runs it *functionally* (`torch.func.functional_call`) with generated weights, so that
meta-training differentiates through the generated tensors. The synthesized classifier is the same
timm architecture with a real head, materialised from those tensors: both paths must agree exactly.
"""

from __future__ import annotations

import hashlib
from contextlib import contextmanager
from typing import Iterator, Mapping

import timm
import torch
from torch import Tensor, nn
from torch.func import functional_call
from transformers import PretrainedConfig

#: The timm keyword arguments a config can pass to the target architecture (its ``target_model_args``).
TARGET_MODEL_ARGS = ("channel_multiplier", "depth_multiplier")
HEAD_WEIGHT = "classifier.weight"
HEAD_BIAS = "classifier.bias"


def create_target(config: PretrainedConfig, num_classes: int = 0) -> nn.Module:
    """Build the target timm model; ``num_classes=0`` gives the body that ends in pooled features."""
    return timm.create_model(
        config.target_architecture, pretrained=False, num_classes=num_classes, **config.target_model_args
    )


def batchnorm_layers(model: nn.Module) -> list[tuple[str, nn.BatchNorm2d]]:
    """BatchNorm layers in definition order (timm's BatchNormAct2d subclasses BatchNorm2d)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@contextmanager
def training_mode(model: nn.Module, training: bool) -> Iterator[None]:
    """Temporarily put ``model`` in train/eval mode (BatchNorm behaviour) whatever its caller's mode."""
    previous = model.training
    model.train(training)
    try:
        yield
    finally:
        model.train(previous)


def tensors_fingerprint(tensors: Mapping[str, Tensor]) -> str:
    """SHA-256 of named tensors (names, dtypes, shapes and bytes, in name order): which body a result was measured on,
    whatever path its checkpoint has since (a benchmark's rows are valid only on the body that produced them)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(tensors.items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())  # bytes of any dtype, scalars too
    return digest.hexdigest()


def body_features(body: nn.Module, tensors: Mapping[str, Tensor], images: Tensor) -> Tensor:
    """Pooled features in eval mode (running statistics), exactly as the materialised timm model computes them."""
    # Channels-last input takes oneDNN's faster depthwise-convolution path on CPU (about 1.4x here); the values agree
    # up to float rounding.
    with training_mode(body, False):
        return functional_call(body, dict(tensors), (images.contiguous(memory_format=torch.channels_last),))


def task_batchnorm(
    body: nn.Module, tensors: Mapping[str, Tensor], images: Tensor, weight: float
) -> tuple[dict[str, Tensor], Tensor]:
    """Task-adaptive BatchNorm: ``tensors`` with every BatchNorm's running statistics moved a fraction ``weight``
    towards those of ``images`` (a task's support images), and the pooled features of ``images`` under them.

    One eval-mode pass: each layer mixes its statistics just before it normalises, so the features returned are
    exactly what the adapted body (materialised or functional) computes for the same images. The statistics are
    not differentiated; the caller's tensors are not modified.
    """
    adapted = dict(tensors)
    layers = batchnorm_layers(body)
    for name, _ in layers:
        for stat in ("running_mean", "running_var"):
            adapted[f"{name}.{stat}"] = tensors[f"{name}.{stat}"].detach().clone()

    def mix(module: nn.Module, inputs: tuple[Tensor, ...]) -> None:
        with torch.no_grad():
            x = inputs[0]
            module.running_mean.mul_(1 - weight).add_(weight * x.mean((0, 2, 3)))
            module.running_var.mul_(1 - weight).add_(weight * x.var((0, 2, 3), unbiased=False))

    hooks = [module.register_forward_pre_hook(mix) for _, module in layers]
    try:
        features = body_features(body, adapted, images)
    finally:
        for hook in hooks:
            hook.remove()
    return adapted, features


def classify(body: nn.Module, weights: Mapping[str, Tensor], images: Tensor) -> Tensor:
    """Logits of a synthesized classifier given as a state dict (body tensors + head)."""
    body_tensors = {k: v for k, v in weights.items() if k not in (HEAD_WEIGHT, HEAD_BIAS)}
    return nn.functional.linear(body_features(body, body_tensors, images), weights[HEAD_WEIGHT], weights[HEAD_BIAS])


def materialize(config: PretrainedConfig, weights: Mapping[str, Tensor]) -> nn.Module:
    """A plain timm model (eval mode) holding ``weights``; every tensor must be present."""
    num_classes = weights[HEAD_WEIGHT].shape[0]
    model = create_target(config, num_classes=num_classes)
    model.load_state_dict({k: v.detach().clone() for k, v in weights.items()}, strict=True)
    return model.eval()
