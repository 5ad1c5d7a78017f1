"""The segmentation family keeps the classifier side's guarantees (issue 25): no user file lost, guarded saves,
safetensors only, tampered or broken folders refused with a typed error, one-line CLI errors."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import threading

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from seg_testing import blob_pair, tiny_seg_synthesizer, write_task_folder

from sgps_hf import CheckpointError, SegmentationTask, SGPSSegSynthesizer, SynthesizedSegmenter
from sgps_hf.cli import main
from sgps_hf.errors import OutputPathError

pytestmark = [pytest.mark.usefixtures("torch_single_thread"), pytest.mark.timeout(180)]


class _Trap:
    """Unpickling this calls ``open(marker, "w")``: proof that someone ran pickle.load on the file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg-originals")
    synth = tiny_seg_synthesizer(0)
    synth.save_pretrained(root / "synth")
    segmenter = synth.synthesize(SegmentationTask("blob", [blob_pair(i) for i in range(3)]))
    segmenter.save_pretrained(root / "segmenter")
    return root


def copy_of(originals, tmp_path, name):
    shutil.copytree(originals / name, tmp_path / name)
    return tmp_path / name


def one_error_line(err: str) -> bool:
    return len([line for line in err.splitlines() if line.startswith("sgps: error: ")]) == 1 and "Traceback" not in err


def edit_json(path, edit):
    content = json.loads(path.read_text())
    edit(content)
    path.write_text(json.dumps(content))


# -- 1. saves: the guarded path ---------------------------------------------------------------------------------------
def test_segment_synthesize_into_a_folder_of_user_files_refuses_and_deletes_nothing(originals, tmp_path, capsys):
    examples = write_task_folder(tmp_path / "lesions", 2)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    code = main(["segment", "synthesize", "--examples", str(examples), "--out", str(out)] + _synth(originals))
    err = capsys.readouterr().err
    assert code == 2 and one_error_line(err) and "not a segmenter folder" in err and "Loading" not in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"] and (out / "notes.txt").read_text() == "my notes"


def _synth(originals):
    return ["--synthesizer", str(originals / "synth")]


def test_resaving_a_segmenter_folder_keeps_the_users_files_and_mode(originals, tmp_path):
    folder = copy_of(originals, tmp_path, "segmenter")
    (folder / "notes.txt").write_text("reviewed by Dr. A")
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD").write_text("ref: main")
    os.chmod(folder, 0o750)
    segmenter = SynthesizedSegmenter.from_pretrained(folder)
    segmenter.save_pretrained(folder)
    assert (folder / "notes.txt").read_text() == "reviewed by Dr. A" and (folder / ".git" / "HEAD").is_file()
    assert (os.stat(folder).st_mode & 0o777) == 0o750
    assert SynthesizedSegmenter.from_pretrained(folder).info["weights_sha256"] == segmenter.info["weights_sha256"]


def test_a_new_segmenter_folder_follows_the_umask(originals, tmp_path):
    segmenter = SynthesizedSegmenter.from_pretrained(originals / "segmenter")
    old = os.umask(0o027)
    try:
        segmenter.save_pretrained(tmp_path / "new")
    finally:
        os.umask(old)
    assert (os.stat(tmp_path / "new").st_mode & 0o777) == 0o750
    assert (os.stat(tmp_path / "new" / "model.safetensors").st_mode & 0o777) == 0o640


def test_a_segmenter_saved_before_labels_were_recorded_still_loads(originals, tmp_path):
    folder = copy_of(originals, tmp_path, "segmenter")
    edit_json(folder / "sgps_seg_task.json", lambda c: c.pop("labels"))
    assert SynthesizedSegmenter.from_pretrained(folder).label == "blob"


def test_a_segmenter_save_refuses_a_file_and_a_classifier_folder(originals, tmp_path):
    segmenter = SynthesizedSegmenter.from_pretrained(originals / "segmenter")
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputPathError, match="existing file"):
        segmenter.save_pretrained(tmp_path / "file")
    other = tmp_path / "classifier"
    other.mkdir()
    (other / "sgps_task.json").write_text("{}")
    (other / "config.json").write_text("{}")
    with pytest.raises(OutputPathError, match="not a segmenter folder"):
        segmenter.save_pretrained(other)
    assert (other / "sgps_task.json").read_text() == "{}"


def test_a_segmenter_save_waits_for_the_folders_writer_lock(originals, tmp_path, monkeypatch):
    from sgps_hf.hub import atomic

    segmenter = SynthesizedSegmenter.from_pretrained(originals / "segmenter")
    target = tmp_path / "seg"
    held, release = threading.Event(), threading.Event()

    def writer():
        with atomic.folder_lock(target):
            held.set()
            release.wait(60)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        held.wait(60)
        monkeypatch.setattr(atomic, "LOCK_TIMEOUT_S", 0.2)
        with pytest.raises(OutputPathError, match="Another process has been writing"):
            segmenter.save_pretrained(target)
        assert not target.exists()
    finally:
        release.set()
        thread.join()
    segmenter.save_pretrained(target)
    assert (target / "model.safetensors").is_file()


# -- 2. the segmentation synthesizer: safetensors only, tensors against the config --------------------------------
def test_a_pickle_seg_synthesizer_is_refused_without_unpickling(originals, tmp_path):
    folder = copy_of(originals, tmp_path, "synth")
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")  # a real, loadable pickle checkpoint
    with pytest.raises(CheckpointError, match=r"No model.safetensors.*pytorch_model.bin.*pickle files are refused"):
        SGPSSegSynthesizer.from_pretrained(folder)
    marker = tmp_path / "unpickled"
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Trap(str(marker))))
    with pytest.raises(CheckpointError):
        SGPSSegSynthesizer.from_pretrained(folder)
    assert not marker.exists()


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.pop("log_scale"), r"1 missing tensors \(e\.g\. \['log_scale'\]\)"),
        (lambda t: t.__setitem__("injected", torch.zeros(2)), r"1 unexpected tensors"),
        (lambda t: t.__setitem__("log_scale", torch.zeros(2)), r"wrong shape \(log_scale"),
        (lambda t: t.__setitem__("log_scale", t["log_scale"].double()), r"wrong dtype \(log_scale: F64"),
    ],
)
def test_seg_synthesizer_tensors_must_match_its_config(originals, tmp_path, edit, message):
    folder = copy_of(originals, tmp_path, "synth")
    tensors = load_file(folder / "model.safetensors")
    edit(tensors)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=message):
        SGPSSegSynthesizer.from_pretrained(folder)


def test_invalid_seg_synthesizer_configs_and_truncated_weights_are_checkpoint_errors(originals, tmp_path):
    folder = copy_of(originals, tmp_path, "synth")
    edit_json(folder / "config.json", lambda c: c.update(hidden_size=16))
    with pytest.raises(CheckpointError, match="wrong shape"):
        SGPSSegSynthesizer.from_pretrained(folder)
    edit_json(folder / "config.json", lambda c: c.update(hidden_size=8, head="nonsense"))
    with pytest.raises(CheckpointError, match="head must be one of"):
        SGPSSegSynthesizer.from_pretrained(folder)
    edit_json(folder / "config.json", lambda c: c.update(head="ridge"))
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        SGPSSegSynthesizer.from_pretrained(folder)


# -- 3. segmenter folders are verified before use ---------------------------------------------------------------------
def test_a_truncated_segmenter_is_a_checkpoint_error_and_one_cli_line(originals, tmp_path, capsys):
    folder = copy_of(originals, tmp_path, "segmenter")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) - 100])
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        SynthesizedSegmenter.from_pretrained(folder)
    query = tmp_path / "q.png"
    blob_pair(9)[0].save(query)
    code = main(["segment", "predict", "--segmenter", str(folder), "--out-dir", str(tmp_path / "m"), str(query)])
    err = capsys.readouterr().err
    assert code == 2 and one_error_line(err) and "probably a bug" not in err and "safetensors" in err


SEGMENTER_TAMPERING = {
    "swapped id2label": (
        "config.json",
        lambda c: c.update(id2label={"0": "foreground", "1": "background"}),
        "'id2label'.*not the labels",
    ),
    "swapped label2id": ("config.json", lambda c: c.update(label2id={"foreground": 0, "background": 1}), "label2id"),
    "hub backbone": (
        "config.json",
        lambda c: c["backbone_config"].update(backbone="hf-hub:someone/else"),
        "backbone_config.backbone",
    ),
    "pretrained download": (
        "config.json",
        lambda c: c["backbone_config"].update(use_pretrained_backbone=True),
        "use_pretrained_backbone",
    ),
    "unknown config key": ("config.json", lambda c: c.update(trust_remote_code=True), "not written by synthesis"),
    "auxiliary head": ("config.json", lambda c: c.update(use_auxiliary_head=True), "use_auxiliary_head"),
    "width": ("config.json", lambda c: c.update(hidden_size=9), "'hidden_size'"),
    "processor size": ("preprocessor_config.json", lambda c: c.update(size={"height": 64, "width": 64}), "'size'"),
    "processor std": ("preprocessor_config.json", lambda c: c.update(image_std=[0, 1, 1]), "image_std"),
    "sidecar label": ("sgps_seg_task.json", lambda c: c["task"].update(label=5), "task.label"),
    "sidecar labels": ("sgps_seg_task.json", lambda c: c.update(labels=["foreground", "background"]), "'labels'"),
    "sidecar image size": ("sgps_seg_task.json", lambda c: c["segmenter"].update(image_size="32"), "image_size"),
    "sidecar metrics": ("sgps_seg_task.json", lambda c: c.update(metrics={"dice": "high"}), "'metrics'"),
    "sidecar sha": ("sgps_seg_task.json", lambda c: c.pop("weights_sha256"), "weights_sha256"),
    "sidecar examples": ("sgps_seg_task.json", lambda c: c["task"].update(examples=[{}]), "task.examples"),
}


@pytest.mark.parametrize("case", sorted(SEGMENTER_TAMPERING))
def test_tampered_segmenter_folders_are_refused_naming_the_key(originals, tmp_path, case):
    name, edit, message = SEGMENTER_TAMPERING[case]
    folder = copy_of(originals, tmp_path, "segmenter")
    edit_json(folder / name, edit)
    with pytest.raises(CheckpointError, match=message):
        SynthesizedSegmenter.from_pretrained(folder)


def test_other_weights_and_pickles_are_refused(originals, tmp_path):
    folder = copy_of(originals, tmp_path, "segmenter")
    tensors = load_file(folder / "model.safetensors")
    tensors["decode_head.classifier.bias"] = tensors["decode_head.classifier.bias"].flip(0).contiguous()
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="weights were replaced or corrupted"):
        SynthesizedSegmenter.from_pretrained(folder)
    marker = tmp_path / "unpickled"
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(_Trap(str(marker))))
    with pytest.raises(CheckpointError, match="pickle files are refused"):
        SynthesizedSegmenter.from_pretrained(folder)
    assert not marker.exists()


def test_a_missing_segmenter_folder_is_reported_as_such(tmp_path):
    with pytest.raises(CheckpointError, match="Segmenter folder .* does not exist"):
        SynthesizedSegmenter.from_pretrained(str(tmp_path / "nope"))


def test_a_verified_segmenter_predicts_as_before(originals):
    segmenter = SynthesizedSegmenter.from_pretrained(originals / "segmenter")
    assert segmenter.info["labels"] == ["background", "foreground"]
    probabilities = segmenter.predict_proba([blob_pair(5)[0]])[0]
    assert probabilities.shape == (32, 40) and np.isfinite(probabilities).all()


@pytest.mark.parametrize("what", ["synthesizer", "segmenter"])
def test_a_failed_save_changes_nothing(originals, tmp_path, monkeypatch, what):
    import transformers.modeling_utils as modeling_utils

    folder = copy_of(originals, tmp_path, "synth" if what == "synthesizer" else "segmenter")
    (folder / "notes.txt").write_text("kept")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    model = (
        tiny_seg_synthesizer(1)
        if what == "synthesizer"
        else tiny_seg_synthesizer(1).synthesize(SegmentationTask("blob", [blob_pair(4)]))
    )

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(modeling_utils, "safe_save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        model.save_pretrained(folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == [folder.name]
