"""Evaluate a synthesized classifier on the user's own labelled cases.

``evaluate_classifier(classifier, data)`` takes an imagefolder folder (``<class>/<image>``, optionally with an
imagefolder ``metadata.csv``/``metadata.jsonl`` of per-image columns), a ``datasets.Dataset`` or a mapping
``{class name: [images]}``, classifies every image in batches (with a progress bar) and returns an
:class:`OwnCasesEvaluation`: accuracy and balanced accuracy with 95 % intervals, macro-F1, AUROC, ECE and the
reliability bins, per-class sensitivity / specificity / PPV with Wilson intervals, the confusion matrix, the
per-image predictions and, for the metadata columns named in ``subgroups``, a per-subgroup audit
(:mod:`.subgroup_audit`). :mod:`.report` writes it as Markdown, JSON, CSV and PNG.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import DataError
from ..metrics import calibration, load_metric
from .stats import bootstrap_ci, wilson
from .subgroup_audit import audit_subgroups

#: Where the evaluation numbers come from, as stated in the card.
USER_DATA = "user-supplied labelled images"


@dataclass
class LabelledCases:
    """Images with their class index in the classifier's ``label_names`` and per-image metadata columns."""

    images: list[Any]
    labels: np.ndarray
    names: list[str]
    metadata: dict[str, list[Any]] = field(default_factory=dict)
    source: str = "labelled images"
    left_out: dict[str, int] = field(default_factory=dict)  # other classes' cases skipped: class -> count

    def __len__(self) -> int:
        return len(self.images)


#: What to do with labelled cases of classes the classifier does not have.
OTHER_CLASSES = ("error", "skip")


def load_cases(data: Any, label_names: Sequence[str], other_classes: str = "error") -> LabelledCases:
    """The labelled cases of ``data`` (folder, ``datasets.Dataset`` or ``{class: [images]}``) for ``label_names``.

    ``other_classes``: ``"error"`` raises DataError when the data has classes the classifier does not know;
    ``"skip"`` leaves their cases out (counted in ``left_out``), e.g. to check a classifier of a few classes on a
    larger labelled archive. Raises DataError when no image is left.
    """
    if other_classes not in OTHER_CLASSES:
        raise DataError(f"other_classes must be one of {OTHER_CLASSES}, got {other_classes!r}.")
    if isinstance(data, Mapping):
        return _cases_from_mapping(data, label_names, other_classes == "skip")
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if not path.is_dir():
            raise DataError(
                f"{str(path)!r} is not a folder; give a folder of class subfolders (<class>/<image>), "
                "optionally with a metadata.csv, or a datasets.Dataset."
            )
    from ..data.loading import load_image_dataset

    dataset = load_image_dataset(data, keep_metadata=True)
    root = Path(data) if isinstance(data, (str, os.PathLike)) else None
    return _cases_from_dataset(dataset, label_names, root, other_classes == "skip")


def _check_classes(present: Sequence[str], label_names: Sequence[str]) -> None:
    unknown = sorted(set(present) - set(label_names))
    if unknown:
        raise DataError(
            f"Unknown classes {unknown}: this classifier knows {list(label_names)}. Name the class folders like the "
            "classifier's classes, or leave out the other classes' cases with other_classes='skip' (CLI: "
            "--skip-other-classes)."
        )


def describe_left_out(left_out: dict[str, int]) -> str:
    """What was left out, as the report and the CLI state it: '<n> cases of classes this classifier does not have:
    <class> (<count>), ...'."""
    classes = ", ".join(f"{name} ({count})" for name, count in sorted(left_out.items()))
    return f"{sum(left_out.values())} cases of classes this classifier does not have: {classes}"


def _check_some_left(count: int, label_names: Sequence[str]) -> None:
    if count == 0:
        raise DataError(
            f"No labelled case is of a class this classifier knows ({list(label_names)}); name the class folders "
            "like its classes."
        )


def _cases_from_mapping(data: Mapping[str, Sequence[Any]], label_names: Sequence[str], skip: bool) -> LabelledCases:
    left_out = {name: len(items) for name, items in data.items() if name not in label_names} if skip else {}
    data = {name: items for name, items in data.items() if name not in left_out}
    _check_classes(list(data), label_names)
    images, labels, names = [], [], []
    for name, items in data.items():
        for index, item in enumerate(items):
            images.append(item)
            labels.append(list(label_names).index(name))
            names.append(str(item) if isinstance(item, (str, os.PathLike)) else f"{name}#{index}")
    if left_out:
        _check_some_left(len(images), label_names)
    if not images:
        raise DataError("No labelled images were given; give at least one image per class you want to evaluate.")
    return LabelledCases(images, np.asarray(labels, dtype=np.int64), names, left_out=left_out)


def _cases_from_dataset(dataset: Any, label_names: Sequence[str], root: Path | None, skip: bool) -> LabelledCases:
    from datasets import Image

    classes = dataset.features["label"].names
    left_out: dict[str, int] = {}
    if skip:
        counts = np.bincount(np.asarray(dataset["label"], dtype=np.int64), minlength=len(classes))
        left_out = {name: int(counts[i]) for i, name in enumerate(classes) if name not in label_names and counts[i]}
        known = {i for i, name in enumerate(classes) if name in label_names}
        dataset = dataset.filter(lambda label: label in known, input_columns="label")
        _check_some_left(len(dataset), label_names)
    _check_classes([classes[i] for i in sorted(set(dataset["label"]))], label_names)
    raw = dataset.cast_column("image", Image(decode=False))["image"]
    images, names = [], []
    for index, item in enumerate(raw):
        path = item.get("path")
        if path and Path(path).is_file():
            images.append(path)
            names.append(_relative(Path(path), root))
        else:
            images.append(item["bytes"])
            names.append(Path(path).name if path else f"#{index}")
    labels = np.asarray([list(label_names).index(classes[i]) for i in dataset["label"]], dtype=np.int64)
    metadata = {name: list(dataset[name]) for name in dataset.column_names if name not in ("image", "label")}
    source = str(root) if root is not None else "a datasets.Dataset"
    return LabelledCases(images, labels, names, metadata, source, left_out)


def _relative(path: Path, root: Path | None) -> str:
    if root is not None:
        try:
            return path.resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            pass
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name  # e.g. <class>/<image>


def support_fingerprints(classifier: Any) -> set[str]:
    """The fingerprints (file sha256) of ``classifier``'s support images, as its provenance records them."""
    return {h for c in classifier.info["task"]["classes"] for h in c.get("image_sha256", [])}


def check_cases(classifier: Any, cases: LabelledCases, purpose: str) -> list[str]:
    """Warn (AccuracyWarning) about cases that make an {purpose} of ``classifier`` misleading; return the names of
    those that are its support images.

    - Support images (same file sha256): the classifier was synthesized from them, so the {purpose} is optimistic.
    - One image under two labels: whatever the classifier predicts, one of them counts as wrong.
    """
    from ..imaging import image_fingerprint
    from .advice import label_conflicts, warn

    fingerprints = [
        image_fingerprint(image) if isinstance(image, (str, os.PathLike, bytes)) else None for image in cases.images
    ]
    support = support_fingerprints(classifier)
    found = [name for name, digest in zip(cases.names, fingerprints, strict=True) if digest in support]
    if found:
        warn(
            f"{len(found)} of the {len(cases)} labelled cases are support images of this classifier (e.g. "
            f"{found[0]}): the {purpose} is optimistic; leave them out for an independent check.",
            stacklevel=4,
        )
    by_label = [
        [d for d, y in zip(fingerprints, cases.labels, strict=True) if d and y == k]
        for k in range(len(classifier.label_names))
    ]
    for message in label_conflicts(classifier.label_names, by_label, what="labelled cases"):
        warn(f"{message} In the {purpose} one of them counts as wrong whatever the classifier says.", stacklevel=4)
    return found


def predict_cases(classifier: Any, images: Sequence[Any], batch_size: int = 64, progress: bool = True) -> np.ndarray:
    """Class probabilities [n, num_classes] of ``images``, in batches, with a tqdm progress bar on stderr."""
    from tqdm.auto import tqdm

    rows = []
    with tqdm(total=len(images), desc="Classifying", unit="img", disable=not progress) as bar:
        for start in range(0, len(images), batch_size):
            chunk = list(images[start : start + batch_size])
            rows.append(classifier.predict_proba(chunk, batch_size=batch_size).numpy())
            bar.update(len(chunk))
    return np.concatenate(rows) if rows else np.zeros((0, len(classifier.label_names)))


def classification_scores(
    probs: np.ndarray, labels: np.ndarray, label_names: Sequence[str], n_bins: int = 10, resamples: int = 1000
) -> dict[str, Any]:
    """Every number of the report for probabilities ``probs`` [n, C] and true class indices ``labels`` [n]."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        raise DataError("Cannot evaluate on zero images.")
    num_classes = len(label_names)
    preds = probs.argmax(-1)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, preds), 1)
    present = np.flatnonzero(confusion.sum(1) > 0)

    def balanced(indices: np.ndarray) -> float:
        y, p = labels[indices], preds[indices]
        recalls = [np.mean(p[y == c] == c) for c in present if np.any(y == c)]
        return float(np.mean(recalls)) if len(recalls) == len(present) else float("nan")

    correct = int((preds == labels).sum())
    accuracy = float(load_metric("accuracy").compute(predictions=preds, references=labels)["accuracy"])
    per_class = {}
    for c, name in enumerate(label_names):
        tp = int(confusion[c, c])
        fn = int(confusion[c].sum()) - tp
        fp = int(confusion[:, c].sum()) - tp
        tn = len(labels) - tp - fn - fp
        per_class[name] = {
            "support": tp + fn,
            "sensitivity": wilson(tp, tp + fn),
            "specificity": wilson(tn, tn + fp),
            "ppv": wilson(tp, tp + fp),
        }
    reliability = calibration(probs, labels, n_bins=n_bins)
    return {
        "num_images": int(len(labels)),
        "label_names": list(label_names),
        "classes_present": [label_names[c] for c in present],
        "accuracy": {**wilson(correct, len(labels)), "value": accuracy},
        "balanced_accuracy": {
            "value": balanced(np.arange(len(labels))),
            **dict(zip(("low", "high"), bootstrap_ci(balanced, len(labels), resamples), strict=True)),
            "n": int(len(labels)),
        },
        "macro_f1": float(load_metric("macro_f1").compute(predictions=preds, references=labels)["macro_f1"]),
        "auroc": float(load_metric("auroc").compute(predictions=probs, references=labels)["auroc"]),
        "ece": float(reliability["ece"]),
        "reliability": {k: reliability[k] for k in ("bin_confidence", "bin_accuracy", "bin_count")},
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
    }


@dataclass
class OwnCasesEvaluation:
    """The result of :func:`evaluate_classifier`: ``scores`` (see :func:`classification_scores`), the per-image
    ``predictions`` and the ``subgroups`` audit (empty when no column was asked for)."""

    task_name: str
    source: str
    scores: dict[str, Any]
    predictions: list[dict[str, Any]]
    subgroups: dict[str, Any]
    probabilities: np.ndarray
    labels: np.ndarray
    left_out: dict[str, int] = field(default_factory=dict)  # cases of other classes skipped: class -> count

    def summary(self) -> dict[str, Any]:
        """The JSON-ready numbers stored in the classifier's ``info["metrics"]`` and its card (NaN as None)."""
        s = self.scores
        out: dict[str, Any] = {
            "accuracy": s["accuracy"]["value"],
            "accuracy_ci95": [s["accuracy"]["low"], s["accuracy"]["high"]],
            "balanced_accuracy": s["balanced_accuracy"]["value"],
            "balanced_accuracy_ci95": [s["balanced_accuracy"]["low"], s["balanced_accuracy"]["high"]],
            "macro_f1": s["macro_f1"],
            "auroc": s["auroc"],
            "ece": s["ece"],
            "data": USER_DATA,
            "support_images_included": len(s.get("support_cases", [])),
        }
        if self.subgroups:
            out["subgroups"] = {
                column: {
                    group: {"n": g["n"], "accuracy": g["accuracy"]["value"], "too_small": g["too_small"]}
                    for group, g in audit["groups"].items()
                }
                for column, audit in self.subgroups.items()
            }
        return _nan_to_none(out)

    def to_dict(self) -> dict[str, Any]:
        return _nan_to_none(
            {
                "task": self.task_name,
                "data": self.source,
                "left_out": self.left_out,
                "scores": self.scores,
                "subgroups": self.subgroups,
                "predictions": self.predictions,
            }
        )


def evaluate_classifier(
    classifier: Any,
    data: Any,
    subgroups: Sequence[str] = (),
    batch_size: int = 64,
    progress: bool = False,
    min_subgroup_size: int = 30,
    other_classes: str = "error",
) -> OwnCasesEvaluation:
    """Classify the labelled cases of ``data`` with ``classifier`` and compute the report (see the module doc).

    ``subgroups``: metadata columns to audit (e.g. ``["sex", "fitzpatrick", "age"]``; numeric columns with many
    values are binned); a subgroup with fewer than ``min_subgroup_size`` images is flagged as too small to say
    anything. Raises DataError when a named column is not in the data. ``other_classes``: see :func:`load_cases`.
    """
    cases = load_cases(data, classifier.label_names, other_classes)
    if subgroups and not cases.metadata:
        raise DataError(
            f"--subgroups {' '.join(subgroups)} needs per-image metadata, but {cases.source} has none: add an "
            "imagefolder metadata.csv (a file_name column naming <class>/<image>, then one column per attribute)."
        )
    missing = [c for c in subgroups if c not in cases.metadata]
    if missing:  # before classifying anything
        available = ", ".join(sorted(cases.metadata)) or "none"
        raise DataError(f"No metadata column(s) {missing}; the data's metadata columns are: {available}.")
    overlap = check_cases(classifier, cases, "evaluation")
    probs = predict_cases(classifier, cases.images, batch_size=batch_size, progress=progress)
    scores = classification_scores(probs, cases.labels, classifier.label_names)
    scores["support_cases"] = overlap
    preds = probs.argmax(-1)
    predictions = [
        {
            "file": name,
            "label": classifier.label_names[int(y)],
            "predicted": classifier.label_names[int(p)],
            "confidence": float(row.max()),
            "probability_of_label": float(row[int(y)]),
        }
        for name, y, p, row in zip(cases.names, cases.labels, preds, probs, strict=True)
    ]
    audit = audit_subgroups(probs, cases.labels, cases.metadata, subgroups, min_size=min_subgroup_size)
    return OwnCasesEvaluation(
        classifier.info["task"]["name"], cases.source, scores, predictions, audit, probs, cases.labels, cases.left_out
    )


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_nan_to_none(v) for v in value]
    if isinstance(value, np.generic):
        return _nan_to_none(value.item())
    return value
