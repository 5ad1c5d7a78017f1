"""Reading user images (PNG, JPEG, TIFF, BMP, DICOM, in-memory PIL/numpy) into RGB PIL images.

This is the one boundary every image crosses, from the Python API, the CLI and the app, so all the
validation lives here: unreadable, truncated, tiny, gigantic or exotic-mode files either become a
plain 8-bit RGB image or raise :class:`~sgps_hf.errors.ImageLoadError` saying what is wrong.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import AccuracyWarning, ImageLoadError

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray, bytes]

MIN_IMAGE_SIDE = 8
MAX_IMAGE_PIXELS = 100_000_000  # a 10,000 x 10,000 slide thumbnail is fine; larger is a mistake
#: Longest side / shortest side. Resizing the shorter side to the model's input size makes the longer side follow,
#: so a thin strip (8 x 2,000,000 pixels compresses to a few KB) would otherwise cost gigabytes after the resize.
MAX_ASPECT_RATIO = 20
#: Decoded bytes of one image as PIL or numpy hold it: an 8-bit RGB image at MAX_IMAGE_PIXELS (PIL keeps 4 bytes per
#: RGB pixel). 16-bit, 32-bit and float images and DICOM pixel arrays (all frames) are held to this same bound.
MAX_DECODED_BYTES = 4 * MAX_IMAGE_PIXELS
MAX_FILE_BYTES = 512 * 1024 * 1024
MAX_DICOM_VALUES = 4 * MAX_IMAGE_PIXELS  # all frames x samples of a DICOM volume (we keep one slice)
DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
#: The file suffixes taken as images wherever a folder is scanned (a dataset folder, the app's examples).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp"}) | DICOM_SUFFIXES
#: The image suffixes PIL decodes itself: what ``datasets.Image`` features can hold (they decode with PIL, so no
#: DICOM).
PIL_IMAGE_SUFFIXES = IMAGE_SUFFIXES - DICOM_SUFFIXES
_CHUNK_VALUES = (
    1 << 22
)  # high-bit-depth images are rescaled to 8 bits this many values at a time (bounded scratch memory)
# Bytes per pixel of PIL's in-memory storage, per mode (unknown modes count as 4).
_PIL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
# The pixel limit of the load_image call in progress (load_image's ``max_pixels``).
_LIMIT: contextvars.ContextVar[int] = contextvars.ContextVar("sgps_max_pixels", default=MAX_IMAGE_PIXELS)
_NOTES: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("sgps_image_notes", default=None)


@contextlib.contextmanager
def collected_notes() -> Iterator[list[str]]:
    """Collect the loader's accuracy notes (e.g. which frame of a multi-frame DICOM is used) in this thread or
    context instead of warning: for a server, where ``warnings.catch_warnings`` is process-wide and not safe."""
    sink: list[str] = []
    token = _NOTES.set(sink)
    try:
        yield sink
    finally:
        _NOTES.reset(token)


def _note(message: str) -> None:
    sink = _NOTES.get()
    if sink is None:
        warnings.warn(message, AccuracyWarning, stacklevel=3)
    else:
        sink.append(message)


def load_image(source: ImageInput, max_pixels: int | None = None) -> Image.Image:
    """Return ``source`` as an 8-bit RGB PIL image.

    Grayscale, 16-bit, float, palette, CMYK and alpha images are converted; animated images give
    their first frame; DICOM files are windowed with their VOI LUT and rescaled to 8 bits.

    ``max_pixels``: a stricter pixel limit than :data:`MAX_IMAGE_PIXELS` (the app's), checked like it from the
    file's header (DICOM included) before any pixel is decoded.
    """
    limit = MAX_IMAGE_PIXELS if max_pixels is None else min(int(max_pixels), MAX_IMAGE_PIXELS)
    token = _LIMIT.set(limit)
    try:
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
    finally:
        _LIMIT.reset(token)


def resize_center_crop(image: Image.Image, size: int, interpolation: str = "bilinear") -> Image.Image:
    """The one image geometry of the package: the shorter side resized to ``size`` (antialiased), then the centre
    ``size`` x ``size`` square.

    It is timm's evaluation transform with ``crop_pct=1`` and ``crop_mode="center"`` (what a synthesized classifier's
    ``pretrained_cfg`` tells plain timm and transformers to do), shared by dataset loading
    (:func:`sgps_hf.data.loading.to_rgb_square`) and the image processor, so training, benchmarks and users' images
    go through the same pixels.
    """
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    mode = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}[interpolation]
    return TF.center_crop(TF.resize(image, size, interpolation=mode, antialias=True), [size, size])


@dataclass(frozen=True)
class DecodedImage:
    """An image decoded once: its RGB pixels and its fingerprint (see :func:`image_fingerprint`)."""

    pixels: Image.Image
    fingerprint: str


def decode_image(source: ImageInput) -> DecodedImage:
    """Decode ``source`` once and fingerprint it from the same bytes: what a synthesis needs of each user image."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        _check_file(path)
        data = path.read_bytes()
        return DecodedImage(_to_rgb(_open_bytes(data, name=str(path))), hashlib.sha256(data).hexdigest())
    if isinstance(source, (bytes, bytearray)):
        return DecodedImage(load_image(source), hashlib.sha256(bytes(source)).hexdigest())
    pixels = load_image(source)
    return DecodedImage(pixels, _pixel_fingerprint(pixels))


def image_fingerprint(source: ImageInput) -> str:
    """sha256 of an image: of the file's bytes for paths/bytes, of the decoded RGB pixels otherwise."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        _check_file(path)  # a regular, bounded file: never /dev/zero or a FIFO
        digest = hashlib.sha256()
        with open(path, "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()
    if isinstance(source, (bytes, bytearray)):
        return hashlib.sha256(bytes(source)).hexdigest()
    return _pixel_fingerprint(load_image(source))


def _pixel_fingerprint(rgb: Image.Image) -> str:
    digest = hashlib.sha256(f"{rgb.width}x{rgb.height}:".encode())
    digest.update(rgb.tobytes())
    return digest.hexdigest()


def check_path_text(text: str, what: str, error: type[Exception] = ImageLoadError) -> None:
    """Refuse a path holding a NUL or an unpaired surrogate (the OS would raise a bare ValueError or mangle it)."""
    if "\x00" in text or any(0xD800 <= ord(ch) <= 0xDFFF for ch in text):
        raise error(f"{what} {text!r} contains a NUL character or an unpaired surrogate; fix the file name.")


def _open_path(path: Path) -> Image.Image:
    _check_file(path)
    return _open_bytes(path.read_bytes(), name=str(path))


def _check_file(path: Path) -> None:
    check_path_text(str(path), "Image path")
    if not path.exists():
        raise ImageLoadError(
            f"Image file not found: {path}. Check the path (relative paths are resolved from {Path.cwd()})."
        )
    if not path.is_file():
        raise ImageLoadError(f"Not a file: {path}. Pass image files, not folders.")
    size = path.stat().st_size
    if size == 0:
        raise ImageLoadError(f"Image file is empty (0 bytes): {path}.")
    if size > MAX_FILE_BYTES:
        raise ImageLoadError(
            f"Image file {path} is {size / 2**20:.0f} MiB; the limit is {MAX_FILE_BYTES // 2**20} MiB."
        )


def _open_bytes(data: bytes, name: str) -> Image.Image:
    if not data:
        raise ImageLoadError(f"Image {name} is empty (0 bytes).")
    if _looks_like_dicom(data, name):
        return _open_dicom(data, name)
    try:
        image = Image.open(io.BytesIO(data))
        _check_size(image.size, name, _PIL_BYTES.get(image.mode, 4))
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
    except (
        Exception
    ) as exc:  # PIL's decoders raise many types on malformed data (KeyError, TypeError, struct.error...)
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
        frames = pixels.shape[0]
        pixels = pixels[frames // 2]  # a multi-frame volume: take the middle slice
        _note(
            f"DICOM {name} holds {frames} frames; only frame {frames // 2 + 1} of {frames} (the middle one) is used. "
            "Export the frame you mean as its own image to choose another."
        )
    if pixels.ndim == 2:
        what = f"DICOM {name}"
        _check_size((pixels.shape[1], pixels.shape[0]), what)

        def voi(chunk: np.ndarray) -> np.ndarray:
            return apply_voi_lut(chunk, dataset)

        try:
            voi(pixels[:1])
        except Exception:  # no usable window: fall back to min-max scaling of the stored values
            voi = None  # type: ignore[assignment]
        if str(getattr(dataset, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
            # MONOCHROME1 stores inverted intensities: max - value, computed chunk by chunk like the rest.
            top = _min_max(pixels, voi, what)[1]
            window = voi

            def voi(chunk: np.ndarray) -> np.ndarray:  # noqa: F811
                values = chunk if window is None else window(chunk)
                return top - np.asarray(values, dtype=np.float64)

        if voi is not None:
            return Image.fromarray(_rescale_to_uint8(pixels, what, voi))
    return _from_array(np.asarray(pixels), what=f"DICOM {name}")


def _check_dicom_size(dataset, name: str) -> None:
    """Refuse oversized DICOM before decoding: compressed pixel data can expand far beyond the file's size."""
    rows, columns = int(dataset.get("Rows", 0) or 0), int(dataset.get("Columns", 0) or 0)
    if rows and columns:
        _check_size((columns, rows), f"DICOM {name}")
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
        samples = int(dataset.get("SamplesPerPixel", 1) or 1)
        bits = int(dataset.get("BitsAllocated", 8) or 8)
        values = rows * columns * max(frames, 1) * max(samples, 1)
        decoded = values * max(1, (bits + 7) // 8)
        if values > MAX_DICOM_VALUES or decoded > MAX_DECODED_BYTES:
            raise ImageLoadError(
                f"DICOM {name} holds {frames} frame(s) of {columns}x{rows} pixels x {samples} sample(s) at {bits} "
                f"bits ({decoded / 2**20:.0f} MiB decoded); the limit is {MAX_DECODED_BYTES / 2**20:.0f} MiB. Export "
                "the slice you need as PNG or downscale it first."
            )


def _from_array(array: np.ndarray, what: str) -> Image.Image:
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.dtype.kind not in "biuf":  # object, string, complex, datetime...: not pixel intensities
        raise ImageLoadError(f"{what} has dtype {array.dtype}; pass integer, float or bool pixel values.")
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ImageLoadError(f"{what} has shape {array.shape}; expected H x W (grayscale) or H x W x 3/4 (RGB/RGBA).")
    _check_size((array.shape[1], array.shape[0]), what)
    if array.nbytes > MAX_DECODED_BYTES:
        raise ImageLoadError(
            f"{what} holds {array.nbytes / 2**20:.0f} MiB of pixel values; the limit is "
            f"{MAX_DECODED_BYTES / 2**20:.0f} MiB. Downscale it or convert it to 8 bits first."
        )
    if array.dtype != np.uint8:
        array = _rescale_to_uint8(array, what)
    return Image.fromarray(array)


def _row_chunks(array: np.ndarray):
    rows_per_chunk = max(1, _CHUNK_VALUES // max(1, array[0].size if len(array) else 1))
    for start in range(0, len(array), rows_per_chunk):
        yield slice(start, start + rows_per_chunk)


def _min_max(array: np.ndarray, transform, what: str) -> tuple[float, float]:
    low, high = np.inf, -np.inf
    for rows in _row_chunks(array):
        values = np.asarray(array[rows] if transform is None else transform(array[rows]), dtype=np.float64)
        if not np.isfinite(values).all():
            raise ImageLoadError(
                f"{what} contains NaN or infinite pixel values; remove them or replace them with finite values."
            )
        low, high = min(low, float(values.min())), max(high, float(values.max()))
    return low, high


def _rescale_to_uint8(array: np.ndarray, what: str, transform=None) -> np.ndarray:
    """Min-max rescale to uint8, a few million values at a time (peak memory: the output plus a small scratch).

    ``transform``: an element-wise function applied first (a DICOM VOI window); the result equals rescaling
    ``transform(array)`` as a whole.
    """
    if array.dtype == np.bool_ and transform is None:
        return array.astype(np.uint8) * 255
    low, high = _min_max(array, transform, what)
    if high <= low:
        return np.zeros(array.shape, dtype=np.uint8)
    scale = 255.0 / (high - low)
    out = np.empty(array.shape, dtype=np.uint8)
    for rows in _row_chunks(array):
        values = np.asarray(array[rows] if transform is None else transform(array[rows]), dtype=np.float64)
        out[rows] = np.round((values - low) * scale)
    return out


def _check_size(size: tuple[int, int], name: str, bytes_per_pixel: int = 1) -> None:
    width, height = size
    if min(width, height) < MIN_IMAGE_SIDE:
        raise ImageLoadError(
            f"Image {name} is {width}x{height} pixels; at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} is needed."
        )
    limit = _LIMIT.get()
    if width * height > limit:
        raise ImageLoadError(
            f"Image {name} is {width}x{height} pixels ({width * height / 1e6:.0f} MP); "
            f"the limit is {limit / 1e6:.0f} MP. Downscale it first."
        )
    if max(width, height) > MAX_ASPECT_RATIO * min(width, height):
        raise ImageLoadError(
            f"Image {name} is {width}x{height} pixels: its aspect ratio is above the limit of {MAX_ASPECT_RATIO}:1 "
            "(resizing it would cost far more memory than its size suggests). Crop it to the region of interest first."
        )
    if width * height * bytes_per_pixel > MAX_DECODED_BYTES:
        raise ImageLoadError(
            f"Image {name} is {width}x{height} pixels at {bytes_per_pixel} bytes each "
            f"({width * height * bytes_per_pixel / 2**20:.0f} MiB decoded); the limit is "
            f"{MAX_DECODED_BYTES / 2**20:.0f} MiB. Downscale it or convert it to 8 bits first."
        )


def _to_rgb(image: Image.Image) -> Image.Image:
    _check_size(image.size, "input", _PIL_BYTES.get(image.mode, 4))
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
