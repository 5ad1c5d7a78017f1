"""The target network: a timm EfficientNet-V2 whose weights the synthesizer writes.

The synthesizer keeps one copy of the target body (classifier head removed) as its meta-learned
base and runs it *functionally* (`torch.func.functional_call`) with generated weights, so that
meta-training differentiates through the generated tensors. The synthesized classifier is the same
timm architecture with a real head, materialised from those tensors: both paths must agree exactly.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Mapping

import timm
import torch
from torch import Tensor, nn
from torch.func import functional_call

from .configuration_sgps import SGPSConfig
from .errors import SynthesisError

HEAD_WEIGHT = "classifier.weight"
HEAD_BIAS = "classifier.bias"


def create_target(config: SGPSConfig, num_classes: int = 0) -> nn.Module:
    """Build the target timm model; ``num_classes=0`` gives the body that ends in pooled features."""
    return timm.create_model(
        config.target_architecture, pretrained=False, num_classes=num_classes, **config.target_model_args
    )


def batchnorm_layers(model: nn.Module) -> list[tuple[str, nn.BatchNorm2d]]:
    """BatchNorm layers in definition order (timm's BatchNormAct2d subclasses BatchNorm2d)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def pointwise_conv(model: nn.Module, name: str) -> nn.Conv2d:
    """The 1x1, ungrouped convolution called ``name``; raises ValueError for anything else."""
    module = dict(model.named_modules()).get(name)
    if not isinstance(module, nn.Conv2d) or module.kernel_size != (1, 1) or module.groups != 1:
        raise ValueError(f"lowrank_modules entry {name!r} is not a pointwise (1x1, groups=1) convolution of the target.")
    return module


@contextmanager
def training_mode(model: nn.Module, training: bool) -> Iterator[None]:
    """Temporarily put ``model`` in train/eval mode (BatchNorm behaviour) whatever its caller's mode."""
    previous = model.training
    model.train(training)
    try:
        yield
    finally:
        model.train(previous)


def measure_features(body: nn.Module, tensors: Mapping[str, Tensor], images: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """Pooled features of ``images`` normalised with their own batch statistics, and those statistics.

    The body's BatchNorm momentum is 1.0 (set by the synthesizer), so after this train-mode pass the
    fresh running-stat buffers hold exactly the statistics of ``images``: task-specific statistics
    that the synthesized classifier then uses in eval mode.
    """
    stats = {name: buf.detach().clone() for name, buf in tensors.items() if _is_stat_buffer(name)}
    try:
        with training_mode(body, True):
            features = functional_call(body, {**tensors, **stats}, (images,))
    except ValueError as exc:
        if "Expected more than 1 value per channel" not in str(exc):
            raise
        raise SynthesisError(
            f"{images.shape[0]} support image(s) of {images.shape[-1]} px leave a 1x1 feature map with a single value per "
            "channel, which has no batch statistics: give the task at least 2 support images in total, or use a "
            "synthesizer whose image_size is above 32."
        ) from exc
    return features, stats


def body_features(body: nn.Module, tensors: Mapping[str, Tensor], images: Tensor) -> Tensor:
    """Pooled features in eval mode (running statistics), exactly as the materialised timm model computes them."""
    with training_mode(body, False):
        return functional_call(body, dict(tensors), (images,))


def classify(body: nn.Module, weights: Mapping[str, Tensor], images: Tensor) -> Tensor:
    """Logits of a synthesized classifier given as a state dict (body tensors + head)."""
    body_tensors = {k: v for k, v in weights.items() if k not in (HEAD_WEIGHT, HEAD_BIAS)}
    return nn.functional.linear(body_features(body, body_tensors, images), weights[HEAD_WEIGHT], weights[HEAD_BIAS])


def materialize(config: SGPSConfig, weights: Mapping[str, Tensor]) -> nn.Module:
    """A plain timm model (eval mode) holding ``weights``; every tensor must be present."""
    num_classes = weights[HEAD_WEIGHT].shape[0]
    model = create_target(config, num_classes=num_classes)
    model.load_state_dict({k: v.detach().clone() for k, v in weights.items()}, strict=True)
    return model.eval()


def _is_stat_buffer(name: str) -> bool:
    return name.endswith(("running_mean", "running_var", "num_batches_tracked"))
