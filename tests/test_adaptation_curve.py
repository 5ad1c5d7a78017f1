"""scripts/adaptation_curve.py on a tiny synthetic task folder (the real run uses the bundled checkpoint)."""

from __future__ import annotations

import re

import pytest
from sgps_testing import load_script, tiny_synthesizer, write_images

from sgps_hf import SGPSProcessor

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def test_curve_table_on_a_toy_task(tmp_path):
    synth = tiny_synthesizer(seed=0)
    synth.save_pretrained(tmp_path / "synth")
    SGPSProcessor.from_sgps_config(synth.config).save_pretrained(tmp_path / "synth")
    for index, name in enumerate(["alpha", "beta", "gamma"]):
        write_images(tmp_path / "data" / "toy" / name, name, 6, seed=index + 1)
    out = tmp_path / "curve.md"
    args = [
        "--synthesizer",
        str(tmp_path / "synth"),
        "--data-dir",
        str(tmp_path / "data"),
        "--tasks",
        "toy",
        "--shots",
        "1",
        "2",
        "4",
        "--queries",
        "2",
        "--seeds",
        "2",
        "--out",
        str(out),
    ]
    assert load_script("adaptation_curve").main(args) == 0
    text = out.read_text()
    assert "| task | 1 shot | 2 shots | 4 shots |" in text and "mean over 2 seed(s)" in text
    row = re.search(r"^\| toy \| (.+) \|$", text, re.M).group(1).split(" | ")
    assert len(row) == 3 and all(0.0 <= float(v) <= 1.0 for v in row)


def test_skips_without_a_checkpoint(tmp_path, capsys):
    out = tmp_path / "curve.md"
    assert load_script("adaptation_curve").main(["--synthesizer", str(tmp_path / "missing"), "--out", str(out)]) == 0
    assert "Skipped: synthesizer checkpoint" in capsys.readouterr().out and not out.exists()
