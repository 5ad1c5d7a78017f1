"""The app's validation and actions (sgps_hf.app) without a server: formats, limits, paths, abstention, export."""

from __future__ import annotations

import gc
import json
import math
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image
from sgps_testing import SHARED_DATA, tiny_synthesizer

from sgps_hf import InvalidTaskError, SGPSError, SynthesizedClassifier
from sgps_hf.app.examples import example_tasks
from sgps_hf.app.export import ExportArea, export_zip, push_from_app, safe_filename, scrub_token
from sgps_hf.app.inputs import ClassRow, build_task, read_upload, sniff_format
from sgps_hf.app.limits import AppInputError, AppLimits, AppTimeoutError, RequestRunner
from sgps_hf.app.prediction import (
    UNCERTAIN,
    Prediction,
    check_threshold,
    predictions_markdown,
    update_from_app,
)
from sgps_hf.app.results_view import classify_uploads

pytestmark = pytest.mark.usefixtures("torch_single_thread")

ACCEPTED = ["png", "png_gray", "jpeg", "tiff", "tiff_gray", "dicom", "dicom_noext"]
REJECTED = {
    "text": "not a PNG, JPEG, TIFF or DICOM image",
    "gif": "not a PNG, JPEG, TIFF or DICOM image",
    "bmp": "not a PNG, JPEG, TIFF or DICOM image",
    "truncated": "corrupt or truncated",
    "empty": "the file is empty",
    "tiny": "at least 8x8",
}


@pytest.fixture(scope="module")
def synth():
    return tiny_synthesizer(seed=0)


@pytest.fixture(scope="module")
def classifier(synth, image_files):
    rows = [
        ClassRow("nevus", "round brown macule", [image_files["png"], image_files["dicom"]]),
        ClassRow("melanoma", "irregular dark plaque", [image_files["jpeg"], image_files["tiff"]]),
    ]
    return synth.synthesize(build_task(rows, "derm", "photo"))


# -- uploads -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ACCEPTED)
def test_accepts_png_jpeg_tiff_dicom_gray_or_rgb_any_size(image_files, kind):
    data, image = read_upload(str(image_files[kind]))
    assert image.mode == "RGB" and min(image.size) >= 8
    assert data == image_files[kind].read_bytes()  # bytes kept for the fingerprint of the original file


@pytest.mark.parametrize("kind", sorted(REJECTED))
def test_rejects_other_formats_and_broken_files_with_the_file_name(image_files, kind):
    with pytest.raises(AppInputError, match=REJECTED[kind]) as info:
        read_upload({"path": str(image_files[kind])})
    message = str(info.value)
    assert repr(image_files[kind].name) in message and str(image_files[kind].parent) not in message  # base name only


def test_sniffing_ignores_extensions(image_files):
    assert sniff_format(image_files["dicom_noext"].read_bytes()[:132]) == "DICOM"
    assert sniff_format(image_files["text"].read_bytes()[:132]) is None  # a .png name does not make it a PNG
    assert [sniff_format(image_files[k].read_bytes()[:132]) for k in ("png", "jpeg", "tiff")] == [
        "PNG",
        "JPEG",
        "TIFF",
    ]


def test_size_pixel_and_location_limits(image_files, tmp_path):
    with pytest.raises(AppInputError, match="upload limit"):
        read_upload(image_files["jpeg"], AppLimits(max_upload_bytes=100))
    bomb = tmp_path / "bomb.png"
    Image.new("L", (3000, 3000)).save(bomb)  # compresses to a few KB; refused from its header
    with pytest.raises(AppInputError, match="3000x3000 pixels is above the app's 1 MP limit"):
        read_upload(bomb, AppLimits(max_image_pixels=1_000_000))
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    with pytest.raises(AppInputError, match="not an uploaded file"):
        read_upload(image_files["png"], roots=[uploads])  # outside the upload folder: refused, not read
    with pytest.raises(AppInputError, match="not an uploaded file"):
        read_upload(str(uploads / ".." / image_files["png"].name), roots=[uploads])
    link = uploads / "link.png"
    link.symlink_to(image_files["png"])
    with pytest.raises(AppInputError, match="not an uploaded file"):
        read_upload(link, roots=[uploads])  # a symlink out of the folder is resolved first
    with pytest.raises(AppInputError, match="missing"):
        read_upload(uploads / "gone.png", roots=[uploads])
    with pytest.raises(AppInputError, match="Unrecognised upload"):
        read_upload(12)


# -- the task form -----------------------------------------------------------------------------------------------
def test_build_task_skips_blank_rows_and_keeps_order(image_files):
    rows = [
        ClassRow("a", "text a", [image_files["png"]]),
        ClassRow("", "", None),
        ClassRow(None, None, []),
        ClassRow("b", "", [str(image_files["dicom"])]),
        ClassRow("c", "text only", None),
    ]
    task = build_task(rows, "  my task ", None)
    assert task.class_names == ["a", "b", "c"] and task.name == "my task" and task.modality == ""
    assert task.classes[1].fingerprints() == [
        __import__("hashlib").sha256(image_files["dicom"].read_bytes()).hexdigest()
    ]


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([("a", "x", None)], "at least 2 classes"),
        ([("a", "x", None), ("", "text but no name", None)], "Class 2 has images or text but no name"),
        ([("a", "x", None), ("b", "y", ["png"] * 6)], "at most 5 per class"),
        ([(f"c{i}", "x", None) for i in range(9)], "at most 8"),
        ([("a", "x", None), ("b", "y" * 2001, None)], "keep it under 2000"),
        ([("a", "x", None), ("b", "", ["text"])], "notes.png"),
    ],
)
def test_build_task_errors_say_what_to_fix(image_files, rows, message):
    form = [ClassRow(n, t, [image_files[k] for k in f] if f else None) for n, t, f in rows]
    with pytest.raises(AppInputError, match=message):
        build_task(form)


def test_task_rules_of_the_library_apply(image_files):
    with pytest.raises(InvalidTaskError, match="Duplicate class name"):
        build_task([ClassRow("Nevus", "x"), ClassRow("nevus", "y")])
    with pytest.raises(InvalidTaskError, match="control characters"):
        build_task([ClassRow("a\x00", "x"), ClassRow("b", "y")])


# -- prediction and abstention -------------------------------------------------------------------------------------
def test_threshold_validation():
    assert check_threshold("0.25") == 0.25 and check_threshold(1) == 1.0
    for bad in (-0.01, 1.5, math.nan, "high", None, [0.5]):
        with pytest.raises(AppInputError, match="Confidence threshold"):
            check_threshold(bad)


def test_abstains_below_the_threshold():
    sure = Prediction("a.png", {"x": 0.8, "y": 0.2}, "x", 0.8, threshold=0.6)
    unsure = Prediction("b|c.png", {"x": 0.55, "y": 0.45}, "x", 0.55, threshold=0.6)
    assert (sure.outcome, unsure.outcome) == ("x", UNCERTAIN)
    table = predictions_markdown([sure, unsure])
    assert "| a.png | **x** | x | 0.800 |" in table
    assert r"| b\|c.png | **uncertain** (below 0.60) | x | 0.550 |" in table  # a pipe in a name cannot break the table


def test_classify_uploads_end_to_end(classifier, image_files):
    def predictions(files, threshold):
        return [r.prediction for r in classify_uploads(classifier, files, threshold, explain=False)]

    results = predictions([image_files["png_gray"], image_files["dicom_noext"]], 0.0)
    assert [r.file for r in results] == ["gray.png", "IM0001"]
    for r in results:
        assert set(r.probabilities) == {"nevus", "melanoma"} and r.outcome == r.top_label
        assert sum(r.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    assert all(r.outcome == UNCERTAIN for r in predictions([image_files["png_gray"]], 1.0) if r.top_probability < 1.0)
    with pytest.raises(AppInputError, match="synthesize one first"):
        classify_uploads(None, [image_files["png"]], 0.5)
    with pytest.raises(AppInputError, match="at least one image"):
        classify_uploads(classifier, [], 0.5)
    with pytest.raises(AppInputError, match="at most 16"):
        classify_uploads(classifier, [image_files["png"]] * 17, 0.5)


def test_update_from_app(synth, classifier, image_files):
    updated = update_from_app(synth, classifier, "melanoma", [image_files["png2"]])
    assert updated.version == 2 and updated.info["task"]["classes"][1]["num_images"] == 3
    with pytest.raises(AppInputError, match="Pick the class"):
        update_from_app(synth, classifier, "unknown", [image_files["png2"]])
    with pytest.raises(AppInputError, match="at least one verified case"):
        update_from_app(synth, classifier, "melanoma", None)
    with pytest.raises(AppInputError, match="can take 1 more"):
        update_from_app(synth, classifier, "melanoma", [image_files["png2"]] * 2, AppLimits(max_support_per_class=3))
    notes: list[str] = []  # shown under the update button
    update_from_app(synth, classifier, "melanoma", [image_files["png2"], image_files["dicom_frames"]], notes=notes)
    assert len(notes) == 1 and notes[0].startswith("DICOM volume.dcm holds 3 frames; only frame 2 of 3")


# -- export and push -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["../../etc/passwd", ".hidden", "a/b\\c", "", "ünïcode task"])
def test_safe_filename_never_escapes(name):
    slug = safe_filename(name)
    assert slug and "/" not in slug and "\\" not in slug and not slug.startswith(".") and ".." not in slug.split("-")


def test_export_zip_holds_only_relative_paths(classifier, tmp_path):
    classifier.info["task"]["name"] = "../../evil"
    try:
        area = ExportArea(tmp_path / "exports")
        with_support = export_zip(classifier, area, include_support=True)
        without = export_zip(classifier, area, include_support=False)
    finally:
        classifier.info["task"]["name"] = "derm"
    assert with_support.parent.parent == area.root and with_support.name == "evil.zip"
    with zipfile.ZipFile(with_support) as zf:
        names = zf.namelist()
        assert all(n.startswith("evil/") and ".." not in n.split("/") for n in names)
        assert {"evil/model.safetensors", "evil/config.json", "evil/README.md", "evil/sgps_task.json"} <= set(names)
        assert sum(n.startswith("evil/support/") for n in names) == 4
        zf.extractall(tmp_path / "unzipped")
    loaded = SynthesizedClassifier.from_pretrained(tmp_path / "unzipped" / "evil")
    assert loaded.support is not None and loaded.label_names == classifier.label_names
    with zipfile.ZipFile(without) as zf:
        assert not [n for n in zf.namelist() if "/support/" in n]
        assert "are **not** part of this copy" in zf.read("evil/README.md").decode()


def test_export_area_prunes_old_exports(tmp_path):
    area = ExportArea(tmp_path / "x", max_age_s=0.0)
    first = area.new_folder()
    time.sleep(0.01)
    area.new_folder()
    assert not first.exists()


def test_an_export_area_removes_the_folder_it_made_but_never_a_given_one(tmp_path):
    closed = ExportArea()
    (closed.new_folder() / "task.zip").write_bytes(b"zip")
    closed.close()
    assert not closed.root.exists()
    collected = ExportArea()
    root = collected.root
    (collected.new_folder() / "task.zip").write_bytes(b"zip")
    del collected
    gc.collect()
    assert not root.exists()
    given = ExportArea(tmp_path / "mine")
    (given.new_folder() / "task.zip").write_bytes(b"zip")
    given.close()
    del given
    gc.collect()
    assert [p.name for p in (tmp_path / "mine").rglob("*.zip")] == ["task.zip"]


def test_an_export_area_is_removed_when_the_process_exits():
    code = (
        "from sgps_hf.app.export import ExportArea\n"
        "area = ExportArea()\n"
        "(area.new_folder() / 'task.zip').write_bytes(b'zip')\n"
        "print(area.root)"
    )
    root = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert root and "sgps-app-exports-" in root
    assert not Path(root).exists()


def test_push_validation_never_uses_a_server_token(classifier, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_serverSideTokenThatMustNotBeUsed")
    for repo_id, token, message in [
        ("", "t", "Enter the Hub repo id"),
        ("no-namespace", "t", "must look like"),
        ("a/b/c", "t", "must look like"),
        ("user/bad name!", "t", "Invalid repo id"),
        ("user/ok", "", "Paste a Hub access token"),
        ("user/ok", None, "Paste a Hub access token"),
    ]:
        with pytest.raises(AppInputError, match=message):
            push_from_app(classifier, repo_id, token, True, False)
    with pytest.raises(AppInputError, match="synthesize one first"):
        push_from_app(None, "user/ok", "hf_x", True, False)


def test_scrub_token():
    assert scrub_token("401 for hf_abcdefghijkl at url", "hf_abcdefghijkl") == "401 for *** at url"
    assert scrub_token("Bearer hf_OtherTokenValue123", None) == "Bearer ***"


# -- examples and time limits --------------------------------------------------------------------------------------
@pytest.mark.skipif(not (SHARED_DATA / "derm-smartphone-pad-ufes-20").is_dir(), reason="shared data not available")
def test_examples_from_the_shared_data():
    examples = example_tasks(SHARED_DATA)
    assert examples and all(len(e.classes) == 3 for e in examples)
    for example in examples:
        assert example.modality
        for _name, text, paths in example.classes:
            assert text and len(paths) == 2 and all(p.is_file() for p in paths)
        assert len(example.try_images) == 3 and not set(example.try_images) & {
            p for _, _, ps in example.classes for p in ps
        }


def test_examples_absent_without_data(tmp_path):
    assert example_tasks(tmp_path / "missing") == []
    (tmp_path / "other-task" / "a").mkdir(parents=True)
    assert example_tasks(tmp_path) == []


def test_request_runner_time_limit():
    runner = RequestRunner(workers=1, timeout_s=0.2)
    assert runner.run("Quick", lambda x: x + 1, 1) == 2
    with pytest.raises(AppTimeoutError, match="Slow took longer than the app's 0 s limit"):
        runner.run("Slow", time.sleep, 1.0)


# -- fuzzing -------------------------------------------------------------------------------------------------------
_valid_files = st.sampled_from(["png", "png_gray", "jpeg", "tiff", "dicom", "dicom_noext"])
_files = st.one_of(
    _valid_files, _valid_files, _valid_files, st.sampled_from(["text", "gif", "truncated", "empty", "tiny"])
)
_names = st.one_of(st.sampled_from(["nevus", "melanoma", "Nevus", "bcc", "", " "]), st.text(max_size=20))
_texts = st.one_of(
    st.none(),
    st.sampled_from(["", "round brown macule"]),
    st.text(max_size=40),
    st.text(alphabet=st.characters(max_codepoint=0x3000), min_size=1990, max_size=2010),
)
_random_rows = st.lists(st.tuples(_names, _texts, st.one_of(st.none(), st.lists(_files, max_size=6))), max_size=9)
_plausible_rows = st.lists(  # mostly valid forms, so the fuzzing also reaches the success path
    st.tuples(
        st.text(alphabet="abcdefgh _-", min_size=1, max_size=12),
        st.sampled_from(["", "scaly red patch", "x" * 1999]),
        st.lists(_valid_files, min_size=1, max_size=5),
    ),
    min_size=2,
    max_size=8,
    unique_by=lambda row: row[0].strip().casefold(),
)
_rows = st.one_of(_random_rows, _plausible_rows)


@settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(rows=_rows, task_name=_names, modality=st.one_of(_names, st.text(min_size=95, max_size=105)))
def test_fuzz_form_inputs_only_raise_user_errors(image_files, rows, task_name, modality):
    """Whatever a client sends, the form gives a valid task or a user-facing SGPSError naming no server path."""
    form = [ClassRow(n, t, None if f is None else [image_files[k] for k in f]) for n, t, f in rows]
    try:
        task = build_task(form, task_name, modality)
    except SGPSError as exc:
        event(f"rejected: {type(exc).__name__}")
        assert str(exc) and str(image_files["png"].parent) not in str(exc)
    else:
        event("valid task")
        assert 2 <= len(task.classes) <= 8
        assert all(len(c.images) <= 5 for c in task.classes)
        json.dumps(task.to_dict())


@settings(max_examples=150, deadline=None)
@given(value=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8), st.none(), st.integers()))
def test_fuzz_threshold(value):
    try:
        result = check_threshold(value)
    except AppInputError as exc:
        assert "Confidence threshold" in str(exc)
    else:
        assert 0.0 <= result <= 1.0
