"""Opening whole-slide images (SVS, NDPI, pyramidal TIFF, ...) through a maintained reader, and choosing a level.

Two readers are supported, chosen at run time: ``tiffslide`` (pure Python, a dependency of sgps-hf) and OpenSlide
(``openslide-bin`` + ``openslide-python``, the ``slides-openslide`` extra). ``backend="auto"`` takes tiffslide and
falls back to OpenSlide for a file tiffslide cannot read. Both expose the same ``OpenSlide`` interface (levels,
``read_region``, properties); :class:`Slide` wraps either and always hands out RGB ``uint8`` arrays.

The resolution is the slide's microns per pixel (mpp) at level 0, read from the reader's ``mpp-x`` property. A value
outside :data:`PLAUSIBLE_MPP` (e.g. 264.6 um/px, a 96-dpi placeholder some scanners write) counts as not recorded;
then ``fallback_mpp`` is used when given (the scanner's value, known to the user), else
:data:`DEFAULT_FALLBACK_MPP` is assumed and a warning says so.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ..errors import ImageLoadError, InputWarning

Backend = Literal["auto", "tiffslide", "openslide"]
BACKENDS = ("auto", "tiffslide", "openslide")
#: Whole-slide scans lie between about 0.1 um/px (100x) and 10 um/px (1x); anything else is a placeholder value.
PLAUSIBLE_MPP = (0.05, 20.0)
#: The resolution the synthesizer's 128-px tiles are read at: 1 um/px (about 10x), 128 um of tissue per tile, the
#: field of view of the 128-px pathology patches the synthesizer was meta-trained on.
DEFAULT_TARGET_MPP = 1.0
#: Assumed level-0 resolution of a slide that records none (about 20x).
DEFAULT_FALLBACK_MPP = 0.5
SLIDE_SUFFIXES = (".svs", ".ndpi", ".tif", ".tiff", ".scn", ".mrxs", ".vms", ".vmu", ".bif", ".svslide")


class SlideReaderMissing(ImageLoadError):
    """No slide reader package is installed (the message names the package to install)."""


def available_backends() -> list[str]:
    """The slide readers importable here, in the order ``auto`` tries them."""
    found = []
    for name in ("tiffslide", "openslide"):
        try:
            __import__(name)
        except (ImportError, OSError):  # openslide-python without the OpenSlide library raises OSError
            continue
        found.append(name)
    return found


def _open_with(backend: str, path: Path) -> Any:
    if backend == "tiffslide":
        try:
            import tiffslide
        except ImportError as exc:
            raise SlideReaderMissing(
                "Reading slides with backend 'tiffslide' needs the tiffslide package: pip install tiffslide"
            ) from exc
        return tiffslide.TiffSlide(path)
    try:
        import openslide
    except (ImportError, OSError) as exc:
        raise SlideReaderMissing(
            "Reading slides with backend 'openslide' needs OpenSlide: pip install openslide-bin openslide-python "
            "(or pip install 'sgps-hf[slides-openslide]')"
        ) from exc
    return openslide.OpenSlide(path)


def open_slide(path: str | os.PathLike, backend: Backend = "auto", fallback_mpp: float | None = None) -> "Slide":
    """Open a whole-slide image file; raises ImageLoadError (what is wrong, how to fix it) when it cannot be read.

    ``fallback_mpp``: the level-0 um/px to use if the file records none (default: assume
    :data:`DEFAULT_FALLBACK_MPP`, with a warning when tiling).
    """
    if backend not in BACKENDS:
        raise ImageLoadError(f"Unknown slide reader {backend!r}; use one of {', '.join(BACKENDS)}.")
    low, high = PLAUSIBLE_MPP
    if fallback_mpp is not None and not low <= fallback_mpp <= high:
        raise ImageLoadError(
            f"fallback_mpp {fallback_mpp:g} um/px is outside {low:g}-{high:g}; give the scanner's microns per pixel "
            "at level 0 (about 0.25 at 40x, 0.5 at 20x)."
        )
    path = Path(os.fspath(path)).expanduser()
    if not path.is_file():
        raise ImageLoadError(f"Slide file {path} does not exist or is not a file; check the path.")
    if backend == "auto":
        backends = available_backends()
        if not backends:
            raise SlideReaderMissing(
                "No slide reader is installed: pip install tiffslide (pure Python), or pip install openslide-bin "
                "openslide-python."
            )
    else:
        backends = [backend]
    errors = []
    for name in backends:
        try:
            handle = _open_with(name, path)
        except SlideReaderMissing:
            raise
        except Exception as exc:  # noqa: BLE001 - every reader has its own exception types
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        return Slide(handle, path, name, fallback_mpp)
    raise ImageLoadError(
        f"Cannot read {path.name} as a whole-slide image ({'; '.join(errors)}). Give an SVS, NDPI or tiled pyramidal "
        "TIFF; formats only OpenSlide reads (MRXS, VMS, SCN...) need pip install openslide-bin openslide-python."
    )


class Slide:
    """An open slide: levels, resolution and RGB region reads. Use as a context manager or call :meth:`close`."""

    def __init__(self, handle: Any, path: Path, backend: str, fallback_mpp: float | None = None) -> None:
        self._handle = handle
        self.path = path
        self.backend = backend
        self.level_dimensions: list[tuple[int, int]] = [tuple(map(int, d)) for d in handle.level_dimensions]
        self.level_downsamples: list[float] = [float(d) for d in handle.level_downsamples]
        if not self.level_dimensions or min(min(d) for d in self.level_dimensions[:1]) < 1:
            raise ImageLoadError(f"{path.name} has no image level; it is not a usable slide.")
        self.recorded_mpp = _recorded_mpp(handle.properties)
        self.mpp_recorded = self.recorded_mpp is not None
        self.mpp_given = not self.mpp_recorded and fallback_mpp is not None  # the user's value: nothing to warn of
        if self.mpp_recorded:
            self.mpp = self.recorded_mpp
        else:
            self.mpp = float(fallback_mpp if fallback_mpp is not None else DEFAULT_FALLBACK_MPP)

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 (width, height) in pixels."""
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def level_for_mpp(self, target_mpp: float) -> tuple[int, float]:
        """(level to read, downsample from it to ``target_mpp``): the coarsest level not coarser than the target.

        Reading that level and shrinking by the returned factor (>= 1) gives the target resolution; when even level 0
        is coarser than the target, level 0 is read and the factor is below 1 (the tile is enlarged), with a warning.
        """
        if not target_mpp > 0:
            raise ImageLoadError(f"Target resolution must be positive (um per pixel), got {target_mpp}.")
        wanted = target_mpp / self.mpp  # downsample from level 0
        level = 0
        for index, downsample in enumerate(self.level_downsamples):
            if downsample <= wanted * 1.01:
                level = index
        factor = wanted / self.level_downsamples[level]
        if factor < 0.99:
            warnings.warn(
                f"{self.path.name} is scanned at {self.mpp:.3g} um/px, coarser than the {target_mpp:.3g} um/px asked "
                "for; its tiles are enlarged, which adds no detail.",
                InputWarning,
                stacklevel=2,
            )
        return level, factor

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB uint8 array [height, width, 3] of ``size`` (w, h) at ``level``; ``location`` in level-0 pixels.

        Only the part inside the slide is read; the rest, and transparent pixels (outside the scanned area), are white,
        as glass is (readers differ: tiffslide pads with black, OpenSlide with transparent).
        """
        width, height = int(size[0]), int(size[1])
        out = np.full((height, width, 3), 255, dtype=np.uint8)
        downsample = self.level_downsamples[level]
        level_w, level_h = self.level_dimensions[level]
        x, y = int(location[0]), int(location[1])
        lx, ly = x / downsample, y / downsample  # position in the level's pixels
        left, top = max(0, -int(np.floor(lx))), max(0, -int(np.floor(ly)))
        right = min(width, int(np.floor(level_w - lx)))
        bottom = min(height, int(np.floor(level_h - ly)))
        if right <= left or bottom <= top:
            return out
        start = (x + round(left * downsample), y + round(top * downsample))
        region = self._handle.read_region(start, int(level), (right - left, bottom - top))
        array = np.asarray(region)
        if array.ndim == 2:
            array = np.repeat(array[..., None], 3, axis=2)
        if array.shape[2] == 4:
            alpha = array[..., 3:4].astype(np.float32) / 255.0
            array = np.clip(array[..., :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha) + 0.5, 0, 255)
        out[top:bottom, left:right] = array[..., :3]
        return out

    def thumbnail(self, max_side: int = 1024) -> tuple[np.ndarray, float]:
        """(RGB thumbnail whose longer side is at most ``max_side``, its downsample from level 0).

        Read from the smallest level at least that large; when that level is much larger (a slide without a pyramid),
        it is read in strips and shrunk strip by strip, so memory stays bounded by one strip.
        """
        from PIL import Image

        width, height = self.dimensions
        scale = max(width, height) / max_side if max(width, height) > max_side else 1.0
        out_w, out_h = max(1, round(width / scale)), max(1, round(height / scale))
        level = 0
        for index, (w, h) in enumerate(self.level_dimensions):
            if w >= out_w and h >= out_h:
                level = index
        lw, lh = self.level_dimensions[level]
        ds = self.level_downsamples[level]
        rows_per_strip = max(1, int(16_000_000 // (3 * lw)))  # about 16 MB of pixels per read
        pieces = []
        y = 0
        while y < lh:
            rows = min(rows_per_strip, lh - y)
            strip = self.read_region((0, round(y * ds)), level, (lw, rows))
            strip_h = max(1, round(rows * out_h / lh))
            pieces.append(np.asarray(Image.fromarray(strip).resize((out_w, strip_h), Image.Resampling.BOX)))
            y += rows
        thumb = np.concatenate(pieces, axis=0)
        if thumb.shape[0] != out_h:
            thumb = np.asarray(Image.fromarray(thumb).resize((out_w, out_h), Image.Resampling.BOX))
        return thumb, width / out_w

    def fingerprint(self) -> str:
        """sha256 of the file (streamed)."""
        digest = hashlib.sha256()
        with open(self.path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()

    def describe(self) -> dict[str, Any]:
        return {
            "file": self.path.name,
            "backend": self.backend,
            "dimensions": list(self.dimensions),
            "levels": self.level_count,
            "mpp": self.mpp,
            "mpp_recorded": self.mpp_recorded,
        }

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> "Slide":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Slide({self.path.name!r}, {self.dimensions[0]}x{self.dimensions[1]}, {self.level_count} levels, " + (
            f"{self.mpp:.3g} um/px, {self.backend})"
        )


def _recorded_mpp(properties: Any) -> float | None:
    """The level-0 mpp from the reader's properties, or None when absent or implausible."""
    values = []
    for key in ("tiffslide.mpp-x", "openslide.mpp-x", "tiffslide.mpp-y", "openslide.mpp-y"):
        try:
            value = float(properties.get(key))
        except (TypeError, ValueError):
            continue
        if np.isfinite(value):
            values.append(value)
    if not values:
        return None
    low, high = PLAUSIBLE_MPP
    return values[0] if low <= values[0] <= high else None


def resolve_mpp(slide: Slide, warn: bool = True) -> float:
    """The slide's level-0 mpp, warning when it is assumed: the file records none (or a bogus one) and the caller
    gave no ``fallback_mpp``."""
    if not slide.mpp_recorded and not slide.mpp_given and warn:
        warnings.warn(
            f"{slide.path.name} records no plausible resolution (microns per pixel); assuming {slide.mpp:g} um/px "
            "at level 0. Pass fallback_mpp= (CLI: --fallback-mpp) with the scanner's value if you know it.",
            InputWarning,
            stacklevel=2,
        )
    return slide.mpp
