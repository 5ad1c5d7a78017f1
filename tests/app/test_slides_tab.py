"""The Slides tab's event functions, without a browser: synthesize from uploaded slides, screen, download."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
from sgps_testing import tiny_synthesizer

from sgps_hf import SGPSProcessor
from sgps_hf.app.export import ExportArea
from sgps_hf.app.slides import download_slides, screen_slide, synthesize_slides
from sgps_hf.slides.arrange import arrange_slide, write_pyramidal_tiff

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def write_slides(folder: Path) -> dict[str, list[Path]]:
    """Two "stains" of arranged 4 x 4-cell slides at 1 um/px, two slides each."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out: dict[str, list[Path]] = {}
    for name, tint in (("pink", (225, 120, 170)), ("purple", (90, 60, 170))):
        patches = [np.clip(np.array(tint) + rng.integers(-40, 41, (128, 128, 3)), 0, 255).astype(np.uint8)]
        for i in range(2):
            image, _ = arrange_slide(rng, patches, None, 1.0, grid=4)
            out.setdefault(name, []).append(write_pyramidal_tiff(folder / f"{name}-{i}.tiff", image, mpp=1.0))
    return out


def test_slides_tab_functions(tmp_path):
    synth = tiny_synthesizer(seed=0)
    processor = SGPSProcessor.from_sgps_config(synth.config)
    slides = write_slides(tmp_path / "slides")
    rows = [
        ("pink", "Eosin-rich.", [str(slides["pink"][0])]),
        ("purple", "", [str(slides["purple"][0])]),
        ("", "", None),
    ]
    classifier, status, card = synthesize_slides(rows, synth, processor, "toy")
    assert classifier is not None and "Synthesized a slide classifier for **toy** from 16 tiles" in status
    assert "## Whole-slide use" in card
    text, heat, sheet, overlay = screen_slide(classifier, str(slides["purple"][1]))
    assert "purple-1.tiff" in text and "tissue tiles" in text and "not for clinical use" in text
    assert heat.size[0] == overlay.size[0] and sheet.size[0] > 0
    area = ExportArea(tmp_path / "exports")
    archive, message = download_slides(classifier, area)
    assert "toy-classifier/slide_rule.json" in zipfile.ZipFile(archive).namelist() and "Built" in message
    assert [p.name for p in area.root.rglob("*") if p.is_file()] == ["toy-classifier.zip"]  # no folder left behind
    # mistakes become messages
    assert synthesize_slides(rows[:1], synth, processor)[1].startswith("**Error:** A slide task needs at least two")
    assert "has no slide" in synthesize_slides([("a", "", None), *rows[:2]], synth, processor)[1]
    assert screen_slide(None, str(slides["pink"][1]))[0].startswith("**Error:** synthesize")
    junk = tmp_path / "junk.svs"
    junk.write_bytes(b"nope")
    assert "Cannot read junk.svs" in screen_slide(classifier, str(junk))[0]
