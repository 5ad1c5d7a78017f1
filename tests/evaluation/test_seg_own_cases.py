"""`sgps segment evaluate` (Dice / IoU per image, worst-case overlays) and batch `sgps segment predict --overlay`."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from seg_testing import blob_pair, write_task_folder

from sgps_hf import SegmentationTask
from sgps_hf.cli import main
from sgps_hf.evaluation.seg_own_cases import evaluate_segmenter, mask_overlay
from sgps_hf.metrics import dice_iou

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def saved_segmenter(tiny_synth, tiny_task, tmp_path_factory):
    folder = tmp_path_factory.mktemp("seg") / "segmenter"
    tiny_synth.synthesize(tiny_task).save_pretrained(folder)
    return folder


def test_evaluate_per_image_and_worst_overlays(saved_segmenter, tmp_path, capsys):
    from sgps_hf import SynthesizedSegmenter

    labelled = write_task_folder(tmp_path / "labelled", 4, seed=40)
    segmenter = SynthesizedSegmenter.from_pretrained(saved_segmenter)
    result = evaluate_segmenter(segmenter, labelled)
    task = SegmentationTask("check", labelled)
    expected = dice_iou(segmenter.predict(list(task.images)), [np.asarray(m, dtype=bool) for m in task.masks])
    assert result["num_images"] == 4 and result["dice"] == pytest.approx(expected["dice"])
    assert np.mean([r["dice"] for r in result["per_image"]]) == pytest.approx(result["dice"])

    out = tmp_path / "report"
    argv = ["segment", "evaluate", "--segmenter", str(saved_segmenter), "--data", str(labelled), "--out", str(out)]
    assert main([*argv, "--worst", "2"]) == 0
    assert "4 images: Dice" in capsys.readouterr().out
    with (out / "per_image.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 4
    worst = sorted(out.glob("worst-*.png"))
    assert len(worst) == 2 and "worst-1-" in (out / "report.md").read_text()


def test_an_evaluation_folder_is_not_held_to_the_limits_of_a_support_set(saved_segmenter, tmp_path):
    """More labelled cases than a task may have examples (64), one of them a negative (an empty mask): all are scored,
    each under its file name."""
    from PIL import Image

    from sgps_hf import SynthesizedSegmenter
    from sgps_hf.models.sgps_seg.task import MAX_EXAMPLES

    labelled = write_task_folder(tmp_path / "labelled", MAX_EXAMPLES + 6, seed=70)
    Image.new("L", (40, 32)).save(labelled / "masks" / "lesion" / "0000.png")  # a case without the lesion
    result = evaluate_segmenter(SynthesizedSegmenter.from_pretrained(saved_segmenter), labelled)
    assert result["num_images"] == MAX_EXAMPLES + 6
    assert [row["name"] for row in result["per_image"]] == [f"{i:04d}.png" for i in range(MAX_EXAMPLES + 6)]
    assert all(0.0 <= row["dice"] <= 1.0 for row in result["per_image"])


def test_overlay_marks_prediction_and_reference():
    image, mask = blob_pair(3)
    shown = np.asarray(mask_overlay(image, mask > 0, reference=mask > 0))
    assert shown.shape[:2] == (image.height, image.width)
    assert (shown == [0, 200, 0]).all(-1).any()  # the reference outline
    assert not np.array_equal(shown, np.asarray(image.convert("RGB")))


def test_batch_predict_folder_with_overlays_and_a_bad_file(saved_segmenter, tmp_path, capsys):
    folder = tmp_path / "queries"
    folder.mkdir()
    for i in range(3):
        blob_pair(60 + i)[0].save(folder / f"q{i}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG nope")
    out = tmp_path / "masks"
    assert (
        main(
            [
                "segment",
                "predict",
                "--segmenter",
                str(saved_segmenter),
                "--out-dir",
                str(out),
                str(folder),
                "--overlay",
                "--batch-size",
                "2",
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert captured.out.count("foreground") == 3 and "broken.png\tERROR: " in captured.out
    assert "1 of 4 file(s) could not be segmented" in captured.err
    assert len(list(out.glob("*_mask.png"))) == 3 and len(list(out.glob("*_overlay.png"))) == 3
    argv = ["segment", "predict", "--segmenter", str(saved_segmenter), "--out-dir", str(out), str(folder)]
    assert main([*argv, "--batch-size", "0"]) == 2
    assert "--batch-size must be at least 1" in capsys.readouterr().err
