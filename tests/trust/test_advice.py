"""Warnings where accuracy will be poor: in the API (Python warnings) and the CLI (one line each, once)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import yaml
from PIL import Image
from sgps_testing import REAL_TASK, SHARED_DATA, skip_without_real_data, write_images

from sgps_hf import ClassSpec, TaskSpec
from sgps_hf.cli import main
from sgps_hf.errors import AccuracyWarning
from sgps_hf.imaging import load_image
from sgps_hf.trust.advice import label_conflicts, looks_non_english, task_advice

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def test_non_english_heuristic():
    assert not looks_non_english("Asymmetric pigmented lesion with irregular notched borders and several shades.")
    assert not looks_non_english("round pink papule")  # short keyword texts pass
    assert looks_non_english("Lésion pigmentée asymétrique aux bords irréguliers")
    assert looks_non_english("Asymmetrische pigmentierte Läsion mit unregelmäßigen Rändern")
    assert looks_non_english("Lesao pigmentada assimetrica com bordas irregulares e varias cores")
    assert looks_non_english("不规则色素性病变")


def test_task_advice(tmp_path):
    images = write_images(tmp_path, "x", 2, seed=1)
    good = TaskSpec([ClassSpec("a", "a pink papule with a rolled border", images[:1]), ClassSpec("b", "", images[1:])])
    assert task_advice(good) == []
    text_only = TaskSpec([ClassSpec("a", "", images[:1]), ClassSpec("b", "dark plaque of the skin")])
    assert "'b'" in task_advice(text_only)[0] and "text only" in task_advice(text_only)[0]
    foreign = TaskSpec([ClassSpec("a", "Lésion pigmentée asymétrique", images[:1]), ClassSpec("b", "", images[1:])])
    assert "English" in task_advice(foreign)[0]
    many = TaskSpec([ClassSpec(f"c{i}", "", [images[i % 2]]) for i in range(11)])
    assert "11 classes" in task_advice(many)[0]
    assert task_advice(TaskSpec([ClassSpec(f"c{i}", "", images) for i in range(11)])) == []  # 2 shots each: fine


def test_synthesis_warns_and_the_cli_prints_each_warning_once(tmp_path, capsys):
    from sgps_testing import tiny_synthesizer

    images = write_images(tmp_path, "x", 1, seed=3)
    task = TaskSpec([ClassSpec("a", "", images), ClassSpec("b", "scaly red patch on the scalp")])
    with pytest.warns(AccuracyWarning, match="text only"):
        tiny_synthesizer().synthesize(task)

    synth_dir = tmp_path / "synth"
    tiny_synthesizer().save_pretrained(synth_dir)
    from sgps_hf import SGPSProcessor

    SGPSProcessor.from_sgps_config(tiny_synthesizer().config).save_pretrained(synth_dir)
    spec = {
        "name": "t",
        "classes": [{"name": "a", "images": [str(images[0])]}, {"name": "b", "description": "scaly red patch"}],
    }
    (tmp_path / "task.yaml").write_text(yaml.safe_dump(spec))
    argv = [
        "synthesize",
        "--task",
        str(tmp_path / "task.yaml"),
        "--out",
        str(tmp_path / "out"),
        "--synthesizer",
        str(synth_dir),
    ]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert err.count("sgps: warning: class(es) 'b' have no image (text only)") == 1


def test_label_conflicts_names_an_image_given_for_two_classes():
    assert label_conflicts(["a", "b"], [["h1", "h2", "h2"], ["h3"]]) == []  # twice in one class is no conflict
    (message,) = label_conflicts(["a", "b", "c"], [["h1", "h2"], ["h2", "h4"], ["h1"]])
    assert message.startswith("2 image(s) are support images of more than one class, e.g. one of 'a' and 'c'")


def test_synthesis_warns_when_one_file_is_support_of_two_classes(tmp_path):
    from sgps_testing import tiny_synthesizer

    images = write_images(tmp_path, "x", 2, seed=4)
    copy = tmp_path / "copy.png"
    copy.write_bytes(images[0].read_bytes())
    task = TaskSpec([ClassSpec("a", "", images), ClassSpec("b", "", [copy])])
    with pytest.warns(AccuracyWarning, match="one of 'a' and 'b'"):
        tiny_synthesizer().synthesize(task)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AccuracyWarning)
        tiny_synthesizer().synthesize(TaskSpec([ClassSpec("a", "", images[:1]), ClassSpec("b", "", images[1:])]))


@pytest.mark.integration
@skip_without_real_data()
def test_the_pad_ufes_twin_filed_under_two_carcinomas_is_flagged():
    from sgps_testing import tiny_synthesizer

    folder = SHARED_DATA / REAL_TASK
    task = TaskSpec(
        [
            ClassSpec("basal_cell_carcinoma", "", [folder / "basal_cell_carcinoma" / "0020.jpg"]),
            ClassSpec("squamous_cell_carcinoma", "", [folder / "squamous_cell_carcinoma" / "0031.jpg"]),
        ]
    )
    with pytest.warns(AccuracyWarning, match="'basal_cell_carcinoma' and 'squamous_cell_carcinoma'"):
        tiny_synthesizer().synthesize(task)


def test_a_multi_frame_dicom_says_which_frame_is_used(tmp_path):
    from test_imaging import write_dicom

    volume = np.stack([np.full((8, 8), v, np.uint16) for v in (0, 1000, 2000)])
    with pytest.warns(AccuracyWarning, match="3 frames; only frame 2 of 3"):
        load_image(write_dicom(tmp_path / "vol.dcm", volume, frames=3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_image(write_dicom(tmp_path / "one.dcm", volume[:1].reshape(8, 8)))


def test_images_without_a_mask_are_named_when_left_out(tmp_path):
    from seg_testing import blob_pair

    from sgps_hf import SegmentationTask

    (tmp_path / "images").mkdir()
    (tmp_path / "masks" / "blob").mkdir(parents=True)
    for i in range(3):
        image, mask = blob_pair(i)
        image.save(tmp_path / "images" / f"{i:04d}.png")
        if i < 2:
            Image.fromarray((mask > 0).astype(np.uint8) * 255).save(tmp_path / "masks" / "blob" / f"{i:04d}.png")
    with pytest.warns(AccuracyWarning, match="1 image\\(s\\) in images/ have no mask in masks/blob/.*0002.png"):
        task = SegmentationTask("blobs", tmp_path)
    assert len(task) == 2
