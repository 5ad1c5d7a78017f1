"""Model cards for synthesized classifiers and segmenters and for the synthesizer, rendered from ``templates/*.j2``
(package data)."""

from __future__ import annotations

import html
import math
import re
from pathlib import Path
from typing import Any, Sequence

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .card_trust import trust_view
from .checkpoints import display_name, is_hub_id

TEMPLATES = Path(__file__).resolve().parent / "templates"
LICENSE = "apache-2.0"
#: Metrics of an evaluation on the user's own cases that go into a classifier card's model-index (when measured).
USER_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "auroc", "ece")


# -- escaping: names and texts come from users (and from files others may have edited) ---------------------------
_MD_SPECIAL = re.compile(r"([\\`*_\[\]~])")


def html_escape(text: Any) -> str:
    """``&``, ``<`` and ``>`` as entities: no HTML tag or entity from a user string reaches a rendered card."""
    return html.escape(" ".join(str(text).split()), quote=False)


def md_escape(text: Any) -> str:
    """A user string as literal inline Markdown text: no HTML, no emphasis, links, images, code or strikethrough."""
    return _MD_SPECIAL.sub(r"\\\1", html_escape(text))


def md_code(text: Any, table: bool = False) -> str:
    """A user string as one Markdown code span, whatever backticks it holds (the fence is longer than any run in it).

    The content of a code span is literal (HTML included). ``table``: also escape ``|``, which GFM tables split
    cells on even inside code spans.
    """
    text = " ".join(str(text).split())
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    if text.startswith("`") or text.endswith("`") or (text.startswith(" ") and text.strip()):
        text = f" {text} "
    if table:
        text = text.replace("|", "\\|")
    return f"{fence}{text}{fence}"


def md_safe_markdown(text: Any) -> str:
    """Markdown we generated (a changelog summary with names in code spans), re-escaped outside its code spans.

    The code spans stay as they are (their content is literal anyway); everything else is escaped like
    :func:`md_escape`, so an edited summary in a task file cannot inject HTML, links or images into the card.
    """
    text = " ".join(str(text).split())
    out, position = [], 0
    for match in re.finditer(r"(?<!`)(`+)(?!`)", text):
        if match.start() < position:
            continue
        fence = match.group(1)
        close = re.compile(rf"(?<!`){fence}(?!`)").search(text, match.end())
        if close is None:
            continue
        out.append(md_escape(text[position : match.start()]))
        out.append(text[match.start() : close.end()])
        position = close.end()
    out.append(md_escape(text[position:]))
    return "".join(out)


def _template(name: str) -> Path:
    path = TEMPLATES / name
    if not path.is_file():
        raise FileNotFoundError(
            f"Model card template {path} is missing; reinstall sgps-hf (its templates are package data)."
        )
    return path


def user_eval_results(
    task_type: str, task_name: str, metrics: dict[str, Any] | None, names: Sequence[str]
) -> list[EvalResult] | None:
    """model-index entries for the metrics measured on the user's own labelled images (None when there are none)."""
    if not metrics:
        return None
    return [
        EvalResult(
            task_type=task_type,
            dataset_type="custom",
            dataset_name=f"{task_name} (user-supplied labelled images, n={metrics['num_images']})",
            metric_type=name,
            metric_value=round(float(metrics[name]), 4),
        )
        for name in names
        if isinstance(metrics.get(name), (int, float)) and math.isfinite(metrics[name])
    ]


def classifier_card(classifier: Any, repo_id: str | None = None, support_included: bool | None = None) -> ModelCard:
    """The card of a synthesized classifier (its ``info``, ``support`` and ``versions``): metadata, classes with their
    texts, fingerprints, provenance.

    ``support_included``: whether the folder the card goes into holds the support images (its privacy
    section says so); by default, whether this classifier has them in memory or on disk.
    """
    info = classifier.info
    if support_included is None:
        support_included = classifier.support is not None and bool(info.get("support"))
    task = info["task"]
    eval_results = user_eval_results("image-classification", task["name"], info.get("metrics"), USER_METRICS)
    card_data = ModelCardData(
        library_name="timm",
        license=LICENSE,
        pipeline_tag="image-classification",
        tags=["image-classification", "timm", "medical-imaging", "sgps-hf", "synthesized", "few-shot"],
        base_model=info["synthesizer"]["name_or_path"] if is_hub_id(info["synthesizer"]["name_or_path"]) else None,
        model_name=repo_id or task["name"],
        eval_results=eval_results,
    )
    classes = [
        {
            "name_cell": md_code(c["name"], table=True),
            "name_code": md_code(c["name"]),
            "num_images": c["num_images"],
            "description": md_escape(c["description"]) if c["description"] else "",
            "hashes": [md_code(h[:16]) for h in c.get("image_sha256", [])],
        }
        for c in task["classes"]
    ]
    view = {
        "task_name": md_escape(task["name"]),
        "modality": md_escape(task.get("modality") or ""),
        "classes": classes,
        "architecture": html_escape(info["target"]["architecture"]),
        "model_args": html_escape(", ".join(f"{k}={v}" for k, v in info["target"]["model_args"].items())),
        "synthesizer": md_code(display_name(info["synthesizer"]["name_or_path"])),
        "revision": md_code(info["synthesizer"]["revision"]),
        "history": [
            {
                "version": entry.get("version"),
                "created": html_escape(entry.get("created", "")),
                "summary": md_safe_markdown(entry.get("summary", "")),
            }
            for entry in info.get("history") or []
        ],
        "created": html_escape(info.get("created", "")),
        "sgps_hf_version": html_escape(info.get("sgps_hf_version", "")),
        "weights_sha256": md_code(info.get("weights_sha256", "")),
        "interpolation": html_escape(info["data_config"]["interpolation"]),
    }
    view.update(trust_view(info, md_escape))
    return ModelCard.from_template(
        card_data,
        template_path=str(_template("classifier.md.j2")),
        task=task,
        view=view,
        info=info,
        repo_id=repo_id or "<your-user>/<this-repo>",
        num_support=sum(c["num_images"] for c in task["classes"]),
        support_included=support_included,
        versions=[v.get("version", 1) for v in getattr(classifier, "versions", [])],
    )


def segmenter_card(segmenter: Any, repo_id: str | None = None) -> ModelCard:
    """The card of a synthesized segmenter (its ``info``): metadata, label, example fingerprints, provenance."""
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
        synthesizer=display_name(info["synthesizer"]["name_or_path"]),
        repo_id=repo_id or "<your-user>/<this-repo>",
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
