"""SlideTask -> tiles -> one public synthesis -> SlideClassifier: save, load with plain timm, screen, update, CLI."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import timm
import torch
from sgps_testing import tiny_synthesizer

from sgps_hf import ClassSpec, SGPSProcessor, SynthesizedClassifier, TaskSpec
from sgps_hf.cli import main
from sgps_hf.errors import CheckpointError, InvalidTaskError
from sgps_hf.slides import (
    SlideClassifier,
    SlideClassSpec,
    SlideRule,
    SlideTask,
    synthesize_slide_classifier,
    update_slide_classifier,
)
from sgps_hf.slides.synthesis import slide_support_tiles

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def synth():
    return tiny_synthesizer(seed=0)


@pytest.fixture(scope="module")
def slide_task(arranged_slides):
    return SlideTask(
        [
            SlideClassSpec("pink", "Eosin-rich stroma.", arranged_slides["pink"][:2]),
            SlideClassSpec("purple", "Dense haematoxylin-rich nuclei.", arranged_slides["purple"][:2]),
        ],
        name="toy-slides",
    )


@pytest.fixture(scope="module")
def classifier(synth, slide_task):
    return synthesize_slide_classifier(synth, slide_task, rule=SlideRule("topk_mean", 0.5), tiles_per_slide=3)


def test_synthesis_goes_through_the_public_path(synth, slide_task, classifier):
    tiling = classifier.tiling
    classes = []
    for cls in slide_task.classes:
        tiles = [t for path in cls.slides for t in slide_support_tiles(path, tiling)[0]]
        classes.append(ClassSpec(name=cls.name, description=cls.description, images=tiles))
    direct = synth.synthesize(TaskSpec(classes=classes, name="toy-slides", modality=slide_task.modality))
    ours = classifier.tile_classifier.model.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in direct.model.state_dict().items())
    assert {n: len(v) for n, v in classifier.tile_classifier.support.items()} == {"pink": 6, "purple": 6}
    assert [e["tiles"] for e in classifier.slides["pink"]] == [3, 3]
    assert all(len(e["sha256"]) == 64 for entries in classifier.slides.values() for e in entries)


def test_per_slide_cap_and_per_class_budget(synth, slide_task):
    with pytest.raises(InvalidTaskError, match="tiles_per_slide <= 50"):
        synthesize_slide_classifier(synth, slide_task, tiles_per_slide=51)
    with pytest.raises(InvalidTaskError, match="tiles_per_class must be at least 1"):
        synthesize_slide_classifier(synth, slide_task, tiles_per_class=0)
    budget = synthesize_slide_classifier(synth, slide_task, tiles_per_slide=3, tiles_per_class=3)
    assert [e["tiles"] for e in budget.slides["pink"]] == [2, 2]  # ceil(3 / 2) per slide
    assert budget.tiling["tiles_per_class"] == 3


def test_screening_a_slide(classifier, arranged_slides):
    result = classifier.predict_slide(arranged_slides["purple"][2], top_tiles=3, batch_size=5)
    tiles = len(result.tile_probs)
    assert tiles == result.tiles.num_tissue_tiles > 3
    assert sum(result.probabilities.values()) == pytest.approx(1.0)
    assert list(result.probabilities.values()) == pytest.approx(classifier.rule.aggregate(result.tile_probs))
    top = result.top_tiles[result.label]
    scores = [p for p, _, _ in top]
    assert len(top) == 3 and scores == sorted(scores, reverse=True)
    column = classifier.label_names.index(result.label)
    assert scores[0] == pytest.approx(result.tile_probs[:, column].max())
    assert result.heatmap().size[0] == result.tiles.thumbnail.shape[1]
    assert result.contact_sheet(columns=3).size == (3 * 132, 144)
    row = result.to_row()
    assert row["label"] == result.label and row["tiles"] == tiles and set(row) >= {"p_pink", "p_purple"}


def test_saved_folder_is_a_plain_timm_classifier_with_the_rule(classifier, arranged_slides, tmp_path):
    folder = classifier.save_pretrained(tmp_path / "clf")
    record = json.loads((folder / "slide_rule.json").read_text())
    assert record["rule"] == {"name": "topk_mean", "top_fraction": 0.5}
    assert record["tiling"]["target_mpp"] == 1.0 and record["tiling"]["tile_size"] == 128
    card = (folder / "README.md").read_text()
    assert "## Whole-slide use" in card and "np.sort(probs, 0)" in card
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    assert model.pretrained_cfg["label_names"] == ["pink", "purple"]
    loaded = SlideClassifier.from_pretrained(folder)
    assert loaded.rule == classifier.rule and loaded.slides == classifier.slides
    slide = arranged_slides["pink"][2]
    assert loaded.predict_slide(slide).probabilities == pytest.approx(classifier.predict_slide(slide).probabilities)
    again = loaded.save_pretrained(folder)  # saving back keeps one card section
    assert (again / "README.md").read_text().count("## Whole-slide use") == 1


def test_loading_refuses_a_folder_without_a_matching_rule(classifier, tmp_path):
    plain = tmp_path / "plain"
    classifier.tile_classifier.save_pretrained(plain)
    with pytest.raises(CheckpointError, match="without slide_rule.json"):
        SlideClassifier.from_pretrained(plain)
    record = classifier.rule_record()
    (plain / "slide_rule.json").write_text(json.dumps({**record, "label_names": ["x", "y"]}))
    with pytest.raises(CheckpointError, match="do not belong together"):
        SlideClassifier.from_pretrained(plain)
    (plain / "slide_rule.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        SlideClassifier.from_pretrained(plain)


def test_update_adds_verified_slides(synth, classifier, arranged_slides):
    updated = update_slide_classifier(synth, classifier, {"pink": [arranged_slides["pink"][2]]})
    assert updated.tile_classifier.version == 2 and classifier.tile_classifier.version == 1
    assert len(updated.slides["pink"]) == 3 and len(updated.tile_classifier.support["pink"]) == 9
    with pytest.raises(InvalidTaskError, match="Unknown class"):
        update_slide_classifier(synth, classifier, {"green": [arranged_slides["pink"][2]]})


@pytest.mark.e2e
def test_cli_round_trip(synth, arranged_slides, tmp_path, capsys):
    synth.save_pretrained(tmp_path / "synth")
    SGPSProcessor.from_sgps_config(synth.config).save_pretrained(tmp_path / "synth")
    task = tmp_path / "task.yaml"
    lines = ["name: toy", "classes:"]
    for name in ("pink", "purple"):
        lines += [f"  - name: {name}", f"    slides: [{arranged_slides[name][0]}]"]
    task.write_text("\n".join(lines) + "\n")
    common = ["--synthesizer", str(tmp_path / "synth")]
    assert main(["slide", "synthesize", "--task", str(task), "--out", str(tmp_path / "clf"), *common]) == 0
    slides = [str(arranged_slides["pink"][1]), str(arranged_slides["purple"][1])]
    out = tmp_path / "screen"
    assert main(["slide", "predict", "--classifier", str(tmp_path / "clf"), *slides, "--out-dir", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert [r["slide"] for r in rows] == slides and all(r["label"] in ("pink", "purple") for r in rows)
    assert (out / "purple-1_heatmap.png").is_file() and (out / "pink-1_top_tiles.png").is_file()
    assert (out / "pink-1_tiles.png").is_file()
    assert main(["slide", "predict", "--classifier", str(tmp_path / "clf"), *slides, "--out-dir", str(out)]) == 2
    assert "already exists; nothing was overwritten" in capsys.readouterr().err
    add = ["--add", f"pink={arranged_slides['pink'][2]}"]
    assert main(["slide", "update", "--classifier", str(tmp_path / "clf"), *add, *common]) == 0
    assert SynthesizedClassifier.from_pretrained(tmp_path / "clf").version == 2
    assert main(["slide", "update", "--classifier", str(tmp_path / "clf"), "--add", "pink", *common]) == 2
    assert np.isfinite(SlideClassifier.from_pretrained(tmp_path / "clf").predict_slide(slides[0]).tile_probs).all()
