"""SynthesizedClassifier: a plain timm EfficientNet-V2 plus the provenance of its synthesis.

Saved in timm's Hub layout (``model.safetensors`` + ``config.json`` with ``label_names`` and
``pretrained_cfg``), so it loads without this library:
``timm.create_model("local-dir:<dir>", pretrained=True)``, ``timm.create_model("hf-hub:<repo>",
pretrained=True)`` or ``transformers.pipeline("image-classification", model=<dir>)``. Next to it:
``README.md`` (the generated model card) and ``sgps_task.json`` (task, fingerprints, provenance).
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import timm
import torch
from torch import Tensor, nn

from . import __version__
from .atomic import atomic_directory
from .errors import CheckpointError
from .image_processing_sgps import SGPSImageProcessor
from .imaging import ImageInput
from .target import materialize

if TYPE_CHECKING:
    from .modeling_sgps import SGPSSynthesizer
    from .task import TaskSpec

TASK_FILE = "sgps_task.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1


class SynthesizedClassifier:
    """A task-specific classifier emitted by :meth:`SGPSSynthesizer.synthesize`.

    Attributes:
        model: the timm model (eval mode), usable directly as an ``nn.Module``.
        label_names: class names in output order.
        info: JSON-ready provenance: task (classes, clinical texts, support-image sha256),
            synthesizer id and revision, data config, metrics and version history.
    """

    def __init__(self, model: nn.Module, label_names: Sequence[str], info: dict[str, Any]) -> None:
        self.model = model.eval()
        self.label_names = list(label_names)
        self.info = info
        self.image_processor = SGPSImageProcessor(**_processor_kwargs(info["data_config"]))

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_weights(
        cls, synthesizer: "SGPSSynthesizer", weights: Mapping[str, Tensor], task: "TaskSpec", image_processor: SGPSImageProcessor
    ) -> "SynthesizedClassifier":
        config = synthesizer.config
        info = {
            "format_version": FORMAT_VERSION,
            "sgps_hf_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "task": task.to_dict(),
            "synthesizer": synthesizer_provenance(synthesizer),
            "target": {"architecture": config.target_architecture, "model_args": config.target_model_args},
            "data_config": image_processor.timm_data_config(),
            "weights_sha256": state_dict_sha256(weights),
            "metrics": None,
            "history": [],
        }
        return cls(materialize(config, weights), task.class_names, info)

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike, revision: str | None = None, token: str | None = None) -> "SynthesizedClassifier":
        """Load a saved classifier from a folder or a Hub repo id (timm weights + ``sgps_task.json``)."""
        folder = Path(path_or_repo_id)
        if not folder.is_dir():
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(str(path_or_repo_id), revision=revision, token=token))
        if not (folder / WEIGHTS_FILE).is_file():
            pickles = sorted(p.name for p in folder.glob("*") if p.suffix in {".bin", ".pt", ".pth", ".pkl", ".ckpt"})
            hint = f" It has {pickles}: pickle files are refused for safety; re-save as safetensors." if pickles else ""
            raise CheckpointError(f"No {WEIGHTS_FILE} in {folder}.{hint}")
        try:
            info = json.loads((folder / TASK_FILE).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{folder} has no readable {TASK_FILE}; is it a classifier saved by sgps_hf? ({exc})") from exc
        model = timm.create_model(f"local-dir:{folder}", pretrained=True)
        label_names = json.loads((folder / "config.json").read_text(encoding="utf-8"))["label_names"]
        return cls(model, label_names, info)

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
        return [dict(zip(self.label_names, row.tolist())) for row in probs]

    def evaluate(self, labelled_images: Mapping[str, Sequence[ImageInput]]) -> dict[str, float]:
        """Accuracy and macro-F1 on labelled images ``{class name: [images]}``; stored for the model card."""
        from .evaluation.metrics import classification_metrics

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
    def save_pretrained(self, save_directory: str | os.PathLike, repo_id: str | None = None) -> Path:
        """Write the classifier folder atomically (a crash never leaves a half-written folder).

        ``repo_id``: the Hub repo the folder is meant for; the model card's usage snippets then name it.
        """
        from .model_card import classifier_card

        descriptions = {c["name"]: c["description"] for c in self.info["task"]["classes"] if c["description"]}
        with atomic_directory(save_directory) as staging:
            timm.models.save_for_hf(
                self.model,
                str(staging),
                model_config={"label_names": self.label_names, "label_descriptions": descriptions or None},
                model_args=self.info["target"]["model_args"],
                safe_serialization=True,
                data_config=dict(self.info["data_config"]),
            )
            _drop_num_classes_from_model_args(staging / "config.json")
            (staging / TASK_FILE).write_text(json.dumps(self.info, indent=2, ensure_ascii=False), encoding="utf-8")
            classifier_card(self, repo_id=repo_id).save(staging / "README.md")
        return Path(save_directory)

    def push_to_hub(self, repo_id: str, token: str | None = None, private: bool | None = None, commit_message: str = "Add synthesized classifier") -> str:
        """Create ``repo_id`` if needed and upload the saved folder; returns the commit URL."""
        import tempfile

        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            folder = self.save_pretrained(Path(tmp) / "classifier", repo_id=repo_id)
            commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message)
        return str(commit)

    def __repr__(self) -> str:
        return f"SynthesizedClassifier(classes={self.label_names}, architecture={self.info['target']['architecture']!r})"


def synthesizer_provenance(synthesizer: "SGPSSynthesizer") -> dict[str, str]:
    """Which synthesizer made a classifier: its name/path and a revision (Hub commit or weight hash)."""
    config = synthesizer.config
    revision = getattr(config, "_commit_hash", None) or "sha256:" + state_dict_sha256(synthesizer.state_dict())[:16]
    return {"name_or_path": str(getattr(config, "name_or_path", "") or "unsaved"), "revision": revision}


def state_dict_sha256(tensors: Mapping[str, Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _drop_num_classes_from_model_args(config_path: Path) -> None:
    """transformers' timm wrapper passes ``num_classes`` itself and rejects a second copy in ``model_args``."""
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config.get("model_args", {}).pop("num_classes", None)
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")


def _processor_kwargs(data_config: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "image_size": int(data_config["input_size"][-1]),
        "image_mean": data_config["mean"],
        "image_std": data_config["std"],
        "interpolation": data_config["interpolation"],
    }
