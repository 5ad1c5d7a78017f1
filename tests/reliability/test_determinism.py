"""Determinism across processes: the same checkpoint and task give a byte-identical model.safetensors.

tests/test_modeling_sgps.py compares in-memory hashes within and across processes; this compares the saved
files themselves, from two separate interpreters and from this one (sha256 of model.safetensors).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from sgps_testing import last_json_line, run_python, synthetic_task, tiny_synthesizer

from sgps_hf import TaskSpec

pytestmark = [pytest.mark.usefixtures("torch_single_thread"), pytest.mark.timeout(300)]

CHILD = """
import hashlib, json, sys
from pathlib import Path
from sgps_hf import SGPSSynthesizer, TaskSpec
synth = SGPSSynthesizer.from_pretrained(sys.argv[1])
classifier = synth.synthesize(TaskSpec.from_file(sys.argv[2]))
out = Path(classifier.save_pretrained(sys.argv[3]))
print(json.dumps({"sha256": hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()}))
"""


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.e2e
def test_saved_weights_are_byte_identical_across_processes(tmp_path):
    folder = tmp_path / "task"
    task = synthetic_task(folder, texts=("round pink papule", None, "scaly red patch"), images_per_class=(2, 1, 0))
    (folder / "task.json").write_text(
        json.dumps(
            {
                "classes": [
                    {"name": c.name, "description": c.description, "images": [Path(p).name for p in c.images]}
                    for c in task.classes
                ]
            }
        )
    )
    tiny_synthesizer(seed=3).save_pretrained(tmp_path / "synth")

    from sgps_hf import SGPSSynthesizer

    here = SGPSSynthesizer.from_pretrained(tmp_path / "synth").synthesize(TaskSpec.from_file(folder / "task.json"))
    expected = sha256(here.save_pretrained(tmp_path / "here") / "model.safetensors")
    env = {"HF_HUB_OFFLINE": "1", "PYTHONHASHSEED": "random"}  # nothing may depend on hash randomisation
    hashes = [
        last_json_line(
            run_python(CHILD, tmp_path / "synth", folder / "task.json", tmp_path / f"child-{i}", env=env).stdout
        )["sha256"]
        for i in range(2)
    ]
    assert hashes == [expected, expected]
    # And the file really is the task's: a different task gives different bytes.
    other = SGPSSynthesizer.from_pretrained(tmp_path / "synth").synthesize(
        synthetic_task(tmp_path / "other", texts=("a", "b", "c"), images_per_class=(1, 1, 1))
    )
    assert sha256(other.save_pretrained(tmp_path / "other-out") / "model.safetensors") != expected
