"""`sgps synthesize` -> `sgps update` -> `sgps predict` round trip on a task file (docs/task-format.md)."""

from __future__ import annotations

import pytest
from sgps_testing import tiny_synthesizer, write_images

from sgps_hf import SGPSProcessor, SynthesizedClassifier
from sgps_hf.cli import main

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("torch_single_thread")]

TASK_YAML = """\
name: derm-demo
modality: smartphone photo
classes:
  - name: melanoma
    description: Asymmetric pigmented lesion with irregular notched borders.
    images: [images/mel-0.png, images/mel-1.png]
  - name: nevus
    description: Small symmetric round macule of uniform brown colour.
    images:
      - images/nev-0.png
  - name: "a=b"          # a class name with '=' still works with --add
    description: Text-only class.
"""


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli-update")
    synth = tiny_synthesizer(seed=0)
    synth.save_pretrained(root / "synth")
    SGPSProcessor.from_sgps_config(synth.config).save_pretrained(root / "synth")
    write_images(root / "task" / "images", "mel", 2, seed=1)
    write_images(root / "task" / "images", "nev", 1, seed=2)
    new = write_images(root / "new", "case", 3, seed=3)
    (root / "task" / "task.yaml").write_text(TASK_YAML)
    return root, new


def test_synthesize_update_predict(workspace, capsys):
    root, new = workspace
    out = root / "classifier"
    assert (
        main(
            [
                "synthesize",
                "--task",
                str(root / "task" / "task.yaml"),
                "--out",
                str(out),
                "--synthesizer",
                str(root / "synth"),
            ]
        )
        == 0
    )
    before = SynthesizedClassifier.from_pretrained(out)
    assert before.label_names == ["melanoma", "nevus", "a=b"] and before.version == 1
    capsys.readouterr()

    # the synthesizer recorded in the classifier (a local folder) is used by default
    assert (
        main(
            [
                "update",
                "--classifier",
                str(out),
                "--add",
                f"nevus={new[0]}",
                f"a=b={new[1]}",
                "--add",
                f"nevus={new[2]}",
            ]
        )
        == 0
    )
    assert "Version 2 saved to" in capsys.readouterr().out
    after = SynthesizedClassifier.from_pretrained(out)
    assert after.version == 2 and [v["version"] for v in after.versions] == [1]
    assert [c["num_images"] for c in after.info["task"]["classes"]] == [2, 3, 1]
    assert after.info["history"][-1]["added"] == {"nevus": 2, "a=b": 1}
    assert after.info["weights_sha256"] != before.info["weights_sha256"]

    assert main(["predict", "--classifier", str(out), str(new[0]), "--top-k", "2"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{new[0]}\t") and line.count(",") == 1  # file, a tab, then the top 2 classes


def test_update_to_another_folder_and_user_errors(workspace, capsys, tmp_path):
    root, new = workspace
    source = root / "classifier-2"
    assert (
        main(
            [
                "synthesize",
                "--task",
                str(root / "task" / "task.yaml"),
                "--out",
                str(source),
                "--synthesizer",
                str(root / "synth"),
            ]
        )
        == 0
    )
    copy = tmp_path / "v2"
    assert (
        main(
            [
                "update",
                "--classifier",
                str(source),
                "--add",
                f"melanoma={new[0]}",
                "--out",
                str(copy),
                "--synthesizer",
                str(root / "synth"),
            ]
        )
        == 0
    )
    assert (
        SynthesizedClassifier.from_pretrained(source).version == 1
        and SynthesizedClassifier.from_pretrained(copy).version == 2
    )
    capsys.readouterr()
    assert main(["update", "--classifier", str(source), "--add", f"psoriasis={new[0]}"]) == 2
    assert "is not CLASS=IMAGE with CLASS one of ['melanoma', 'nevus', 'a=b']" in capsys.readouterr().err
    assert main(["update", "--classifier", str(source), "--add", f"nevus={tmp_path / 'missing.png'}"]) == 2
    assert "Image file not found" in capsys.readouterr().err
