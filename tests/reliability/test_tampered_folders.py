"""Classifier folders are verified on load (issue 16): tampered or malformed files give a CheckpointError that
names the file and the key, never a classifier that loads and misleads, and never another exception type."""

from __future__ import annotations

import json
import shutil
import struct
import zlib

import pytest
from safetensors.torch import load_file, save_file
from sgps_testing import synthetic_task, tiny_synthesizer

from sgps_hf import CheckpointError, SynthesizedClassifier

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("tampered")
    synth = tiny_synthesizer(seed=0)
    first = synth.synthesize(synthetic_task(root / "t1"))
    first.save_pretrained(root / "classifier")
    other = synth.synthesize(
        synthetic_task(root / "t2", texts=("other a", "other b", "other c"), images_per_class=(1, 1, 1))
    )
    other.save_pretrained(root / "other")
    first.save_pretrained(root / "versioned")
    return root


def copy(saved, tmp_path, name="classifier"):
    shutil.copytree(saved / name, tmp_path / name)
    return tmp_path / name


def edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_the_untouched_folder_loads(saved):
    assert SynthesizedClassifier.from_pretrained(saved / "classifier").label_names == ["class_0", "class_1", "class_2"]


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda c: c.update(label_names=c["label_names"][::-1]),
            r"config.json: key 'label_names' .* differs from the classes of .*sgps_task.json",
        ),
        (lambda c: c.update(label_names=["a", "a", "b"]), "'label_names' must be unique, non-empty"),
        (lambda c: c.update(label_names=["a", "", "b"]), "'label_names' must be unique, non-empty"),
        (lambda c: c["model_args"].update(act_layer="relu"), "key 'model_args' .* not what synthesis wrote"),
        (lambda c: c["model_args"].update(global_pool="max"), "key 'model_args' .* not what synthesis wrote"),
        (lambda c: c["model_args"].update(bn_eps=0.5), "key 'model_args' .* not what synthesis wrote"),
        (lambda c: c.update(architecture="local-dir:/etc"), "must be a plain timm model name"),
        (lambda c: c.update(architecture="hf-hub:someone/model"), "must be a plain timm model name"),
        (lambda c: c["pretrained_cfg"].update(mean=[0.0, 0.0, 0.0]), r"key 'pretrained_cfg.mean'"),
        (lambda c: c["pretrained_cfg"].update(input_size=[3, 512, 512]), r"key 'pretrained_cfg.input_size'"),
    ],
)
def test_tampered_config_json_is_refused(saved, tmp_path, change, message):
    folder = copy(saved, tmp_path)
    edit_json(folder / "config.json", change)
    with pytest.raises(CheckpointError, match=message):
        SynthesizedClassifier.from_pretrained(folder)


def test_weights_of_another_classifier_are_refused(saved, tmp_path):
    folder = copy(saved, tmp_path)
    shutil.copy(saved / "other" / "model.safetensors", folder / "model.safetensors")  # same shapes, other values
    with pytest.raises(
        CheckpointError, match=r"model.safetensors has sha256 .* records key 'weights_sha256'.*replaced"
    ):
        SynthesizedClassifier.from_pretrained(folder)


def test_an_edited_weight_value_is_refused(saved, tmp_path):
    folder = copy(saved, tmp_path)
    tensors = load_file(folder / "model.safetensors")
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] += 1
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="weights_sha256"):
        SynthesizedClassifier.from_pretrained(folder)


MALFORMED_TASK_FILE = [
    (lambda i: i["data_config"].update(mean=[float("nan"), 0.5, 0.5]), "data_config"),
    (lambda i: i["data_config"].update(std=[0.0, 0.5, 0.5]), "data_config"),
    (lambda i: i["data_config"].update(std=[float("inf"), 0.5, 0.5]), "data_config"),
    (lambda i: i["data_config"].update(input_size=[3, 100_000, 100_000]), "data_config"),
    (lambda i: i["data_config"].update(input_size=[3, 32, 64]), "data_config"),
    (lambda i: i["target"].update(architecture="local-dir:/etc"), "'target.architecture'"),
    (lambda i: i["target"]["model_args"].update(act_layer="relu"), "'target.model_args'"),
    (lambda i: i["task"]["classes"].__setitem__(0, 5), r"'task.classes\[0\]'"),
    (lambda i: i["task"]["classes"][0].update(name=7), r"'task.classes\[0\].name'"),
    (lambda i: i["task"]["classes"][0].update(num_images="2"), r"'task.classes\[0\].num_images'"),
    (
        lambda i: i["task"]["classes"][1].update(name=i["task"]["classes"][0]["name"]),
        "'task.classes' must have unique",
    ),
    (lambda i: i["task"].update(name=None), "'task.name'"),
    (lambda i: i.update(weights_sha256=5), "'weights_sha256'"),
    (lambda i: i.update(synthesizer=None), "'synthesizer'"),
    (lambda i: i.update(version="2"), "'version'"),
    (lambda i: i.update(history="none"), "'history'"),
    (lambda i: i.update(history=[{"summary": 1}]), r"'history\[0\]'"),
    (lambda i: i.update(metrics={"accuracy": "high"}), "'metrics'"),
    (lambda i: i.update(support=[]), "key 'support'"),
    (lambda i: i["support"].update(files={"x": []}), "key 'support'"),
    (lambda i: i.update(format_version=99), "'format_version'"),
]


@pytest.mark.parametrize("change, key", MALFORMED_TASK_FILE)
def test_every_malformed_task_file_key_is_named(saved, tmp_path, change, key):
    folder = copy(saved, tmp_path)
    edit_json(folder / "sgps_task.json", change)
    with pytest.raises(CheckpointError, match="sgps_task.json") as info:
        SynthesizedClassifier.from_pretrained(folder)
    assert __import__("re").search(key, str(info.value)), str(info.value)


@pytest.mark.parametrize("content", [b"\xff\xfe not utf-8", b"[1, 2]", b'{"a": 1, "a": 2}', b"{" * 100_000])
@pytest.mark.parametrize("name", ["config.json", "sgps_task.json"])
def test_unreadable_sidecars_are_checkpoint_errors(saved, tmp_path, name, content):
    folder = copy(saved, tmp_path)
    (folder / name).write_bytes(content)
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        SynthesizedClassifier.from_pretrained(folder)


def test_a_malformed_version_file_is_named(saved, tmp_path):
    folder = copy(saved, tmp_path)
    (folder / "versions" / "v1").mkdir(parents=True)
    (folder / "versions" / "v1" / "sgps_task.json").write_text("[]")
    with pytest.raises(CheckpointError, match=r"versions/v1/sgps_task.json must be a JSON object"):
        SynthesizedClassifier.from_pretrained(folder)
    (folder / "versions" / "v1" / "sgps_task.json").write_text('{"version": 7}')
    with pytest.raises(CheckpointError, match=r"versions/v1/sgps_task.json: key 'version'"):
        SynthesizedClassifier.from_pretrained(folder)


def png_header_only(width, height):
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IEND", b"")
    )


def test_a_support_png_replaced_by_a_bomb_is_a_checkpoint_error(saved, tmp_path):
    folder = copy(saved, tmp_path)
    sorted(folder.glob("support/*/*.png"))[0].write_bytes(png_header_only(100_000, 100_000))
    classifier = SynthesizedClassifier.from_pretrained(folder)
    with pytest.raises(CheckpointError, match="Support image .* cannot be read"):
        _ = classifier.support


def test_a_missing_local_folder_is_reported_as_such(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for missing in [str(tmp_path / "no-such-classifier"), "./typo", "../typo/classifier", "~/no-such-sgps-classifier"]:
        with pytest.raises(CheckpointError, match="does not exist.*check the path"):
            SynthesizedClassifier.from_pretrained(missing)
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(CheckpointError, match="is a file, not a classifier folder"):
        SynthesizedClassifier.from_pretrained("a-file")
