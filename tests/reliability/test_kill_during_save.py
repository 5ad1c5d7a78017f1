"""SIGKILL in the middle of a synthesizer save leaves the previous version intact and loadable.

The child process pauses *inside* the weight write (after transformers has written model.safetensors into the
staging folder, before the swap), signals the parent through a flag file, and is killed there: a reliable kill
point, with no timing guesswork. (The classifier's kill test is tests/test_atomic.py; training's is
tests/training/test_meta_train.py.)
"""

from __future__ import annotations

import hashlib
import os

import pytest
from sgps_testing import sigkill_when_paused, tiny_synthesizer

from sgps_hf import SGPSProcessor, SGPSSynthesizer
from sgps_hf.hub.atomic import atomic_update, atomic_write_text
from sgps_hf.hub.checkpoints import state_dict_sha256

pytestmark = [pytest.mark.usefixtures("torch_single_thread"), pytest.mark.timeout(240)]

CHILD = """
import sys, time
from pathlib import Path
import transformers.modeling_utils as modeling_utils
from sgps_hf import SGPSSynthesizer

source, destination, flag = sys.argv[1:]
original_save = modeling_utils.safe_save_file

def save_then_pause(*args, **kwargs):
    original_save(*args, **kwargs)  # the new weights are fully written into the staging folder...
    Path(flag).write_text("paused")  # ...and the process stops here, before the folder is swapped in
    time.sleep(300)

modeling_utils.safe_save_file = save_then_pause
SGPSSynthesizer.from_pretrained(source).save_pretrained(destination)
print("finished without pausing")
"""


def file_hashes(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.mark.e2e
def test_sigkill_during_synthesizer_save_keeps_the_previous_version(tmp_path):
    old, new = tiny_synthesizer(seed=0), tiny_synthesizer(seed=1)
    assert state_dict_sha256(old.state_dict()) != state_dict_sha256(new.state_dict())  # else "intact" proves nothing
    destination = tmp_path / "synth"
    old.save_pretrained(destination)
    SGPSProcessor.from_sgps_config(old.config).save_pretrained(destination)  # a processor saved into the same folder
    before = file_hashes(destination)
    new.save_pretrained(tmp_path / "new-source")

    sigkill_when_paused(
        CHILD, [str(tmp_path / "new-source"), str(destination), str(tmp_path / "flag")], tmp_path / "flag"
    )

    staging = [p for p in tmp_path.iterdir() if p.name.startswith(".synth.tmp-")]
    assert staging and (staging[0] / "model.safetensors").is_file(), "the kill really interrupted a save in progress"
    assert file_hashes(destination) == before, "the previous version is byte-for-byte intact"
    loaded = SGPSSynthesizer.from_pretrained(destination)
    assert state_dict_sha256(loaded.state_dict()) == state_dict_sha256(old.state_dict())
    SGPSProcessor.from_pretrained(destination)

    new.save_pretrained(destination)  # the next save completes and cleans up after the killed one
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".synth.")]
    assert state_dict_sha256(SGPSSynthesizer.from_pretrained(destination).state_dict()) == state_dict_sha256(
        new.state_dict()
    )
    assert "processor_config.json" in file_hashes(destination), "files of other savers in the folder are kept"


def test_failed_synthesizer_save_changes_nothing(tmp_path, monkeypatch):
    synth = tiny_synthesizer(seed=0)
    synth.save_pretrained(tmp_path / "synth")
    before = file_hashes(tmp_path / "synth")
    import transformers.modeling_utils as modeling_utils

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(modeling_utils, "safe_save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        tiny_synthesizer(seed=1).save_pretrained(tmp_path / "synth")
    assert file_hashes(tmp_path / "synth") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synth"]


def test_processor_save_is_atomic_and_returns_final_paths(tmp_path, monkeypatch):
    processor = SGPSProcessor.from_sgps_config(tiny_synthesizer().config)
    files = processor.save_pretrained(tmp_path / "proc")
    assert files and all(
        str(tmp_path / "proc") in f and (tmp_path / "proc" / os.path.basename(f)).is_file() for f in files
    )
    before = file_hashes(tmp_path / "proc")
    monkeypatch.setattr(
        type(processor.image_processor), "to_dict", lambda self: (_ for _ in ()).throw(RuntimeError("crash"))
    )
    with pytest.raises(RuntimeError, match="crash"):
        processor.save_pretrained(tmp_path / "proc")
    assert file_hashes(tmp_path / "proc") == before


def test_atomic_update_keeps_other_files_and_never_shares_inodes(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "keep.txt").write_text("keep")
    (folder / "weights").write_text("old")
    with atomic_update(folder) as staging:
        assert (staging / "weights").stat().st_ino != (folder / "weights").stat().st_ino
        with open(staging / "weights", "w") as handle:  # an in-place rewrite, like safetensors' save_file
            handle.write("new")
        assert (folder / "weights").read_text() == "old", "the live version is untouched until the swap"
    assert (folder / "weights").read_text() == "new" and (folder / "keep.txt").read_text() == "keep"


def test_atomic_write_text(tmp_path, monkeypatch):
    path = tmp_path / "log.csv"
    atomic_write_text(path, "step\n1\n")
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        atomic_write_text(path, "step\n")
    assert path.read_text() == "step\n1\n" and sorted(p.name for p in tmp_path.iterdir()) == ["log.csv"]


def test_truncating_the_training_log_is_atomic(tmp_path, monkeypatch):
    """On resume, log.csv is cut back to the checkpoint's step; a kill during that rewrite must not lose the rows."""
    from sgps_hf.training.training_log import CsvLog

    log = CsvLog(tmp_path / "log.csv", enabled=True, fields=["step", "loss"])
    for step in range(1, 5):
        log.write({"step": step, "loss": 1.0 / step})
    before = (tmp_path / "log.csv").read_text()
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        log.truncate_after(2)
    assert (tmp_path / "log.csv").read_text() == before
    monkeypatch.undo()
    log.truncate_after(2)
    assert [line.split(",")[0] for line in (tmp_path / "log.csv").read_text().splitlines()] == ["step", "1", "2"]
