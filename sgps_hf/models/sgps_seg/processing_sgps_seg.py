"""Image and mask preprocessing of the segmentation side.

Images go through the exact ``SegformerImageProcessor`` the saved segmenter ships in its
``preprocessor_config.json`` (the one ``pipeline("image-segmentation")`` uses), so in-library
``predict`` and plain transformers see the same pixels. Masks are validated here: any size with the
image's aspect ratio (resized with nearest neighbour), values 0/255, 0/1 or boolean; empty masks (negative
examples) where the caller allows them.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image

from ...errors import ImageLoadError, InvalidTaskError
from ...imaging import ImageInput, load_image

MaskInput = Union[str, os.PathLike, Image.Image, np.ndarray]
#: Relative tolerance on the aspect ratio of a mask versus its image.
ASPECT_TOLERANCE = 0.02


def make_image_processor(
    image_size: int = 128, image_mean: Sequence[float] = (0.5,) * 3, image_std: Sequence[float] = (0.5,) * 3
):
    """The transformers image processor of a synthesized segmenter (bilinear resize to a square, [-1, 1])."""
    from transformers import SegformerImageProcessor

    return SegformerImageProcessor(
        do_resize=True,
        size={"height": int(image_size), "width": int(image_size)},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=list(image_mean),
        image_std=list(image_std),
        do_reduce_labels=False,
    )


def pixel_values(processor, images: Sequence[Image.Image]) -> torch.Tensor:
    """Batch of RGB PIL images -> normalised ``(B, 3, S, S)`` float tensor through ``processor``."""
    return processor(images=list(images), return_tensors="pt")["pixel_values"]


def load_mask(
    source: MaskInput, image_size: tuple[int, int], name: str = "mask", allow_empty: bool = False
) -> np.ndarray:
    """Read a binary mask and return it as a bool ``(H, W)`` array at ``image_size`` = (width, height).

    Raises :class:`~sgps_hf.errors.ImageLoadError` for unreadable files and
    :class:`~sgps_hf.errors.InvalidTaskError` for aspect-ratio mismatches, non-binary masks, and empty masks unless
    ``allow_empty`` (a negative example: an image that does not show the structure).
    """
    array = _mask_array(source, name)
    height, width = array.shape
    target_w, target_h = image_size
    if abs((width / height) / (target_w / target_h) - 1) > ASPECT_TOLERANCE:
        raise InvalidTaskError(
            f"{name} is {width}x{height} but its image is {target_w}x{target_h}: the shapes differ (not just the "
            "scale). Pass the mask drawn on this image (any resolution with the same aspect ratio is resized to the "
            "image)."
        )
    values = np.unique(array)
    if array.dtype == np.bool_:
        binary = array
    elif set(values.tolist()) <= {0, 1}:
        binary = array == 1
    elif set(values.tolist()) <= {0, 255}:
        binary = array == 255
    else:
        shown = ", ".join(str(v) for v in values[:6]) + (", ..." if len(values) > 6 else "")
        raise InvalidTaskError(
            f"{name} is not binary: it has {len(values)} distinct values ({shown}). Masks must hold 0/255, 0/1 or "
            "booleans; save masks as PNG (JPEG compression adds intermediate values) or threshold them first, e.g. "
            "mask > 127."
        )
    if (width, height) != (target_w, target_h):
        binary = (
            np.asarray(Image.fromarray(binary.astype(np.uint8) * 255).resize((target_w, target_h), Image.NEAREST))
            > 127
        )
    if not allow_empty and not binary.any():
        raise InvalidTaskError(
            f"{name} is empty (no foreground pixel). Every example needs at least one pixel of the structure; "
            "drop examples that do not show it."
        )
    return binary


def _mask_array(source: MaskInput, name: str) -> np.ndarray:
    if isinstance(source, np.ndarray):
        array = source
    elif isinstance(source, torch.Tensor):
        array = source.detach().cpu().numpy()
    elif isinstance(source, Image.Image):
        array = _pil_mask(source, name)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise ImageLoadError(
                f"Mask file not found: {path}. Check the path (relative paths are resolved from {Path.cwd()})."
            )
        try:
            with Image.open(path) as opened:
                opened.load()
                array = _pil_mask(opened, str(path))
        except ImageLoadError:
            raise
        except Exception as exc:  # PIL raises many types on malformed files
            raise ImageLoadError(
                f"Cannot read mask {path} ({type(exc).__name__}: {exc}). Save it as a PNG image."
            ) from exc
    else:
        raise ImageLoadError(
            f"Unsupported mask of type {type(source).__name__}: pass a file path, a PIL image or a numpy array."
        )
    if array.ndim == 3 and array.shape[-1] in (1, 3, 4):
        channels = array[..., :3] if array.shape[-1] >= 3 else array[..., :1]
        if not (channels == channels[..., :1]).all():
            raise InvalidTaskError(
                f"{name} is a colour image with differing channels; pass a single-channel binary mask."
            )
        array = channels[..., 0]
    if array.ndim != 2:
        raise InvalidTaskError(f"{name} has shape {array.shape}; a mask is H x W (or H x W x 1).")
    if min(array.shape) < 1:
        raise InvalidTaskError(f"{name} has no pixels (shape {array.shape}).")
    if array.dtype.kind == "f":
        if not np.isfinite(array).all():
            raise InvalidTaskError(f"{name} contains NaN or infinite values.")
        if np.all(array == np.round(array)):
            array = array.astype(np.int64)
    if array.dtype.kind not in "biu":
        raise InvalidTaskError(f"{name} has dtype {array.dtype}; masks hold 0/255, 0/1 or booleans.")
    return array


def _pil_mask(image: Image.Image, name: str) -> np.ndarray:
    if image.mode == "1":
        return np.asarray(image, dtype=bool)
    if image.mode == "P":
        image = image.convert("RGB")
    if image.mode in ("LA", "RGBA"):
        image = image.convert(image.mode[:-1])
    return np.asarray(image)


def mask_fingerprint(mask: np.ndarray) -> str:
    """sha256 of a bool mask (shape and bits)."""
    digest = hashlib.sha256(f"{mask.shape[1]}x{mask.shape[0]}:".encode())
    digest.update(np.packbits(mask.astype(bool)).tobytes())
    return digest.hexdigest()


def masks_to_tensor(masks: Sequence[np.ndarray], size: int) -> torch.Tensor:
    """Bool masks (any sizes) -> ``(B, 1, size, size)`` float tensor, nearest-neighbour resized like the images."""
    out = []
    for mask in masks:
        image = Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255)
        if image.size != (size, size):
            image = image.resize((size, size), Image.NEAREST)
        out.append(torch.from_numpy((np.asarray(image) > 127).astype(np.float32)))
    return torch.stack(out)[:, None]


def load_rgb(source: ImageInput) -> Image.Image:
    """An image input as RGB PIL through the project's safe loader (raises ImageLoadError)."""
    return load_image(source)
