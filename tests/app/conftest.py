"""Fixtures of the app tests: a tiny synthesizer saved to disk, image files of every accepted format, a running app."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sgps_testing import noise_image, tiny_synthesizer


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_dicom(path: Path, pixels: np.ndarray) -> Path:
    """A minimal uncompressed DICOM Part 10 file (with the 'DICM' preamble) holding ``pixels``."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName = "Test^Patient"  # must never reach a stored support image
    if pixels.ndim == 3:  # a multi-frame volume: frames x rows x columns
        ds.NumberOfFrames = pixels.shape[0]
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


def make_image_files(folder: Path) -> dict[str, Path]:
    """One file per accepted format (grayscale and RGB, odd sizes) plus files the app must reject."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    noise_image(1, (48, 40)).save(files.setdefault("png", folder / "rgb.png"))
    noise_image(2, (64, 33), mode="L").save(files.setdefault("png_gray", folder / "gray.png"))
    noise_image(3, (300, 120)).save(files.setdefault("jpeg", folder / "photo.jpg"), quality=90)
    noise_image(4, (40, 52)).save(files.setdefault("tiff", folder / "slide.tif"))
    noise_image(5, (37, 45), mode="L").save(files.setdefault("tiff_gray", folder / "gray.tiff"))
    rng = np.random.default_rng(6)
    files["dicom"] = write_dicom(folder / "scan.dcm", rng.integers(0, 4096, size=(50, 42)))
    files["dicom_noext"] = write_dicom(folder / "IM0001", rng.integers(0, 4096, size=(36, 36)))
    files["dicom_frames"] = write_dicom(folder / "volume.dcm", rng.integers(0, 4096, size=(3, 32, 30)))
    noise_image(7, (40, 40)).save(files.setdefault("png2", folder / "second.png"))
    noise_image(8, (40, 40)).save(files.setdefault("png3", folder / "third.png"))
    # rejected ones
    (files.setdefault("text", folder / "notes.png")).write_text("not an image at all")
    noise_image(9, (40, 40)).save(files.setdefault("gif", folder / "anim.gif"))
    noise_image(10, (40, 40)).save(files.setdefault("bmp", folder / "old.bmp"))
    data = (folder / "rgb.png").read_bytes()
    (files.setdefault("truncated", folder / "truncated.png")).write_bytes(data[: len(data) // 2])
    (files.setdefault("empty", folder / "empty.png")).write_bytes(b"")
    Image.new("L", (4, 4)).save(files.setdefault("tiny", folder / "tiny.png"))
    return files


@pytest.fixture(scope="session")
def image_files(tmp_path_factory) -> dict[str, Path]:
    return make_image_files(tmp_path_factory.mktemp("app-images"))


@pytest.fixture(scope="session")
def tiny_synth_dir(tmp_path_factory) -> Path:
    """A tiny random synthesizer + processor saved as a checkpoint folder (what --synthesizer points at)."""
    from sgps_hf import SGPSProcessor

    folder = tmp_path_factory.mktemp("tiny-synth") / "synth"
    synth = tiny_synthesizer(seed=0)
    synth.save_pretrained(folder)
    SGPSProcessor.from_sgps_config(synth.config).save_pretrained(folder)
    return folder


def launch(demo):
    """Launch ``demo`` on 127.0.0.1 and a free port, without blocking; returns its URL."""
    from sgps_hf.app.ui import launch_demo

    _, url, _ = launch_demo(demo, host="127.0.0.1", port=free_port(), prevent_thread_lock=True, quiet=True)
    return url.rstrip("/")


@pytest.fixture(scope="module")
def app_server(tiny_synth_dir, torch_single_thread):
    """The app on 127.0.0.1 with the tiny synthesizer: yields (demo, url)."""
    from sgps_hf.app.ui import build_demo

    demo = build_demo(str(tiny_synth_dir))
    url = launch(demo)
    yield demo, url
    demo.close()
    demo.sgps_exports.close()


@pytest.fixture(scope="module")
def browser():
    """The headless Chromium of the browser tests (``browser_testing.CHROMIUM``)."""
    from browser_testing import CHROMIUM, CHROMIUM_ARGS
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()
