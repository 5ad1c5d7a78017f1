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
from ...hub.classifier_versions import read_version
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

    @classmethod
    def load_version(
        cls, path_or_repo_id: str | os.PathLike, version: int, revision: str | None = None, token: str | None = None
    ) -> "SynthesizedClassifier":
        """Version ``version`` of a saved classifier (its task file, weights and support set), verified.

        The folder is verified as for :meth:`from_pretrained`; the version's task file, its weights (against the
        recorded sha256) and its support manifest are verified too. The current version loads as usual.
        """
        current = cls.from_pretrained(path_or_repo_id, revision=revision, token=token)
        if int(version) == current.version:
            return current
        model, labels, info, index = read_version(current, version)
        return cls(model, labels, info, versions=current.versions[:index], support_folder=Path(current._base[0]))

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

    def evaluate(
        self,
        data: Any,
        subgroups: Sequence[str] = (),
        report_dir: str | os.PathLike | None = None,
        batch_size: int = 64,
        progress: bool = False,
        other_classes: str = "error",
    ) -> dict[str, Any]:
        """Evaluate on your own labelled cases; the numbers are stored for the model card (``info["metrics"]``).

        ``data``: an imagefolder folder (``<class>/<image>``, optionally with a ``metadata.csv``), a
        ``datasets.Dataset`` or ``{class name: [images]}``. ``subgroups``: metadata columns to audit per subgroup.
        ``report_dir``: also write report.md, results.json, predictions.csv and the confusion-matrix and
        reliability PNGs there. ``other_classes="skip"`` leaves out cases of classes this classifier does not have
        (default: they are an error). Returns the summary: accuracy and balanced accuracy (with 95 % intervals),
        macro-F1, AUROC, ECE (and per-subgroup accuracy). The full report is
        :func:`sgps_hf.trust.own_cases.evaluate_classifier`.
        """
        from ...trust.own_cases import evaluate_classifier
        from ...trust.report import write_report

        evaluation = evaluate_classifier(
            self, data, subgroups, batch_size=batch_size, progress=progress, other_classes=other_classes
        )
        if report_dir is not None:
            write_report(evaluation, report_dir)
        summary = evaluation.summary()
        self.info["metrics"] = {**summary, "num_images": evaluation.scores["num_images"]}
        return summary

    def calibrate_conformal(
        self,
        data: Any,
        coverage: float = 0.9,
        method: str = "lac",
        batch_size: int = 64,
        progress: bool = False,
        other_classes: str = "error",
    ) -> dict[str, Any]:
        """Calibrate split-conformal prediction sets on your own labelled cases (see :mod:`sgps_hf.trust.conformal`).

        ``data`` as for :meth:`evaluate`: cases the classifier was not synthesized from, from the population it will
        be used on. Stores the calibration in ``info["conformal"]`` (saved with the folder and stated in the card);
        :meth:`predict_sets` then returns sets that hold the true class with probability >= ``coverage``.
        ``other_classes="skip"`` leaves out cases of classes this classifier does not have (no set can hold their
        class, so the guarantee is for cases of its own classes); they are counted in the result's ``left_out``.
        """
        from ...trust.conformal import fit_conformal
        from ...trust.own_cases import USER_DATA, check_cases, load_cases, predict_cases

        cases = load_cases(data, self.label_names, other_classes)
        check_cases(self, cases, "calibration")
        probs = predict_cases(self, cases.images, batch_size=batch_size, progress=progress)
        calibration = {**fit_conformal(probs, cases.labels, coverage, method), "data": USER_DATA}
        self.info["conformal"] = calibration
        return {**calibration, "left_out": dict(cases.left_out)}

    def predict_sets(self, images: ImageInput | Sequence[ImageInput], batch_size: int = 64) -> list[dict[str, Any]]:
        """For each image: ``probabilities`` (label -> probability), ``prediction_set`` (labels, most probable first)
        and ``coverage`` (the guaranteed probability that the set holds the true class).

        Without a conformal calibration (:meth:`calibrate_conformal`) no guarantee holds: ``prediction_set`` and
        ``coverage`` are None and a ``NoCoverageGuaranteeWarning`` says so.
        """
        from ...trust.advice import warn_once
        from ...trust.conformal import prediction_sets, read_calibration

        calibration = read_calibration(self.info, len(self.label_names))
        probs = self.predict_proba(images, batch_size)
        if calibration is None:
            warn_once(
                "no_coverage",
                "This classifier has no conformal calibration: no prediction set comes with a coverage guarantee. "
                "Calibrate it on labelled cases of your own with calibrate_conformal (or sgps calibrate).",
            )
            sets: list[list[int] | None] = [None] * len(probs)
        else:
            sets = prediction_sets(probs.numpy(), calibration)
        return [
            {
                "probabilities": dict(zip(self.label_names, row.tolist(), strict=True)),
                "prediction_set": None if chosen is None else [self.label_names[c] for c in chosen],
                "coverage": None if calibration is None else calibration["coverage"],
            }
            for row, chosen in zip(probs, sets, strict=True)
        ]

    def explain(
        self, images: ImageInput | Sequence[ImageInput], labels: Sequence[str | None] | None = None
    ) -> list[Any]:
        """A Grad-CAM saliency map per image (:class:`sgps_hf.trust.explain.Explanation`: ``heatmap``, ``label``,
        ``probability``, ``overlay(image)``), for ``labels[i]`` or, by default, the predicted class."""
        from ...trust.explain import explain

        images = list(images) if isinstance(images, (list, tuple)) else [images]
        return explain(self, images, labels)

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
