"""Model cards for synthesized classifiers and for the synthesizer, rendered from ``model_cards/*.j2``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

if TYPE_CHECKING:
    from .classifier import SynthesizedClassifier

TEMPLATES = Path(__file__).resolve().parent.parent / "model_cards"
LICENSE = "apache-2.0"


def _template(name: str) -> Path:
    path = TEMPLATES / name
    if not path.is_file():
        raise FileNotFoundError(f"Model card template {path} is missing; install sgps-hf from its source tree (pip install -e).")
    return path


def classifier_card(classifier: "SynthesizedClassifier", repo_id: str | None = None) -> ModelCard:
    """The card of a synthesized classifier: metadata, classes with their texts, fingerprints, provenance."""
    info = classifier.info
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
