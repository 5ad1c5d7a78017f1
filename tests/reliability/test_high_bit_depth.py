"""16-bit input (issue 25): ``predict`` and the standalone model (plain timm, the transformers pipeline) agree once the
image is converted as the model card says, with ``sgps_hf.load_image`` or with the formula the card states."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from sgps_testing import synthetic_task, tiny_synthesizer

from sgps_hf import load_image

pytestmark = [pytest.mark.usefixtures("torch_single_thread"), pytest.mark.timeout(300)]


def card_formula(path) -> Image.Image:
    """The conversion the card describes for readers without sgps-hf (one min and max over the image)."""
    values = np.asarray(Image.open(path)).astype(np.float64)
    low, high = values.min(), values.max()
    scaled = np.zeros(values.shape, np.uint8) if high <= low else np.round((values - low) * 255 / (high - low))
    return Image.fromarray(scaled.astype(np.uint8)).convert("RGB")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("sixteen")
    classifier = tiny_synthesizer(seed=0).synthesize(synthetic_task(root / "task"))
    classifier.save_pretrained(root / "classifier")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(2):
        values = (rng.integers(0, 2000, size=(40, 48)) + 500 * i).astype(np.uint16)
        values[10:30, 12 + 8 * i : 30 + 8 * i] += 1500  # a bright square: structure, not only noise
        Image.fromarray(values).save(root / f"scan-{i}.png")
        paths.append(root / f"scan-{i}.png")
    return classifier, root / "classifier", paths


def test_a_16bit_png_gives_the_same_probabilities_through_predict_timm_and_the_pipeline(saved):
    from transformers import pipeline

    classifier, folder, paths = saved
    assert Image.open(paths[0]).mode.startswith("I")  # really a 16-bit image
    expected = classifier.predict([str(p) for p in paths])
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))
    classify = pipeline("image-classification", model=str(folder))
    for path, row in zip(paths, expected, strict=True):
        converted = [load_image(path), card_formula(path)]
        assert np.array_equal(np.asarray(converted[0]), np.asarray(converted[1]))
        # why the conversion matters: PIL's own conversion gives other pixels
        assert not np.array_equal(np.asarray(Image.open(path).convert("RGB")), np.asarray(converted[0]))
        for image in converted:
            with torch.no_grad():
                probs = model(transform(image).unsqueeze(0)).softmax(-1)[0]
            for i, label in enumerate(classifier.label_names):
                assert float(probs[i]) == pytest.approx(row[label], abs=1e-5)
            piped = {r["label"]: r["score"] for r in classify(image, top_k=None)}
            assert piped == pytest.approx(row, abs=1e-5)


def test_the_card_says_how_to_convert_16bit_and_dicom_input(saved):
    _, folder, _ = saved
    card = (folder / "README.md").read_text()
    assert "from sgps_hf import load_image" in card and "16-bit" in card and "DICOM" in card
    assert "round((v - min) * 255 / (max - min))" in card and "apply_voi_lut" in card
