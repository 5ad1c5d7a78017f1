"""``sgps segment synthesize | predict | push`` end to end."""

import numpy as np
import pytest
from PIL import Image
from seg_testing import blob_pair, write_task_folder

from sgps_hf.cli import main

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def synth_dir(tiny_synth, tmp_path_factory):
    folder = tmp_path_factory.mktemp("synth") / "tiny-seg"
    tiny_synth.save_pretrained(folder)
    return folder


def test_cli_synthesize_predict_push(synth_dir, tmp_path, hub_env, capsys):
    examples = write_task_folder(tmp_path / "lesions", 3)
    labelled = write_task_folder(tmp_path / "labelled", 2, seed=40)
    out = tmp_path / "segmenter"
    assert (
        main(
            [
                "segment",
                "synthesize",
                "--examples",
                str(examples),
                "--out",
                str(out),
                "--synthesizer",
                str(synth_dir),
                "--description",
                "bright disc",
                "--evaluate",
                str(labelled),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "Dice" in printed and (out / "model.safetensors").is_file()
    assert "bright disc" in (out / "README.md").read_text()

    queries = [tmp_path / "a.png", tmp_path / "b.jpg"]
    blob_pair(60, (40, 32))[0].save(queries[0])
    blob_pair(61, (30, 50))[0].save(queries[1])
    assert (
        main(["segment", "predict", "--segmenter", str(out), "--out-dir", str(tmp_path / "masks"), *map(str, queries)])
        == 0
    )
    from sgps_hf import SynthesizedSegmenter

    expected = SynthesizedSegmenter.from_pretrained(out).predict([str(q) for q in queries])
    for query, mask in zip(queries, expected, strict=False):
        written = np.asarray(Image.open(tmp_path / "masks" / f"{query.stem}_mask.png"))
        assert set(np.unique(written)) <= {0, 255}
        np.testing.assert_array_equal(written == 255, mask)

    repo_id = hub_env.new_repo_id("cli-seg")
    assert main(["segment", "push", "--segmenter", str(out), "--repo-id", repo_id]) == 0
    assert repo_id in capsys.readouterr().out


def test_cli_bad_input_is_a_clear_error(synth_dir, tmp_path, capsys):
    examples = write_task_folder(tmp_path / "bad", 2)
    for stem in ("0000", "0001"):  # every mask empty: no example shows the structure
        Image.fromarray(np.zeros((32, 40), np.uint8)).save(examples / "masks" / "lesion" / f"{stem}.png")
    code = main(
        [
            "segment",
            "synthesize",
            "--examples",
            str(examples),
            "--out",
            str(tmp_path / "o"),
            "--synthesizer",
            str(synth_dir),
        ]
    )
    assert code == 2
    assert "empty" in capsys.readouterr().err and not (tmp_path / "o").exists()
