"""The segmentation tab's event functions and its layout inside a Blocks app."""

import zipfile

import numpy as np
import pytest
from PIL import Image
from seg_testing import write_task_folder

from sgps_hf.app.export import ExportArea

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def test_app_tab_functions(tiny_synth, tmp_path):
    from sgps_hf.app import segmentation as app_tab

    folder = write_task_folder(tmp_path / "t", 3)
    images = sorted(str(p) for p in (folder / "images").iterdir())
    masks = sorted(str(p) for p in (folder / "masks" / "lesion").iterdir())
    renamed = []
    for m in masks[::-1]:  # masks named <stem>_mask.png, uploaded in another order: matched by stem
        target = tmp_path / (m.rsplit("/", 1)[1].replace(".png", "_mask.png"))
        target.write_bytes(open(m, "rb").read())
        renamed.append(str(target))
    assert [p[1] for p in app_tab.pair_examples(images, renamed)] == renamed[::-1]

    segmenter, status, card = app_tab.synthesize(images, renamed, "blob", "bright disc", synthesizer=tiny_synth)
    assert segmenter is not None and "3 example" in status and "bright disc" in card
    gallery, outcome = app_tab.predict(segmenter, [images[0]])
    assert len(gallery) == 1 and gallery[0][0].size == (40, 32) and "not for clinical use" in outcome
    expected = segmenter.predict(images[0])[0]
    tinted = np.asarray(gallery[0][0]).astype(int) != np.asarray(Image.open(images[0]).convert("RGB")).astype(int)
    np.testing.assert_array_equal(tinted.any(-1), expected & tinted.any(-1))  # only predicted pixels are tinted
    area = ExportArea(tmp_path / "exports")
    archive, message = app_tab.download(segmenter, area)
    assert {f"blob-segmenter/{name}" for name in ("config.json", "model.safetensors", "README.md")} <= set(
        zipfile.ZipFile(archive).namelist()
    )
    assert [p.name for p in area.root.rglob("*") if p.is_file()] == ["blob-segmenter.zip"]  # no folder left behind
    assert app_tab.download(None, area)[1] == "**Error:** synthesize a segmenter first."

    none, error, _ = app_tab.synthesize(images, renamed[:2], "blob", "", synthesizer=tiny_synth)
    assert none is None and "3 images but 2 masks" in error
    assert "synthesize a segmenter first" in app_tab.predict(None, images)[1]
    assert "repo id" in app_tab.push(segmenter, "no-slash", "", True)


def test_tab_builds_inside_blocks(tiny_synth):
    import gradio as gr

    from sgps_hf.app.segmentation import build_segmentation_tab

    with gr.Blocks() as demo:
        build_segmentation_tab(tiny_synth)
    ids = {getattr(block, "elem_id", None) for block in demo.blocks.values()}
    assert {"seg-tab", "seg-images", "seg-masks", "seg-synthesize", "seg-gallery", "seg-push"} <= ids


def test_multi_frame_dicom_says_which_frame_and_no_server_path(tiny_synth, image_files, tmp_path):
    from sgps_hf.app import segmentation as app_tab

    folder = write_task_folder(tmp_path / "t", 2)
    images = sorted(str(p) for p in (folder / "images").iterdir())
    masks = sorted(str(p) for p in (folder / "masks" / "lesion").iterdir())
    segmenter, _, _ = app_tab.synthesize(images, masks, "blob", "", synthesizer=tiny_synth)
    gallery, outcome = app_tab.predict(segmenter, [str(image_files["dicom_frames"])])
    assert len(gallery) == 1 and "**Warning:** DICOM volume.dcm holds 3 frames; only frame 2 of 3" in outcome
    assert str(image_files["dicom_frames"].parent) not in outcome
