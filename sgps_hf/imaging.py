"""Reading user images (PNG, JPEG, TIFF, BMP, DICOM, in-memory PIL/numpy) into RGB PIL images.

This is the one boundary every image crosses, from the Python API, the CLI and the app, so all the
validation lives here: unreadable, truncated, tiny, gigantic or exotic-mode files either become a
plain 8-bit RGB image or raise :class:`~sgps_hf.errors.ImageLoadError` saying what is wrong.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageLoadError

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray, bytes]

MIN_IMAGE_SIDE = 8
MAX_IMAGE_PIXELS = 100_000_000  # a 10,000 x 10,000 slide thumbnail is fine; larger is a mistake
MAX_FILE_BYTES = 512 * 1024 * 1024
MAX_DICOM_VALUES = 4 * MAX_IMAGE_PIXELS  # all frames x samples of a DICOM volume (we keep one slice)
DICOM_SUFFIXES = {".dcm", ".dicom"}


def load_image(source: ImageInput) -> Image.Image:
    """Return ``source`` as an 8-bit RGB PIL image.

    Grayscale, 16-bit, float, palette, CMYK and alpha images are converted; animated images give
    their first frame; DICOM files are windowed with their VOI LUT and rescaled to 8 bits.
    """
    if isinstance(source, Image.Image):
        image = source
    elif isinstance(source, np.ndarray):
        image = _from_array(source, what="numpy array")
    elif isinstance(source, (bytes, bytearray)):
        image = _open_bytes(bytes(source), name="<bytes>")
    elif isinstance(source, (str, os.PathLike)):
        image = _open_path(Path(source))
    else:
        raise ImageLoadError(
            f"Unsupported image input of type {type(source).__name__}: pass a file path, a PIL image, "
            "a numpy array (H x W or H x W x C) or the file's bytes."
        )
    return _to_rgb(image)


def image_fingerprint(source: ImageInput) -> str:
    """sha256 of an image: of the file's bytes for paths/bytes, of the decoded RGB pixels otherwise."""
    if isinstance(source, (str, os.PathLike)):
        return hashlib.sha256(Path(source).read_bytes()).hexdigest()
    if isinstance(source, (bytes, bytearray)):
        return hashlib.sha256(bytes(source)).hexdigest()
    rgb = load_image(source)
    digest = hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode())
    digest.update(rgb.tobytes())
    return digest.hexdigest()


def _open_path(path: Path) -> Image.Image:
    if "\x00" in str(path) or any(0xD800 <= ord(ch) <= 0xDFFF for ch in str(path)):  # os.stat would raise a bare ValueError
        raise ImageLoadError(f"Image path {str(path)!r} contains a NUL character or an unpaired surrogate; fix the file name.")
    if not path.exists():
        raise ImageLoadError(f"Image file not found: {path}. Check the path (relative paths are resolved from {Path.cwd()}).")
    if not path.is_file():
        raise ImageLoadError(f"Not a file: {path}. Pass image files, not folders.")
    size = path.stat().st_size
    if size == 0:
        raise ImageLoadError(f"Image file is empty (0 bytes): {path}.")
    if size > MAX_FILE_BYTES:
        raise ImageLoadError(f"Image file {path} is {size / 2**20:.0f} MiB; the limit is {MAX_FILE_BYTES // 2**20} MiB.")
    return _open_bytes(path.read_bytes(), name=str(path))


def _open_bytes(data: bytes, name: str) -> Image.Image:
    if not data:
        raise ImageLoadError(f"Image {name} is empty (0 bytes).")
    if _looks_like_dicom(data, name):
        return _open_dicom(data, name)
    try:
        image = Image.open(io.BytesIO(data))
        _check_size(image.size, name)
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)  # animated GIF/APNG/multi-page TIFF: the first frame is the image
        image.load()
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as exc:  # PIL's own guard, for headers far beyond MAX_IMAGE_PIXELS
        raise ImageLoadError(f"Image {name} is too large to decode safely ({exc}). Downscale it first.") from exc
    except UnidentifiedImageError as exc:
        raise ImageLoadError(
            f"Cannot read {name} as an image ({exc}). Supported formats: PNG, JPEG, TIFF, BMP, GIF, WebP and DICOM."
        ) from exc
    except Exception as exc:  # PIL's decoders raise many types on malformed data (KeyError, TypeError, struct.error...)
        raise ImageLoadError(
            f"Image {name} is corrupt or truncated ({type(exc).__name__}: {exc}). Re-export or re-download it."
        ) from exc
    return image


def _looks_like_dicom(data: bytes, name: str) -> bool:
    return data[128:132] == b"DICM" or Path(name).suffix.lower() in DICOM_SUFFIXES


def _open_dicom(data: bytes, name: str) -> Image.Image:
    import pydicom
    from pydicom.pixels import apply_voi_lut

    try:
        dataset = pydicom.dcmread(io.BytesIO(data), force=True)
        _check_dicom_size(dataset, name)
        pixels = dataset.pixel_array
    except ImageLoadError:
        raise
    except Exception as exc:  # pydicom raises many types for bad or compressed files
        raise ImageLoadError(
            f"Cannot decode DICOM pixel data of {name} ({type(exc).__name__}: {exc}). "
            "Export the image uncompressed or as PNG."
        ) from exc
    if pixels.ndim == 3 and pixels.shape[-1] not in (3, 4):
        pixels = pixels[pixels.shape[0] // 2]  # a multi-frame volume: take the middle slice
    if pixels.ndim == 2:
        try:
            pixels = apply_voi_lut(pixels, dataset)
        except Exception:  # no usable window: fall back to min-max scaling below
            pass
        if str(getattr(dataset, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
            pixels = pixels.max() - pixels  # MONOCHROME1 stores inverted intensities
    return _from_array(np.asarray(pixels), what=f"DICOM {name}")


def _check_dicom_size(dataset, name: str) -> None:
    """Refuse oversized DICOM before decoding: compressed pixel data can expand far beyond the file's size."""
    rows, columns = int(dataset.get("Rows", 0) or 0), int(dataset.get("Columns", 0) or 0)
    if rows and columns:
        _check_size((columns, rows), f"DICOM {name}")
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
        samples = int(dataset.get("SamplesPerPixel", 1) or 1)
        if rows * columns * max(frames, 1) * max(samples, 1) > MAX_DICOM_VALUES:
            raise ImageLoadError(
                f"DICOM {name} holds {frames} frames of {columns}x{rows} pixels; the limit is {MAX_DICOM_VALUES / 1e6:.0f} M values. "
                "Export the slice you need as PNG or downscale it first."
            )


def _from_array(array: np.ndarray, what: str) -> Image.Image:
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.dtype.kind not in "biuf":  # object, string, complex, datetime...: not pixel intensities
        raise ImageLoadError(f"{what} has dtype {array.dtype}; pass integer, float or bool pixel values.")
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ImageLoadError(f"{what} has shape {array.shape}; expected H x W (grayscale) or H x W x 3/4 (RGB/RGBA).")
    _check_size((array.shape[1], array.shape[0]), what)
    if array.dtype != np.uint8:
        array = _rescale_to_uint8(array, what)
    return Image.fromarray(array)


def _rescale_to_uint8(array: np.ndarray, what: str) -> np.ndarray:
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    values = array.astype(np.float64)
    if not np.isfinite(values).all():
        raise ImageLoadError(f"{what} contains NaN or infinite pixel values.")
    low, high = values.min(), values.max()
    if high <= low:
        return np.zeros(array.shape, dtype=np.uint8)
    return np.round((values - low) * (255.0 / (high - low))).astype(np.uint8)


def _check_size(size: tuple[int, int], name: str) -> None:
    width, height = size
    if min(width, height) < MIN_IMAGE_SIDE:
        raise ImageLoadError(
            f"Image {name} is {width}x{height} pixels; at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} is needed."
        )
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageLoadError(
            f"Image {name} is {width}x{height} pixels ({width * height / 1e6:.0f} MP); "
            f"the limit is {MAX_IMAGE_PIXELS / 1e6:.0f} MP. Downscale it first."
        )


def _to_rgb(image: Image.Image) -> Image.Image:
    _check_size(image.size, "input")
    try:
        image = ImageOps.exif_transpose(image)  # phone photos store their rotation in EXIF
    except Exception:  # noqa: BLE001 - a broken EXIF block (any parser error) should not make the pixels unusable
        pass
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return Image.fromarray(_rescale_to_uint8(np.asarray(image), "image")).convert("RGB")
    if image.mode == "CMYK":
        return image.convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels become black, like the background of most medical viewers.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except (OSError, ValueError) as exc:
        raise ImageLoadError(f"Cannot convert image of mode {image.mode} to RGB ({exc}).") from exc
