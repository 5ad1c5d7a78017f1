"""Image processor of the SGPS synthesizer.

Every image is loaded (:func:`sgps_hf.imaging.load_image`), brought to the model's square by the package's one
geometry (:func:`sgps_hf.imaging.resize_center_crop`: what timm's evaluation transform does with the synthesized
classifier's ``pretrained_cfg``), and normalised by :meth:`SGPSImageProcessor.normalize_uint8`, the step that also
normalises the cached uint8 arrays of datasets. So support images seen during synthesis, images given to
``SynthesizedClassifier.predict``, the training and benchmark episodes, plain ``timm`` and the ``transformers``
pipeline are all preprocessed identically.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature

from ...imaging import ImageInput, load_image, resize_center_crop

#: The most pixels the shorter-side resize may produce for one image (its longer side follows the aspect ratio).
MAX_RESIZED_PIXELS = 1 << 24


class SGPSImageProcessor(BaseImageProcessor):
    r"""Turns images (paths, PIL, numpy, bytes, DICOM) into normalised ``pixel_values``.

    Args:
        image_size (`int`): square side of the output, in pixels.
        image_mean, image_std (`list[float]`): RGB normalisation.
        interpolation (`str`): ``"bilinear"`` or ``"bicubic"``.
    """

    model_input_names = ["pixel_values"]
    # Defaults, in the manner of transformers' image processors: those of the bundled checkpoint (``SGPSConfig()``'s
    # 128 px, mean and std 0.5, bilinear); a saved preprocessor config overrides each.
    image_size: int = 128
    image_mean: Sequence[float] = (0.5, 0.5, 0.5)
    image_std: Sequence[float] = (0.5, 0.5, 0.5)
    interpolation: str = "bilinear"

    def __init__(
        self,
        image_size: int | None = None,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        interpolation: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        cls = type(self)
        self.image_size = int(cls.image_size if image_size is None else image_size)
        self.image_mean = [float(v) for v in (cls.image_mean if image_mean is None else image_mean)]
        self.image_std = [float(v) for v in (cls.image_std if image_std is None else image_std)]
        self.interpolation = cls.interpolation if interpolation is None else interpolation

    @classmethod
    def from_sgps_config(cls, config: Any) -> "SGPSImageProcessor":
        return cls(config.image_size, config.image_mean, config.image_std, config.interpolation)

    def preprocess(
        self, images: ImageInput | Sequence[ImageInput], return_tensors: str | None = "pt", **kwargs: Any
    ) -> BatchFeature:
        """Load and transform ``images``; raises ImageLoadError naming any unreadable one."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        squares = [self.to_uint8(load_image(image)) for image in images]
        if squares:
            pixels = self.normalize_uint8(torch.stack(squares))
        else:
            pixels = torch.zeros(0, 3, self.image_size, self.image_size)
        return BatchFeature(data={"pixel_values": pixels}, tensor_type=return_tensors)

    def to_uint8(self, image: Any) -> Tensor:
        """One RGB PIL image as the model's uint8 square [3, S, S] (:func:`sgps_hf.imaging.resize_center_crop`)."""
        square = resize_center_crop(self._checked(image), self.image_size, self.interpolation)
        return torch.from_numpy(np.array(square, dtype=np.uint8)).permute(2, 0, 1)

    def _checked(self, image: Any) -> Any:
        """Refuse an image whose shorter-side resize would be huge (the longer side follows), before resizing it."""
        from ...errors import ImageLoadError

        short, long = sorted(image.size)
        resized = self.image_size * int(self.image_size * long / short)
        if resized > MAX_RESIZED_PIXELS:
            raise ImageLoadError(
                f"An image of {image.width}x{image.height} pixels would be resized to {resized / 1e6:.0f} MP at "
                f"{self.image_size} px; the limit is {MAX_RESIZED_PIXELS / 1e6:.0f} MP. Crop it to the region of "
                "interest first."
            )
        return image

    def normalize_uint8(self, images: Tensor) -> Tensor:
        """Normalise already-resized uint8 images [N, 3, H, W] (the cached training arrays)."""
        mean = torch.tensor(self.image_mean).view(1, 3, 1, 1)
        std = torch.tensor(self.image_std).view(1, 3, 1, 1)
        return (images.float() / 255.0 - mean) / std

    def timm_data_config(self) -> dict[str, Any]:
        """The ``pretrained_cfg`` entries timm and transformers read to preprocess like this processor."""
        return {
            "input_size": [3, self.image_size, self.image_size],
            "interpolation": self.interpolation,
            "mean": list(self.image_mean),
            "std": list(self.image_std),
            "crop_pct": 1.0,
            "crop_mode": "center",
        }
