"""imaging.load_image: every supported kind of input becomes 8-bit RGB, everything else an ImageLoadError."""

import hashlib
import io

import numpy as np
import pytest
from PIL import Image
from sgps_testing import noise_image

from sgps_hf import ImageLoadError
from sgps_hf.imaging import image_fingerprint, load_image

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def rgb_array(image):
    assert isinstance(image, Image.Image) and image.mode == "RGB"
    array = np.asarray(image)
    assert array.dtype == np.uint8 and array.ndim == 3 and array.shape[2] == 3
    return array


def assert_gray(array):
    assert np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(array[..., 1], array[..., 2])


# -- ordinary formats ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt, suffix", [("PNG", ".png"), ("TIFF", ".tif"), ("BMP", ".bmp"), ("WEBP", ".webp")])
def test_lossless_formats_are_pixel_exact(tmp_path, fmt, suffix):
    source = noise_image(1, size=(37, 29))
    path = tmp_path / f"img{suffix}"
    source.save(path, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    assert np.array_equal(rgb_array(load_image(path)), np.asarray(source))
    assert np.array_equal(rgb_array(load_image(str(path))), np.asarray(source))  # str paths too


def test_jpeg(tmp_path):
    source = Image.new("RGB", (40, 30), (200, 40, 90))
    source.save(tmp_path / "a.jpg", quality=95)
    array = rgb_array(load_image(tmp_path / "a.jpg"))
    assert array.shape == (30, 40, 3)
    assert np.abs(array.astype(int) - [200, 40, 90]).max() <= 4


def test_grayscale_is_replicated_to_three_channels(tmp_path):
    source = noise_image(2, mode="L")
    source.save(tmp_path / "g.png")
    array = rgb_array(load_image(tmp_path / "g.png"))
    assert_gray(array)
    assert np.array_equal(array[..., 0], np.asarray(source))


def test_16bit_png_is_rescaled_to_full_8bit_range(tmp_path):
    ramp = np.linspace(1000, 40000, 64 * 16).reshape(16, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "ct.png")
    assert Image.open(tmp_path / "ct.png").mode.startswith("I;16")  # really a 16-bit file
    array = rgb_array(load_image(tmp_path / "ct.png"))
    assert_gray(array)
    assert array.min() == 0 and array.max() == 255  # window = min..max, not a truncation to the low byte
    expected = np.round((ramp - 1000.0) * 255 / 39000).astype(np.uint8)
    assert np.abs(array[..., 0].astype(int) - expected).max() <= 1


def test_palette_image(tmp_path):
    source = noise_image(3).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    source.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    assert np.array_equal(rgb_array(load_image(tmp_path / "p.png")), np.asarray(source.convert("RGB")))


def test_palette_with_transparency_composites_on_black(tmp_path):
    source = Image.new("P", (16, 16), 1)
    source.putpalette([255, 255, 255, 10, 200, 30] + [0] * 762)
    source.paste(0, (0, 0, 8, 16))
    source.info["transparency"] = 0
    source.save(tmp_path / "pt.png", transparency=0)
    array = rgb_array(load_image(tmp_path / "pt.png"))
    assert (array[:, :8] == 0).all()  # the transparent (white) entry became black
    assert (array[:, 8:] == [10, 200, 30]).all()


def test_cmyk_jpeg(tmp_path):
    Image.new("RGB", (24, 24), (230, 20, 20)).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    array = rgb_array(load_image(tmp_path / "cmyk.jpg"))
    assert np.abs(array.astype(int) - [230, 20, 20]).max() <= 8


def test_rgba_transparent_pixels_become_black(tmp_path):
    pixels = np.zeros((16, 16, 4), dtype=np.uint8)
    pixels[..., :3] = (40, 120, 250)
    pixels[:, 8:, 3] = 255  # right half opaque, left half fully transparent
    pixels[:4, 8:, 3] = 128  # a half-transparent strip
    Image.fromarray(pixels, "RGBA").save(tmp_path / "a.png")
    array = rgb_array(load_image(tmp_path / "a.png"))
    assert (array[:, :8] == 0).all()
    assert (array[4:, 8:] == (40, 120, 250)).all()
    assert np.abs(array[:4, 8:].astype(int) - np.array([40, 120, 250]) * 128 / 255).max() <= 1


def test_animated_gif_gives_first_frame(tmp_path):
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 0, 255), (0, 255, 0))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(tmp_path / "anim.gif").n_frames == 3
    array = rgb_array(load_image(tmp_path / "anim.gif"))
    assert (array == (255, 0, 0)).all()


def test_multipage_tiff_gives_first_page(tmp_path):
    pages = [Image.new("RGB", (20, 20), c) for c in ((9, 99, 199), (0, 0, 0))]
    pages[0].save(tmp_path / "pages.tif", save_all=True, append_images=pages[1:])
    assert (rgb_array(load_image(tmp_path / "pages.tif")) == (9, 99, 199)).all()


def test_wrong_extension_is_read_by_content(tmp_path):
    source = noise_image(4)
    source.save(tmp_path / "actually-png.jpg", "PNG")
    source.save(tmp_path / "no-extension", "PNG")
    for name in ("actually-png.jpg", "no-extension"):
        assert np.array_equal(rgb_array(load_image(tmp_path / name)), np.asarray(source))


def test_exif_orientation_is_applied(tmp_path):
    source = Image.new("RGB", (40, 20), (10, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    source.save(tmp_path / "phone.jpg", exif=exif)
    assert load_image(tmp_path / "phone.jpg").size == (20, 40)


def test_in_memory_inputs():
    source = noise_image(5)
    assert np.array_equal(rgb_array(load_image(source)), np.asarray(source))
    assert np.array_equal(rgb_array(load_image(np.asarray(source))), np.asarray(source))
    buffer = io.BytesIO()
    source.save(buffer, "PNG")
    assert np.array_equal(rgb_array(load_image(buffer.getvalue())), np.asarray(source))
    assert np.array_equal(rgb_array(load_image(bytearray(buffer.getvalue()))), np.asarray(source))
    # (H, W, 1) and float arrays are accepted; floats are rescaled to 0..255
    gray = rgb_array(load_image(np.linspace(-1, 1, 100).reshape(10, 10, 1)))
    assert gray.min() == 0 and gray.max() == 255
    assert (rgb_array(load_image(np.full((10, 10), 7.5))) == 0).all()  # constant: no division by zero
    assert (rgb_array(load_image(np.eye(10, dtype=bool)))[..., 0] == np.eye(10) * 255).all()


# -- rejected inputs ----------------------------------------------------------------------------------------------
def test_truncated_files_are_rejected(tmp_path):
    for fmt, name in (("PNG", "t.png"), ("JPEG", "t.jpg")):
        buffer = io.BytesIO()
        noise_image(6, size=(128, 128)).save(buffer, fmt)
        data = buffer.getvalue()
        (tmp_path / name).write_bytes(data[: len(data) // 2])
        with pytest.raises(ImageLoadError, match="corrupt or truncated"):
            load_image(tmp_path / name)


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageLoadError, match="empty"):
        load_image(tmp_path / "empty.png")
    with pytest.raises(ImageLoadError, match="empty"):
        load_image(b"")


@pytest.mark.parametrize("size", [(1, 1), (7, 100), (100, 7)])
def test_tiny_images_are_rejected(tmp_path, size):
    Image.new("RGB", size).save(tmp_path / "tiny.png")
    with pytest.raises(ImageLoadError, match=rf"{size[0]}x{size[1]} pixels; at least 8x8"):
        load_image(tmp_path / "tiny.png")
    with pytest.raises(ImageLoadError, match="at least 8x8"):
        load_image(Image.new("L", size))


def test_smallest_accepted_size():
    assert load_image(Image.new("L", (8, 8))).size == (8, 8)


def test_gigantic_image_is_rejected_before_decoding():
    huge = np.broadcast_to(np.zeros(1, dtype=np.uint8), (10_001, 10_001))  # no memory behind it
    with pytest.raises(ImageLoadError, match="Downscale it first"):
        load_image(huge)


@pytest.mark.parametrize(
    "content, message",
    [
        (b"patient_id,diagnosis\n1,melanoma\n", "Cannot read"),
        (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", "Cannot read"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "Cannot read|corrupt"),  # PNG signature, garbage after it
    ],
)
def test_non_images_are_rejected(tmp_path, content, message):
    (tmp_path / "notes.png").write_bytes(content)
    with pytest.raises(ImageLoadError, match=message):
        load_image(tmp_path / "notes.png")


def test_missing_paths_folders_and_unsupported_types(tmp_path):
    with pytest.raises(ImageLoadError, match="not found"):
        load_image(tmp_path / "missing.png")
    with pytest.raises(ImageLoadError, match="Not a file"):
        load_image(tmp_path)
    with pytest.raises(ImageLoadError, match="Unsupported image input of type int"):
        load_image(42)


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((10, 10, 2), dtype=np.uint8), r"shape \(10, 10, 2\)"),
        (np.zeros((2, 10, 10, 3), dtype=np.uint8), "shape"),
        (np.zeros(100, dtype=np.uint8), "shape"),
        (np.where(np.eye(10) > 0, np.nan, 1.0), "NaN or infinite"),
        (np.where(np.eye(10) > 0, np.inf, 1.0), "NaN or infinite"),
    ],
)
def test_bad_arrays_are_rejected(array, message):
    with pytest.raises(ImageLoadError, match=message):
        load_image(array)


# -- DICOM --------------------------------------------------------------------------------------------------------
def write_dicom(path, pixels, photometric="MONOCHROME2", window=None, frames=None, transfer_syntax=None, raw=None):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = transfer_syntax or ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.PatientName = "Test^Phantom"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if frames:
        ds.NumberOfFrames = frames
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    if transfer_syntax is not None:
        from pydicom.encaps import encapsulate

        ds.PixelData = encapsulate([raw])
        ds["PixelData"].VR = "OB"
    else:
        ds.PixelData = pixels.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


RAMP = np.linspace(0, 4000, 32 * 24).reshape(24, 32).astype(np.uint16)
RAMP_8BIT = np.round(RAMP * 255.0 / 4000).astype(np.uint8)


def test_dicom_monochrome2_16bit(tmp_path):
    path = write_dicom(tmp_path / "ct.dcm", RAMP)
    assert open(path, "rb").read()[128:132] == b"DICM"
    array = rgb_array(load_image(path))
    assert array.shape == (24, 32, 3)
    assert_gray(array)
    assert np.abs(array[..., 0].astype(int) - RAMP_8BIT).max() <= 1


def test_dicom_monochrome1_is_inverted(tmp_path):
    array = rgb_array(load_image(write_dicom(tmp_path / "cr.dcm", RAMP, photometric="MONOCHROME1")))
    assert_gray(array)
    assert array[0, 0, 0] == 255 and array[-1, -1, 0] == 0  # low stored values are bright in MONOCHROME1
    assert np.abs(array[..., 0].astype(int) - (255 - RAMP_8BIT.astype(int))).max() <= 1


def test_dicom_voi_window_is_applied(tmp_path):
    array = rgb_array(load_image(write_dicom(tmp_path / "w.dcm", RAMP, window=(2000, 800))))[..., 0]
    ramp = RAMP.astype(float)
    assert (array[ramp < 1550] == 0).all() and (array[ramp > 2450] == 255).all()  # clipped outside the window
    inside = array[(ramp > 1700) & (ramp < 2300)]
    assert 0 < inside.min() and inside.max() < 255 and (np.diff(array.ravel().astype(int)) >= 0).all()


def test_dicom_read_by_content_whatever_the_extension(tmp_path):
    path = write_dicom(tmp_path / "scan.png", RAMP)
    assert np.abs(rgb_array(load_image(path))[..., 0].astype(int) - RAMP_8BIT).max() <= 1
    assert np.abs(rgb_array(load_image(path.read_bytes()))[..., 0].astype(int) - RAMP_8BIT).max() <= 1


def test_dicom_volume_gives_middle_slice(tmp_path):
    volume = np.stack([np.zeros_like(RAMP), RAMP, RAMP[::-1, ::-1]])
    array = rgb_array(load_image(write_dicom(tmp_path / "vol.dcm", volume, frames=3)))
    assert np.abs(array[..., 0].astype(int) - RAMP_8BIT).max() <= 1


def test_dicom_with_undecodable_compressed_pixels(tmp_path):
    from pydicom.uid import JPEG2000Lossless

    path = write_dicom(
        tmp_path / "j2k.dcm", RAMP, transfer_syntax=JPEG2000Lossless, raw=b"\xff\x4f\xff\x51" + b"\x00" * 64
    )
    with pytest.raises(ImageLoadError, match="(?s)Cannot decode DICOM pixel data.*uncompressed or as PNG"):
        load_image(path)


def test_dicom_without_pixel_data(tmp_path):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PatientName = "No^Pixels"
    ds.save_as(tmp_path / "report.dcm", enforce_file_format=False)
    with pytest.raises(ImageLoadError, match="DICOM"):
        load_image(tmp_path / "report.dcm")


# -- fingerprints -------------------------------------------------------------------------------------------------
def test_fingerprints(tmp_path):
    source = noise_image(7)
    source.save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    assert image_fingerprint(tmp_path / "a.png") == hashlib.sha256(data).hexdigest()
    assert image_fingerprint(str(tmp_path / "a.png")) == image_fingerprint(data)
    pil = image_fingerprint(source)
    assert pil == image_fingerprint(np.asarray(source))  # decoded pixels: same for PIL and numpy
    assert pil != image_fingerprint(noise_image(8)) and len(pil) == 64
    # the shape is part of a pixel fingerprint: same bytes, different geometry, different hash
    flat = np.zeros((8, 16), dtype=np.uint8)
    assert image_fingerprint(flat) != image_fingerprint(flat.reshape(16, 8))
