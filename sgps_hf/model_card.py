"""Model cards for synthesized classifiers and for the synthesizer, rendered from ``model_cards/*.j2``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

if TYPE_CHECKING:
    from .classifier import SynthesizedClassifier

# A symlink to the top-level model_cards/ folder, so that wheels ship the templates as package data.
TEMPLATES = Path(__file__).resolve().parent / "templates"
LICENSE = "apache-2.0"


def _template(name: str) -> Path:
    path = TEMPLATES / name
    if not path.is_file():
        raise FileNotFoundError(f"Model card template {path} is missing; reinstall sgps-hf (its templates are package data).")
    return path


def classifier_card(classifier: "SynthesizedClassifier", repo_id: str | None = None, support_included: bool | None = None) -> ModelCard:
    """The card of a synthesized classifier: metadata, classes with their texts, fingerprints, provenance.

    ``support_included``: whether the folder the card goes into holds the support images (its privacy
    section says so); by default, whether this classifier has them in memory or on disk.
    """
    info = classifier.info
    if support_included is None:
        support_included = classifier.support is not None and bool(info.get("support"))
    task = info["task"]
    eval_results = None
    metrics = info.get("metrics")
    if metrics:
        eval_results = [
            EvalResult(
                task_type="image-classification",
                dataset_type="custom",
                dataset_name=f"{task['name']} (user-supplied labelled images, n={metrics['num_images']})",
                metric_type=name,
                metric_value=round(float(metrics[name]), 4),
            )
            for name in ("accuracy", "macro_f1")
        ]
    card_data = ModelCardData(
        library_name="timm",
        license=LICENSE,
        pipeline_tag="image-classification",
        tags=["image-classification", "timm", "medical-imaging", "sgps-hf", "synthesized", "few-shot"],
        base_model=info["synthesizer"]["name_or_path"] if "/" in info["synthesizer"]["name_or_path"] and not Path(info["synthesizer"]["name_or_path"]).exists() else None,
        model_name=repo_id or task["name"],
        eval_results=eval_results,
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(_template("classifier.md.j2")),
        task=task,
        info=info,
        repo_id=repo_id or "<your-user>/<this-repo>",
        num_support=sum(c["num_images"] for c in task["classes"]),
        support_included=support_included,
        versions=[v.get("version", 1) for v in getattr(classifier, "versions", [])],
    )


def synthesizer_card(
    name_or_path: str,
    config: Any,
    training: dict[str, Any] | None = None,
) -> ModelCard:
    """The card of an SGPS synthesizer checkpoint (training data, splits and validation metrics when known)."""
    card_data = ModelCardData(
        library_name="transformers",
        license=LICENSE,
        tags=["sgps-hf", "hypernetwork", "medical-imaging", "few-shot", "meta-learning"],
        model_name=name_or_path,
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(_template("synthesizer.md.j2")),
        config=config.to_dict(),
        name_or_path=name_or_path,
        training=training or {},
    )
