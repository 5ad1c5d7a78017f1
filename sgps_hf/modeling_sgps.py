"""SGPSSynthesizer (v2): writes a complete timm EfficientNet classifier for a task in one forward pass.

``w = H(c; theta)``: the task context ``c`` (support images + clinical texts of each class) becomes the
full state dict of a timm classifier, with no gradient step:

1. The body is the meta-learned base (by default ImageNet EfficientNet-Lite0 at 128 px); it is copied
   unchanged into every classifier, BatchNorm running statistics included.
2. Each support image enters under the dihedral ``support_views`` (identity and horizontal flip by
   default): deterministic support augmentation.
3. The clinical texts generate a class weight each (``text_to_weight``), used as the prior mean of the
   head with a meta-learned, shot-dependent strength.
4. The head is solved in closed form from the support features (:mod:`sgps_hf.heads`: standardised
   features, kernel ridge regression around the text prior, a shot-dependent regulariser) and folded
   into the timm model's ordinary ``classifier`` layer. With no images the head is the text prior alone.

:mod:`sgps_hf.target` runs the result functionally (meta-training) or materialises it as a plain timm
model (the shipped classifier).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Optional

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_sgps import SGPSConfig
from .errors import CheckpointError, SynthesisError
from .heads import fold_linear, ridge_head, standardize, support_shots
from .target import HEAD_BIAS, HEAD_WEIGHT, body_features, create_target
from .text_encoder import embed_tokens, load_text_encoder

if TYPE_CHECKING:
    from .classifier import SynthesizedClassifier
    from .processing_sgps import SGPSProcessor
    from .task import TaskSpec


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
        features, hidden, text_dim = self.target.num_features, config.hidden_size, config.text_embed_dim
        # Mean body feature of the meta-training images: the centre of text-only tasks (set by meta-training).
        self.register_buffer("feature_mean", torch.zeros(features))
        self.log_feature_scale = nn.Parameter(torch.zeros(features))
        self.text_to_weight = nn.Sequential(
            nn.LayerNorm(text_dim), nn.Linear(text_dim, hidden), nn.GELU(), nn.Dropout(config.text_dropout_rate),
            nn.Linear(hidden, features),
        )
        # log(ridge) is affine in log(1 + shots): meta-learned, shot-dependent.
        self.ridge_coefficients = nn.Parameter(torch.tensor([math.log(config.ridge_init), 0.0]))
        # The strength of the text prior beside images, log(strength) affine in log(shots), is calibrated on
        # meta-validation tasks (calibrate_prior_strength), not learned on meta-train episodes: on those the text
        # generator has seen every class, so a learned strength would trust the texts far more than unseen tasks allow.
        self.register_buffer("prior_coefficients", torch.tensor([math.log(config.prior_init), 0.0]))
        self.log_zero_shot_scale = nn.Parameter(torch.zeros(()))
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(config.logit_scale_init)))
        self.post_init()
        self._zero_generators()

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """``PreTrainedModel.from_pretrained``, then every tensor moved into memory of its own.

        transformers can leave loaded tensors as views at arbitrary byte offsets of the checkpoint; CPU kernels
        take different SIMD paths for differently aligned inputs, so the same checkpoint would synthesize
        slightly different bits than the model that saved it. Freshly allocated (aligned) copies make the
        synthesized weights depend only on the task and the checkpoint.
        """
        commit = None
        name = args[0] if args else kwargs.get("pretrained_model_name_or_path")
        if name is not None and not os.path.isdir(str(name)):
            # transformers >= 5 no longer records the Hub commit on the config: resolve it here (and load exactly
            # that commit), so classifiers synthesized by this model name the revision they came from.
            from transformers.utils.hub import resolve_revision

            revision = resolve_revision(
                str(name), kwargs.get("revision"), token=kwargs.get("token"),
                local_files_only=bool(kwargs.get("local_files_only", False)), cache_dir=kwargs.get("cache_dir"),
            )
            commit = getattr(revision, "resolved", None)
            if commit:
                kwargs["revision"] = revision
        if name is not None:
            _check_checkpoint(cls, str(name), kwargs, commit)
        kwargs["use_safetensors"] = True  # never fall back to pickle files (pytorch_model.bin & co.)
        want_info = bool(kwargs.pop("output_loading_info", False))
        try:
            model, info = super().from_pretrained(*args, **kwargs, output_loading_info=True)
        except (RuntimeError, OSError, ValueError) as exc:
            if isinstance(exc, CheckpointError):
                raise
            raise CheckpointError(f"Cannot load the synthesizer from {name}: {exc}") from exc
        _check_loading_info(info, name)
        model._own_tensors()
        if commit:
            model.config._commit_hash = commit  # read by classifier.synthesizer_provenance; never serialised
        return (model, info) if want_info else model

    def save_pretrained(self, save_directory: str | os.PathLike, *args, **kwargs) -> None:
        """``PreTrainedModel.save_pretrained``, atomically: a crash or kill midway leaves the previous folder intact.

        Files already in the folder that this save does not write (a processor saved there first, a README) are kept,
        as with transformers' own save_pretrained.
        """
        from .atomic import atomic_update

        if kwargs.get("push_to_hub"):
            kwargs.setdefault("repo_id", Path(save_directory).name)  # not the name of the staging folder
        with atomic_update(save_directory) as staging:
            super().save_pretrained(str(staging), *args, **kwargs)

    @torch.no_grad()
    def _own_tensors(self) -> None:
        for module in self.modules():
            for param in module._parameters.values():
                if param is not None:
                    param.data = param.data.clone(memory_format=torch.contiguous_format)
            for name, buf in module._buffers.items():
                if buf is not None:
                    module._buffers[name] = buf.clone(memory_format=torch.contiguous_format)

    # -- initialisation -------------------------------------------------------------------------
    def _init_weights(self, module: nn.Module) -> None:
        """Keep timm's own initialisation of the target and PyTorch's defaults elsewhere.

        The text generator's last layer starts at zero (see `_zero_generators`), so an untrained synthesizer
        already emits the closed-form ridge classifier of the support images.
        """

    def _zero_generators(self) -> None:
        with torch.no_grad():
            nn.init.zeros_(self.text_to_weight[-1].weight)
            nn.init.zeros_(self.text_to_weight[-1].bias)

    # -- text -----------------------------------------------------------------------------------
    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Embeddings of the clinical texts from the frozen encoder (not part of this model's weights)."""
        encoder = load_text_encoder(self.config.text_encoder)
        return embed_tokens(encoder, input_ids.cpu(), attention_mask.cpu()).to(self.device)

    # -- features -------------------------------------------------------------------------------
    def support_view_features(self, pixel_values: Tensor, embed: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """Body features of every support image under every ``support_views`` transform: [S, V, D].

        ``embed`` maps images to body features (default: this model's body; the benchmark passes a memo of it).
        """
        embed = embed or (lambda images: body_features(self.target, self.body_tensors(), images))
        views = torch.cat([apply_view(pixel_values, view) for view in self.config.support_views])  # one batched pass
        return embed(views).view(len(self.config.support_views), pixel_values.shape[0], -1).transpose(0, 1)

    def body_tensors(self) -> dict[str, Tensor]:
        return {**dict(self.target.named_parameters()), **dict(self.target.named_buffers())}

    # -- synthesis ------------------------------------------------------------------------------
    def generate_weights(
        self,
        num_classes: int,
        support_pixel_values: Tensor | None = None,
        support_labels: Tensor | None = None,
        text_embeds: Tensor | None = None,
        text_mask: Tensor | None = None,
        support_features: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """The full state dict of a ``num_classes``-way target classifier for this task.

        Args:
            num_classes: number of classes C.
            support_pixel_values: normalised support images [S, 3, H, W] (S may be 0).
            support_labels: class index of each support image [S].
            text_embeds: text embeddings [C, text_embed_dim] (rows of classes without text are ignored).
            text_mask: [C] bool, which classes have a text.
            support_features: instead of pixels, precomputed :meth:`support_view_features` [S, V, D]
                (meta-training on a frozen body caches them).
        """
        device = self.log_logit_scale.device
        if support_features is None and support_pixel_values is not None and support_pixel_values.shape[0] > 0:
            support_features = self.support_view_features(support_pixel_values)
        has_support = support_features is not None and support_features.shape[0] > 0
        image_mask = torch.zeros(num_classes, dtype=torch.bool, device=device)
        if has_support:
            image_mask[support_labels.unique()] = True
        if text_embeds is None or text_mask is None:
            text_embeds = torch.zeros(num_classes, self.config.text_embed_dim, device=device)
            text_mask = torch.zeros(num_classes, dtype=torch.bool, device=device)
        if not bool((image_mask | text_mask).all()):
            raise SynthesisError("Every class needs at least one support image or a clinical text.")

        shots = support_shots(support_labels, num_classes).to(device) if has_support else torch.zeros((), device=device)
        scale = self.log_feature_scale.exp()
        # The texts generate pseudo-prototypes in the standardised feature space; divided by D they are in the units
        # of the ridge solution, whose large-regulariser limit is the image prototypes (see sgps_hf.heads).
        prototypes = self.text_to_weight(text_embeds) * text_mask.unsqueeze(1)  # [C, D]
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
            weights = ridge_head(standardize(rows, mean, scale), labels, num_classes, ridge, prior, has_images=image_mask)
        else:
            mean, weights = self.feature_mean, zero_shot
        head_weight, head_bias = fold_linear(weights, mean, scale, self.log_logit_scale.exp())
        return {**self.body_tensors(), HEAD_WEIGHT: head_weight, HEAD_BIAS: head_bias}

    @staticmethod
    def _coefficient(coefficients: Tensor, shots: Tensor) -> Tensor:
        return torch.exp(coefficients[0] + coefficients[1] * torch.log1p(shots))

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
    ) -> SGPSOutput:
        """Synthesize weights for one task and, when queries are given, classify them with those weights.

        ``support_features`` / ``query_features`` (body features, see :meth:`support_view_features`) may
        replace the pixels when the body is frozen and its features are cached.
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
            num_classes, support_pixel_values, support_labels, text_embeds, text_mask, support_features=support_features
        )
        logits = loss = None
        if query_features is None and query_pixel_values is not None:
            query_features = body_features(self.target, self.body_tensors(), query_pixel_values)
        if query_features is not None:
            logits = nn.functional.linear(query_features, weights[HEAD_WEIGHT], weights[HEAD_BIAS])
            if query_labels is not None:
                loss = nn.functional.cross_entropy(logits, query_labels)
        return SGPSOutput(loss=loss, logits=logits, weights=weights if return_weights else None)

    @torch.no_grad()
    def synthesize(self, task: "TaskSpec", processor: "SGPSProcessor | None" = None) -> "SynthesizedClassifier":
        """Synthesize a standalone classifier for ``task`` in one forward pass (no gradient step)."""
        from .classifier import SynthesizedClassifier
        from .processing_sgps import SGPSProcessor

        processor = processor or SGPSProcessor.from_sgps_config(self.config)
        inputs = processor.prepare_task(task)
        was_training = self.training
        self.eval()
        try:
            output = self(
                support_pixel_values=inputs["support_pixel_values"].to(self.device),
                support_labels=inputs["support_labels"].to(self.device),
                num_classes=inputs["num_classes"],
                input_ids=inputs["input_ids"],
                attention_mask=inputs["attention_mask"],
                text_mask=inputs["text_mask"].to(self.device),
            )
        finally:
            self.train(was_training)
        weights = {name: tensor.detach().cpu().contiguous() for name, tensor in output.weights.items()}
        bad = [name for name, tensor in weights.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
        if bad:
            raise SynthesisError(f"Synthesis produced NaN/Inf in {len(bad)} tensors (e.g. {bad[0]}); the checkpoint may be corrupt.")
        return SynthesizedClassifier.from_weights(self, weights, task, processor.image_processor)

    def update(
        self, classifier: "SynthesizedClassifier", additions: "Mapping[str, Any]", processor: "SGPSProcessor | None" = None
    ) -> "SynthesizedClassifier":
        """Add newly verified cases ``{class name: [images]}`` to ``classifier`` and re-synthesize it.

        Returns a new classifier (version + 1, changelog entry, previous version kept in ``versions``) whose
        weights equal a fresh synthesis of the enlarged support set; see :mod:`sgps_hf.adaptation`.
        """
        from .adaptation import update_classifier

        return update_classifier(self, classifier, additions, processor=processor)


def _check_checkpoint(cls: type, name: str, kwargs: dict, commit: str | None) -> None:
    """Refuse pickle-only checkpoints and weights that do not match the config, before transformers loads anything."""
    from .safe_loading import check_tensors, expected_tensors, read_header, require_safetensors

    folder = _checkpoint_folder(name, kwargs, commit)
    config = kwargs.get("config")
    if not isinstance(config, SGPSConfig):
        config = _load_config(folder)
    files = require_safetensors(folder, "SGPS synthesizer")
    try:
        expected = expected_tensors(lambda: cls(config))
    except (ValueError, TypeError, RuntimeError, KeyError, AttributeError) as exc:  # e.g. a target timm cannot build
        raise CheckpointError(f"The config.json in {folder} describes a synthesizer that cannot be built ({exc}); fix or re-save it.") from exc
    check_tensors(read_header(files), expected, folder, "synthesizer")


def _checkpoint_folder(name: str, kwargs: dict, commit: str | None) -> Path:
    """The local folder holding the checkpoint's config and weights (downloaded first for a Hub repo)."""
    subfolder = kwargs.get("subfolder") or ""
    if os.path.isdir(name):
        return Path(name) / subfolder
    from huggingface_hub import snapshot_download

    patterns = [f"{subfolder}/*" if subfolder else "*"]
    folder = snapshot_download(
        name, revision=commit or kwargs.get("revision"), token=kwargs.get("token"), cache_dir=kwargs.get("cache_dir"),
        local_files_only=bool(kwargs.get("local_files_only", False)),
        allow_patterns=[p + suffix for p in patterns for suffix in (".json", ".safetensors")],
    )
    return Path(folder) / subfolder


def _load_config(folder: Path) -> SGPSConfig:
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"No config.json in {folder}; a synthesizer checkpoint needs its config next to model.safetensors.")
    try:
        return SGPSConfig.from_pretrained(folder)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise CheckpointError(f"The config.json in {folder} is invalid ({exc}); fix the named value or re-save the synthesizer.") from exc


def _check_loading_info(info: dict, name: object) -> None:
    """Second line of defence (sharded or unusual checkpoints): transformers must have loaded every tensor exactly."""
    problems = {key: list(info.get(key) or []) for key in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")}
    problems = {key: values for key, values in problems.items() if values}
    if problems:
        detail = "; ".join(f"{key}: {values[:5]}" for key, values in problems.items())
        raise CheckpointError(f"The weights of {name} do not match its config ({detail}); save the synthesizer again with save_pretrained.")


def apply_view(images: Tensor, view: str) -> Tensor:
    """One of the dihedral ``SUPPORT_VIEWS`` of a batch [N, C, H, W] (square images)."""
    if view == "identity":
        return images
    if view == "hflip":
        return images.flip(-1)
    if view == "vflip":
        return images.flip(-2)
    if view == "transpose":
        return images.transpose(-2, -1)
    turns = {"rot90": 1, "rot180": 2, "rot270": 3}[view]
    return torch.rot90(images, turns, dims=(-2, -1))
