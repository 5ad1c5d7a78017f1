"""Helpers shared by the segmentation tests: a tiny (untrained, 32 px) synthesizer and synthetic images with masks.

Import it as ``import seg_testing`` (tests/conftest.py puts tests/ on ``sys.path``); a module of its own, because
``from conftest import ...`` resolves to whichever test folder's conftest was imported first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

TINY_SEG = dict(hidden_size=8, image_size=32, pool_scales=[1, 2])


def tiny_seg_synthesizer(seed: int = 0, **overrides):
    import torch

    from sgps_hf import SGPSSegConfig, SGPSSegSynthesizer

    torch.manual_seed(seed)
    return SGPSSegSynthesizer(SGPSSegConfig(**{**TINY_SEG, **overrides})).eval()


def blob_pair(seed: int, size: tuple[int, int] = (40, 32)) -> tuple[Image.Image, np.ndarray]:
    """A noisy image with a bright disc and its bool mask (width x height = ``size``)."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[:h, :w]
    cy, cx, r = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w, rng.uniform(0.15, 0.3) * min(w, h)
    mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
    pixels = rng.integers(0, 90, size=(h, w, 3)).astype(np.uint8)
    pixels[mask] = np.clip(pixels[mask] + 150, 0, 255)
    return Image.fromarray(pixels), mask


def write_task_folder(root: Path, n: int, labels: tuple[str, ...] = ("lesion",), seed: int = 0, size=(40, 32)) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    for label in labels:
        (root / "masks" / label).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image, mask = blob_pair(seed + i, size)
        image.save(root / "images" / f"{i:04d}.png")
        for j, label in enumerate(labels):
            m = mask if j == 0 else np.roll(mask, 3, axis=1)
            Image.fromarray(m.astype(np.uint8) * 255).save(root / "masks" / label / f"{i:04d}.png")
    return root


def write_query_images(folder: Path, first_seed: int) -> list[str]:
    """Two blob images of odd, different sizes saved as PNGs (queries a saved segmenter must resize back to)."""
    paths = []
    for i, size in enumerate([(40, 32), (23, 61)]):
        path = folder / f"q{i}.png"
        blob_pair(first_seed + i, size)[0].save(path)
        paths.append(str(path))
    return paths


# A fresh interpreter that loads a saved segmenter with plain transformers only (Auto class and pipeline) and prints
# its masks.
PLAIN_TRANSFORMERS = """
import json, sys
import numpy as np, torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation, pipeline
source, images = sys.argv[1], sys.argv[2:]
model = AutoModelForSemanticSegmentation.from_pretrained(source).eval()
processor = AutoImageProcessor.from_pretrained(source)
segment = pipeline("image-segmentation", model=source)
auto, piped = [], []
for path in images:
    image = Image.open(path).convert("RGB")
    with torch.no_grad():
        outputs = model(**processor(images=image, return_tensors="pt"))
    seg = processor.post_process_semantic_segmentation(outputs, target_sizes=[(image.height, image.width)])[0]
    auto.append((seg.numpy() == 1).astype(int).tolist())
    found = {r["label"]: np.asarray(r["mask"]) > 127 for r in segment(image)}
    piped.append(found.get("foreground", np.zeros((image.height, image.width), bool)).astype(int).tolist())
print(json.dumps({"auto": auto, "pipeline": piped, "labels": model.config.id2label,
                  "use_pretrained_backbone": model.config.backbone_config.to_dict().get("use_pretrained_backbone"),
                  "sgps_imported": any(m.startswith("sgps_hf") for m in sys.modules)}))
"""


def check_plain(out, segmenter, query_files):
    assert out["sgps_imported"] is False
    assert out["labels"] == {"0": "background", "1": "foreground"} and out["use_pretrained_backbone"] is False
    expected = segmenter.predict(query_files)
    assert any(m.any() for m in expected)  # the comparison is not between two empty masks
    for mine, auto, piped in zip(expected, out["auto"], out["pipeline"], strict=False):
        np.testing.assert_array_equal(np.asarray(auto, bool), mine)
        np.testing.assert_array_equal(np.asarray(piped, bool), mine)
