"""SGPSSynthesizer: writes a complete timm EfficientNet classifier for a task in one forward pass.

``w = H(c; theta)``: the task context ``c`` (support images + clinical texts of each class) becomes the
full state dict of a timm classifier, with no gradient step:

1. The body is the trained base (by default ImageNet EfficientNet-Lite0 at 128 px, adapted on the meta-train
   classes); it is copied into every classifier. With ``task_batchnorm_images`` set, its BatchNorm statistics move
   towards those of the task's support images (task-adaptive BatchNorm, in the same single pass that computes
   the support features); otherwise it is copied unchanged.
2. Each support image enters under the ``support_views`` (flips, rotations and a central zoom; all ten by
   default): deterministic support augmentation.
3. The clinical texts generate a pseudo-prototype each (``text_prototypes``: attention over the texts of the
   meta-training classes returning their mean features), used as the prior mean of the head with a shot-dependent
   strength calibrated on meta-validation tasks.
4. The head is solved in closed form from the support features (:mod:`sgps_hf.models.sgps.heads`: standardised
   features, optionally rescaled to equal norms, kernel ridge regression around the text prior, a shot-dependent
   regulariser and temperature, all fitted on meta-val tasks by :mod:`sgps_hf.training.calibration`) and folded
   into the timm model's ordinary ``classifier`` layer.
   With no images the head is the text prior alone.

:mod:`sgps_hf.body.timm_network` runs the result functionally (meta-training) or materialises it as a plain timm
model (the shipped classifier).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from ...body.text_encoder import embed_tokens, load_text_encoder
from ...body.timm_network import HEAD_BIAS, HEAD_WEIGHT, body_features, classify, create_target, task_batchnorm
from ...errors import SynthesisError
from ...hub.atomic import save_pretrained_atomically
from ...hub.checkpoints import checked_from_pretrained
from .configuration_sgps import SGPSConfig
from .heads import fold_linear, normalize_rows, ridge_head, standardize, support_shots, temperature_shots
from .views import apply_view

#: The default of the per-call settings: the value in the model's config.
FROM_CONFIG = "config"

if TYPE_CHECKING:
    from ...task import TaskSpec
    from .classifier import SynthesizedClassifier
    from .processing_sgps import SGPSProcessor


@dataclass
class SGPSOutput(ModelOutput):
    """Output of :meth:`SGPSSynthesizer.forward`.

    Args:
        loss: cross-entropy of the query logits (when ``query_labels`` are given).
        logits: query logits [num_queries, num_classes] of the synthesized classifier.
        weights: the synthesized state dict (every tensor of the timm model, head included).
    """

    loss: Optional[Tensor] = None
    logits: Optional[Tensor] = None
    weights: Optional[dict] = None


class SGPSSynthesizer(PreTrainedModel):
    """The Semantic-Guided Parameter Synthesizer. See the module docstring for the architecture."""

    config_class = SGPSConfig
    base_model_prefix = "sgps"
    main_input_name = "support_pixel_values"
    _supports_param_buffer_assignment = False

    def __init__(self, config: SGPSConfig) -> None:
        super().__init__(config)
        self.target = create_target(config, num_classes=0)
        features, text_dim = self.target.num_features, config.text_embed_dim
        # Mean body feature of the meta-training images: the centre of text-only tasks (set by the training command).
        self.register_buffer("feature_mean", torch.zeros(features))
        self.log_feature_scale = nn.Parameter(torch.zeros(features))
        # The class memory of the text generator: filled by sgps_hf.training.calibration.build_text_memory.
        self.register_buffer("log_text_temperature", torch.tensor(math.log(0.05)))
        if config.text_memory_size:  # (no empty buffers: safetensors would save two of them as one shared tensor)
            self._register_text_memory(
                torch.zeros(config.text_memory_size, text_dim), torch.zeros(config.text_memory_size, features)
            )
        # log(ridge) is affine in log(1 + shots); fitted on meta-val tasks (training.calibration.calibrate_head).
        self.ridge_coefficients = nn.Parameter(torch.tensor([math.log(config.ridge_init), 0.0]))
        # The strength of the text prior beside images, log(strength) affine in log(shots), is calibrated on
        # meta-validation tasks (calibrate_prior_strength), not learned on meta-train episodes: on those the text
        # generator has seen every class, so a learned strength would trust the texts far more than unseen tasks allow.
        self.register_buffer("prior_coefficients", torch.tensor([math.log(config.prior_init), 0.0]))
        self.log_zero_shot_scale = nn.Parameter(torch.zeros(()))
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(config.logit_scale_init)))
        self.post_init()

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
        """``PreTrainedModel.from_pretrained`` after the checks of :mod:`sgps_hf.hub.checkpoints`, every tensor in
        memory of its own (so the synthesized weights depend only on the task and the checkpoint), the Hub commit
        recorded for provenance."""
        return checked_from_pretrained(cls, super(SGPSSynthesizer, cls).from_pretrained, args, kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        """``PreTrainedModel.save_pretrained``, atomically (see
        :func:`sgps_hf.hub.atomic.save_pretrained_atomically`)."""
        save_pretrained_atomically(super().save_pretrained, save_directory, *args, **kwargs)

    # -- initialisation -------------------------------------------------------------------------
    def _init_weights(self, module: nn.Module) -> None:
        """Keep timm's own initialisation of the target and PyTorch's defaults elsewhere (an empty text memory
        generates zero prototypes, so an untrained synthesizer emits the closed-form ridge classifier of the support
        images)."""

    # -- text -----------------------------------------------------------------------------------
    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Embeddings of the clinical texts from the frozen encoder (not part of this model's weights)."""
        encoder = load_text_encoder(self.config.text_encoder)
        return embed_tokens(encoder, input_ids.cpu(), attention_mask.cpu()).to(self.device)

    def text_prototypes(self, text_embeds: Tensor) -> Tensor:
        """Pseudo-prototypes [C, D] in the head's standardised feature space, one per text embedding [C, E]."""
        if not self.config.text_memory_size:  # before the memory is built the texts carry no information
            return text_embeds.new_zeros(text_embeds.shape[0], self.target.num_features)
        similarity = nn.functional.normalize(text_embeds, dim=-1) @ self.text_memory_keys.T
        attention = torch.softmax(similarity / self.log_text_temperature.exp(), dim=-1)
        return attention @ (self.text_memory_features * self.log_feature_scale.exp())

    def set_text_memory(self, keys: Tensor, features: Tensor) -> None:
        """Replace the class memory's entries: text embeddings [M, E] and centred mean features [M, D]."""
        device = self.log_text_temperature.device
        self._register_text_memory(
            nn.functional.normalize(keys.float(), dim=-1).to(device), features.float().to(device)
        )
        self.config = self.config.with_changes(text_memory_size=int(keys.shape[0]))

    def _register_text_memory(self, keys: Tensor, features: Tensor) -> None:
        self.register_buffer("text_memory_keys", keys)  # unit-norm text embeddings of the meta-train classes
        self.register_buffer("text_memory_features", features)  # their mean body feature minus feature_mean

    # -- features -------------------------------------------------------------------------------
    def support_view_features(
        self, pixel_values: Tensor, embed: Callable[[Tensor], Tensor] | None = None, views: Sequence[str] | None = None
    ) -> Tensor:
        """Body features of every support image under every view transform: [S, V, D].

        ``views`` defaults to the config's ``support_views`` (the training command caches only the identity view of
        the meta-train images). ``embed`` maps images to body features (default: this model's
        body; the benchmark passes a memo of it).
        """
        views = list(views or self.config.support_views)
        embed = embed or (lambda images: body_features(self.target, self.body_tensors(), images))
        batch = torch.cat([apply_view(pixel_values, view) for view in views])  # one batched pass
        return embed(batch).view(len(views), pixel_values.shape[0], -1).transpose(0, 1)

    def body_tensors(self) -> dict[str, Tensor]:
        return {**dict(self.target.named_parameters()), **dict(self.target.named_buffers())}

    def task_body(
        self,
        support_pixel_values: Tensor,
        views: Sequence[str] | None = None,
        task_batchnorm_images: int | None = None,
        embed: Callable[[Tensor], Tensor] | None = None,
    ) -> tuple[dict[str, Tensor], Tensor]:
        """(the body tensors of this task's classifier, the support view features [S, V, D] under them).

        With ``task_batchnorm_images`` None the body is this model's own (its features by ``embed`` when given). With
        a count, every BatchNorm's statistics move ``N / (N + task_batchnorm_images)`` of the way to those of the N
        support images under all their views (:func:`~sgps_hf.body.timm_network.task_batchnorm`): a new imaging
        domain shifts the body's activations, and the support set is the only sample of that domain a synthesis sees.
        """
        tensors = self.body_tensors()
        if task_batchnorm_images is None:
            return tensors, self.support_view_features(support_pixel_values, embed=embed, views=views)
        count = support_pixel_values.shape[0]
        adapted: dict[str, Tensor] = {}

        def adapt(batch: Tensor) -> Tensor:
            statistics, features = task_batchnorm(self.target, tensors, batch, count / (count + task_batchnorm_images))
            adapted.update(statistics)
            return features

        features = self.support_view_features(support_pixel_values, embed=adapt, views=views)
        return adapted, features

    def query_logits(
        self,
        weights: Mapping[str, Tensor],
        query_pixel_values: Tensor | None = None,
        query_features: Tensor | None = None,
        embed: Callable[[Tensor], Tensor] | None = None,
    ) -> Tensor:
        """Logits [Q, C] of the synthesized classifier ``weights`` for query pixels or body features.

        ``query_features`` are features of this model's body as it is; ``embed`` (e.g. the benchmark's memo of that
        body) computes them from the pixels. Both serve only when ``weights`` holds this model's own body tensors; a
        task-adapted body (task BatchNorm) always classifies the pixels, exactly as the materialised timm model does.
        """
        own_body = all(weights.get(name) is tensor for name, tensor in self.body_tensors().items())
        if query_features is not None or (own_body and embed is not None and query_pixel_values is not None):
            if not own_body:
                raise ValueError("query_features are features of the unadapted body: pass query_pixel_values.")
            features = query_features if query_features is not None else embed(query_pixel_values)
            return nn.functional.linear(features, weights[HEAD_WEIGHT], weights[HEAD_BIAS])
        if query_pixel_values is None:
            raise ValueError("Pass query_pixel_values or query_features.")
        return classify(self.target, weights, query_pixel_values)

    # -- synthesis ------------------------------------------------------------------------------
    def generate_weights(
        self,
        num_classes: int,
        support_pixel_values: Tensor | None = None,
        support_labels: Tensor | None = None,
        text_embeds: Tensor | None = None,
        text_mask: Tensor | None = None,
        support_features: Tensor | None = None,
        *,
        views: Sequence[str] | None = None,
        task_batchnorm_images: int | None | str = FROM_CONFIG,
        embed: Callable[[Tensor], Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """The full state dict of a ``num_classes``-way target classifier for this task.

        Args:
            num_classes: number of classes C.
            support_pixel_values: normalised support images [S, 3, H, W] (S may be 0).
            support_labels: class index of each support image [S].
            text_embeds: text embeddings [C, text_embed_dim] (rows of classes without text are ignored).
            text_mask: [C] bool, which classes have a text.
            support_features: instead of pixels, precomputed :meth:`support_view_features` [S, V, D] of the body
                as it is (meta-training on a frozen body caches them); task-adaptive BatchNorm does not apply to them.
            views: the support views (default: the config's ``support_views``).
            task_batchnorm_images: task-adaptive BatchNorm's count (None: off; default: the config's for pixels).
            embed: computes features of the body as it is from pixels (the benchmark passes a memo of it).
        """
        device = self.log_logit_scale.device
        if task_batchnorm_images == FROM_CONFIG:  # cached features are those of the body as it is
            task_batchnorm_images = self.config.task_batchnorm_images if support_features is None else None
        body = self.body_tensors()
        if support_features is None and support_pixel_values is not None and support_pixel_values.shape[0] > 0:
            body, support_features = self.task_body(support_pixel_values, views, task_batchnorm_images, embed)
        elif support_features is not None and support_features.shape[0] > 0 and task_batchnorm_images is not None:
            raise ValueError(
                "support_features are features of the unadapted body, but task-adaptive BatchNorm is on: pass "
                "support_pixel_values, or task_batchnorm_images=None."
            )
        has_support = support_features is not None and support_features.shape[0] > 0
        image_mask = torch.zeros(num_classes, dtype=torch.bool, device=device)
        if has_support:
            image_mask[support_labels.unique()] = True
        if text_embeds is None or text_mask is None:
            text_embeds = torch.zeros(num_classes, self.config.text_embed_dim, device=device)
            text_mask = torch.zeros(num_classes, dtype=torch.bool, device=device)
        if not bool((image_mask | text_mask).all()):
            raise SynthesisError("Every class needs at least one support image or a clinical text.")

        shots = (
            support_shots(support_labels, num_classes).to(device) if has_support else torch.zeros((), device=device)
        )
        scale = self.log_feature_scale.exp()
        # The texts generate pseudo-prototypes in the standardised feature space; divided by D they are in the units
        # of the ridge solution, whose large-regulariser limit is the image prototypes (see sgps_hf.models.sgps.heads).
        prototypes = self.text_prototypes(text_embeds) * text_mask.unsqueeze(1)  # [C, D]
        prior = prototypes.T / prototypes.shape[1]  # [D, C]
        zero_shot = self.log_zero_shot_scale.exp() * prior
        if has_support:
            # Beside images the generator gets no gradient: it learns from text-only episodes alone (see __init__).
            # Classes without images (text-only classes of a mixed task) keep the full zero-shot prior.
            strength = torch.exp(self.prior_coefficients[0] + self.prior_coefficients[1] * torch.log(shots))
            prior = torch.where(image_mask, strength * prior.detach(), zero_shot)
            views = support_features.shape[1]
            rows = support_features.reshape(-1, support_features.shape[-1])
            mean = rows.mean(0)
            labels = support_labels.repeat_interleave(views)
            ridge = self._coefficient(self.ridge_coefficients, shots)
            z = standardize(rows, mean, scale)
            if self.config.normalize_support_rows:
                z = normalize_rows(z)
            weights = ridge_head(z, labels, num_classes, ridge, prior, has_images=image_mask)
        else:
            mean, weights = self.feature_mean, zero_shot
        head_weight, head_bias = fold_linear(weights, mean, scale, self.logit_scale_at(shots))
        return {**body, HEAD_WEIGHT: head_weight, HEAD_BIAS: head_bias}

    @staticmethod
    def _coefficient(coefficients: Tensor, shots: Tensor) -> Tensor:
        return torch.exp(coefficients[0] + coefficients[1] * torch.log1p(shots))

    def logit_scale_at(self, shots: Tensor) -> Tensor:
        """The head's logit scale for a task of ``shots`` support images per class (0: text only): the learned scale
        times ``shots ** logit_scale_shot_exponent``, shots clamped to 1..5, the range calibration fits it on (fewer
        support images leave a less tight fit, so one temperature cannot suit both ends)."""
        exponent = self.config.logit_scale_shot_exponent
        return self.log_logit_scale.exp() * temperature_shots(shots) ** exponent

    def ridge_at(self, shots: float) -> float:
        """The ridge regulariser of the closed-form head for a task of ``shots`` support images per class."""
        return float(self._coefficient(self.ridge_coefficients.detach(), torch.tensor(float(shots))))

    def set_ridge(self, at_one_shot: float, at_five_shots: float) -> None:
        """The ridge regulariser at 1 and at 5 shots; ``log(ridge)`` is affine in ``log(1 + shots)`` in between and
        beyond."""
        low, high = math.log(at_one_shot), math.log(at_five_shots)
        slope = (high - low) / (math.log(6.0) - math.log(2.0))
        with torch.no_grad():
            self.ridge_coefficients.copy_(torch.tensor([low - slope * math.log(2.0), slope]))

    def set_prior_strength(self, at_one_shot: float, at_five_shots: float) -> None:
        """Strength of the text prior beside images, interpolated log-linearly in the number of shots."""
        low, high = math.log(max(at_one_shot, 1e-6)), math.log(max(at_five_shots, 1e-6))
        with torch.no_grad():
            self.prior_coefficients.copy_(torch.tensor([low, (high - low) / math.log(5.0)]))

    def forward(
        self,
        support_pixel_values: Tensor | None = None,
        support_labels: Tensor | None = None,
        num_classes: int | None = None,
        text_embeds: Tensor | None = None,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        text_mask: Tensor | None = None,
        query_pixel_values: Tensor | None = None,
        query_labels: Tensor | None = None,
        return_weights: bool = True,
        support_features: Tensor | None = None,
        query_features: Tensor | None = None,
        views: Sequence[str] | None = None,
        task_batchnorm_images: int | None | str = FROM_CONFIG,
        embed: Callable[[Tensor], Tensor] | None = None,
    ) -> SGPSOutput:
        """Synthesize weights for one task and, when queries are given, classify them with those weights.

        The one tensor-level inference path of the package: :func:`sgps_hf.synthesis.synthesize` (the product),
        meta-training, calibration and the benchmark's SGPS rows all come through here (:meth:`generate_weights`,
        then :meth:`query_logits`). ``support_features`` / ``query_features`` (body features, see
        :meth:`support_view_features`) may replace the pixels when the body is frozen and its features are cached,
        and ``embed`` computes those features from pixels (a memo); they are features of the body as it is, so
        task-adaptive BatchNorm needs the pixels. ``views`` and ``task_batchnorm_images`` override the config's
        ``support_views`` and ``task_batchnorm_images`` for this call (calibration tries candidates this way).
        """
        if num_classes is None:
            if text_mask is not None:
                num_classes = int(text_mask.shape[0])
            elif support_labels is not None and support_labels.numel():
                num_classes = int(support_labels.max()) + 1
            else:
                raise ValueError("Pass num_classes (or text_mask / support_labels from which it can be read).")
        if text_embeds is None and input_ids is not None:
            text_embeds = self.encode_text(input_ids, attention_mask)
        weights = self.generate_weights(
            num_classes,
            support_pixel_values,
            support_labels,
            text_embeds,
            text_mask,
            support_features=support_features,
            views=views,
            task_batchnorm_images=task_batchnorm_images,
            embed=embed,
        )
        logits = loss = None
        if query_features is not None or query_pixel_values is not None:
            logits = self.query_logits(weights, query_pixel_values, query_features, embed)
            if query_labels is not None:
                loss = nn.functional.cross_entropy(logits, query_labels)
        return SGPSOutput(loss=loss, logits=logits, weights=weights if return_weights else None)

    def synthesize(self, task: "TaskSpec", processor: "SGPSProcessor | None" = None) -> "SynthesizedClassifier":
        """Synthesize a standalone classifier for ``task`` in one forward pass (no gradient step); see
        :mod:`sgps_hf.synthesis`."""
        from ...synthesis import synthesize

        return synthesize(self, task, processor=processor)

    def update(
        self,
        classifier: "SynthesizedClassifier",
        additions: "Mapping[str, Any]",
        processor: "SGPSProcessor | None" = None,
    ) -> "SynthesizedClassifier":
        """Add newly verified cases ``{class name: [images]}`` to ``classifier`` and re-synthesize it.

        Returns a new classifier (version + 1, changelog entry, previous version kept in ``versions``) whose
        weights equal a fresh synthesis of the enlarged support set; see :mod:`sgps_hf.synthesis`.
        """
        from ...synthesis import update

        return update(self, classifier, additions, processor=processor)
