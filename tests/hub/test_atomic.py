"""atomic_directory: an interrupted save (exception or SIGKILL) never damages the previous version."""

import os

import pytest
import torch
from sgps_testing import sigkill_when_paused, synthetic_task, tiny_synthesizer

from sgps_hf import SynthesizedClassifier
from sgps_hf.hub import atomic
from sgps_hf.hub.atomic import atomic_directory
from sgps_hf.hub.checkpoints import state_dict_sha256

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def write_version(folder, version):
    with atomic_directory(folder) as staging:
        (staging / "weights.bin").write_bytes(bytes([version]) * 1000)
        (staging / "sub").mkdir()
        (staging / "sub" / f"v{version}.txt").write_text(f"version {version}")


def siblings(folder):
    return sorted(p.name for p in folder.parent.iterdir())


def test_success_creates_and_replaces(tmp_path):
    folder = tmp_path / "deep" / "er" / "ckpt"
    write_version(folder, 1)
    assert snapshot(folder) == {"sub/v1.txt": b"version 1", "weights.bin": b"\x01" * 1000}
    write_version(folder, 2)
    assert snapshot(folder) == {"sub/v2.txt": b"version 2", "weights.bin": b"\x02" * 1000}  # v1's file is gone
    assert siblings(folder) == ["ckpt"]


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_exception_midway_leaves_the_previous_folder_intact(tmp_path, error):
    folder = tmp_path / "ckpt"
    write_version(folder, 1)
    before = snapshot(folder)
    with pytest.raises(type(error)):
        with atomic_directory(folder) as staging:
            (staging / "weights.bin").write_bytes(b"half")
            raise error
    assert snapshot(folder) == before
    assert siblings(folder) == ["ckpt"]  # the staging folder was removed


def test_exception_on_first_save_leaves_nothing(tmp_path):
    with pytest.raises(ValueError):
        with atomic_directory(tmp_path / "new") as staging:
            (staging / "x").write_text("x")
            raise ValueError("boom")
    assert list(tmp_path.iterdir()) == []


def test_destination_must_be_a_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a folder"):
        with atomic_directory(tmp_path / "file"):
            pass
    assert (tmp_path / "file").read_text() == "x"


def test_leftovers_of_interrupted_saves_are_removed_by_the_next_save(tmp_path):
    folder = tmp_path / "ckpt"
    write_version(folder, 1)
    (tmp_path / ".ckpt.tmp-dead1").mkdir()
    (tmp_path / ".ckpt.tmp-dead1" / "model.safetensors").write_bytes(b"partial")
    (tmp_path / ".ckpt.old-dead2" / "previous").mkdir(parents=True)  # killed after the swap, before cleanup
    (tmp_path / ".other.tmp-keep").mkdir()  # another destination's staging folder is not ours
    write_version(folder, 2)
    assert siblings(folder) == [".other.tmp-keep", "ckpt"]
    assert snapshot(folder)["sub/v2.txt"] == b"version 2"


def exchange_supported(folder):
    """Whether this platform and filesystem can swap two folders atomically (Linux renameat2 RENAME_EXCHANGE)."""
    (folder / ".probe-a").mkdir()
    (folder / ".probe-b").mkdir()
    try:
        return atomic._exchange(folder / ".probe-a", folder / ".probe-b")
    finally:
        (folder / ".probe-a").rmdir()
        (folder / ".probe-b").rmdir()


def test_exchange_swaps_two_folders_atomically(tmp_path):
    if not exchange_supported(tmp_path):
        pytest.skip("no atomic folder swap here (renameat2 RENAME_EXCHANGE)")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x").write_text("a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x").write_text("b")
    assert atomic._exchange(tmp_path / "a", tmp_path / "b") is True
    assert (tmp_path / "a" / "x").read_text() == "b" and (tmp_path / "b" / "x").read_text() == "a"
    with pytest.raises(FileNotFoundError):
        atomic._exchange(tmp_path / "a", tmp_path / "missing")


def test_fallback_without_atomic_swap(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "_exchange", lambda first, second: False)
    folder = tmp_path / "ckpt"
    write_version(folder, 1)
    write_version(folder, 2)
    assert snapshot(folder)["sub/v2.txt"] == b"version 2" and siblings(folder) == ["ckpt"]


def test_fallback_killed_between_renames_is_repaired_by_the_next_save(tmp_path):
    folder = tmp_path / "ckpt"
    write_version(folder, 1)
    before = snapshot(folder)
    # The state a kill between the fallback's two renames leaves: the destination retired, the new one staged.
    (tmp_path / ".ckpt.old-abc").mkdir()
    os.replace(folder, tmp_path / ".ckpt.old-abc" / "previous")
    (tmp_path / ".ckpt.tmp-def").mkdir()
    with pytest.raises(RuntimeError):
        with atomic_directory(folder):
            raise RuntimeError("the next save fails too")
    assert snapshot(folder) == before  # the previous version is back in place
    assert siblings(folder) == ["ckpt"]


# -- SIGKILL in the middle of SynthesizedClassifier.save_pretrained ----------------------------------------------
CHILD = """
import sys, time
from pathlib import Path
import timm
import sgps_hf.hub.atomic as atomic
from sgps_hf import SynthesizedClassifier

source, destination, flag, point = sys.argv[1:]

def pause():
    Path(flag).write_text("paused")
    time.sleep(300)

if point == "writing":  # weights written into the staging folder, README and task file not yet
    original_save = timm.models.save_for_hf
    def save_for_hf(*args, **kwargs):
        original_save(*args, **kwargs)
        pause()
    timm.models.save_for_hf = save_for_hf
elif point == "swapped":  # the new folder swapped in, the old one not yet deleted
    original_exchange = atomic._exchange
    def exchange(first, second):
        assert original_exchange(first, second)
        pause()
    atomic._exchange = exchange
SynthesizedClassifier.from_pretrained(source).save_pretrained(destination)
print("finished without pausing")
"""


@pytest.fixture(scope="module")
def two_versions(tmp_path_factory):
    """Two different saved classifiers: ``old`` is at the destination, ``new`` is what the killed save writes."""
    root = tmp_path_factory.mktemp("versions")
    synth = tiny_synthesizer(seed=0)
    old = synth.synthesize(synthetic_task(root / "t1", texts=("a", "b"), images_per_class=(1, 1)))
    new = synth.synthesize(synthetic_task(root / "t2", texts=("c", "d", "e"), images_per_class=(1, 1, 1)))
    new.save_pretrained(root / "new-source")
    return old, new, root / "new-source"


@pytest.mark.e2e
@pytest.mark.parametrize("point", ["writing", "swapped"])
def test_sigkill_during_save_pretrained(two_versions, tmp_path, point):
    if point == "swapped" and not exchange_supported(tmp_path):
        pytest.skip(
            "no atomic folder swap here: covered by test_fallback_killed_between_renames_is_repaired_by_the_next_save"
        )
    old, new, source = two_versions
    destination = tmp_path / "classifier"
    old.save_pretrained(destination)
    old_files = snapshot(destination)
    flag = tmp_path / "paused.flag"
    sigkill_when_paused(CHILD, [str(source), str(destination), str(flag), point], flag)

    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith(".classifier.") and p.name != ".classifier.lock"]
    assert leftovers, "the kill did not interrupt the save (no staging folder left behind)"
    loaded = SynthesizedClassifier.from_pretrained(destination)  # whatever the moment, a complete classifier
    if point == "writing":
        assert snapshot(destination) == old_files
        assert loaded.label_names == old.label_names
        assert state_dict_sha256(loaded.model.state_dict()) == state_dict_sha256(old.model.state_dict())
        assert (leftovers[0] / "model.safetensors").is_file()  # it really was killed halfway through writing
    else:
        assert loaded.label_names == new.label_names
        assert state_dict_sha256(loaded.model.state_dict()) == state_dict_sha256(new.model.state_dict())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.isfinite(loaded.model(x)).all()

    new.save_pretrained(destination)  # the next save cleans up
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".classifier.")] == [
        ".classifier.lock"
    ]  # the writer lock stays
    assert SynthesizedClassifier.from_pretrained(destination).label_names == new.label_names
