"""SGPSSynthesizer: a hypernetwork that writes a complete EfficientNet-V2 classifier for a task.

``w = H(c; theta)``: the task context ``c`` (support images + clinical texts of each class) is turned
into the full state dict of a timm EfficientNet-V2 in one forward pass:

1. Support images go through the meta-learned base body; their per-class mean features and the
   class texts become one token per class. A set transformer lets the classes attend to each other
   (the order of classes does not matter), and the mean token summarises the task.
2. The task token generates FiLM scale/shift deltas, folded into every BatchNorm's affine
   parameters, and low-rank deltas folded into selected pointwise convolutions.
3. The support images go through the *modulated* body, normalised with the meta-learned BatchNorm
   running statistics (or, with ``support_statistics``, their own batch statistics, which then
   become the classifier's); their per-class means are the image prototypes. Text prototypes come
   from the class texts; a learned gate mixes both per class.
4. The head is the exact linear form of a nearest-prototype rule,
   ``logit_c = s * (2 p_c . f - |p_c|^2 + delta_c(f))``, plus generated per-class corrections.

The output is an ordinary state dict; :mod:`sgps_hf.target` runs it functionally (meta-training) or
materialises it as a plain timm model (the shipped classifier).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_sgps import SGPSConfig
from .errors import CheckpointError, SynthesisError
from .target import (
    HEAD_BIAS, HEAD_WEIGHT, batchnorm_layers, body_features, classify, create_target, measure_features, pointwise_conv,
)
from .text_encoder import embed_tokens, load_text_encoder

PROTOTYPE_GATE_INIT = 3.0  # sigmoid(3) = 0.95: the initial weight of image over text prototypes

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
        for _, bn in batchnorm_layers(self.target):
            bn.momentum = 1.0  # a train-mode pass stores exactly its batch statistics (see target.measure_features)
        features, hidden, text_dim = self.target.num_features, config.hidden_size, config.text_embed_dim

        self.image_to_token = nn.Sequential(nn.LayerNorm(features), nn.Linear(features, hidden))
        self.text_to_token = nn.Sequential(nn.LayerNorm(text_dim), nn.Linear(text_dim, hidden))
        self.missing_image_token = nn.Parameter(torch.zeros(hidden))
        self.missing_text_token = nn.Parameter(torch.zeros(hidden))
        layer = nn.TransformerEncoderLayer(
            hidden, config.num_attention_heads, 2 * hidden, config.context_dropout, batch_first=True, norm_first=True
        )
        self.context = nn.TransformerEncoder(layer, config.num_context_layers, enable_nested_tensor=False)
        self.context_norm = nn.LayerNorm(hidden)

        self.text_to_prototype = nn.Sequential(nn.Linear(text_dim, hidden), nn.GELU(), nn.Linear(hidden, features))
        self.prototype_gate = nn.Linear(hidden, 1)
        self.head_delta = nn.Linear(hidden, features + 1)
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(config.logit_scale_init)))

        self._bn_names = [name for name, _ in batchnorm_layers(self.target)]
        self._bn_sizes = [bn.num_features for _, bn in batchnorm_layers(self.target)]
        self.film = None
        if config.film_bottleneck > 0:
            self.film = nn.Sequential(
                nn.Linear(hidden, config.film_bottleneck), nn.GELU(), nn.Linear(config.film_bottleneck, 2 * sum(self._bn_sizes))
            )
        self.lowrank_a = nn.ParameterDict()
        self.lowrank_b = nn.ParameterDict()
        self.lowrank_gate = None
        if config.lowrank_rank > 0 and config.lowrank_modules:
            for name in config.lowrank_modules:
                conv = pointwise_conv(self.target, name)
                key = name.replace(".", "__")
                self.lowrank_a[key] = nn.Parameter(torch.zeros(conv.out_channels, config.lowrank_rank))
                self.lowrank_b[key] = nn.Parameter(torch.randn(config.lowrank_rank, conv.in_channels) / math.sqrt(conv.in_channels))
            self.lowrank_gate = nn.Linear(hidden, config.lowrank_rank * len(config.lowrank_modules))
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

        Generators start at zero (see `_zero_generators`), so an untrained synthesizer already emits
        a valid nearest-prototype classifier around the base weights.
        """

    def _zero_generators(self) -> None:
        with torch.no_grad():
            nn.init.zeros_(self.head_delta.weight)
            nn.init.zeros_(self.head_delta.bias)
            # Start from the image prototypes (gate ~0.95) wherever a class has images: the text prototypes are
            # untrained noise at first, and an even mix would throw away most of what the support images say.
            nn.init.zeros_(self.prototype_gate.weight)
            nn.init.constant_(self.prototype_gate.bias, PROTOTYPE_GATE_INIT)
            if self.film is not None:
                nn.init.zeros_(self.film[-1].weight)
                nn.init.zeros_(self.film[-1].bias)

    # -- text -----------------------------------------------------------------------------------
    def encode_text(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Embeddings of the clinical texts from the frozen encoder (not part of this model's weights)."""
        encoder = load_text_encoder(self.config.text_encoder)
        return embed_tokens(encoder, input_ids.cpu(), attention_mask.cpu()).to(self.device)

    # -- synthesis ------------------------------------------------------------------------------
    def generate_weights(
        self,
        num_classes: int,
        support_pixel_values: Tensor | None = None,
        support_labels: Tensor | None = None,
        text_embeds: Tensor | None = None,
        text_mask: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """The full state dict of a ``num_classes``-way target classifier for this task.

        Args:
            num_classes: number of classes C.
            support_pixel_values: normalised support images [S, 3, H, W] (S may be 0).
            support_labels: class index of each support image [S].
            text_embeds: text embeddings [C, text_embed_dim] (rows of classes without text are ignored).
            text_mask: [C] bool, which classes have a text.
        """
        device = self.log_logit_scale.device
        base = dict(self.target.named_parameters())
        buffers = dict(self.target.named_buffers())
        has_support = support_pixel_values is not None and support_pixel_values.shape[0] > 0
        image_mask = torch.zeros(num_classes, dtype=torch.bool, device=device)
        if has_support:
            image_mask[support_labels.unique()] = True
        if text_embeds is None or text_mask is None:
            text_embeds = torch.zeros(num_classes, self.config.text_embed_dim, device=device)
            text_mask = torch.zeros(num_classes, dtype=torch.bool, device=device)
        if not bool((image_mask | text_mask).all()):
            raise SynthesisError("Every class needs at least one support image or a clinical text.")

        base_prototypes = None
        if has_support:
            # The unmodulated pass only conditions the generators; no gradient through it saves a backward pass.
            with torch.no_grad():
                base_features, _ = self._support_features({**base, **buffers}, support_pixel_values)
            base_prototypes = _class_means(base_features, support_labels, num_classes)
        tokens = self._class_tokens(base_prototypes, image_mask, text_embeds, text_mask)
        task_token = tokens.mean(0)

        params = self._modulate(base, task_token)
        if has_support:
            features, stats = self._support_features({**params, **buffers}, support_pixel_values)
            image_prototypes = _class_means(features, support_labels, num_classes)
            if stats is not None:
                buffers = stats
                self._track_statistics(stats)
        else:
            image_prototypes = torch.zeros(num_classes, self.target.num_features, device=device)

        text_prototypes = self.text_to_prototype(text_embeds)
        gate = torch.sigmoid(self.prototype_gate(tokens))
        mixed = gate * image_prototypes + (1 - gate) * text_prototypes
        both, image_only = (image_mask & text_mask).unsqueeze(1), (image_mask & ~text_mask).unsqueeze(1)
        prototypes = torch.where(both, mixed, torch.where(image_only, image_prototypes, text_prototypes))

        delta = self.head_delta(tokens)
        scale = self.log_logit_scale.exp()
        weight = scale * (2 * prototypes + delta[:, :-1])
        bias = scale * (delta[:, -1] - prototypes.pow(2).sum(-1))
        return {**params, **buffers, HEAD_WEIGHT: weight, HEAD_BIAS: bias}

    def _support_features(self, tensors: dict[str, Tensor], images: Tensor) -> tuple[Tensor, dict[str, Tensor] | None]:
        """Support features normalised exactly as the synthesized classifier will normalise its queries.

        With ``support_statistics`` the support set's own batch statistics (returned, to become the classifier's
        running statistics); otherwise the meta-learned running statistics (eval mode), returned as None.
        """
        if self.config.support_statistics:
            return measure_features(self.target, tensors, images)
        return body_features(self.target, tensors, images), None

    def _class_tokens(self, image_prototypes: Tensor | None, image_mask: Tensor, text_embeds: Tensor, text_mask: Tensor) -> Tensor:
        num_classes = text_embeds.shape[0]
        if image_prototypes is None:
            image_part = self.missing_image_token.expand(num_classes, -1)
        else:
            image_part = torch.where(image_mask.unsqueeze(1), self.image_to_token(image_prototypes), self.missing_image_token)
        text_part = torch.where(text_mask.unsqueeze(1), self.text_to_token(text_embeds), self.missing_text_token)
        return self.context_norm(self.context((image_part + text_part).unsqueeze(0)).squeeze(0))

    def _modulate(self, base: dict[str, Tensor], task_token: Tensor) -> dict[str, Tensor]:
        params = dict(base)
        if self.film is not None:
            scales, shifts = self.film(task_token).split(sum(self._bn_sizes))
            for name, d_scale, d_shift in zip(self._bn_names, scales.split(self._bn_sizes), shifts.split(self._bn_sizes)):
                params[f"{name}.weight"] = base[f"{name}.weight"] * (1 + d_scale)
                params[f"{name}.bias"] = base[f"{name}.bias"] + d_shift
        if self.lowrank_gate is not None:
            gates = self.lowrank_gate(task_token).split(self.config.lowrank_rank)
            for name, gate in zip(self.config.lowrank_modules, gates):
                key = name.replace(".", "__")
                delta = (self.lowrank_a[key] * gate) @ self.lowrank_b[key]
                params[f"{name}.weight"] = base[f"{name}.weight"] + delta[:, :, None, None]
        return params

    @torch.no_grad()
    def _track_statistics(self, stats: dict[str, Tensor], momentum: float = 0.05) -> None:
        """Meta-learn the fallback statistics for text-only tasks: a running mean of support statistics."""
        if not self.training:
            return
        for name, buf in self.target.named_buffers():
            if buf.is_floating_point() and name in stats:
                buf.lerp_(stats[name], momentum)

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
    ) -> SGPSOutput:
        """Synthesize weights for one task and, when queries are given, classify them with those weights."""
        if num_classes is None:
            if text_mask is not None:
                num_classes = int(text_mask.shape[0])
            elif support_labels is not None and support_labels.numel():
                num_classes = int(support_labels.max()) + 1
            else:
                raise ValueError("Pass num_classes (or text_mask / support_labels from which it can be read).")
        if text_embeds is None and input_ids is not None:
            text_embeds = self.encode_text(input_ids, attention_mask)
        weights = self.generate_weights(num_classes, support_pixel_values, support_labels, text_embeds, text_mask)
        logits = loss = None
        if query_pixel_values is not None:
            logits = classify(self.target, weights, query_pixel_values)
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


def _class_means(features: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Per-class mean of ``features``; classes without support rows get zeros (masked later)."""
    sums = torch.zeros(num_classes, features.shape[1], dtype=features.dtype, device=features.device)
    sums = sums.index_add(0, labels, features)
    counts = torch.bincount(labels, minlength=num_classes).clamp(min=1).to(features.dtype)
    return sums / counts.unsqueeze(1)
