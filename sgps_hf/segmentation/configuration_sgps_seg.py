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
        super().__init__(**kwargs)

    def segmenter_config(self):
        """The ``UperNetConfig`` of the synthesized network (2 labels: background, foreground)."""
        from transformers import TimmBackboneConfig, UperNetConfig

        backbone_config = TimmBackboneConfig(
            backbone=self.backbone, out_indices=tuple(self.out_indices), use_pretrained_backbone=False
        )
        return UperNetConfig(
            backbone_config=backbone_config,
            hidden_size=self.hidden_size,
            pool_scales=list(self.pool_scales),
            use_auxiliary_head=False,
            num_labels=2,
            id2label={0: "background", 1: "foreground"},
            label2id={"background": 0, "foreground": 1},
        )
