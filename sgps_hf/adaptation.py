"""Continuous adaptation: add newly verified cases to classes of a classifier and re-synthesize it.

Synthesis is a single forward pass, so "adapting" a classifier is re-running the synthesizer on its stored
support set (:mod:`sgps_hf.support`) plus the new cases: the result is exactly what synthesizing the enlarged
task from scratch would give, with no drift from repeated updates. Each update bumps ``info["version"]``,
appends a changelog entry to ``info["history"]`` (rendered in the model card) and keeps the previous
version's task file in ``classifier.versions`` (saved as ``versions/v<N>/sgps_task.json``).
"""

from __future__ import annotations

import copy
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from .errors import CheckpointError, InvalidTaskError
from .image_processing_sgps import SGPSImageProcessor
from .imaging import ImageInput, image_fingerprint
from .task import ClassSpec, TaskSpec

if TYPE_CHECKING:
    from .classifier import SynthesizedClassifier
    from .modeling_sgps import SGPSSynthesizer
    from .processing_sgps import SGPSProcessor

Additions = Mapping[str, "ImageInput | Sequence[ImageInput]"]


def update_classifier(
    synthesizer: "SGPSSynthesizer",
    classifier: "SynthesizedClassifier",
    additions: Additions,
    processor: "SGPSProcessor | None" = None,
) -> "SynthesizedClassifier":
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
    classes = [
        ClassSpec(name=entry["name"], description=entry["description"], images=[*support.get(entry["name"], []), *added.get(entry["name"], [])])
        for entry in old_task["classes"]
    ]
    task = TaskSpec(classes=classes, name=old_task["name"], modality=old_task["modality"])
    updated = synthesizer.synthesize(task, processor=processor)
    _carry_fingerprints(updated.info["task"], old_task, added)
    _record_version(updated, classifier, added)
    updated._base = classifier._base  # saving it back over a folder another writer changed meanwhile is refused
    return updated


def _normalise_additions(classifier: "SynthesizedClassifier", additions: Additions) -> dict[str, list[ImageInput]]:
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


def _check_compatible(synthesizer: "SGPSSynthesizer", classifier: "SynthesizedClassifier") -> None:
    """The synthesizer must emit the same architecture with the same preprocessing as the classifier has."""
    config = synthesizer.config
    expected = SGPSImageProcessor.from_sgps_config(config).timm_data_config()
    target = {"architecture": config.target_architecture, "model_args": config.target_model_args}
    if classifier.info["target"] != target or dict(classifier.info["data_config"]) != expected:
        raise CheckpointError(
            f"This synthesizer emits {target} at {expected['input_size'][-1]} px, but the classifier is "
            f"{classifier.info['target']} at {classifier.info['data_config']['input_size'][-1]} px. Update it with the "
            f"synthesizer that made it ({classifier.info['synthesizer']['name_or_path']})."
        )


def _carry_fingerprints(new_task: dict[str, Any], old_task: dict[str, Any], added: Mapping[str, Sequence[ImageInput]]) -> None:
    """Keep the original fingerprints (file sha256) of the old images instead of their re-decoded pixel hashes."""
    for new, old in zip(new_task["classes"], old_task["classes"]):
        if "image_sha256" in old:
            new["image_sha256"] = [*old["image_sha256"], *(image_fingerprint(x) for x in added.get(old["name"], []))]


def _record_version(updated: "SynthesizedClassifier", previous: "SynthesizedClassifier", added: Mapping[str, Sequence[ImageInput]]) -> None:
    info, old = updated.info, previous.info
    history = copy.deepcopy(old.get("history") or [])
    if not history:
        total = sum(c["num_images"] for c in old["task"]["classes"])
        history.append({"version": previous.version, "created": old["created"], "summary": f"Synthesized from {total} support image(s).",
                        "weights_sha256": old["weights_sha256"]})
    counts = {c["name"]: c["num_images"] for c in info["task"]["classes"]}
    from .model_card import md_code

    # Names go into code spans whose fence outlasts any backtick in them: the summary is safe Markdown (the card and the app show it).
    parts = [f"{len(images)} to {md_code(name)} (now {counts[name]})" for name, images in added.items()]
    summary = f"Added {sum(map(len, added.values()))} verified case(s): {', '.join(parts)}; re-synthesized."
    if info["synthesizer"] != old["synthesizer"]:
        summary += f" Synthesizer changed from {md_code(old['synthesizer']['name_or_path'])} ({md_code(old['synthesizer']['revision'])})."
    if old.get("metrics"):
        summary += " Earlier evaluation metrics no longer apply and were cleared."
    info["version"] = previous.version + 1
    info["history"] = [*history, {
        "version": info["version"],
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "summary": summary,
        "added": {name: len(images) for name, images in added.items()},
        "weights_sha256": info["weights_sha256"],
        "previous_weights_sha256": old["weights_sha256"],
    }]
    updated.versions = [*previous.versions, copy.deepcopy(old)]
