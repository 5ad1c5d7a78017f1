"""`sgps predict` over folders and globs: CSV / JSON Lines rows, error rows, abstention, saliency overlays."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
from PIL import Image

from sgps_hf.cli import main
from sgps_hf.trust.batch import classify_files, expand_inputs

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def saved(tiny_classifier, tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved") / "clf"
    tiny_classifier.save_pretrained(folder)
    return folder


@pytest.fixture
def cases(labelled_folder, tmp_path):
    """A folder of 6 images, one of them broken, and a name with a comma and a space."""
    folder = tmp_path / "cases"
    folder.mkdir()
    for i, path in enumerate(sorted((labelled_folder / "class_1").glob("*.png"))[:5]):
        (folder / (f"case {i}, left.png" if i == 0 else f"case{i}.png")).write_bytes(path.read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    (folder / "notes.txt").write_text("not an image: skipped by the folder scan")
    return folder


def test_expand_inputs(cases, tmp_path):
    files = expand_inputs([str(cases)])
    assert len(files) == 6 and all(f.suffix == ".png" for f in files)
    assert expand_inputs([str(cases / "case*.png")]) == sorted(cases.glob("case*.png"))
    from sgps_hf.errors import UsageError

    (tmp_path / "empty").mkdir()
    for bad in (str(tmp_path / "missing.png"), str(cases / "*.jpg"), str(tmp_path / "empty")):
        with pytest.raises(UsageError):
            expand_inputs([bad])


def test_one_bad_file_is_an_error_row_and_the_rest_go_on(tiny_classifier, cases):
    files = expand_inputs([str(cases)])
    with pytest.warns(UserWarning):
        rows = classify_files(tiny_classifier, files, threshold=0.99, batch_size=4)
    by_name = {r["file"].rsplit("/", 1)[-1]: r for r in rows}
    assert by_name["broken.png"]["error"] and by_name["broken.png"]["top_class"] is None
    good = [r for r in rows if not r["error"]]
    assert len(good) == 5 and all(r["abstained"] for r in good)  # an untrained 3-class model is never 99 % sure
    expected = tiny_classifier.predict([f for f in files if f.name != "broken.png"])
    for row, probs in zip(good, expected, strict=True):
        assert row["probabilities"] == pytest.approx(probs, abs=1e-6)


def test_cli_csv_and_jsonl(saved, cases, labelled_folder, tmp_path, capsys):
    out = tmp_path / "results.csv"
    assert main(["predict", "--classifier", str(saved), str(cases), "--output", str(out), "--threshold", "0.5"]) == 0
    err = capsys.readouterr().err
    assert "1 of 6 file(s) could not be classified" in err and "sgps: warning: This classifier has no conformal" in err
    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6 and {"p_class_0", "prediction_set", "abstained", "error"} <= set(rows[0])
    assert any(r["file"].endswith("case 0, left.png") for r in rows)  # a comma in a name stays one CSV field
    assert sum(1 for r in rows if r["error"]) == 1
    assert main(["predict", "--classifier", str(saved), str(cases), "--output", str(out)]) == 2  # never overwrites
    assert "already exists" in capsys.readouterr().err

    calibrated = tmp_path / "calibrated"
    shutil.copytree(saved, calibrated)
    assert main(["calibrate", "--classifier", str(calibrated), "--data", str(labelled_folder), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["predict", "--classifier", str(calibrated), str(cases / "case*.png"), "--format", "jsonl"]) == 0
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert len(lines) == 5 and all(set(line["probabilities"]) == {"class_0", "class_1", "class_2"} for line in lines)
    assert all(line["coverage"] == 0.9 and line["prediction_set"] for line in lines) and "warning" not in captured.err


def test_cli_explain_writes_one_overlay_per_readable_image(saved, cases, tmp_path, capsys):
    outdir = tmp_path / "saliency"
    assert main(["predict", "--classifier", str(saved), str(cases), "--explain", str(outdir), "--quiet"]) == 0
    overlays = sorted(outdir.glob("*.png"))
    assert len(overlays) == 5 and Image.open(overlays[0]).size == (256, 256)
    assert "ERROR" in capsys.readouterr().out
    assert main(["predict", "--classifier", str(saved), str(cases), "--explain", str(outdir)]) == 2  # not empty
