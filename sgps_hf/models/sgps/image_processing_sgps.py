"""Image processor of the SGPS synthesizer.

It applies *timm's own* evaluation transform with the synthesized classifier's ``pretrained_cfg``
(resize shorter side, centre crop, normalise), so support images seen during synthesis, images given
to ``SynthesizedClassifier.predict``, plain ``timm`` and the ``transformers`` pipeline are all
preprocessed identically.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable, Sequence

import torch
from torch import Tensor
from transformers.image_processing_utils import BaseImageProcessor, BatchFeature

from ...imaging import ImageInput, load_image

#: The most pixels the shorter-side resize may produce for one image (its longer side follows the aspect ratio).
MAX_RESIZED_PIXELS = 1 << 24

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@lru_cache(maxsize=8)
def timm_eval_transform(image_size: int, interpolation: str, mean: tuple, std: tuple) -> Callable:
    from timm.data import create_transform

    return create_transform(
        input_size=(3, image_size, image_size),
        is_training=False,
        interpolation=interpolation,
        mean=mean,
        std=std,
        crop_pct=1.0,
        crop_mode="center",
    )


class SGPSImageProcessor(BaseImageProcessor):
    r"""Turns images (paths, PIL, numpy, bytes, DICOM) into normalised ``pixel_values``.

    Args:
        image_size (`int`): square side of the output, in pixels.
        image_mean, image_std (`list[float]`): RGB normalisation.
        interpolation (`str`): ``"bilinear"`` or ``"bicubic"``.
    """

    model_input_names = ["pixel_values"]
    # Defaults, in the manner of transformers' image processors; a saved preprocessor config overrides each.
    image_size: int = 64
    image_mean: Sequence[float] = IMAGENET_MEAN
    image_std: Sequence[float] = IMAGENET_STD
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
        transform = timm_eval_transform(
            self.image_size, self.interpolation, tuple(self.image_mean), tuple(self.image_std)
        )
        if images:
            pixels = torch.stack([transform(self._checked(load_image(image))) for image in images])
        else:
            pixels = torch.zeros(0, 3, self.image_size, self.image_size)
        return BatchFeature(data={"pixel_values": pixels}, tensor_type=return_tensors)

    def _checked(self, image: Any) -> Any:
        """Refuse an image whose shorter-side resize would be huge (the longer side follows), before resizing it."""
        from ...errors import ImageLoadError

        short, long = sorted(image.size)
        resized = self.image_size * int(self.image_size * long / short)
        if resized > MAX_RESIZED_PIXELS:
            raise ImageLoadError(
                f"An image of {image.width}x{image.height} pixels would be resized to {resized / 1e6:.0f} MP at {self.image_size} px; "
                f"the limit is {MAX_RESIZED_PIXELS / 1e6:.0f} MP. Crop it to the region of interest first."
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
