"""Model card of a synthesized segmenter, rendered from ``model_cards/segmenter.md.j2``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from huggingface_hub import ModelCard, ModelCardData

from ..hub.model_card import LICENSE, _template, user_eval_results

if TYPE_CHECKING:
    from .segmenter import SynthesizedSegmenter


def segmenter_card(segmenter: "SynthesizedSegmenter", repo_id: str | None = None) -> ModelCard:
    info = segmenter.info
    task = info["task"]
    eval_results = user_eval_results("image-segmentation", task["name"], info.get("metrics"), ("dice", "iou"))
    card_data = ModelCardData(
        library_name="transformers",
        license=LICENSE,
        pipeline_tag="image-segmentation",
        tags=["image-segmentation", "upernet", "medical-imaging", "sgps-hf", "synthesized", "few-shot"],
        model_name=repo_id or task["name"],
        eval_results=eval_results,
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(_template("segmenter.md.j2")),
        task=task,
        info=info,
        repo_id=repo_id or "<your-user>/<this-repo>",
    )
