"""The segmentation synthesizer: examples with masks in, a complete UperNet segmenter's weights out.

``SGPSSegSynthesizer`` holds the synthesized network's shared part (the frozen ImageNet EfficientNet-Lite0
encoder of the classification side and a meta-learned UperNet decoder) and writes the task-specific
part, the final 1x1 classifier convolution, in closed form from the examples' decoder features:
one forward pass, no gradient step, deterministic. Two heads (``config.head``):

* ``"ridge"``: class-balanced ridge regression of +-1 targets on the pixel features (with intercept),
  ``w = (X^T A X + lambda I)^-1 X^T A t``; logits ``(-s/2 (w.f+b), +s/2 (w.f+b))``. As ``lambda`` grows
  its direction tends to the difference of the prototypes.
* ``"prototype"``: masked average pooling into foreground / background prototypes ``p_c`` and PANet's
  squared-distance rule as a linear layer, ``w_c = 2 s p_c``, ``b_c = -s |p_c|^2``.

The scale ``s`` and ridge strength ``lambda`` are meta-learned scalars.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedModel, UperNetForSemanticSegmentation
from transformers.utils import ModelOutput

from ..errors import SynthesisError
from .configuration_sgps_seg import SGPSSegConfig

if TYPE_CHECKING:
    from .segmenter import SynthesizedSegmenter
    from .task import SegmentationTask

BACKBONE_PREFIX = "backbone._backbone."
CLASSIFIER_PREFIX = "decode_head.classifier."


@dataclass
class SGPSSegOutput(ModelOutput):
    """Query logits ``(Q, 2, H, W)`` of the synthesized network (background, foreground) and the loss."""

    loss: Tensor | None = None
    logits: Tensor | None = None
    classifier_weight: Tensor | None = None
    classifier_bias: Tensor | None = None


class SGPSSegSynthesizer(PreTrainedModel):
    config_class = SGPSSegConfig
    base_model_prefix = "sgps_seg"
    main_input_name = "pixel_values"

    def __init__(self, config: SGPSSegConfig) -> None:
        super().__init__(config)
        self.segmenter = UperNetForSemanticSegmentation(config.segmenter_config())
        self.log_scale = nn.Parameter(torch.tensor(float(config.init_log_scale)))
        self.log_ridge_lambda = nn.Parameter(torch.tensor(float(config.init_log_ridge_lambda)))
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:  # the UperNet initialises itself; scalars are set above
        pass

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_imagenet(cls, config: SGPSSegConfig | None = None, seed: int = 0) -> "SGPSSegSynthesizer":
        """A fresh synthesizer (decoder randomly initialised with ``seed``) on the offline ImageNet encoder."""
        torch.manual_seed(seed)
        model = cls(config or SGPSSegConfig())
        model.load_imagenet_encoder()
        return model

    def load_imagenet_encoder(self) -> None:
        """Copy the offline ImageNet weights of ``config.backbone`` (sgps_hf.body.backbones) into the encoder."""
        from ..body.backbones import imagenet_state_dict

        weights = imagenet_state_dict(self.config.backbone)
        encoder = self.segmenter.backbone._backbone
        own = encoder.state_dict()
        missing = [k for k in own if k not in weights or weights[k].shape != own[k].shape]
        if missing:
            raise SynthesisError(f"ImageNet weights do not cover {len(missing)} encoder tensors (e.g. {missing[0]}).")
        encoder.load_state_dict({k: weights[k] for k in own})

    # -- the network's pieces -------------------------------------------------------------------
    def train(self, mode: bool = True) -> "SGPSSegSynthesizer":
        super().train(mode)
        if self.config.freeze_backbone:
            self.segmenter.backbone.eval()  # frozen ImageNet body: its BatchNorm keeps ImageNet statistics
        return self

    def encode(self, pixel_values: Tensor) -> tuple[Tensor, ...]:
        """Encoder feature maps (one per ``out_indices`` stage)."""
        if self.config.freeze_backbone:
            with torch.no_grad():
                return tuple(self.segmenter.backbone(pixel_values).feature_maps)
        return tuple(self.segmenter.backbone(pixel_values).feature_maps)

    def decode(self, features: Sequence[Tensor]) -> Tensor:
        """The UperNet decoder's final pixel features (the input of its 1x1 classifier), ``(B, C, h, w)``."""
        head = self.segmenter.decode_head
        classifier = head.classifier
        head.classifier = nn.Identity()
        try:
            return head(list(features))
        finally:
            head.classifier = classifier

    @property
    def scale(self) -> Tensor:
        return self.log_scale.exp()

    def resolve_head(self, num_examples: int) -> str:
        """The head used for ``num_examples`` examples: ``config.head``, or prototype up to ``config.prototype_max_k``."""
        limit = getattr(self.config, "prototype_max_k", None)
        return "prototype" if limit is not None and num_examples <= limit else self.config.head

    def head_from_support(self, support_features: Tensor, support_masks: Tensor, head: str | None = None) -> tuple[Tensor, Tensor]:
        """Closed-form classifier ``(weight (2, C, 1, 1), bias (2,))`` from decoder features and masks.

        ``support_masks``: ``(K, 1, H, W)`` in [0, 1] at any resolution (area-pooled to the features').
        """
        k, c, h, w = support_features.shape
        head = head or self.resolve_head(k)
        y = F.adaptive_avg_pool2d(support_masks.to(support_features.dtype), (h, w))  # soft fraction of foreground
        x = support_features.permute(0, 2, 3, 1).reshape(-1, c).double()
        y = y.reshape(-1).double()
        fg, bg = y.sum(), (1 - y).sum()
        if fg <= 0 or bg <= 0:
            raise SynthesisError("The examples need both foreground and background pixels to synthesize a segmenter.")
        scale = self.scale.double()
        if head == "prototype":
            p_fg = (x * y[:, None]).sum(0) / fg
            p_bg = (x * (1 - y)[:, None]).sum(0) / bg
            prototypes = torch.stack([p_bg, p_fg])
            weight = 2 * scale * prototypes
            bias = -scale * (prototypes**2).sum(1)
        elif head == "ridge":
            a = 0.5 * y / fg + 0.5 * (1 - y) / bg  # class-balanced pixel weights, summing to 1
            t = 2 * y - 1
            xa = torch.cat([x, torch.ones_like(x[:, :1])], 1)
            gram = xa.T @ (xa * a[:, None])
            energy = torch.diagonal(gram)[:c].mean().clamp_min(1e-12)
            reg = torch.eye(c + 1, dtype=x.dtype, device=x.device) * (self.log_ridge_lambda.double().exp() * energy)
            reg[c, c] = 1e-6 * energy  # (almost) no penalty on the intercept
            solution = torch.linalg.solve(gram + reg, xa.T @ (a * t))
            direction, intercept = solution[:c], solution[c]
            weight = torch.stack([-direction, direction]) * (scale / 2)
            bias = torch.stack([-intercept, intercept]) * (scale / 2)
        else:
            raise SynthesisError(f"Unknown head {head!r}.")
        dtype = support_features.dtype
        return weight.to(dtype)[:, :, None, None], bias.to(dtype)

    def query_logits(self, query_features: Tensor, weight: Tensor, bias: Tensor, size: tuple[int, int]) -> Tensor:
        logits = F.conv2d(query_features, weight, bias)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)

    def forward(
        self,
        support_pixel_values: Tensor,
        support_masks: Tensor,
        pixel_values: Tensor,
        labels: Tensor | None = None,
        head: str | None = None,
    ) -> SGPSSegOutput:
        """Synthesize the classifier from the support set and segment the queries ``pixel_values``.

        ``labels``: optional ``(Q, 1, H, W)`` query masks in {0, 1}: the loss is BCE + soft Dice.
        """
        k = support_pixel_values.shape[0]
        features = self.encode(torch.cat([support_pixel_values, pixel_values]))
        decoded = self.decode(features)
        weight, bias = self.head_from_support(decoded[:k], support_masks, head=head)
        logits = self.query_logits(decoded[k:], weight, bias, tuple(pixel_values.shape[-2:]))
        loss = segmentation_loss(logits, labels) if labels is not None else None
        return SGPSSegOutput(loss=loss, logits=logits, classifier_weight=weight, classifier_bias=bias)

    # -- synthesis ------------------------------------------------------------------------------
    @torch.no_grad()
    def synthesize_state_dict(self, support_pixel_values: Tensor, support_masks: Tensor, head: str | None = None) -> dict[str, Tensor]:
        """The complete state dict of the synthesized ``UperNetForSemanticSegmentation``."""
        was_training = self.training
        self.eval()
        try:
            decoded = self.decode(self.encode(support_pixel_values))
            weight, bias = self.head_from_support(decoded, support_masks, head=head)
        finally:
            self.train(was_training)
        if not (torch.isfinite(weight).all() and torch.isfinite(bias).all()):
            raise SynthesisError("Synthesis produced non-finite classifier weights; check the examples (images and masks).")
        state = {k: v.detach().clone() for k, v in self.segmenter.state_dict().items()}
        state[CLASSIFIER_PREFIX + "weight"] = weight.contiguous()
        state[CLASSIFIER_PREFIX + "bias"] = bias.contiguous()
        return state

    def synthesize(self, task: "SegmentationTask", head: str | None = None) -> "SynthesizedSegmenter":
        """One forward pass over the task's examples -> a standalone :class:`SynthesizedSegmenter`."""
        from .processing_sgps_seg import make_image_processor, masks_to_tensor, pixel_values
        from .segmenter import SynthesizedSegmenter, build_info

        processor = make_image_processor(self.config.image_size, self.config.image_mean, self.config.image_std)
        pixels = pixel_values(processor, task.images)
        masks = masks_to_tensor(task.masks, self.config.image_size)
        state = self.synthesize_state_dict(pixels, masks, head=head)
        model = UperNetForSemanticSegmentation(self.config.segmenter_config())
        model.load_state_dict(state)
        model.eval()
        info = build_info(task, self, head or self.resolve_head(len(task)))
        return SynthesizedSegmenter(model, processor, info)


def segmentation_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """BCE on the foreground-minus-background logit plus soft Dice per image (mean over images)."""
    margin = logits[:, 1] - logits[:, 0]
    target = labels[:, 0].to(margin.dtype)
    bce = F.binary_cross_entropy_with_logits(margin, target)
    prob = margin.sigmoid()
    dims = (1, 2)
    dice = 1 - (2 * (prob * target).sum(dims) + 1) / (prob.sum(dims) + target.sum(dims) + 1)
    return bce + dice.mean()
