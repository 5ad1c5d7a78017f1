"""classifier.evaluate / evaluate_classifier / sgps evaluate-classifier on the user's own labelled folder."""

from __future__ import annotations

import csv
import json
import shutil
import warnings

import numpy as np
import pytest
import yaml
from PIL import Image
from sgps_testing import write_images

from sgps_hf import SynthesizedClassifier
from sgps_hf.cli import main
from sgps_hf.errors import AccuracyWarning, DataError
from sgps_hf.trust.own_cases import classification_scores, evaluate_classifier
from sgps_hf.trust.report import write_report
from sgps_hf.trust.stats import wilson

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def test_wilson_interval_matches_the_textbook_values():
    w = wilson(8, 10)
    assert (
        w["value"] == 0.8
        and w["low"] == pytest.approx(0.4902, abs=1e-4)
        and w["high"] == pytest.approx(0.9433, abs=1e-4)
    )
    assert wilson(0, 5)["low"] == 0.0 and wilson(5, 5)["high"] == 1.0 and np.isnan(wilson(0, 0)["value"])


def test_scores_of_known_predictions():
    probs = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.6, 0.4, 0.0], [0.1, 0.9, 0.0]])
    labels = np.array([0, 1, 1, 1])
    s = classification_scores(probs, labels, ["a", "b", "c"], resamples=200)
    assert s["confusion_matrix"] == [[1, 0, 0], [1, 2, 0], [0, 0, 0]]
    assert s["accuracy"]["value"] == 0.75
    assert s["balanced_accuracy"]["value"] == pytest.approx((1 + 2 / 3) / 2)
    a, b = s["per_class"]["a"], s["per_class"]["b"]
    assert (a["sensitivity"]["value"], a["specificity"]["value"], a["ppv"]["value"]) == (1.0, 2 / 3, 0.5)
    assert (b["sensitivity"]["value"], b["specificity"]["value"], b["ppv"]["value"]) == (2 / 3, 1.0, 1.0)
    assert s["per_class"]["c"]["support"] == 0 and np.isnan(s["per_class"]["c"]["sensitivity"]["value"])
    assert s["balanced_accuracy"]["low"] <= s["balanced_accuracy"]["value"] <= s["balanced_accuracy"]["high"]


def test_evaluate_a_labelled_folder_with_metadata(tiny_classifier, labelled_folder, tmp_path):
    evaluation = evaluate_classifier(tiny_classifier, labelled_folder, subgroups=["sex", "age"], min_subgroup_size=5)
    scores = evaluation.scores
    assert scores["num_images"] == 18 and np.asarray(scores["confusion_matrix"]).sum() == 18
    # the same numbers as classifying the files directly
    files = sorted(p for p in labelled_folder.rglob("*.png"))
    probs = tiny_classifier.predict_proba(files).numpy()
    truth = np.array([int(p.parent.name[-1]) for p in files])
    assert scores["accuracy"]["value"] == pytest.approx(float((probs.argmax(-1) == truth).mean()))
    by_file = {p["file"]: p for p in evaluation.predictions}
    assert set(by_file) == {p.relative_to(labelled_folder).as_posix() for p in files}
    sex = evaluation.subgroups["sex"]["groups"]
    assert {k: g["n"] for k, g in sex.items()} == {"F": 6, "M": 6, "unknown": 6}
    age = evaluation.subgroups["age"]
    assert age["binned"] and sum(g["n"] for g in age["groups"].values()) == 18 and "<40" in age["groups"]

    report = write_report(evaluation, tmp_path / "report")
    text = report.read_text()
    assert "balanced accuracy" in text and "## Subgroups" in text and "| sex | unknown | 6 |" in text
    for name in ("confusion_matrix.png", "reliability.png"):
        assert Image.open(tmp_path / "report" / name).size[0] > 200
    with (tmp_path / "report" / "predictions.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 18
    assert json.loads((tmp_path / "report" / "results.json").read_text())["scores"]["num_images"] == 18


def test_unknown_classes_missing_columns_and_support_images(tiny_classifier, labelled_folder, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(labelled_folder / "class_0", other / "melanoma")
    with pytest.raises(DataError, match="Unknown classes \\['melanoma'\\]"):
        evaluate_classifier(tiny_classifier, other)
    with pytest.raises(DataError, match="No metadata column.*skin_type.*age, sex, site"):
        evaluate_classifier(tiny_classifier, labelled_folder, subgroups=["skin_type"])
    with pytest.raises(DataError, match="needs per-image metadata"):
        evaluate_classifier(tiny_classifier, {"class_0": list((labelled_folder / "class_0").iterdir())}, ["sex"])
    support_copy = write_images(tmp_path / "copy", "class1", 1, seed=2)  # the same bytes as class_1's support image
    with pytest.warns(AccuracyWarning, match="support images of this classifier"):
        evaluation = evaluate_classifier(tiny_classifier, {"class_1": support_copy})
    assert len(evaluation.scores["support_cases"]) == 1 and evaluation.summary()["support_images_included"] == 1


def test_one_image_under_two_labels_is_warned_about_in_evaluation_and_calibration(tiny_classifier, tmp_path):
    images = write_images(tmp_path / "cases", "case", 4, seed=40)
    copy = tmp_path / "cases" / "copy.png"
    copy.write_bytes(images[0].read_bytes())
    cases = {"class_0": [images[0], images[1]], "class_1": [copy, images[2]], "class_2": [images[3]]}
    expected = "1 image\\(s\\) are labelled cases of more than one class, e.g. one of 'class_0' and 'class_1'"
    with pytest.warns(AccuracyWarning, match=expected + ".*In the evaluation one of them counts as wrong"):
        evaluate_classifier(tiny_classifier, cases)
    with pytest.warns(AccuracyWarning, match=expected + ".*In the calibration"):
        tiny_classifier.calibrate_conformal(cases, coverage=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AccuracyWarning)
        evaluate_classifier(tiny_classifier, {"class_0": images[:2], "class_1": images[2:]})


def test_evaluate_stores_the_numbers_in_the_card_model_index(tiny_classifier, labelled_folder, tmp_path):
    summary = tiny_classifier.evaluate(labelled_folder, subgroups=["site"], report_dir=tmp_path / "r")
    assert {"accuracy", "balanced_accuracy", "auroc", "ece", "accuracy_ci95"} <= set(summary)
    assert tiny_classifier.info["metrics"] == {**summary, "num_images": 18}
    tiny_classifier.save_pretrained(tmp_path / "clf")
    card = (tmp_path / "clf" / "README.md").read_text()
    index = yaml.safe_load(card.split("---")[1])["model-index"][0]["results"]
    types = {m["type"] for r in index for m in r["metrics"]}
    assert {"accuracy", "balanced_accuracy", "macro_f1", "ece"} <= types
    assert all("user-supplied labelled images, n=18" in r["dataset"]["name"] for r in index)
    assert "| site | A | 9 |" in card and "balanced accuracy" in card
    assert SynthesizedClassifier.from_pretrained(tmp_path / "clf").info["metrics"]["subgroups"]["site"]["B"]["n"] == 9


def test_cli_evaluate_classifier(tiny_classifier, labelled_folder, tmp_path, capsys):
    folder = tmp_path / "clf"
    tiny_classifier.save_pretrained(folder)
    out = tmp_path / "eval"
    argv = ["evaluate-classifier", "--classifier", str(folder), "--data", str(labelled_folder), "--out", str(out)]
    assert main([*argv, "--subgroups", "sex", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "18 images: accuracy" in printed and "sex: F" in printed and "Model card" in printed
    assert (out / "report.md").is_file() and (out / "confusion_matrix.png").is_file()
    assert "balanced_accuracy" in (folder / "README.md").read_text()
    assert main([*argv, "--subgroups", "ethnicity"]) == 2  # unknown column: one line naming the columns there
    err = capsys.readouterr().err.strip()
    assert err.startswith("sgps: error: No metadata column(s) ['ethnicity']") and "sex" in err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    argv[-1] = str(tmp_path / "busy")
    assert main(argv) == 2 and "other files" in capsys.readouterr().err
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_cases_of_other_classes_are_an_error_or_left_out_and_counted(
    tiny_classifier, labelled_folder, tmp_path, capsys
):
    """A labelled archive holds more classes than the classifier: by default an error that names the option; with
    it, those cases are left out (metadata rows too), counted, and stated in the report and by the CLI."""
    archive = tmp_path / "archive"
    shutil.copytree(labelled_folder, archive)
    extra = write_images(archive / "class_9", "other", 3, seed=90)
    with (archive / "metadata.csv").open("a", newline="") as handle:
        csv.writer(handle).writerows([[p.relative_to(archive).as_posix(), "F", 50, "A"] for p in extra])
    with pytest.raises(DataError, match=r"Unknown classes \['class_9'\].*other_classes='skip' .*--skip-other-classes"):
        evaluate_classifier(tiny_classifier, archive)
    evaluation = evaluate_classifier(tiny_classifier, archive, subgroups=["site"], other_classes="skip")
    direct = evaluate_classifier(tiny_classifier, labelled_folder, subgroups=["site"])
    assert evaluation.left_out == {"class_9": 3} and evaluation.scores["num_images"] == 18
    assert evaluation.scores["accuracy"] == direct.scores["accuracy"]
    assert sum(g["n"] for g in evaluation.subgroups["site"]["groups"].values()) == 18
    report = write_report(evaluation, tmp_path / "report").read_text()
    assert "Left out: 3 cases of classes this classifier does not have: class_9 (3)." in report
    assert json.loads((tmp_path / "report" / "results.json").read_text())["left_out"] == {"class_9": 3}

    images = write_images(tmp_path / "loose", "case", 3, seed=60)
    skipped = evaluate_classifier(tiny_classifier, {"class_0": images[:2], "tumour": images[2:]}, other_classes="skip")
    assert skipped.left_out == {"tumour": 1} and skipped.scores["num_images"] == 2
    with pytest.raises(DataError, match="No labelled case is of a class this classifier knows"):
        evaluate_classifier(tiny_classifier, {"tumour": images}, other_classes="skip")
    with pytest.raises(DataError, match="other_classes must be one of"):
        evaluate_classifier(tiny_classifier, archive, other_classes="ignore")

    folder = tmp_path / "clf"
    tiny_classifier.save_pretrained(folder)
    common = ["--classifier", str(folder), "--data", str(archive), "--skip-other-classes", "--quiet"]
    assert main(["evaluate-classifier", *common, "--out", str(tmp_path / "cli-report"), "--no-card"]) == 0
    assert "Left out 3 cases of classes this classifier does not have: class_9 (3)" in capsys.readouterr().out
    assert main(["calibrate", *common, "--coverage", "0.8"]) == 0
    out = capsys.readouterr().out
    assert "Left out 3 cases" in out and "Calibrated on 18 cases" in out
    assert main(["calibrate", "--classifier", str(folder), "--data", str(archive), "--quiet"]) == 2
    assert "--skip-other-classes" in capsys.readouterr().err
