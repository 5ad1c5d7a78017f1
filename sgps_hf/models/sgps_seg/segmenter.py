"""A synthesized segmenter: a plain transformers UperNet plus its image processor, task sidecar and card."""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ...errors import CheckpointError, InvalidTaskError
from ...hub.checkpoints import state_dict_sha256, synthesizer_reference
from ...imaging import ImageInput
from .processing_sgps_seg import load_mask, load_rgb

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from .task import SegmentationTask

TASK_FILE = "sgps_seg_task.json"
WEIGHTS_FILE = "model.safetensors"


def build_info(task: "SegmentationTask", synthesizer: "PreTrainedModel", head: str) -> dict[str, Any]:
    from ...version import __version__

    config = synthesizer.config
    training = getattr(config, "training_tasks", None)
    return {
        "task": task.to_dict(),
        "head": head,
        "synthesizer": {
            **synthesizer_reference(synthesizer),
            **({"training_tasks": ", ".join(training)} if training else {}),
        },
        "segmenter": {
            "backbone": config.backbone,
            "hidden_size": config.hidden_size,
            "image_size": config.image_size,
            "raw_channels": synthesizer.raw_channels if getattr(config, "raw_levels", None) else 0,
        },
        "sgps_hf_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
    }


class SynthesizedSegmenter:
    """A standalone binary segmenter (``UperNetForSemanticSegmentation``, labels background / foreground)."""

    def __init__(self, model, image_processor, info: dict[str, Any]) -> None:
        self.model = model.eval()
        self.image_processor = image_processor
        self.info = info
        self.info["weights_sha256"] = state_dict_sha256(self.model.state_dict())

    @property
    def label(self) -> str:
        return self.info["task"]["label"]

    # -- inference ------------------------------------------------------------------------------
    @torch.no_grad()
    def predict_proba(self, images: ImageInput | Sequence[ImageInput]) -> list[np.ndarray]:
        """Per image, the foreground probability (softmax over the 2 labels) at the image's own height x width."""
        out = []
        for image in _as_list(images):
            rgb = load_rgb(image)
            logits = self._logits(rgb)
            resized = F.interpolate(logits, size=(rgb.height, rgb.width), mode="bilinear", align_corners=False)
            out.append(resized.softmax(1)[0, 1].numpy())
        return out

    @torch.no_grad()
    def predict(self, images: ImageInput | Sequence[ImageInput]) -> list[np.ndarray]:
        """Per image, a bool mask (True = foreground) of that image's own height x width.

        Images are processed one at a time through the saved image processor and transformers'
        ``post_process_semantic_segmentation``, exactly as ``pipeline("image-segmentation")`` does.
        """
        masks = []
        for image in _as_list(images):
            rgb = load_rgb(image)
            outputs = self.model(pixel_values=self.image_processor(images=[rgb], return_tensors="pt")["pixel_values"])
            segmentation = self.image_processor.post_process_semantic_segmentation(
                outputs, target_sizes=[(rgb.height, rgb.width)]
            )[0]
            masks.append(segmentation.numpy() == 1)
        return masks

    def _logits(self, rgb: Image.Image) -> torch.Tensor:
        return self.model(pixel_values=self.image_processor(images=[rgb], return_tensors="pt")["pixel_values"]).logits

    def evaluate(self, labelled: Sequence[tuple[ImageInput, Any]]) -> dict[str, float]:
        """Mean per-image Dice and IoU on user-supplied (image, mask) pairs; kept for the model card."""
        from ...metrics import dice_iou

        pairs = list(labelled)
        if not pairs:
            raise InvalidTaskError("evaluate needs at least one (image, mask) pair.")
        images = [load_rgb(image) for image, _ in pairs]
        references = [
            load_mask(mask, image.size, name=f"evaluation mask {i}")
            for i, (image, (_, mask)) in enumerate(zip(images, pairs, strict=False))
        ]
        scores = dice_iou(self.predict(images), references)
        self.info["metrics"] = {**scores, "num_images": len(pairs)}
        return scores

    # -- persistence ----------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike, repo_id: str | None = None) -> Path:
        """Write a plain transformers folder: config.json, model.safetensors, preprocessor_config.json, README.md, sidecar."""
        from ...hub.atomic import atomic_directory
        from ...hub.model_card import segmenter_card

        with atomic_directory(save_directory) as staging:
            self.model.save_pretrained(staging, safe_serialization=True)
            self.image_processor.save_pretrained(staging)
            (staging / TASK_FILE).write_text(json.dumps(self.info, indent=2, ensure_ascii=False), encoding="utf-8")
            segmenter_card(self, repo_id=repo_id).save(staging / "README.md")
        return Path(save_directory)

    @classmethod
    def from_pretrained(
        cls, path_or_repo_id: str | os.PathLike, revision: str | None = None, token: str | None = None
    ) -> "SynthesizedSegmenter":
        from transformers import AutoImageProcessor, UperNetForSemanticSegmentation

        folder = Path(path_or_repo_id)
        if not folder.is_dir():
            from huggingface_hub import snapshot_download

            folder = Path(snapshot_download(str(path_or_repo_id), revision=revision, token=token))
        if not (folder / WEIGHTS_FILE).is_file():
            raise CheckpointError(
                f"No {WEIGHTS_FILE} in {folder}; is it a segmenter saved by sgps_hf (save_pretrained)?"
            )
        try:
            info = json.loads((folder / TASK_FILE).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(
                f"{folder} has no readable {TASK_FILE}; is it a segmenter saved by sgps_hf? ({exc})"
            ) from exc
        model = UperNetForSemanticSegmentation.from_pretrained(folder)
        processor = AutoImageProcessor.from_pretrained(folder)
        expected = info.get("weights_sha256")
        segmenter = cls(model, processor, info)
        if expected and segmenter.info["weights_sha256"] != expected:
            raise CheckpointError(
                f"The weights in {folder} do not match the sha256 recorded in {TASK_FILE}; the folder was modified."
            )
        return segmenter

    def push_to_hub(
        self,
        repo_id: str,
        token: str | None = None,
        private: bool | None = None,
        commit_message: str = "Add synthesized segmenter",
    ) -> str:
        """Create ``repo_id`` if needed and upload the saved folder (weights, processor, card, sidecar); returns the commit URL."""
        import tempfile

        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            folder = self.save_pretrained(Path(tmp) / "segmenter", repo_id=repo_id)
            commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message)
        return str(commit)

    def __repr__(self) -> str:
        return f"SynthesizedSegmenter(task={self.info['task']['name']!r}, label={self.label!r}, examples={self.info['task']['num_examples']})"


def _as_list(images: Any) -> list:
    if isinstance(images, (list, tuple)):
        return list(images)
    return [images]
