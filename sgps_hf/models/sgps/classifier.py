"""SynthesizedClassifier: a plain timm EfficientNet plus the provenance of its synthesis.

Its folder format (timm's Hub layout plus task file, support images, earlier versions and card) is
:mod:`sgps_hf.hub.classifier_folder`; how it is made and updated is :mod:`sgps_hf.synthesis`.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from ...hub.classifier_folder import load_classifier_folder, push_classifier, save_classifier_folder
from ...hub.support_images import Support, read_support, support_available
from ...imaging import ImageInput
from .image_processing_sgps import SGPSImageProcessor


class SynthesizedClassifier:
    """A task-specific classifier emitted by :meth:`SGPSSynthesizer.synthesize`.

    Attributes:
        model: the timm model (eval mode), usable directly as an ``nn.Module``.
        label_names: class names in output order.
        info: JSON-ready provenance: task (classes, clinical texts, support-image sha256),
            synthesizer id and revision, data config, metrics, version and changelog.
        versions: the ``info`` of every earlier version (oldest first), written to ``versions/``.
    """

    def __init__(
        self,
        model: nn.Module,
        label_names: Sequence[str],
        info: dict[str, Any],
        support: Support | None = None,
        versions: Sequence[dict[str, Any]] = (),
        support_folder: Path | None = None,
    ) -> None:
        self.model = model.eval()
        self.label_names = list(label_names)
        self.info = info
        self.versions = [copy.deepcopy(v) for v in versions]
        self.image_processor = SGPSImageProcessor(**_processor_kwargs(info["data_config"]))
        self._support = support
        self._support_folder = support_folder  # read lazily: predicting never needs the support images
        # (folder, weights sha256) this classifier was loaded from or derived from: saving back into that folder
        # after another writer changed it is refused, so that no concurrent update is silently overwritten.
        self._base: tuple[Path, str] | None = None
        # weights of earlier versions held in memory (an update keeps the previous version's): saved under versions/
        self._version_weights: dict[int, dict[str, Tensor]] = {}

    @property
    def support(self) -> Support | None:
        """The support images per class (RGB, as the synthesizer saw them), or None when this copy lacks them."""
        if self._support is None and self._support_folder is not None:
            if support_available(self._support_folder, self.info.get("support")):
                self._support = read_support(self._support_folder, self.info["support"])
            self._support_folder = None
        return self._support

    @property
    def version(self) -> int:
        return int(self.info.get("version", 1))

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls, path_or_repo_id: str | os.PathLike, revision: str | None = None, token: str | None = None
    ) -> "SynthesizedClassifier":
        """Load a saved classifier from a folder or a Hub repo id (timm weights + ``sgps_task.json``).

        The folder is verified before it is used (:func:`sgps_hf.hub.classifier_folder.load_classifier_folder`): every
        key that loading, prediction, updates or the model card read, the label names of both files against each other,
        the architecture and ``model_args``, sane preprocessing and the weights' sha256. Anything else gives a
        CheckpointError naming the file and key.
        """
        loaded = load_classifier_folder(path_or_repo_id, revision, token)
        classifier = cls(
            loaded.model, loaded.label_names, loaded.info, versions=loaded.versions, support_folder=loaded.folder
        )
        classifier._base = (loaded.folder.resolve(), str(loaded.info.get("weights_sha256")))
        return classifier

    # -- inference ------------------------------------------------------------------------------
    @torch.no_grad()
    def predict_proba(self, images: ImageInput | Sequence[ImageInput], batch_size: int = 64) -> Tensor:
        """Class probabilities [num_images, num_classes]."""
        images = list(images) if isinstance(images, (list, tuple)) else [images]
        chunks = [images[i : i + batch_size] for i in range(0, len(images), batch_size)]
        logits = [self.model(self.image_processor(chunk)["pixel_values"]) for chunk in chunks]
        if not logits:
            return torch.zeros(0, len(self.label_names))
        return torch.cat(logits).softmax(-1)

    def predict(self, images: ImageInput | Sequence[ImageInput], batch_size: int = 64) -> list[dict[str, float]]:
        """For each image, a dict label -> probability (labels in output order)."""
        probs = self.predict_proba(images, batch_size)
        return [dict(zip(self.label_names, row.tolist(), strict=False)) for row in probs]

    def evaluate(self, labelled_images: Mapping[str, Sequence[ImageInput]]) -> dict[str, float]:
        """Accuracy and macro-F1 on labelled images ``{class name: [images]}``; stored for the model card."""
        from ...metrics import classification_metrics

        unknown = set(labelled_images) - set(self.label_names)
        if unknown:
            raise ValueError(f"Unknown classes {sorted(unknown)}; this classifier knows {self.label_names}.")
        images, labels = [], []
        for name, items in labelled_images.items():
            images.extend(items)
            labels.extend([self.label_names.index(name)] * len(items))
        probs = self.predict_proba(images)
        metrics = classification_metrics(probs.numpy(), labels, num_classes=len(self.label_names))
        self.info["metrics"] = {**metrics, "num_images": len(images)}
        return metrics

    # -- persistence ----------------------------------------------------------------------------
    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        repo_id: str | None = None,
        include_support: bool = True,
        overwrite: bool = False,
    ) -> Path:
        """Write the classifier folder atomically (a crash never leaves a half-written folder).

        ``repo_id``: the Hub repo the folder is meant for; the model card's usage snippets then name it.
        ``include_support``: also store the support images (patient data) under ``support/``, which
        ``SGPSSynthesizer.update`` needs to re-synthesize; skipped when this copy has none.
        ``overwrite``: replace a classifier folder that holds a version history (verified cases added by updates)
        although this classifier does not descend from it; without it such a save is refused.
        Earlier versions are kept complete under ``versions/`` (see :mod:`sgps_hf.hub.classifier_versions`).
        """
        target = save_classifier_folder(self, save_directory, repo_id, include_support, overwrite)
        self._base = (target, str(self.info.get("weights_sha256")))
        return Path(save_directory)

    def push_to_hub(
        self,
        repo_id: str,
        token: str | None = None,
        private: bool | None = None,
        commit_message: str = "Add synthesized classifier",
        include_support: bool = False,
    ) -> str:
        """Create ``repo_id`` if needed and upload the saved folder; returns the commit URL.

        ``include_support`` defaults to False: the support images are patient data and a Hub repo is
        easily made public, so only their sha256 fingerprints are uploaded unless you opt in (for example
        to a private repo of your institution, when consent and de-identification allow it). Without them
        the pushed copy classifies normally but cannot be adapted with ``SGPSSynthesizer.update``.
        """
        return push_classifier(self, repo_id, token, private, commit_message, include_support)

    def __repr__(self) -> str:
        return (
            f"SynthesizedClassifier(classes={self.label_names}, architecture={self.info['target']['architecture']!r})"
        )


def _processor_kwargs(data_config: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "image_size": int(data_config["input_size"][-1]),
        "image_mean": data_config["mean"],
        "image_std": data_config["std"],
        "interpolation": data_config["interpolation"],
    }
