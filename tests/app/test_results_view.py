"""The app's results view: one card per image (overlay, headline, bars), a bad file reported, no default class."""

from __future__ import annotations

import pytest
from sgps_testing import tiny_synthesizer

from sgps_hf import ClassSpec, TaskSpec
from sgps_hf.app.limits import AppInputError
from sgps_hf.app.results_view import classify_uploads, results_html
from sgps_hf.errors import AccuracyWarning

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def classifier(image_files):
    task = TaskSpec(
        [
            ClassSpec("<b>melanoma</b>", "dark irregular lesion", [image_files["png"]]),
            ClassSpec("nevus", "round brown macule", [image_files["jpeg"]]),
        ]
    )
    return tiny_synthesizer(seed=0).synthesize(task)


def test_cards_gallery_and_a_bad_file(classifier, image_files):
    files = [image_files["png2"], image_files["text"], image_files["tiff"]]
    results = classify_uploads(classifier, files, 0.0)
    assert [r.error is None for r in results] == [True, False, True] and "not a PNG" in results[1].error
    assert results[0].overlay.size == (224, 224) and results[1].overlay is None
    page = results_html(results)
    assert page.count('class="sgps-card"') == 2 and page.count('class="sgps-error"') == 1
    assert page.count("data:image/png;base64,") == 2  # the overlay in each card
    assert "<b>melanoma</b>" not in page and "&lt;b&gt;melanoma&lt;/b&gt;" in page  # class names stay text
    assert "no coverage guarantee" in page


def test_uncertain_is_the_headline_and_all_bad_is_an_error(classifier, image_files):
    (result,) = classify_uploads(classifier, [image_files["png2"]], 1.0, explain=False)
    assert result.prediction.abstained and result.overlay is None
    assert "second.png: uncertain</b>" in results_html([result])
    with pytest.raises(AppInputError, match="not a PNG"):
        classify_uploads(classifier, [image_files["text"]], 0.5)
    with pytest.raises(AppInputError, match="synthesize one first"):
        classify_uploads(None, [image_files["png2"]], 0.5)


def test_new_cases_have_no_default_class(classifier):
    from sgps_hf.app.classification import _classifier_outputs

    update = _classifier_outputs(classifier, "done")[3]
    assert update["choices"] and update["value"] is None


def test_support_thumbnails_per_class(classifier):
    from sgps_hf.app.results_view import support_html

    page = support_html(classifier)
    assert page.count('alt="saliency overlay"') == 0 and page.count("data:image/png;base64,") == 2
    assert "&lt;b&gt;melanoma&lt;/b&gt;" in page and "nevus" in page


def test_multi_frame_dicom_says_which_frame_is_used(classifier, image_files):
    from sgps_hf.app.inputs import ClassRow, build_task

    results = classify_uploads(classifier, [image_files["dicom_frames"], image_files["png2"]], 0.0, explain=False)
    assert results[0].warnings == [
        "DICOM volume.dcm holds 3 frames; only frame 2 of 3 (the middle one) is used. "
        "Export the frame you mean as its own image to choose another."
    ]
    assert results[1].warnings == [] and results[0].prediction is not None
    page = results_html(results)
    assert page.count('class="sgps-warning"') == 1 and "volume.dcm holds 3 frames; only frame 2 of 3" in page
    rows = [ClassRow("a", "", [image_files["dicom_frames"]]), ClassRow("b", "", [image_files["png"]])]
    notes: list[str] = []  # shown by the synthesize handler under its button
    build_task(rows, notes=notes)
    assert notes == results[0].warnings


def test_notes_are_collected_per_thread_not_through_global_warnings(image_files):
    import threading
    import warnings

    from sgps_hf.app.inputs import read_with_warnings

    found: dict[str, list[str]] = {}

    def read(key: str) -> None:
        found[key] = read_with_warnings(image_files[key])[2]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        threads = [threading.Thread(target=read, args=(key,)) for key in ("dicom_frames", "png2", "dicom")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert found["png2"] == [] and found["dicom"] == [] and "volume.dcm holds 3 frames" in found["dicom_frames"][0]
    assert not [w for w in caught if issubclass(w.category, AccuracyWarning)]  # nothing leaked process-wide
    with pytest.warns(AccuracyWarning, match="DICOM <bytes> holds 3 frames"):  # outside the app: a warning
        from sgps_hf.imaging import load_image

        load_image(image_files["dicom_frames"].read_bytes())
