"""Memory stays bounded for every image shape, checked before the expensive step (issue 16).

Peak memory is measured in a fresh process with ``resource.getrusage`` (never wall-clock time).
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from sgps_hf import ImageLoadError
from sgps_hf.app.inputs import read_upload
from sgps_hf.app.limits import AppInputError
from sgps_hf.imaging import MAX_ASPECT_RATIO, load_image
from sgps_hf.models.sgps.image_processing_sgps import SGPSImageProcessor

pytestmark = pytest.mark.timeout(300)

# Runs argv[1] (a statement using `path`) in a fresh process; prints OK or the error type, and the peak RSS growth in
# MiB.
CHILD = """
import resource, sys
from pathlib import Path
path = Path(sys.argv[2])
from sgps_hf.imaging import load_image
from sgps_hf.models.sgps.image_processing_sgps import SGPSImageProcessor
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    exec(sys.argv[1])
    outcome = "OK"
except Exception as exc:
    outcome = type(exc).__name__
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(outcome, (after - before) // 1024)
"""


def peak(statement: str, path) -> tuple[str, int]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CHILD), statement, str(path)],
        capture_output=True,
        text=True,
        timeout=280,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outcome, mib = result.stdout.split()[-2:]
    return outcome, int(mib)


def test_a_thin_strip_is_refused_from_its_header_before_the_resize(tmp_path):
    path = tmp_path / "strip.png"
    Image.new("L", (8, 2_000_000), 40).save(path, optimize=True)
    assert path.stat().st_size < 200_000  # tiny on disk, within every file-size limit
    outcome, mib = peak("SGPSImageProcessor(image_size=128)([path])", path)
    assert outcome == "ImageLoadError"
    assert mib < 150, f"refusing the strip cost {mib} MiB"
    with pytest.raises(ImageLoadError, match="aspect ratio is above the limit"):
        load_image(path)


def test_the_widest_accepted_aspect_ratio_still_loads_and_resizes():
    image = Image.new("RGB", (16 * MAX_ASPECT_RATIO, 16), (10, 20, 30))
    assert SGPSImageProcessor(image_size=32)([image])["pixel_values"].shape == (1, 3, 32, 32)
    with pytest.raises(ImageLoadError, match="aspect ratio"):
        load_image(Image.new("RGB", (16 * MAX_ASPECT_RATIO + 1, 16)))


def test_the_resize_an_image_causes_is_bounded():
    processor = SGPSImageProcessor(image_size=4096)  # a processor asking for a huge input size
    with pytest.raises(ImageLoadError, match="would be resized to .* the limit is"):
        processor([Image.new("RGB", (160, 16))])


@pytest.mark.timeout(600)
def test_16bit_images_stay_within_the_8bit_memory_bound(tmp_path):
    """A 100 MP 16-bit image converts with the same peak as the 8-bit test (< 1200 MiB), not 2x or more."""
    path = tmp_path / "slide16.png"
    ramp = (np.arange(10_000, dtype=np.uint32)[None, :] * 6 + np.arange(10_000, dtype=np.uint32)[:, None]) % 65_536
    Image.fromarray(ramp.astype(np.uint16)).save(path, compress_level=1)
    del ramp
    outcome, mib = peak(
        "image = load_image(path); assert image.size == (10_000, 10_000) and image.mode == 'RGB'", path
    )
    assert outcome == "OK"
    assert mib < 1200, f"peak memory grew by {mib} MiB"


def test_rescaling_in_chunks_equals_rescaling_at_once():
    from sgps_hf import imaging

    array = (np.arange(300 * 257, dtype=np.uint32).reshape(300, 257) * 2_654_435_761 % 65_536).astype(np.uint16)
    values = array.astype(np.float64)
    expected = np.round((values - values.min()) * (255.0 / (values.max() - values.min()))).astype(np.uint8)
    old = imaging._CHUNK_VALUES
    try:
        imaging._CHUNK_VALUES = 1000  # many small chunks
        assert np.array_equal(imaging._rescale_to_uint8(array, "test"), expected)
    finally:
        imaging._CHUNK_VALUES = old


def dicom_bytes(rows: int, columns: int, samples: int, bits: int, payload: int = 64) -> bytes:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["bounded"])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, columns, samples
    ds.PhotometricInterpretation = "MONOCHROME2" if samples == 1 else "RGB"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    if samples > 1:
        ds.PlanarConfiguration = 0
    ds.PixelData = bytes(payload)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_dicom_decoded_bytes_are_bounded_from_the_header():
    """16-bit RGB at 100 MP would decode to 600 MiB: refused from the header, like an 8-bit image above the bound."""
    with pytest.raises(ImageLoadError, match="MiB decoded.*the limit is") as info:
        load_image(dicom_bytes(10_000, 10_000, 3, 16))
    assert "Cannot decode" not in str(info.value)


def test_the_app_refuses_a_large_dicom_from_its_header(tmp_path):
    path = tmp_path / "big.dcm"
    path.write_bytes(dicom_bytes(8_000, 8_000, 1, 16))  # 64 MP: under the library's limit, over the app's
    with pytest.raises(AppInputError, match="app's 40 MP limit|limit is 40 MP") as info:
        read_upload(str(path), roots=[tmp_path])
    assert "Cannot decode" not in str(info.value), "the header check, not the decoder, must refuse it"


def test_the_app_refuses_a_thin_strip(tmp_path):
    path = tmp_path / "strip.png"
    Image.new("L", (8, 2_000_000)).save(path, optimize=True)
    with pytest.raises(AppInputError, match="aspect ratio"):
        read_upload(str(path), roots=[tmp_path])


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_fingerprints_never_read_devices():
    from sgps_hf import ClassSpec, TaskSpec
    from sgps_hf.imaging import image_fingerprint

    with pytest.raises(ImageLoadError, match="Not a file"):
        image_fingerprint("/dev/zero")
    task = TaskSpec([ClassSpec("a", images=["/dev/zero"]), ClassSpec("b", "text")])
    with pytest.raises(ImageLoadError, match="Not a file"):
        task.to_dict()
