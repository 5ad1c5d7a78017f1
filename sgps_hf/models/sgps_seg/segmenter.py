"""A synthesized segmenter: a plain transformers UperNet plus its image processor, task sidecar and card."""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ...errors import InvalidTaskError, UsageError
from ...hub.checkpoints import state_dict_sha256, synthesizer_reference
from ...hub.segmenter_folder import LABELS, TASK_FILE, load_segmenter_folder, save_segmenter_folder  # noqa: F401
from ...imaging import ImageInput
from .processing_sgps_seg import load_mask, load_rgb

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from .task import SegmentationTask


def build_info(task: "SegmentationTask", synthesizer: "PreTrainedModel", head: str) -> dict[str, Any]:
    from ...version import __version__

    config = synthesizer.config
    training = getattr(config, "training_tasks", None)
    return {
        "task": task.to_dict(),
        "head": head,
        "labels": list(LABELS),
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
    def predict_proba(self, images: ImageInput | Sequence[ImageInput], batch_size: int = 8) -> list[np.ndarray]:
        """Per image, the foreground probability (softmax over the 2 labels) at the image's own height x width."""
        out = []
        for rgbs in _batches(images, batch_size):
            logits = self._logits(rgbs)
            for rgb, row in zip(rgbs, logits, strict=True):
                resized = F.interpolate(row[None], size=(rgb.height, rgb.width), mode="bilinear", align_corners=False)
                out.append(resized.softmax(1)[0, 1].numpy())
        return out

    @torch.no_grad()
    def predict(self, images: ImageInput | Sequence[ImageInput], batch_size: int = 8) -> list[np.ndarray]:
        """Per image, a bool mask (True = foreground) of that image's own height x width.

        Images go through the saved image processor ``batch_size`` at a time (the processor resizes each to the
        model's input size; the model is in eval mode, so a mask does not depend on the batch it was in) and
        through transformers' ``post_process_semantic_segmentation``, as ``pipeline("image-segmentation")`` does.
        """
        masks = []
        for rgbs in _batches(images, batch_size):
            outputs = self.model(pixel_values=self._pixels(rgbs))
            sizes = [(rgb.height, rgb.width) for rgb in rgbs]
            segmentations = self.image_processor.post_process_semantic_segmentation(outputs, target_sizes=sizes)
            masks += [segmentation.numpy() == 1 for segmentation in segmentations]
        return masks

    def _pixels(self, rgbs: Sequence[Image.Image]) -> torch.Tensor:
        return self.image_processor(images=list(rgbs), return_tensors="pt")["pixel_values"]

    def _logits(self, rgbs: Sequence[Image.Image]) -> torch.Tensor:
        return self.model(pixel_values=self._pixels(rgbs)).logits

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
        """Write a plain transformers folder: config.json, model.safetensors, preprocessor_config.json, card, sidecar.

        The guarded save of every sgps_hf folder (:func:`sgps_hf.hub.saved_folder.guarded_save`): a folder of other
        files or a file is refused, the writer lock is held, files that are not the segmenter's own are carried over,
        and the folder is swapped in atomically with the user's umask (or the replaced folder's mode).
        """
        save_segmenter_folder(self, save_directory, repo_id)
        return Path(save_directory)

    @classmethod
    def from_pretrained(
        cls, path_or_repo_id: str | os.PathLike, revision: str | None = None, token: str | None = None
    ) -> "SynthesizedSegmenter":
        """Load a saved segmenter from a folder or a Hub repo id after verifying it
        (:func:`sgps_hf.hub.segmenter_folder.load_segmenter_folder`): sidecar keys, labels, config keys, preprocessing,
        tensors and the weights' sha256; anything wrong is a CheckpointError naming the file and key."""
        model, processor, info = load_segmenter_folder(path_or_repo_id, revision, token)
        return cls(model, processor, info)

    def push_to_hub(
        self,
        repo_id: str,
        token: str | None = None,
        private: bool | None = None,
        commit_message: str = "Add synthesized segmenter",
    ) -> str:
        """Create ``repo_id`` if needed and upload the saved folder (weights, processor, card, sidecar); returns the
        commit URL."""
        import tempfile

        from huggingface_hub import HfApi

        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            folder = self.save_pretrained(Path(tmp) / "segmenter", repo_id=repo_id)
            commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message)
        return str(commit)

    def __repr__(self) -> str:
        return (
            f"SynthesizedSegmenter(task={self.info['task']['name']!r}, label={self.label!r}, "
            f"examples={self.info['task']['num_examples']})"
        )


def _as_list(images: Any) -> list:
    if isinstance(images, (list, tuple)):
        return list(images)
    return [images]


def _batches(images: Any, batch_size: int) -> Iterator[list[Image.Image]]:
    """The images as RGB, ``batch_size`` at a time (each batch decoded only when it is reached)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"batch_size must be a positive integer (e.g. 8), got {batch_size!r}.")
    items = _as_list(images)
    for start in range(0, len(items), batch_size):
        yield [load_rgb(image) for image in items[start : start + batch_size]]
