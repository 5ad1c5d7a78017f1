"""The app end to end through gradio_client on 127.0.0.1: synthesize, predict, adapt, download, push, load tests."""

from __future__ import annotations

import concurrent.futures
import zipfile
from pathlib import Path

import huggingface_hub as hfh
import pytest
from gradio_client import Client, handle_file
from sgps_testing import SHARED_DATA

from sgps_hf import SynthesizedClassifier

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("torch_single_thread")]

NUM_SLOTS = 8  # AppLimits.max_classes: the synthesize endpoint takes name, text, files for every slot


def synth_args(classes: list[tuple[str, str, list[Path]]], task_name: str = "derm", modality: str = "photo") -> list:
    args: list = [task_name, modality]
    for i in range(NUM_SLOTS):
        if i < len(classes):
            name, text, files = classes[i]
            args += [name, text, [handle_file(str(f)) for f in files]]
        else:
            args += ["", "", None]
    return args


def app_error(call) -> str:
    """The message of the error an endpoint call raised (gradio_client raises AppError for gr.Error)."""
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError) as info:
        call()
    return str(info.value)


THREE_CLASSES = [
    ("nevus", "Round symmetric brown macule.", ["png", "dicom"]),
    ("melanoma", "Asymmetric dark lesion with irregular border.", ["jpeg", "tiff_gray"]),
    ("keratosis", "Scaly stuck-on plaque.", []),  # text-only class
]


def synthesized_session(url: str, image_files: dict[str, Path]) -> Client:
    """A client session that has synthesized a 3-class classifier from PNG, JPEG, TIFF and DICOM images."""
    session = Client(url, verbose=False)
    classes = [(name, text, [image_files[k] for k in kinds]) for name, text, kinds in THREE_CLASSES]
    status = session.predict(*synth_args(classes), api_name="/synthesize")
    assert status[0].startswith("Synthesized **3-class** classifier for `derm` from 4 image(s)")
    assert "# derm: synthesized medical image classifier" in status[1]  # the rendered model card
    return session


@pytest.fixture(scope="module")
def client(app_server, image_files):
    return synthesized_session(app_server[1], image_files)


def test_predict_gives_probabilities_and_abstains_below_threshold(client, image_files):
    outcome, label, table, cards = client.predict(
        [handle_file(str(image_files["png2"])), handle_file(str(image_files["dicom_noext"]))], 0.0, api_name="/predict"
    )
    probs = {c["label"]: c["confidence"] for c in label["confidences"]}
    assert set(probs) == {"nevus", "melanoma", "keratosis"} and sum(probs.values()) == pytest.approx(1.0, abs=1e-4)
    top = max(probs, key=probs.get)
    assert label["label"] == top and outcome == f"**second.png: {top}** ({probs[top]:.2f})."
    assert table.count("\n") == 3 and "IM0001" in table and "uncertain" not in table
    assert probs[top] < 1.0
    assert cards.count('class="sgps-card"') == 2 and f"second.png: {top}</b>" in cards
    assert cards.count('alt="saliency overlay"') == 2  # one Grad-CAM overlay per image
    threshold = (probs[top] + 1.0) / 2
    files = [handle_file(str(image_files["png2"]))]
    outcome, _, table, cards = client.predict(files, threshold, api_name="/predict")
    assert outcome.startswith("**second.png: uncertain**") and f"below {threshold:.2f}" in table
    assert "second.png: uncertain</b> (top class " in cards


def test_one_bad_file_is_reported_and_the_others_classified(client, image_files):
    files = [handle_file(str(image_files["png2"])), handle_file(str(image_files["text"]))]
    outcome, _, table, cards = client.predict(files, 0.0, api_name="/predict")
    assert "1 file(s) could not be read" in outcome and table.count("\n") == 2
    assert cards.count('alt="saliency overlay"') == 1 and "<b>notes.png</b>: not classified:" in cards
    assert "not a PNG, JPEG, TIFF or DICOM image" in cards


def test_invalid_uploads_get_a_message(client, image_files):
    for kind, message in [
        ("text", "'notes.png': not a PNG, JPEG, TIFF or DICOM image"),
        ("gif", "'anim.gif': not a PNG"),
        ("truncated", "'truncated.png': The image is corrupt or truncated"),
        ("tiny", "'tiny.png': The image is 4x4"),
    ]:
        error = app_error(
            lambda kind=kind: client.predict([handle_file(str(image_files[kind]))], 0.5, api_name="/predict")
        )
        assert error.startswith(message), error
    too_many = [handle_file(str(image_files["png"]))] * 17
    assert "at most 16" in app_error(lambda: client.predict(too_many, 0.5, api_name="/predict"))


def test_update_download_and_reload(client, image_files, tmp_path):
    result = client.predict("melanoma", [handle_file(str(image_files["png3"]))], api_name="/update")
    assert result[0] == "Version 2: Added 1 verified case(s): 1 to `melanoma` (now 3); re-synthesized."
    assert "## Changelog" in result[1] and "**v2**" in result[1]
    archive = Path(client.predict(True, api_name="/download"))
    assert archive.name == "derm.zip"
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(tmp_path)
    loaded = SynthesizedClassifier.from_pretrained(tmp_path / "derm")
    assert loaded.version == 2 and [v["version"] for v in loaded.versions] == [1]
    assert (tmp_path / "derm" / "versions" / "v1" / "sgps_task.json").is_file()
    assert sum(len(v) for v in loaded.support.values()) == 5
    _, label, *_ = client.predict([handle_file(str(image_files["png2"]))], 0.0, api_name="/predict")
    local = loaded.predict([image_files["png2"]])[0]
    assert {c["label"]: c["confidence"] for c in label["confidences"]} == pytest.approx(local, abs=1e-6)
    without = Path(client.predict(False, api_name="/download"))
    with zipfile.ZipFile(without) as zf:
        assert not [n for n in zf.namelist() if "/support/" in n]


def test_push_uses_only_the_typed_token_and_never_keeps_it(client, app_server, hub_env, tmp_path, capfd, caplog):
    from gradio.utils import get_upload_folder

    secret = "hf_typedInTheAppSecret123"
    repo_id = hub_env.new_repo_id("app-push")
    with hub_env.require_token(secret):  # HF_TOKEN in the environment is the server's default token: wrong here
        assert "Paste a Hub access token" in app_error(
            lambda: client.predict(repo_id, "", True, False, api_name="/push")
        )
        error = app_error(lambda: client.predict(repo_id, "hf_wrongTokenValue999", True, False, api_name="/push"))
        assert "Push to" in error and "failed" in error and "hf_wrongTokenValue999" not in error
        status, token_box = client.predict(repo_id, secret, True, False, api_name="/push")
        assert status.startswith(f"Pushed to `{repo_id}`") and token_box == ""  # the token field is cleared
        files = set(hfh.list_repo_files(repo_id, token=secret))
    assert {"model.safetensors", "config.json", "README.md", "sgps_task.json"} <= files
    assert not [f for f in files if f.startswith("support/")]  # patient images stay out by default
    out, err = capfd.readouterr()
    assert secret not in out + err + caplog.text
    for root in (Path(get_upload_folder()), hub_env.storage_dir, tmp_path):
        for path in root.rglob("*"):
            if path.is_file() and path.stat().st_size < 50_000_000:
                assert secret.encode() not in path.read_bytes(), path


def test_50_concurrent_predictions(client, app_server, image_files):
    demo, _ = app_server
    before = demo.sgps_stats.internal_errors
    files = [image_files[k] for k in ("png", "jpeg", "tiff", "dicom", "png_gray")]
    jobs = [client.submit([handle_file(str(files[i % len(files)]))], 0.5, api_name="/predict") for i in range(50)]
    results = [job.result(timeout=120) for job in jobs]
    for outcome, label, *_ in results:
        assert len(label["confidences"]) == 3 and outcome.startswith("**")
    assert demo.sgps_stats.internal_errors == before


def test_load_200_mixed_valid_and_invalid_requests(client, app_server, image_files):
    """200 requests, 4 parallel clients: valid ones answer, invalid ones get their message, no server error."""
    from gradio_client.exceptions import AppError

    demo, url = app_server
    before = demo.sgps_stats.internal_errors
    cases = [
        ("valid", [image_files["png"]], 0.5, None),
        ("valid", [image_files["dicom_noext"], image_files["tiff"]], 0.9, None),
        ("not an image", [image_files["text"]], 0.5, "not a PNG, JPEG, TIFF or DICOM image"),
        ("gif", [image_files["gif"]], 0.5, "not a PNG, JPEG, TIFF or DICOM image"),
        ("truncated", [image_files["truncated"]], 0.5, "corrupt or truncated"),
        ("too small", [image_files["tiny"]], 0.5, "at least 8x8"),
        ("no image", [], 0.5, "Upload at least one image"),
        ("bad threshold", [image_files["png"]], 7.0, "greater than maximum value 1.0"),  # Gradio's own Slider check
    ]
    # One session per worker thread: gradio_client has a race when one session runs overlapping requests while
    # its event stream closes (a client-side CancelledError, not a server answer), so each thread runs its 50 in turn.
    sessions = [synthesized_session(url, image_files) for _ in range(4)]
    fresh = Client(url, verbose=False)  # a session that never synthesized

    def run_worker(worker: int) -> list:
        outcomes = []
        for index in range(worker, 200, 4):
            kind, files, threshold, expected = cases[index % len(cases)]
            session = sessions[worker]
            if index % 25 == 0 and kind != "bad threshold":  # Gradio checks the slider's range before the handler runs
                session, expected = fresh, "No classifier yet"
            try:
                result = session.predict([handle_file(str(f)) for f in files], threshold, api_name="/predict")
                outcomes.append((kind, expected, None, result))
            except AppError as exc:
                outcomes.append((kind, expected, str(exc), None))
        return outcomes

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        outcomes = [o for batch in pool.map(run_worker, range(4)) for o in batch]
    valid = invalid = 0
    for kind, expected, error, result in outcomes:
        if expected is None:
            assert error is None, (kind, error)
            assert len(result[1]["confidences"]) == 3
            valid += 1
        else:
            assert error is not None and expected in error, (kind, expected, error)
            invalid += 1
    assert valid + invalid == 200 and valid >= 40 and invalid >= 100
    assert demo.sgps_stats.internal_errors == before
    print(f"\nload test: {valid} valid answered, {invalid} invalid rejected with a message, 0 server errors")


def test_upload_above_the_size_limit_is_refused(app_server, tmp_path):
    """Gradio itself refuses files over max_file_size (launch sets it from AppLimits) before they reach a handler."""
    demo, url = app_server
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * (demo.sgps_limits.max_upload_bytes + 1))
    with pytest.raises(Exception, match="(?i)file size|too large|413|exceeds"):
        Client(url, verbose=False).predict([handle_file(str(big))], 0.5, api_name="/predict")


@pytest.mark.skipif(not (SHARED_DATA / "derm-smartphone-pad-ufes-20").is_dir(), reason="shared data not available")
def test_example_task_is_one_click_away(app_server):
    _, url = app_server
    session = Client(url, verbose=False)
    values = session.predict("derm-smartphone-pad-ufes-20 (3 classes)", api_name="/load_example")
    task_name, modality, *rows = values[: 2 + 3 * NUM_SLOTS]
    try_images = values[-1]
    assert task_name == "derm-smartphone-pad-ufes-20" and modality
    filled = [rows[i : i + 3] for i in range(0, len(rows), 3) if rows[i]]
    assert [r[0] for r in filled] == ["actinic_keratosis", "basal_cell_carcinoma", "melanoma"]
    assert all(r[1] and len(r[2]) == 2 for r in filled) and len(try_images) == 3
    classes = [(name, text, [Path(f) for f in files]) for name, text, files in filled]
    status = session.predict(*synth_args(classes, task_name, modality), api_name="/synthesize")
    assert status[0].startswith("Synthesized **3-class** classifier")
    _, label, *_ = session.predict([handle_file(f) for f in try_images], 0.0, api_name="/predict")
    assert {c["label"] for c in label["confidences"]} == {"actinic_keratosis", "basal_cell_carcinoma", "melanoma"}


def test_sgps_demo_command_serves_the_app(tiny_synth_dir, monkeypatch):
    """`sgps demo --synthesizer ... --port ...` builds the app and serves it on loopback, share off by default."""
    import socket
    import urllib.request

    import gradio as gr

    from sgps_hf import cli
    from sgps_hf.app import ui as demo_app

    built, launched = [], []
    real_build, real_launch = demo_app.build_demo, gr.Blocks.launch
    monkeypatch.setattr(demo_app, "build_demo", lambda *a, **k: built.append(real_build(*a, **k)) or built[-1])
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **k: launched.append(k) or real_launch(self, **k))
    monkeypatch.setattr(demo_app, "_serve_until_stopped", lambda demo: None)  # the test keeps the main thread
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert cli.main(["demo", "--synthesizer", str(tiny_synth_dir), "--port", str(port)]) == 0
    try:
        assert (
            launched[0]["server_name"] == "127.0.0.1"
            and launched[0]["share"] is False
            and launched[0]["run_history"] is False
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        body = opener.open(f"http://127.0.0.1:{port}/config", timeout=30).read().decode()
        assert "Synthesize a medical image classifier" in body and "local folder synth" in body
        assert str(tiny_synth_dir) not in body  # the server's path is never shown
    finally:
        built[0].close()


def test_multi_frame_dicom_warning_is_shown_next_to_classify(client, image_files):
    outcome, _, _, cards = client.predict([handle_file(str(image_files["dicom_frames"]))], 0.0, api_name="/predict")
    assert "**Warning:** DICOM volume.dcm holds 3 frames; only frame 2 of 3 (the middle one) is used." in outcome
    assert 'class="sgps-warning"' in cards


def test_calibrate_prediction_sets_then_cards_show_them(app_server, image_files):
    session = synthesized_session(app_server[1], image_files)
    batches = {"nevus": ["png2", "png3"], "melanoma": ["tiff", "png_gray"], "keratosis": ["dicom_noext"]}
    for label, kinds in batches.items():
        files = [handle_file(str(image_files[k])) for k in kinds]
        listing, _ = session.predict(label, files, 0.8, api_name="/calibration_cases")
    assert listing.startswith("5 labelled case(s): `nevus` 2, `melanoma` 2, `keratosis` 1.")
    status, card = session.predict(0.8, api_name="/calibrate")
    assert "Calibrated on 5 labelled case(s)" in status and "at least 80%" in status
    _, _, _, cards = session.predict([handle_file(str(image_files["png2"]))], 0.0, api_name="/predict")
    assert "Prediction set (80% coverage guarantee)" in cards and "no coverage guarantee" not in cards
    error = app_error(
        lambda: session.predict(None, [handle_file(str(image_files["png2"]))], 0.8, api_name="/calibration_cases")
    )
    assert "Pick the class these labelled cases belong to" in error


def test_one_image_uploaded_for_two_classes_is_warned_about(app_server, image_files):
    session = Client(app_server[1], verbose=False)
    classes = [("nevus", "", [image_files["png"]]), ("melanoma", "", [image_files["png"], image_files["jpeg"]])]
    status = session.predict(*synth_args(classes), api_name="/synthesize")
    assert status[0].startswith("Synthesized **2-class** classifier")
    assert "**Warning:** 1 image(s) are support images of more than one class, e.g. one of 'nevus' and" in status[0]
