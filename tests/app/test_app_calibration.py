"""The app's "Calibrate prediction sets" step: labelled cases per batch, a coverage, then sets in the result cards."""

from __future__ import annotations

import pytest
from sgps_testing import tiny_synthesizer

from sgps_hf import ClassSpec, TaskSpec
from sgps_hf.app.calibration import add_cases, calibrate_from_app, cases_markdown
from sgps_hf.app.limits import AppInputError
from sgps_hf.app.results_view import classify_uploads, results_html
from sgps_hf.errors import DataError
from sgps_hf.trust.conformal import prediction_sets

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture()
def classifier(image_files):
    task = TaskSpec(
        [
            ClassSpec("melanoma", "dark irregular lesion", [image_files["png"]]),
            ClassSpec("nevus", "round brown macule", [image_files["jpeg"]]),
        ]
    )
    return tiny_synthesizer(seed=0).synthesize(task)


def test_calibrate_in_batches_then_cards_show_the_set(classifier, image_files):
    cases = add_cases(classifier, [], "melanoma", [image_files[k] for k in ("png", "png2", "tiff")])
    cases = add_cases(classifier, cases, "nevus", [image_files[k] for k in ("png3", "tiff_gray", "png_gray")])
    assert [label for _, label in cases] == ["melanoma"] * 3 + ["nevus"] * 3
    assert (
        cases_markdown(cases, 0.8)
        == "6 labelled case(s): `melanoma` 3, `nevus` 3. A 80% coverage guarantee needs at least 4."
    )

    before = classify_uploads(classifier, [image_files["png2"]], 0.0, explain=False)
    assert before[0].prediction.prediction_set is None and "no coverage guarantee" in results_html(before)

    calibrated, summary = calibrate_from_app(classifier, cases, 0.8)
    assert calibrated is classifier and classifier.info["conformal"]["num_cases"] == 6
    assert "at least 80%" in summary
    assert "1 of the 6 labelled cases are support images of this classifier" in summary  # rgb.png: warned
    assert "more than one class" not in summary

    (after,) = classify_uploads(classifier, [image_files["png2"]], 0.0, explain=False)
    probs = [after.prediction.probabilities[c] for c in classifier.label_names]
    expected = [classifier.label_names[i] for i in prediction_sets([probs], classifier.info["conformal"])[0]]
    assert after.prediction.prediction_set == expected and after.prediction.coverage == 0.8
    page = results_html([after])
    assert 'class="sgps-set"' in page and "80% coverage guarantee" in page and "no coverage guarantee" not in page


def test_calibration_input_errors(classifier, image_files):
    with pytest.raises(AppInputError, match="Pick the class"):
        add_cases(classifier, [], None, [image_files["png2"]])
    with pytest.raises(AppInputError, match="not a PNG"):
        add_cases(classifier, [], "nevus", [image_files["png2"], image_files["text"]])
    with pytest.raises(AppInputError, match="synthesize one first"):
        add_cases(None, [], "nevus", [image_files["png2"]])
    with pytest.raises(AppInputError, match="'second.png': already among the labelled cases"):
        add_cases(
            classifier, add_cases(classifier, [], "nevus", [image_files["png2"]]), "melanoma", [image_files["png2"]]
        )
    with pytest.raises(AppInputError, match="Add labelled cases first"):
        calibrate_from_app(classifier, [], 0.9)
    cases = add_cases(classifier, [], "nevus", [image_files["png2"], image_files["png3"]])
    with pytest.raises(AppInputError, match="outside 0.5-0.99"):
        calibrate_from_app(classifier, cases, 1.0)
    with pytest.raises(DataError, match="too few for a 0.9 coverage guarantee: at least 9"):
        calibrate_from_app(classifier, cases, 0.9)
    assert "conformal" not in classifier.info


def test_a_copy_of_one_case_under_another_class_is_warned_about(classifier, image_files, tmp_path):
    copy = tmp_path / "copy-of-second.png"
    copy.write_bytes(image_files["png2"].read_bytes())
    cases = add_cases(classifier, [], "nevus", [image_files[k] for k in ("png2", "png3", "tiff_gray")])
    cases = add_cases(classifier, cases, "melanoma", [copy, image_files["tiff"], image_files["png_gray"]])
    _, summary = calibrate_from_app(classifier, cases, 0.8)
    assert (
        "**Warning:** 1 image(s) are labelled cases of more than one class, e.g. one of 'nevus' and 'melanoma'"
        in summary
    )
