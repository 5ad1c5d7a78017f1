"""The segmentation synthesizer: examples with masks in, a complete UperNet segmenter's weights out.

``SGPSSegSynthesizer`` holds the synthesized network's shared part (the frozen ImageNet EfficientNet-Lite0
encoder of the classification side and a meta-learned UperNet decoder) and writes the task-specific
part, the final 1x1 classifier convolution, in closed form from the examples' decoder features:
one forward pass, no gradient step, deterministic. Heads (``config.head``; solved in ``heads.py``):

* ``"ridge"``: class-balanced ridge regression of +-1 targets on the pixel features (with intercept),
  ``w = (X^T A X + lambda I)^-1 X^T A t``; logits ``(-s/2 (w.f+b), +s/2 (w.f+b))``. As ``lambda`` grows
  its direction tends to the difference of the prototypes.
* ``"prototype"``: masked average pooling into foreground / background prototypes ``p_c`` and PANet's
  squared-distance rule as a linear layer, ``w_c = 2 s p_c``, ``b_c = -s |p_c|^2``.
* ``"blend"`` (whenever ``config.prototype_mix`` is set): the two margins, each in units of its separation on the
  examples, mixed with a prototype weight that depends on the number of examples K.

The scale ``s`` and ridge strength ``lambda`` are meta-learned scalars.

Raw pass-through (``config.raw_levels``): the frozen encoder's own stage features, standardised with
meta-train statistics (optionally projected on their leading principal components), also pass through the
decoder beside the learned channels, so the head sees both what the meta-learned decoder extracts and the
raw ImageNet texture that PANet uses. In the exported UperNet (``hidden_size + R`` channels wide) the raw block
rides in its own channels of every layer: for stage ``l`` the lateral 1x1 conv (the pyramid-pooling bottleneck's
centre tap for the last stage) computes ``relu(P_l x + b_l)`` (``b_l`` holds a shift that keeps it positive),
the top-down path upsamples it to stride 4, and the 3x3 FPN convs and the fusion bottleneck copy it through
with centre-tap identities; learned and raw blocks never mix before the 1x1 classifier.
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

from ...errors import SynthesisError
from ...hub.atomic import save_pretrained_atomically
from ...hub.checkpoints import checked_from_pretrained
from .configuration_sgps_seg import SGPSSegConfig
from .heads import mix_for, solve_head
from .widening import widen_state_dict

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
        channels = list(self.segmenter.backbone.channels)
        for j, level in enumerate(config.raw_levels):
            dim = self.raw_dim(j)
            # raw stage j: relu(P x + b) in the network; ``offset`` is the shift inside b (removed again in the head)
            self.register_buffer(f"raw_projection_{j}", torch.zeros(dim, channels[level]))
            self.register_buffer(f"raw_bias_{j}", torch.zeros(dim))
            self.register_buffer(f"raw_offset_{j}", torch.zeros(dim))
        if config.raw_levels and getattr(config, "learn_raw_weight", False):
            self.log_raw_weight = nn.Parameter(torch.tensor(math.log(float(config.raw_weight))))
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
        from ...body.backbones import imagenet_state_dict

        weights = imagenet_state_dict(self.config.backbone)
        encoder = self.segmenter.backbone._backbone
        own = encoder.state_dict()
        missing = [k for k in own if k not in weights or weights[k].shape != own[k].shape]
        if missing:
            raise SynthesisError(f"ImageNet weights do not cover {len(missing)} encoder tensors (e.g. {missing[0]}).")
        encoder.load_state_dict({k: weights[k] for k in own})

    # -- raw pass-through ---------------------------------------------------------------------------
    def raw_dim(self, j: int) -> int:
        level = self.config.raw_levels[j]
        full = list(self.segmenter.backbone.channels)[level]
        dims = self.config.raw_dims
        return full if dims is None else min(int(dims[j]), full)

    @property
    def raw_channels(self) -> int:
        return sum(self.raw_dim(j) for j in range(len(self.config.raw_levels)))

    @torch.no_grad()
    def fit_raw_passthrough(
        self, features: Sequence[Tensor], shift_margin: float = 2.0, standardize: bool = True, level_norm: str = "dim"
    ) -> None:
        """Fit the raw pass-through from encoder feature maps of (meta-train) images (one tensor per stage).

        Per stage: standardise each channel (mean / std over all pixels), rotate onto the leading ``raw_dims``
        principal components, divide by ``sqrt(dim)`` (so every stage weighs about alike per pixel) and add a
        per-channel shift of ``shift_margin`` times the most negative value seen, which keeps the ReLUs of the
        UperNet's conv modules inactive on such images.

        ``standardize=False`` keeps the channels' own variances (one scale per stage, as PANet's raw features);
        ``level_norm="energy"`` divides each stage by the root of the mean pixel energy it keeps (each stage then
        weighs exactly 1 per pixel on average, as PANet's per-level normalisation does per pixel) instead of
        ``sqrt(dim)``.
        """
        if level_norm not in ("dim", "energy"):
            raise SynthesisError(f"level_norm must be 'dim' or 'energy', got {level_norm!r}.")
        for j, level in enumerate(self.config.raw_levels):
            f = features[level].double()
            x = f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])
            mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
            if not standardize:
                std = torch.full_like(std, float(x.std(0).pow(2).mean().sqrt().clamp_min(1e-6)))
            z = (x - mean) / std
            dim = self.raw_dim(j)
            if dim < x.shape[1]:
                _, vectors = torch.linalg.eigh(z.T @ z / len(z))
                basis = vectors.flip(1)[:, :dim]
            else:
                basis = torch.eye(x.shape[1], dtype=z.dtype)
            projection = basis.T / std[None, :]
            if level_norm == "energy":
                projection = projection / ((x - mean) @ projection.T).pow(2).sum(1).mean().sqrt().clamp_min(1e-12)
            else:
                projection = projection / math.sqrt(dim)
            u = (x - mean) @ projection.T
            offset = shift_margin * (-u.min(0).values).clamp_min(0) + 1e-3
            getattr(self, f"raw_projection_{j}").copy_(projection.float())
            getattr(self, f"raw_bias_{j}").copy_((offset - projection @ mean).float())
            getattr(self, f"raw_offset_{j}").copy_(offset.float())

    def raw_features(self, features: Sequence[Tensor]) -> Tensor | None:
        """The raw block at stride 4 exactly as the exported UperNet computes it (``None`` without raw levels)."""
        levels = self.config.raw_levels
        if not levels:
            return None
        batch = features[0].shape[0]
        cumulative = None
        for i in reversed(range(len(features))):
            size = features[i].shape[-2:]
            parts = []
            for j, level in enumerate(levels):
                if level == i:
                    weight = getattr(self, f"raw_projection_{j}")[:, :, None, None].to(features[i].dtype)
                    parts.append(
                        F.relu(F.conv2d(features[i], weight, getattr(self, f"raw_bias_{j}").to(features[i].dtype)))
                    )
                else:
                    parts.append(features[i].new_zeros(batch, self.raw_dim(j), *size))
            block = torch.cat(parts, 1)
            cumulative = (
                block
                if cumulative is None
                else block + F.interpolate(cumulative, size=size, mode="bilinear", align_corners=False)
            )
        return cumulative

    def raw_gain(self) -> Tensor:
        """Weight of the raw block in the head: the meta-learned ``log_raw_weight`` if any, else
        ``config.raw_weight``."""
        if hasattr(self, "log_raw_weight"):
            return self.log_raw_weight.exp()
        return torch.tensor(float(self.config.raw_weight))

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """Checked like the classification synthesizer (:func:`sgps_hf.hub.checkpoints.checked_from_pretrained`)."""
        return checked_from_pretrained(cls, super(SGPSSegSynthesizer, cls).from_pretrained, args, kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """``PreTrainedModel.save_pretrained``, atomically (:func:`sgps_hf.hub.atomic.save_pretrained_atomically`)."""
        if hasattr(self, "log_raw_weight"):  # the saved config records the meta-learned raw weight (a new config)
            self.config = self.config.with_changes(raw_weight=float(self.log_raw_weight.detach().exp()))
        return save_pretrained_atomically(super().save_pretrained, save_directory, *args, **kwargs)

    def raw_offset(self) -> Tensor:
        return torch.cat([getattr(self, f"raw_offset_{j}") for j in range(len(self.config.raw_levels))])

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
        """The synthesized decoder's final pixel features (the input of its 1x1 classifier), ``(B, C, h, w)``:
        the learned channels, then the raw pass-through block if ``config.raw_levels``."""
        head = self.segmenter.decode_head
        classifier = head.classifier
        head.classifier = nn.Identity()
        try:
            learned = head(list(features))
        finally:
            head.classifier = classifier
        raw = self.raw_features(features)
        return learned if raw is None else torch.cat([learned, raw.to(learned.dtype)], 1)

    @property
    def scale(self) -> Tensor:
        return self.log_scale.exp()

    def resolve_head(self, num_examples: int) -> str:
        """The head for ``num_examples`` examples: prototype up to ``config.prototype_max_k``, else ``"blend"`` when
        ``config.prototype_mix`` is set, else ``config.head``."""
        limit = getattr(self.config, "prototype_max_k", None)
        if limit is not None and num_examples <= limit:
            return "prototype"
        return "blend" if getattr(self.config, "prototype_mix", None) else self.config.head

    def head_from_support(
        self,
        support_features: Tensor,
        support_masks: Tensor,
        head: str | None = None,
        prototype_weight: float | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Closed-form classifier ``(weight (2, C, 1, 1), bias (2,))`` from decoder features and masks (heads.py).

        ``support_masks``: ``(K, 1, H, W)`` in [0, 1] at any resolution (area-pooled to the features'). Examples with
        an empty mask (negatives) add background pixels only; the head is chosen by the number that show the structure.
        ``prototype_weight``: the blended head's prototype weight for this call (default: ``config.prototype_mix``
        at K).
        """
        _, c, h, w = support_features.shape
        k = int((support_masks.flatten(1).amax(1) > 0).sum().clamp_min(1))  # examples that show the structure
        head = head or self.resolve_head(k)
        y = F.adaptive_avg_pool2d(support_masks.to(support_features.dtype), (h, w))  # soft fraction of foreground
        x = support_features.permute(0, 2, 3, 1).reshape(-1, c).double()
        # raw pass-through block: remove its known shift, weigh the two blocks (undone on the weights at the end)
        offset = torch.zeros(c, dtype=x.dtype, device=x.device)
        gain = torch.ones(c, dtype=x.dtype, device=x.device)
        raw = self.raw_channels if self.config.raw_levels and c == self.config.hidden_size + self.raw_channels else 0
        learned = c - raw
        if raw:
            offset[learned:] = self.raw_offset().to(x)
            gain[learned:] = self.raw_gain().to(x)
        if getattr(self.config, "learned_energy_norm", False):
            gain[:learned] = 1 / (x[:, :learned] ** 2).sum(1).mean().clamp_min(1e-12).sqrt()
        x = (x - offset) * gain
        y = y.reshape(-1).double()
        mix = None
        if head == "blend":
            mix = mix_for(self.config.prototype_mix or [], k) if prototype_weight is None else float(prototype_weight)
        weight, bias = solve_head(head, x, y, self.scale.double(), self.log_ridge_lambda.double().exp(), mix)
        # the head was solved on (x - offset) * gain: fold both into the 1x1 conv on the network's own features
        weight = weight * gain
        bias = bias - weight @ offset
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
    def synthesize_state_dict(
        self, support_pixel_values: Tensor, support_masks: Tensor, head: str | None = None
    ) -> dict[str, Tensor]:
        """The complete state dict of the synthesized ``UperNetForSemanticSegmentation``."""
        was_training = self.training
        self.eval()
        try:
            decoded = self.decode(self.encode(support_pixel_values))
            weight, bias = self.head_from_support(decoded, support_masks, head=head)
        finally:
            self.train(was_training)
        if not (torch.isfinite(weight).all() and torch.isfinite(bias).all()):
            raise SynthesisError(
                "Synthesis produced non-finite classifier weights; check the examples (images and masks)."
            )
        state = {k: v.detach().clone() for k, v in self.segmenter.state_dict().items()}
        if self.config.raw_levels:
            state = widen_state_dict(self, state)
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
        model = UperNetForSemanticSegmentation(self.config.segmenter_config(self.raw_channels))
        model.load_state_dict(state)
        model.eval()
        info = build_info(task, self, head or self.resolve_head(task.num_positive))
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
