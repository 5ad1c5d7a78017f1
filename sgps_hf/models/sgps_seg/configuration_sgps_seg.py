"""Configuration of the segmentation synthesizer (a `transformers` `PretrainedConfig`)."""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig

HEADS = ("ridge", "prototype")


class SGPSSegConfig(PretrainedConfig):
    r"""Configuration of :class:`~sgps_hf.SGPSSegSynthesizer`.

    The synthesized segmenter is a plain transformers ``UperNetForSemanticSegmentation`` with a timm
    EfficientNet backbone (``TimmBackboneConfig``): the frozen ImageNet body shared with the
    classification side, a meta-learned UperNet decoder, and a task-specific final 1x1 classifier
    convolution computed in closed form from the examples.

    Args:
        backbone (`str`): timm architecture of the encoder (offline ImageNet weights: ``tf_efficientnet_lite0``).
        out_indices (`list[int]`): encoder stages fed to the decoder.
        hidden_size (`int`): UperNet decoder width (small for CPU speed).
        pool_scales (`list[int]`): pyramid pooling scales of the UperNet head.
        image_size (`int`): square input size (the data is 128 px).
        image_mean, image_std (`list[float]`): normalisation of RGB inputs in [0, 1] (Lite: 0.5 / 0.5).
        head (`str`): how the examples become the classifier: ``"ridge"`` (class-balanced ridge regression
            of +-1 targets on the decoder's pixel features, solved in closed form) or ``"prototype"``
            (masked average pooling into foreground/background prototypes, PANet's squared-distance
            rule folded into the 1x1 conv: ``w_c = 2 s p_c``, ``b_c = -s |p_c|^2``).
        init_log_scale (`float`): initial log of the meta-learned logit scale ``s``.
        init_log_ridge_lambda (`float`): initial log of the ridge strength (relative to the mean feature energy).
        freeze_backbone (`bool`): keep the ImageNet encoder frozen during meta-training.
        prototype_max_k (`int`, *optional*): with at most this many examples, use the ``"prototype"`` head
            whatever ``head`` says (with one or two examples the ridge solution is noisier; chosen on meta-val).
        raw_levels (`list[int]`, *optional*): encoder stages (positions in ``out_indices``, 0 = stride 4) whose
            features also pass through the synthesized decoder unchanged (standardised with meta-train statistics,
            optionally projected on their leading principal components, upsampled to stride 4) beside the learned
            ``hidden_size`` channels; the closed-form head then acts on both. The saved UperNet is then
            ``hidden_size + sum(raw_dims)`` channels wide, with the learned and raw blocks kept apart.
        raw_dims (`list[int]`, *optional*): channels kept per raw level (its leading principal components);
            default all.
        raw_weight (`float`): weight of the raw block relative to the (energy-normalised) learned block in the head.
        learned_energy_norm (`bool`): scale the learned block by the inverse root of its mean pixel energy on the
            examples (so the two blocks weigh alike whatever the decoder's scale).
        prototype_mix (`list[float]`, *optional*): when set, the head for K examples is the ``"blend"`` of the
            prototype and ridge margins (each divided by its separation on the examples) with prototype weight
            ``prototype_mix[K - 1]`` (the last entry for larger K); ``prototype_max_k`` still takes precedence.
            Both parts are linear in the features, so the export stays one 1x1 classifier.
        learn_raw_weight (`bool`): meta-learn the raw block's weight (a scalar ``log_raw_weight`` initialised at
            ``log(raw_weight)``; ``raw_weight`` in the saved config is kept equal to its value).
    """

    model_type = "sgps_seg"

    def __init__(
        self,
        backbone: str = "tf_efficientnet_lite0",
        out_indices: list[int] | None = None,
        hidden_size: int = 64,
        pool_scales: list[int] | None = None,
        image_size: int = 128,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        head: str = "ridge",
        init_log_scale: float = 0.0,
        init_log_ridge_lambda: float = -2.0,
        freeze_backbone: bool = True,
        prototype_max_k: int | None = None,
        raw_levels: list[int] | None = None,
        raw_dims: list[int] | None = None,
        raw_weight: float = 1.0,
        learned_energy_norm: bool = False,
        learn_raw_weight: bool = False,
        prototype_mix: list[float] | None = None,
        **kwargs: Any,
    ) -> None:
        if head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {head!r}.")
        if int(image_size) < 32:
            raise ValueError(f"image_size must be at least 32, got {image_size}.")
        if int(hidden_size) < 1:
            raise ValueError(f"hidden_size must be positive, got {hidden_size}.")
        self.backbone = backbone
        self.out_indices = list(out_indices) if out_indices is not None else [1, 2, 3, 4]
        self.hidden_size = int(hidden_size)
        self.pool_scales = list(pool_scales) if pool_scales is not None else [1, 2, 3, 6]
        self.image_size = int(image_size)
        self.image_mean = list(image_mean) if image_mean is not None else [0.5, 0.5, 0.5]
        self.image_std = list(image_std) if image_std is not None else [0.5, 0.5, 0.5]
        self.head = head
        self.init_log_scale = float(init_log_scale)
        self.init_log_ridge_lambda = float(init_log_ridge_lambda)
        self.freeze_backbone = bool(freeze_backbone)
        self.prototype_max_k = int(prototype_max_k) if prototype_max_k is not None else None
        self.raw_levels = [int(i) for i in raw_levels] if raw_levels else []
        if len(set(self.raw_levels)) != len(self.raw_levels) or any(
            not 0 <= i < len(self.out_indices) for i in self.raw_levels
        ):
            raise ValueError(
                f"raw_levels must be distinct positions in out_indices (0..{len(self.out_indices) - 1}), got "
                f"{raw_levels}."
            )
        self.raw_levels = sorted(self.raw_levels)
        if raw_dims is not None and len(raw_dims) != len(self.raw_levels):
            raise ValueError(f"raw_dims needs one entry per raw level ({len(self.raw_levels)}), got {raw_dims}.")
        self.raw_dims = [int(d) for d in raw_dims] if raw_dims is not None else None
        if self.raw_dims is not None and any(d < 1 for d in self.raw_dims):
            raise ValueError(f"raw_dims must be positive, got {raw_dims}.")
        self.raw_weight = float(raw_weight)
        if not self.raw_weight > 0:
            raise ValueError(f"raw_weight must be positive, got {raw_weight}.")
        self.learned_energy_norm = bool(learned_energy_norm)
        self.learn_raw_weight = bool(learn_raw_weight)
        self.prototype_mix = [float(v) for v in prototype_mix] if prototype_mix else None
        if self.prototype_mix is not None and any(not 0.0 <= v <= 1.0 for v in self.prototype_mix):
            raise ValueError(f"prototype_mix entries must be in [0, 1], got {prototype_mix}.")
        super().__init__(**kwargs)

    def with_changes(self, **changes: Any) -> "SGPSSegConfig":
        """A new config equal to this one but for ``changes`` (validated). Configs are data: code that needs another
        value builds a new config (or passes an argument) instead of assigning a field of a live one."""
        return type(self).from_dict({**self.to_dict(), **changes})

    def segmenter_config(self, raw_channels: int = 0):
        """The ``UperNetConfig`` of the synthesized network (2 labels: background, foreground).

        ``raw_channels``: width of the raw pass-through block (the exported network is ``hidden_size + raw_channels``
        wide; the synthesizer's own decoder is the learned ``hidden_size`` block).
        """
        from transformers import TimmBackboneConfig, UperNetConfig

        backbone_config = TimmBackboneConfig(
            backbone=self.backbone, out_indices=tuple(self.out_indices), use_pretrained_backbone=False
        )
        return UperNetConfig(
            backbone_config=backbone_config,
            hidden_size=self.hidden_size + int(raw_channels),
            pool_scales=list(self.pool_scales),
            use_auxiliary_head=False,
            num_labels=2,
            id2label={0: "background", 1: "foreground"},
            label2id={"background": 0, "foreground": 1},
        )
