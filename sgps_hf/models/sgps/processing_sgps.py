"""SGPSProcessor: one object that prepares a whole task (support images + clinical texts)."""

from __future__ import annotations

import os
from typing import Any, Sequence

import torch
from PIL import Image
from transformers import BatchFeature
from transformers.processing_utils import ProcessorMixin

from ...body.text_encoder import load_tokenizer
from ...hub.atomic import save_pretrained_atomically
from ...imaging import ImageInput
from ...task import TaskSpec
from .image_processing_sgps import SGPSImageProcessor


class SGPSProcessor(ProcessorMixin):
    r"""Wraps an :class:`SGPSImageProcessor` and the text encoder's tokenizer.

    ``processor(images=..., text=...)`` works like any transformers processor;
    :meth:`prepare_task` turns a :class:`~sgps_hf.TaskSpec` into the synthesizer's inputs.
    """

    def __init__(
        self,
        image_processor: SGPSImageProcessor | None = None,
        tokenizer: Any = None,
        max_text_length: int = 128,
        **kwargs: Any,
    ) -> None:
        self.max_text_length = int(max_text_length)
        super().__init__(image_processor, tokenizer, **kwargs)

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
        """``ProcessorMixin.save_pretrained``, atomically (see
        :func:`sgps_hf.hub.atomic.save_pretrained_atomically`)."""
        return save_pretrained_atomically(super().save_pretrained, save_directory, *args, **kwargs)

    @classmethod
    def from_sgps_config(cls, config: Any) -> "SGPSProcessor":
        """Build the processor a synthesizer with ``config`` expects (offline for the default encoder)."""
        return cls(
            SGPSImageProcessor.from_sgps_config(config), load_tokenizer(config.text_encoder), config.max_text_length
        )

    def __call__(
        self,
        images: ImageInput | Sequence[ImageInput] | None = None,
        text: str | Sequence[str] | None = None,
        **kwargs: Any,
    ) -> BatchFeature:
        if images is None and text is None:
            raise ValueError("Pass images, text or both.")
        data: dict[str, Any] = {}
        if images is not None:
            data.update(self.image_processor(images))
        if text is not None:
            data.update(self.tokenize(text))
        return BatchFeature(data=data)

    def tokenize(self, text: str | Sequence[str]) -> dict[str, torch.Tensor]:
        texts = [text] if isinstance(text, str) else list(text)
        encoded = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_text_length, return_tensors="pt"
        )
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    def prepare_task(
        self, task: TaskSpec, images: Sequence[Sequence[Image.Image]] | None = None
    ) -> dict[str, torch.Tensor]:
        """Support pixels/labels for every class image, tokens for every description, and masks.

        ``images``: each class's images already decoded (a synthesis decodes them once for all its uses).
        """
        per_class = images if images is not None else [cls.load_images() for cls in task.classes]
        images, labels = [], []
        for index, class_images in enumerate(per_class):
            images.extend(class_images)
            labels.extend([index] * len(class_images))
        inputs = {
            "support_pixel_values": self.image_processor(images)["pixel_values"],
            "support_labels": torch.tensor(labels, dtype=torch.long),
            "text_mask": torch.tensor([cls.has_text for cls in task.classes]),
            "num_classes": len(task.classes),
        }
        inputs.update(self.tokenize([cls.description or cls.name for cls in task.classes]))
        return inputs
