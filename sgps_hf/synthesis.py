"""Synthesis and continuous adaptation: TaskSpec -> processor -> synthesizer -> classifier, with provenance and
versions.

:func:`synthesize` decodes each user image once (pixels and fingerprint), turns the task into the synthesizer's
inputs, runs one forward pass (no gradient step) and wraps the weights as a :class:`SynthesizedClassifier` that
records the task, its fingerprints, the synthesizer's name and revision and the support images.

Synthesis is a single forward pass, so "adapting" a classifier (:func:`update`) is re-running the synthesizer on its
stored support set plus the new cases: the result is exactly what synthesizing the enlarged task from scratch would
give, with no drift from repeated updates. Each update bumps ``info["version"]``, appends a changelog entry to
``info["history"]`` (rendered in the model card) and keeps the previous version's task file in
``classifier.versions`` (saved as ``versions/v<N>/sgps_task.json``).

The synthesizer is passed in (its ``synthesize``/``update`` methods delegate here), so this module never imports
the network class.
"""

from __future__ import annotations

import copy
import os
from datetime import datetime, timezone
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from .body.timm_network import materialize
from .errors import CheckpointError, InvalidTaskError, SynthesisError
from .hub.checkpoints import display_name, state_dict_sha256, synthesizer_reference
from .hub.classifier_checks import FORMAT_VERSION
from .hub.model_card import md_code
from .hub.support_images import clean_image, support_manifest
from .imaging import DecodedImage, ImageInput, decode_image, image_fingerprint
from .models.sgps.classifier import SynthesizedClassifier
from .models.sgps.image_processing_sgps import SGPSImageProcessor
from .models.sgps.processing_sgps import SGPSProcessor
from .task import ClassSpec, TaskSpec
from .trust.advice import label_conflicts, warn, warn_about_task
from .version import __version__

Additions = Mapping[str, "ImageInput | Sequence[ImageInput]"]


@torch.no_grad()
def synthesize(
    synthesizer: nn.Module, task: TaskSpec, processor: SGPSProcessor | None = None
) -> SynthesizedClassifier:
    """A standalone classifier for ``task`` from ``synthesizer`` (an SGPSSynthesizer) in one forward pass."""
    processor = processor or SGPSProcessor.from_sgps_config(synthesizer.config)
    warn_about_task(task)  # text-only classes, non-English texts, many classes at one shot
    decoded = [cls.decode_images() for cls in task.classes]
    inputs = processor.prepare_task(task, images=[[image.pixels for image in images] for images in decoded])
    weights = _forward(synthesizer, inputs)
    support = {
        cls.name: [clean_image(image.pixels) for image in images]
        for cls, images in zip(task.classes, decoded, strict=False)
    }
    fingerprints = [[image.fingerprint for image in images] for images in decoded]
    for message in label_conflicts(task.class_names, fingerprints):
        warn(message, stacklevel=4)
    info = classifier_info(synthesizer, weights, task, processor.image_processor, support, fingerprints)
    return SynthesizedClassifier(materialize(synthesizer.config, weights), task.class_names, info, support=support)


def _forward(synthesizer: nn.Module, inputs: Mapping[str, Any]) -> dict[str, Tensor]:
    """The synthesized state dict (on the CPU, contiguous) of one eval-mode forward pass; NaN/Inf refused."""
    device = synthesizer.device
    was_training = synthesizer.training
    synthesizer.eval()
    try:
        output = synthesizer(
            support_pixel_values=inputs["support_pixel_values"].to(device),
            support_labels=inputs["support_labels"].to(device),
            num_classes=inputs["num_classes"],
            input_ids=inputs["input_ids"],
            attention_mask=inputs["attention_mask"],
            text_mask=inputs["text_mask"].to(device),
        )
    finally:
        synthesizer.train(was_training)
    weights = {name: tensor.detach().cpu().contiguous() for name, tensor in output.weights.items()}
    bad = [name for name, tensor in weights.items() if tensor.is_floating_point() and not torch.isfinite(tensor).all()]
    if bad:
        raise SynthesisError(
            f"Synthesis produced NaN/Inf in {len(bad)} tensors (e.g. {bad[0]}); the checkpoint may be corrupt."
        )
    return weights


def classifier_info(
    synthesizer: nn.Module,
    weights: Mapping[str, Tensor],
    task: TaskSpec,
    image_processor: SGPSImageProcessor,
    support: Mapping[str, Sequence[Any]],
    fingerprints: Sequence[Sequence[str]],
) -> dict[str, Any]:
    """The JSON-ready provenance of a new classifier (saved as ``sgps_task.json``)."""
    config = synthesizer.config
    return {
        "format_version": FORMAT_VERSION,
        "sgps_hf_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "task": task.to_dict(fingerprints=fingerprints),
        "synthesizer": synthesizer_reference(synthesizer),
        "target": {"architecture": config.target_architecture, "model_args": config.target_model_args},
        "data_config": image_processor.timm_data_config(),
        "weights_sha256": state_dict_sha256(weights),
        "metrics": None,
        "version": 1,
        "history": [],
        "support": support_manifest(task.class_names, support),
    }


def update(
    synthesizer: nn.Module,
    classifier: SynthesizedClassifier,
    additions: Additions,
    processor: SGPSProcessor | None = None,
) -> SynthesizedClassifier:
    """A new classifier re-synthesized from ``classifier``'s support set plus ``additions`` ({class: images}).

    The original classifier is left unchanged. Raises :class:`InvalidTaskError` for unknown classes or
    no images, and when ``classifier`` has no stored support set (e.g. a copy pushed without it).
    """
    added = _normalise_additions(classifier, additions)
    support = classifier.support
    if support is None:
        raise InvalidTaskError(
            f"Classifier {classifier.info['task']['name']!r} has no stored support images (it was saved or pushed "
            "without them, or by an older sgps-hf), so it cannot be re-synthesized. Use the folder written by "
            "save_pretrained / `sgps synthesize`, which keeps them under support/."
        )
    _check_compatible(synthesizer, classifier)
    old_task = classifier.info["task"]
    added_images = {name: [decode_image(image) for image in images] for name, images in added.items()}
    _refuse_repeated_cases(support, added, added_images)
    classes = [
        ClassSpec(
            name=entry["name"],
            description=entry["description"],
            images=[*support.get(entry["name"], []), *(image.pixels for image in added_images.get(entry["name"], []))],
        )
        for entry in old_task["classes"]
    ]
    task = TaskSpec(classes=classes, name=old_task["name"], modality=old_task["modality"])
    updated = synthesize(synthesizer, task, processor=processor)
    _carry_fingerprints(updated.info["task"], old_task, added_images)
    _record_version(updated, classifier, added)
    updated._base = classifier._base  # saving it back over a folder another writer changed meanwhile is refused
    return updated


def _normalise_additions(classifier: SynthesizedClassifier, additions: Additions) -> dict[str, list[ImageInput]]:
    if not isinstance(additions, Mapping) or not additions:
        raise InvalidTaskError("Pass the new cases as {class name: [images]}, with at least one image.")
    unknown = sorted(set(additions) - set(classifier.label_names))
    if unknown:
        raise InvalidTaskError(
            f"Unknown class(es) {unknown}; this classifier has {classifier.label_names}. "
            "Updating adds cases to existing classes; synthesize a new task to add a class."
        )
    added: dict[str, list[ImageInput]] = {}
    for name, images in additions.items():
        images = [images] if not isinstance(images, (list, tuple)) else list(images)
        if images:
            added[name] = images
    if not added:
        raise InvalidTaskError("No new images were given; add at least one verified case to a class.")
    return added


def _refuse_repeated_cases(
    support: Mapping[str, Sequence[Any]],
    added: Mapping[str, Sequence[ImageInput]],
    added_images: Mapping[str, Sequence[DecodedImage]],
) -> None:
    """An added case whose pixels are already in its class (a stored support image, or an earlier image of the same
    addition) would count twice and pull the class towards it; it is most often the same update run again."""
    repeated = []
    for name, images in added_images.items():
        seen = {image_fingerprint(image) for image in support.get(name, [])}
        for source, image in zip(added[name], images, strict=True):
            digest = image_fingerprint(clean_image(image.pixels))  # the pixels a stored support image keeps
            if digest in seen:
                shown = os.path.basename(os.fspath(source)) if isinstance(source, (str, os.PathLike)) else "an image"
                repeated.append(f"{shown} for {name!r}")
            seen.add(digest)
    if repeated:
        raise InvalidTaskError(
            f"Already one of its class's images (same pixels): {', '.join(repeated[:5])}"
            f"{', ...' if len(repeated) > 5 else ''}. Nothing was added; leave the repeated case(s) out."
        )


def _check_compatible(synthesizer: nn.Module, classifier: SynthesizedClassifier) -> None:
    """The synthesizer must emit the same architecture with the same preprocessing as the classifier has."""
    config = synthesizer.config
    expected = SGPSImageProcessor.from_sgps_config(config).timm_data_config()
    target = {"architecture": config.target_architecture, "model_args": config.target_model_args}
    if classifier.info["target"] != target or dict(classifier.info["data_config"]) != expected:
        raise CheckpointError(
            f"This synthesizer emits {target} at {expected['input_size'][-1]} px, but the classifier is "
            f"{classifier.info['target']} at {classifier.info['data_config']['input_size'][-1]} px. Update it with "
            f"the synthesizer that made it ({classifier.info['synthesizer']['name_or_path']})."
        )


def _carry_fingerprints(
    new_task: dict[str, Any], old_task: dict[str, Any], added: Mapping[str, Sequence[DecodedImage]]
) -> None:
    """Keep the original fingerprints (file sha256) of the old images instead of their re-decoded pixel hashes."""
    for new, old in zip(new_task["classes"], old_task["classes"], strict=False):
        if "image_sha256" in old:
            new["image_sha256"] = [*old["image_sha256"], *(image.fingerprint for image in added.get(old["name"], []))]


def _record_version(
    updated: SynthesizedClassifier, previous: SynthesizedClassifier, added: Mapping[str, Sequence[ImageInput]]
) -> None:
    info, old = updated.info, previous.info
    history = copy.deepcopy(old.get("history") or [])
    if not history:
        total = sum(c["num_images"] for c in old["task"]["classes"])
        history.append(
            {
                "version": previous.version,
                "created": old["created"],
                "summary": f"Synthesized from {total} support image(s).",
                "weights_sha256": old["weights_sha256"],
            }
        )
    counts = {c["name"]: c["num_images"] for c in info["task"]["classes"]}
    # Names go into code spans whose fence outlasts any backtick in them: the summary is safe Markdown (the card and
    # the app show it).
    parts = [f"{len(images)} to {md_code(name)} (now {counts[name]})" for name, images in added.items()]
    summary = f"Added {sum(map(len, added.values()))} verified case(s): {', '.join(parts)}; re-synthesized."
    if info["synthesizer"] != old["synthesizer"]:
        summary += (
            f" Synthesizer changed from {md_code(display_name(old['synthesizer']['name_or_path']))} "
            f"({md_code(old['synthesizer']['revision'])})."
        )
    if old.get("metrics"):
        summary += " Earlier evaluation metrics no longer apply and were cleared."
    info["version"] = previous.version + 1
    info["history"] = [
        *history,
        {
            "version": info["version"],
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "summary": summary,
            "added": {name: len(images) for name, images in added.items()},
            "weights_sha256": info["weights_sha256"],
            "previous_weights_sha256": old["weights_sha256"],
        },
    ]
    updated.versions = [*previous.versions, copy.deepcopy(old)]
    kept = {name: tensor.detach().clone() for name, tensor in previous.model.state_dict().items()}
    updated._version_weights = {**getattr(previous, "_version_weights", {}), previous.version: kept}
