"""CLI errors (issue 16): every user error is one line on stderr saying what to fix, exit status 2;
``--debug`` shows the traceback instead."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest
from sgps_testing import PROJECT_ROOT, synthetic_task, tiny_synthesizer

from sgps_hf import SynthesizedClassifier
from sgps_hf.cli import main

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-errors")
    tiny_synthesizer(seed=0).synthesize(synthetic_task(root / "images")).save_pretrained(root / "classifier")
    return root / "classifier"


def one_line_error(capsys, argv, status=2):
    assert main(argv) == status
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("sgps: error: ") and "Traceback" not in err, err
    return err


def test_a_mistyped_classifier_folder_is_reported_as_missing(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = one_line_error(capsys, ["predict", "--classifier", "./my-clasifier", "x.png"])
    assert "does not exist" in err and "Hub" not in err
    err = one_line_error(capsys, ["predict", "--classifier", str(tmp_path / "outputs" / "clf"), "x.png"])
    assert "does not exist" in err


def test_an_existing_file_as_out(capsys, tmp_path):
    (tmp_path / "task.yaml").write_text("classes: []")
    (tmp_path / "out").write_text("a file")
    err = one_line_error(capsys, ["synthesize", "--task", str(tmp_path / "task.yaml"), "--out", str(tmp_path / "out")])
    assert "existing file, not a folder" in err and (tmp_path / "out").read_text() == "a file"


def test_a_bad_task_file_and_a_bad_image(capsys, classifier_dir, tmp_path):
    (tmp_path / "task.yaml").write_text("classes: [")
    assert "not valid YAML" in one_line_error(
        capsys, ["synthesize", "--task", str(tmp_path / "task.yaml"), "--out", str(tmp_path / "o")]
    )
    (tmp_path / "broken.png").write_bytes(b"\x89PNG broken")
    # A bad image is an error row (the other images would go on); only bad files: status 2 and one summary line.
    assert main(["predict", "--classifier", str(classifier_dir), str(tmp_path / "broken.png")]) == 2
    captured = capsys.readouterr()
    assert captured.out.startswith(f"{tmp_path / 'broken.png'}\tERROR: ") and "broken.png" in captured.out[20:]
    assert captured.err.strip() == "sgps: 1 of 1 file(s) could not be classified (see their error rows)."


@pytest.mark.parametrize(
    "code, words",
    [
        (errno.ENOSPC, "free some disk space"),
        (errno.EROFS, "read-only"),
        (errno.EACCES, "permission"),
        (errno.EEXIST, "choose another output path"),
    ],
)
def test_a_full_disk_or_read_only_folder_during_a_save(capsys, classifier_dir, tmp_path, monkeypatch, code, words):
    def failing_save(self, *args, **kwargs):
        raise OSError(code, os.strerror(code), str(tmp_path / "out" / "model.safetensors"))

    monkeypatch.setattr(SynthesizedClassifier, "save_pretrained", failing_save)
    import sgps_hf.cli.predict as predict

    monkeypatch.setattr(
        predict,
        "run",
        lambda args: SynthesizedClassifier.from_pretrained(args.classifier).save_pretrained(tmp_path / "out"),
    )
    err = one_line_error(capsys, ["predict", "--classifier", str(classifier_dir), "x.png"])
    assert os.strerror(code) in err and words in err and "model.safetensors" in err


def test_a_bad_repo_id_on_push(capsys, classifier_dir):
    for repo_id in ["not a repo id", "a/b/c", "justaname"]:
        assert "--repo-id" in one_line_error(
            capsys, ["push", "--classifier", str(classifier_dir), "--repo-id", repo_id]
        )


def test_a_bug_is_one_line_with_status_1(capsys, monkeypatch):
    import sgps_hf.cli.predict as predict

    monkeypatch.setattr(predict, "run", lambda args: {}["missing"])
    err = one_line_error(capsys, ["predict", "--classifier", "x", "y.png"], status=1)
    assert "--debug" in err


def test_debug_shows_the_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    command = [sys.executable, "-m", "sgps_hf.cli", "predict", "--classifier", str(tmp_path / "missing"), "x.png"]
    plain = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr and len(plain.stderr.strip().splitlines()) == 1
    debug = subprocess.run(command + ["--debug"], capture_output=True, text=True, env=env, timeout=120)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "CheckpointError" in debug.stderr
