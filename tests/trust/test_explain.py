"""Grad-CAM saliency: the map follows the evidence, overlays, and `sgps predict --explain`."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from trust_testing import patch_image

from sgps_hf import ClassSpec, TaskSpec
from sgps_hf.trust.explain import gradcam

pytestmark = pytest.mark.usefixtures("torch_single_thread")

CORNERS = [(26, 26), (102, 102), (26, 102), (102, 26)]


@pytest.fixture(scope="module")
def lesion_classifier(default_synthesizer):
    """The bundled synthesizer's 'dark patch' vs 'clear skin' classifier from 5 synthetic images per class."""
    synth, processor = default_synthesizer
    spots = [(30, 30), (95, 95), (30, 95), (95, 30), (64, 64)]
    task = TaskSpec(
        name="patch",
        modality="skin photo",
        classes=[
            ClassSpec(
                "lesion", "A dark brown round lesion on pale skin.", [patch_image(s, i) for i, s in enumerate(spots)]
            ),
            ClassSpec("clear", "Clear pale skin without any lesion.", [patch_image(None, 10 + i) for i in range(5)]),
        ],
    )
    return synth.synthesize(task, processor=processor)


def test_the_map_moves_with_the_class_defining_patch(lesion_classifier):
    images = [patch_image(corner, 99) for corner in CORNERS]
    assert [max(p, key=p.get) for p in lesion_classifier.predict(images)] == ["lesion"] * 4
    explanations = lesion_classifier.explain(images, labels=["lesion"] * 4)
    for (x, y), explanation in zip(CORNERS, explanations, strict=True):
        assert explanation.heatmap.shape == (128, 128) and explanation.heatmap.max() == pytest.approx(1.0)
        px, py = explanation.peak()
        # the evidence is where the patch is: the map's centre lies in the patch's quadrant
        assert (px < 0.5) == (x < 64) and (py < 0.5) == (y < 64), ((x, y), (px, py))
    # the same patch in another place: a different map
    assert np.abs(explanations[0].heatmap - explanations[1].heatmap).mean() > 0.1


def test_overlay_and_defaults(lesion_classifier):
    image = Image.fromarray(np.asarray(patch_image((26, 26), 5)).repeat(2, axis=1))  # 256x128: the centre square
    (explanation,) = lesion_classifier.explain(image)
    assert explanation.label in lesion_classifier.label_names and 0 < explanation.probability <= 1
    overlay = explanation.overlay(image, size=200)
    assert overlay.size == (200, 200) and overlay.mode == "RGB"
    # a None label is the predicted class, the same map as with no labels at all; a named one is that class
    mixed = lesion_classifier.explain([image, image], labels=[None, "clear"])
    assert mixed[0].label == explanation.label and np.allclose(mixed[0].heatmap, explanation.heatmap, atol=1e-6)
    assert mixed[1].label == "clear"
    with pytest.raises(ValueError, match="Unknown classes"):
        lesion_classifier.explain([image], labels=["tumour"])
    with pytest.raises(TypeError, match="forward_features"):
        gradcam(object(), None)
