"""Versions are real (issue 25): re-synthesizing or updating a classifier folder never drops verified cases or history,
and every earlier version keeps its task file, its support images and its exact weights."""

from __future__ import annotations

import json

import pytest
import torch
from sgps_testing import tiny_synthesizer, write_images

from sgps_hf import CheckpointError, SGPSProcessor, SynthesizedClassifier
from sgps_hf.cli import main
from sgps_hf.errors import OutputPathError
from sgps_hf.hub.checkpoints import state_dict_sha256

pytestmark = [pytest.mark.usefixtures("torch_single_thread"), pytest.mark.timeout(300)]

TASK_YAML = """\
name: derm-demo
classes:
  - name: melanoma
    description: Asymmetric pigmented lesion with irregular notched borders.
    images: [images/mel-0.png, images/mel-1.png]
  - name: nevus
    description: Small symmetric round macule of uniform brown colour.
    images: [images/nev-0.png]
"""


def tree(folder):
    return {p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else None) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("versions")
    synth = tiny_synthesizer(seed=0)
    synth.save_pretrained(root / "synth")
    SGPSProcessor.from_sgps_config(synth.config).save_pretrained(root / "synth")
    write_images(root / "task" / "images", "mel", 2, seed=1)
    write_images(root / "task" / "images", "nev", 1, seed=2)
    (root / "task" / "task.yaml").write_text(TASK_YAML)
    new = write_images(root / "new", "case", 2, seed=3)
    return root, new


def synthesize(root, out, *extra):
    return main(["synthesize", "--task", str(root / "task" / "task.yaml"), "--out", str(out)] + _s(root) + list(extra))


def _s(root):
    return ["--synthesizer", str(root / "synth")]


def test_resynthesizing_over_an_updated_folder_is_refused_until_forced(workspace, tmp_path, capsys):
    root, new = workspace
    out = tmp_path / "clf"
    assert synthesize(root, out) == 0
    assert main(["update", "--classifier", str(out), "--add", f"melanoma={new[0]}"] + _s(root)) == 0
    capsys.readouterr()
    before = tree(out)
    assert synthesize(root, out) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("sgps: error: ")]
    assert len(errors) == 1 and "version 2" in errors[0] and "1 verified case" in errors[0]
    assert "sgps update" in errors[0] and "--force" in errors[0]
    assert tree(out) == before
    with pytest.raises(OutputPathError, match="overwrite=True"):
        tiny_synthesizer(seed=0).synthesize(_task(root)).save_pretrained(out)
    assert tree(out) == before
    assert synthesize(root, out, "--force") == 0
    assert SynthesizedClassifier.from_pretrained(out).version == 1


def _task(root):
    from sgps_hf import TaskSpec

    return TaskSpec.from_file(root / "task" / "task.yaml")


def test_every_earlier_version_keeps_its_task_file_support_and_exact_weights(workspace, tmp_path):
    root, new = workspace
    synth = tiny_synthesizer(seed=0)
    processor = SGPSProcessor.from_sgps_config(synth.config)
    v1 = synth.synthesize(_task(root), processor=processor)
    v1.save_pretrained(tmp_path / "clf")
    v2 = synth.update(SynthesizedClassifier.from_pretrained(tmp_path / "clf"), {"melanoma": [new[0]]}, processor)
    v2.save_pretrained(tmp_path / "clf")
    # the second update starts from the saved folder: version 1's weights come from versions/, version 2's from memory
    v3 = synth.update(SynthesizedClassifier.from_pretrained(tmp_path / "clf"), {"nevus": [new[1]]}, processor)
    v3.save_pretrained(tmp_path / "elsewhere")  # --out another folder: the history travels along
    for folder in (tmp_path / "clf", tmp_path / "elsewhere"):
        assert (folder / "versions" / "v1" / "model.safetensors").is_file()
    queries = [str(p) for p in new]
    for version, original in ((1, v1), (2, v2)):
        loaded = SynthesizedClassifier.load_version(tmp_path / "elsewhere", version)
        assert loaded.version == version and loaded.info["weights_sha256"] == original.info["weights_sha256"]
        assert state_dict_sha256(loaded.model.state_dict()) == original.info["weights_sha256"]
        assert torch.equal(loaded.predict_proba(queries), original.predict_proba(queries))
        support = loaded.support
        assert {name: len(images) for name, images in support.items()} == {
            c["name"]: c["num_images"] for c in original.info["task"]["classes"]
        }
        assert [len(v) for v in support.values()] == [len(v) for v in original.support.values()]
    assert (
        SynthesizedClassifier.load_version(tmp_path / "elsewhere", 3).info["weights_sha256"]
        == v3.info["weights_sha256"]
    )
    # a re-synthesis of version 1 from what it keeps reproduces its weights bit for bit
    again = synth.synthesize(
        _rebuilt_task(SynthesizedClassifier.load_version(tmp_path / "elsewhere", 1)), processor=processor
    ).info["weights_sha256"]
    assert again == v1.info["weights_sha256"]


def _rebuilt_task(classifier):
    from sgps_hf import ClassSpec, TaskSpec

    task = classifier.info["task"]
    classes = [
        ClassSpec(name=c["name"], description=c["description"], images=classifier.support[c["name"]])
        for c in task["classes"]
    ]
    return TaskSpec(classes=classes, name=task["name"], modality=task["modality"])


def test_tampered_or_missing_version_weights(workspace, tmp_path):
    root, new = workspace
    synth = tiny_synthesizer(seed=0)
    processor = SGPSProcessor.from_sgps_config(synth.config)
    synth.synthesize(_task(root), processor=processor).save_pretrained(tmp_path / "clf")
    updated = synth.update(SynthesizedClassifier.from_pretrained(tmp_path / "clf"), {"melanoma": new[:1]}, processor)
    updated.save_pretrained(tmp_path / "clf")
    archived = tmp_path / "clf" / "versions" / "v1" / "model.safetensors"
    from safetensors.torch import load_file, save_file

    tensors = load_file(archived)
    tensors["classifier.bias"] = tensors["classifier.bias"] + 1
    save_file(tensors, archived, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="replaced or corrupted"):
        SynthesizedClassifier.load_version(tmp_path / "clf", 1)
    again = synth.update(SynthesizedClassifier.from_pretrained(tmp_path / "clf"), {"nevus": new[1:]}, processor)
    with pytest.raises(CheckpointError, match="version 1 do not match"):
        again.save_pretrained(tmp_path / "clf")
    archived.unlink()  # a folder written before versions kept weights: loads, and says what a version lacks
    assert SynthesizedClassifier.from_pretrained(tmp_path / "clf").version == 2
    with pytest.raises(CheckpointError, match="keeps its task file but not its weights"):
        SynthesizedClassifier.load_version(tmp_path / "clf", 1)
    with pytest.raises(CheckpointError, match="has no version 7"):
        SynthesizedClassifier.load_version(tmp_path / "clf", 7)
    info = json.loads((tmp_path / "clf" / "versions" / "v1" / "sgps_task.json").read_text())
    assert info["version"] == 1 and info["support"]["files"]["melanoma"]
