"""Nothing the user wrote is ever deleted, and concurrent writers of one classifier folder lose nothing (issue 16)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
from sgps_testing import PROJECT_ROOT, synthetic_task, tiny_synthesizer, write_images

from sgps_hf import CheckpointError, SGPSProcessor, SynthesizedClassifier
from sgps_hf.cli import main
from sgps_hf.errors import OutputPathError
from sgps_hf.hub.atomic import atomic_directory, folder_lock

pytestmark = pytest.mark.usefixtures("torch_single_thread")

TASK_YAML = """\
name: demo
classes:
  - name: alpha
    description: round pink papule
    images: [images/a-0.png]
  - name: beta
    description: dark irregular plaque
    images: [images/b-0.png]
"""


def tree(folder):
    return {
        p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))
    }


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    synth = tiny_synthesizer(seed=0)
    synth.save_pretrained(root / "synth")
    SGPSProcessor.from_sgps_config(synth.config).save_pretrained(root / "synth")
    return root / "synth"


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("saved")
    classifier = tiny_synthesizer(seed=0).synthesize(synthetic_task(root / "images"))
    classifier.save_pretrained(root / "classifier")
    return root / "classifier"


def copy_of(saved, tmp_path):
    import shutil

    shutil.copytree(saved, tmp_path / "classifier")
    return tmp_path / "classifier"


def test_synthesize_into_a_folder_of_user_files_refuses_and_deletes_nothing(synth_dir, tmp_path, monkeypatch, capsys):
    write_images(tmp_path / "images", "a", 1, seed=1)
    write_images(tmp_path / "images", "b", 1, seed=2)
    (tmp_path / "task.yaml").write_text(TASK_YAML)
    (tmp_path / "notes.txt").write_text("my notes")
    tmp_path.chmod(0o755)
    before = tree(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["synthesize", "--task", "task.yaml", "--out", ".", "--synthesizer", str(synth_dir)]) == 2
    err = capsys.readouterr().err
    assert "already holds other files" in err and len(err.strip().splitlines()) == 1
    assert tree(tmp_path) == before
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o755
    assert main(["synthesize", "--task", "task.yaml", "--out", "out", "--synthesizer", str(synth_dir)]) == 0
    assert (tmp_path / "out" / "model.safetensors").is_file() and (tmp_path / "notes.txt").read_text() == "my notes"


def test_saved_folders_follow_the_umask_or_keep_their_mode(saved, tmp_path):
    classifier = SynthesizedClassifier.from_pretrained(saved)
    old = os.umask(0o022)
    try:
        classifier.save_pretrained(tmp_path / "new")
        assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o755
        assert stat.S_IMODE((tmp_path / "new" / "sgps_task.json").stat().st_mode) == 0o644
        (tmp_path / "new").chmod(0o750)
        classifier.save_pretrained(tmp_path / "new")
        assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o750
    finally:
        os.umask(old)


def test_a_missing_support_image_is_refused_and_nothing_is_deleted(saved, tmp_path):
    folder = copy_of(saved, tmp_path)
    pngs = sorted(folder.glob("support/*/*.png"))
    pngs[0].unlink()
    before = tree(folder)
    with pytest.raises(CheckpointError, match=r"1 of the 6 support images .* are missing.*Restore them"):
        SynthesizedClassifier.from_pretrained(folder).save_pretrained(folder)
    assert tree(folder) == before


def test_an_edited_support_manifest_is_refused(saved, tmp_path):
    folder = copy_of(saved, tmp_path)
    info = json.loads((folder / "sgps_task.json").read_text())
    name = info["task"]["classes"][1]["name"]
    info["support"]["files"][name] = info["support"]["files"][name][:1]
    (folder / "sgps_task.json").write_text(json.dumps(info))
    with pytest.raises(
        CheckpointError, match=r"sgps_task.json: key 'support'.*lists 1 image\(s\) but task.classes says num_images=2"
    ):
        SynthesizedClassifier.from_pretrained(folder)
    del info["support"]["files"][name]
    (folder / "sgps_task.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match=r"support'.files lists the classes"):
        SynthesizedClassifier.from_pretrained(folder)


def test_recovery_never_touches_a_live_writers_staging_folder(tmp_path):
    destination = tmp_path / "ckpt"
    with atomic_directory(destination) as first:
        (first / "weights").write_bytes(b"first writer")
        with atomic_directory(destination) as second:  # its clean-up step runs while the first is still writing
            (second / "weights").write_bytes(b"second writer")
        assert (first / "weights").read_bytes() == b"first writer"
    assert (destination / "weights").read_bytes() == b"first writer"  # the later save wins, and both completed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_saving_over_a_folder_another_writer_changed_is_refused(saved, tmp_path):
    folder = copy_of(saved, tmp_path)
    synth = tiny_synthesizer(seed=0)
    first = SynthesizedClassifier.from_pretrained(folder)
    second = SynthesizedClassifier.from_pretrained(folder)
    cases = write_images(tmp_path / "new", "case", 2, seed=9)
    synth.update(first, {first.label_names[0]: [cases[0]]}).save_pretrained(folder)
    late = synth.update(second, {second.label_names[1]: [cases[1]]})
    with pytest.raises(OutputPathError, match="changed by another writer"):
        late.save_pretrained(folder)
    assert SynthesizedClassifier.from_pretrained(folder).info["history"][-1]["added"] == {first.label_names[0]: 1}


UPDATE = """
import sys
from sgps_hf.cli import main
sys.exit(main(["update", "--classifier", sys.argv[1], "--add", sys.argv[2]]))
"""


@pytest.mark.e2e
def test_concurrent_cli_updates_lose_no_case(synth_dir, tmp_path):
    write_images(tmp_path / "task" / "images", "a", 1, seed=1)
    write_images(tmp_path / "task" / "images", "b", 1, seed=2)
    (tmp_path / "task" / "task.yaml").write_text(TASK_YAML)
    folder = tmp_path / "classifier"
    assert (
        main(
            [
                "synthesize",
                "--task",
                str(tmp_path / "task" / "task.yaml"),
                "--out",
                str(folder),
                "--synthesizer",
                str(synth_dir),
            ]
        )
        == 0
    )
    cases = write_images(tmp_path / "new", "case", 2, seed=5)
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    with folder_lock(folder):  # both start while the folder is locked, so they really do overlap
        children = [
            subprocess.Popen(
                [sys.executable, "-c", UPDATE, str(folder), f"{name}={case}"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for name, case in zip(["alpha", "beta"], cases, strict=False)
        ]
    results = [child.communicate(timeout=300) for child in children]
    assert [child.returncode for child in children] == [0, 0], [r[1][-2000:] for r in results]
    final = SynthesizedClassifier.from_pretrained(folder)
    assert final.version == 3
    assert [c["num_images"] for c in final.info["task"]["classes"]] == [2, 2]  # both added cases are there
    assert sorted(name for entry in final.info["history"][1:] for name in entry["added"]) == ["alpha", "beta"]
