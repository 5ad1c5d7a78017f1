"""Fuzzing image loading (sgps_hf.imaging.load_image), the boundary every support and query image crosses.

Property: any bytes, file, PIL image or numpy array becomes an 8-bit RGB image at least 8x8 pixels, or raises
an ImageLoadError that says what is wrong. Inputs: valid images of every mode and format (often under the wrong
extension), the same files truncated or bit-flipped, random bytes, DICOM with fuzzed headers, odd arrays.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from fuzzing import assert_actionable
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from sgps_hf import ImageLoadError
from sgps_hf.imaging import MIN_IMAGE_SIDE, load_image

pytestmark = pytest.mark.timeout(240)

MODES = ["1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I", "F", "I;16", "LA", "PA", "RGBX"]
FORMATS = {"PNG": ".png", "JPEG": ".jpg", "TIFF": ".tif", "BMP": ".bmp", "GIF": ".gif", "WEBP": ".webp"}
SUFFIXES = [".png", ".jpg", ".jpeg", ".tif", ".bmp", ".gif", ".webp", ".dcm", ".txt", ""]


def load_or_explain(source) -> Image.Image | None:
    """The property: a usable RGB image or an actionable ImageLoadError."""
    try:
        image = load_image(source)
    except ImageLoadError as error:
        assert_actionable(error, ImageLoadError)
        return None
    assert image.mode == "RGB" and min(image.size) >= MIN_IMAGE_SIDE
    assert np.asarray(image).dtype == np.uint8
    return image


@st.composite
def encoded_images(draw) -> bytes:
    """A real image of a random mode and size, encoded in a random format (None when PIL cannot write that pair)."""
    mode = draw(st.sampled_from(MODES))
    size = (draw(st.integers(1, 40)), draw(st.integers(1, 40)))
    seed = draw(st.integers(0, 2**16))
    image = Image.new(mode, size)
    noise = Image.effect_noise(size, 64).convert(mode) if mode not in ("PA", "LA") else None
    if noise is not None and draw(st.booleans()):
        image = noise
    frames = draw(st.integers(1, 3))
    buffer = io.BytesIO()
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    try:
        extra = (
            {"save_all": True, "append_images": [image.copy() for _ in range(frames - 1)]}
            if frames > 1 and fmt in ("GIF", "TIFF", "PNG", "WEBP")
            else {}
        )
        image.save(buffer, fmt, **extra)
    except (OSError, ValueError, KeyError, TypeError):
        return b""  # PIL cannot write this mode in this format: the empty file is still a case
    del seed
    return buffer.getvalue()


def mutate(data: bytes, cut: float, flips: list[tuple[float, int]]) -> bytes:
    """Truncate at a relative position and flip a few bytes: what a broken download or disk produces."""
    out = bytearray(data[: max(0, int(len(data) * cut))])
    for position, value in flips:
        if out:
            out[int(position * (len(out) - 1))] = value
    return bytes(out)


@settings(max_examples=250)
@given(
    data=encoded_images(),
    suffix=st.sampled_from(SUFFIXES),
    cut=st.sampled_from([1.0, 1.0, 0.9, 0.5, 0.1, 0.0]) | st.floats(0, 1),
    flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=3),
)
def test_image_files_load_or_explain(tmp_path_factory, data, suffix, cut, flips):
    path = tmp_path_factory.mktemp("img") / f"image{suffix}"
    path.write_bytes(mutate(data, cut, flips))
    load_or_explain(path)


@settings(max_examples=100)
@given(raw=st.binary(max_size=300))
@example(raw=b"")
@example(raw=b"\x89PNG\r\n\x1a\n")
@example(raw=b"GIF89a\xff\xff\xff\xff")
@example(raw=b"\x00" * 128 + b"DICM")
def test_random_bytes_load_or_explain(raw):
    load_or_explain(raw)


@settings(max_examples=60)
@given(mode=st.sampled_from(MODES), width=st.integers(1, 24), height=st.integers(1, 24))
def test_pil_images_of_every_mode(mode, width, height):
    image = load_or_explain(Image.new(mode, (width, height)))
    if min(width, height) >= MIN_IMAGE_SIDE and mode not in ("LAB", "HSV"):
        assert image is not None and image.size == (width, height), f"a valid {mode} image was rejected"


ARRAY_DTYPES = st.sampled_from(
    [
        "uint8",
        "uint16",
        "int16",
        "int32",
        "int64",
        "float16",
        "float32",
        "float64",
        "bool",
        "complex64",
        "object",
        "U3",
    ]
)


# Mostly image-like shapes (H x W, H x W x C with H, W >= 8), so the dtype checks are reached, plus any shape at all.
SHAPES = st.one_of(
    st.tuples(st.integers(8, 12), st.integers(8, 12)),
    st.tuples(st.integers(8, 12), st.integers(8, 12), st.integers(1, 5)),
    hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=12),
)


@settings(max_examples=120)
@given(
    array=ARRAY_DTYPES.flatmap(
        lambda dtype: hnp.arrays(
            np.dtype(dtype),
            SHAPES,
            elements=st.just("a") if dtype == "U3" else st.just(object()) if dtype == "object" else None,
        )
    )
)
@example(array=np.full((10, 10), object()))
@example(array=np.full((10, 10), "abc"))
@example(array=np.ones((10, 10), complex))
def test_numpy_arrays_load_or_explain(array):
    load_or_explain(array)


# -- DICOM with fuzzed headers ------------------------------------------------------------------------------------
def dicom_bytes(
    rows: int, columns: int, frames: int | None, samples: int, bits: int, photometric: str, payload: int
) -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["fuzz"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, columns, samples
    if frames is not None:
        ds.NumberOfFrames = frames
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    if samples > 1:
        ds.PlanarConfiguration = 0
    ds.PixelData = bytes(range(256)) * (payload // 256) + bytes(payload % 256)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@settings(max_examples=80)
@given(
    rows=st.sampled_from([0, 1, 7, 8, 16, 30, 65535]),
    columns=st.sampled_from([0, 8, 16, 33, 65535]),
    frames=st.sampled_from([None, 0, 1, 3, 100000]),
    samples=st.sampled_from([1, 3, 2]),
    bits=st.sampled_from([8, 16]),
    photometric=st.sampled_from(["MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR", "YBR_FULL"]),
    payload=st.sampled_from([0, 1, 64, 512, 1536, 4096]) | st.integers(0, 5000),
)
@example(rows=0, columns=16, frames=None, samples=1, bits=16, photometric="MONOCHROME1", payload=0)
@example(rows=65535, columns=65535, frames=100000, samples=1, bits=16, photometric="MONOCHROME2", payload=64)
def test_dicom_headers_load_or_explain(rows, columns, frames, samples, bits, photometric, payload):
    load_or_explain(dicom_bytes(rows, columns, frames, samples, bits, photometric, payload))


# -- size limits ---------------------------------------------------------------------------------------------------
def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` but holds no pixel data: a decompression bomb's first bytes."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("width, height", [(10_001, 10_000), (50_000, 50_000), (2**31 - 1, 2**31 - 1), (1, 1)])
def test_oversized_or_tiny_headers_are_rejected_before_decoding(width, height):
    with pytest.raises(ImageLoadError) as info:
        load_image(png_header_only(width, height))
    assert_actionable(info.value, ImageLoadError)
    assert ("Downscale" in str(info.value)) == (width > 1)


CHILD = """
import resource, sys, numpy as np
from PIL import Image
from sgps_hf.imaging import load_image
path = sys.argv[1]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
image = load_image(path)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(image.mode, image.size[0], image.size[1], (after - before) // 1024)
"""


@pytest.mark.timeout(300)
def test_10000x10000_image_loads_within_bounded_memory(tmp_path):
    """The largest accepted image (100 MP) decodes with a bounded peak (measured in a fresh process)."""
    path = tmp_path / "slide.png"
    Image.new("L", (10_000, 10_000), 90).save(path, compress_level=1)
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CHILD), str(path)],
        capture_output=True,
        text=True,
        timeout=280,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    mode, width, height, peak_mib = result.stdout.split()[-4:]
    assert (mode, int(width), int(height)) == ("RGB", 10_000, 10_000)
    # 100 MB of gray pixels + 300 MB of RGB; anything near 2 GiB would mean an unbounded intermediate.
    assert int(peak_mib) < 1200, f"peak memory grew by {peak_mib} MiB"


@pytest.mark.parametrize("rows, columns, frames", [(12_000, 12_000, None), (4_000, 4_000, 100)])
def test_oversized_dicom_is_rejected_before_its_pixels_are_decoded(rows, columns, frames):
    with pytest.raises(ImageLoadError, match="Downscale|downscale") as info:
        load_image(dicom_bytes(rows, columns, frames, 1, 8, "MONOCHROME2", payload=64))
    assert "Cannot decode" not in str(info.value), "the size guard, not pydicom, must refuse it"


# -- extreme shapes: thin strips, huge headers, and the resize they would cause -------------------------------------
EXTREME_SIDE = st.one_of(
    st.integers(1, 64), st.integers(64, 2_000_000), st.sampled_from([8, 9, 159, 160, 161, 10_000, 10_001, 2**31 - 1])
)


@settings(max_examples=200)
@given(width=EXTREME_SIDE, height=EXTREME_SIDE)
def test_extreme_header_shapes_are_refused_from_the_header(width, height):
    """A header of any shape: refused with a message naming the limit (aspect, pixels, bytes or the minimum size)
    before decoding, or, within every limit, reported as truncated when decoding finds no pixels."""
    from sgps_hf.imaging import MAX_ASPECT_RATIO, MAX_IMAGE_PIXELS

    with pytest.raises(ImageLoadError) as info:
        load_image(png_header_only(width, height))
    assert_actionable(info.value, ImageLoadError)
    message = str(info.value)
    within = (
        min(width, height) >= MIN_IMAGE_SIDE
        and width * height <= MAX_IMAGE_PIXELS
        and max(width, height) <= MAX_ASPECT_RATIO * min(width, height)
    )
    assert ("corrupt or truncated" in message) == within, message


@settings(max_examples=60, deadline=None)
@given(width=st.integers(8, 4000), height=st.integers(8, 4000), size=st.sampled_from([16, 32, 128, 4096]))
def test_extreme_in_memory_shapes_are_processed_or_refused(width, height, size):
    """Any shape through the image processor: the expected tensor, or an ImageLoadError (aspect or resize limit)."""
    from sgps_hf.imaging import MAX_ASPECT_RATIO
    from sgps_hf.models.sgps.image_processing_sgps import MAX_RESIZED_PIXELS, SGPSImageProcessor

    image = Image.new("L", (width, height), 7)
    processor = SGPSImageProcessor(image_size=size)
    short, long = sorted((width, height))
    ok = long <= MAX_ASPECT_RATIO * short and size * int(size * long / short) <= MAX_RESIZED_PIXELS
    try:
        pixels = processor([image])["pixel_values"]
    except ImageLoadError as error:
        assert_actionable(error, ImageLoadError)
        assert not ok, str(error)
        return
    assert ok and pixels.shape == (1, 3, size, size)
