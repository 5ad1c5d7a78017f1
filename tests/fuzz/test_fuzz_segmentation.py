"""Fuzzing the segmentation family: saved segmenter folders and segmentation task folders (issue 25).

Properties: ``SynthesizedSegmenter.from_pretrained`` on a folder with mutated tensors, bytes or any key of its three
JSON files either loads exactly the saved tensors (and then predicts and renders its card) or raises a
CheckpointError that says what to fix; ``SegmentationTask`` on a generated task folder (images and masks of any
content, size, encoding, missing or unmatched files) either builds a valid task or raises a documented sgps_hf error.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from fuzzing import assert_actionable
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import load_file
from seg_testing import blob_pair, tiny_seg_synthesizer
from test_fuzz_checkpoints import (
    JSON_VALUES,
    apply_byte_mutation,
    apply_tensor_mutations,
    check_loaded,
    key_paths,
    mutate_path,
    tensor_mutations,
)

from sgps_hf import CheckpointError, SegmentationTask, SynthesizedSegmenter
from sgps_hf.errors import ImageLoadError, InvalidTaskError

pytestmark = [pytest.mark.usefixtures("torch_single_thread"), pytest.mark.timeout(300)]

JSON_FILES = ["config.json", "preprocessor_config.json", "sgps_seg_task.json", "sgps_seg_task.json"]


@pytest.fixture(scope="module")
def saved_segmenter(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg-fuzz")
    segmenter = tiny_seg_synthesizer(0).synthesize(SegmentationTask("blob", [blob_pair(i) for i in range(2)]))
    segmenter.save_pretrained(root / "segmenter")
    return root / "segmenter"


@settings(max_examples=60)
@given(data=st.data(), kind=st.sampled_from(["tensors", "bytes", "json", "json", "json", "none"]))
def test_segmenter_folders_load_exactly_or_explain(saved_segmenter, tmp_path_factory, data, kind):
    from sgps_hf.hub.model_card import segmenter_card

    folder = tmp_path_factory.mktemp("seg") / "segmenter"
    shutil.copytree(saved_segmenter, folder)
    weights = folder / "model.safetensors"
    if kind == "tensors":
        apply_tensor_mutations(weights, data.draw(tensor_mutations(sorted(load_file(weights)))))
    elif kind == "bytes":
        target = folder / data.draw(st.sampled_from(["model.safetensors", *JSON_FILES]))
        apply_byte_mutation(
            target, data.draw(st.floats(0, 1)), data.draw(st.floats(0, 1)), data.draw(st.integers(0, 255))
        )
    elif kind == "json":
        path = folder / data.draw(st.sampled_from(JSON_FILES))
        content = json.loads(path.read_text())
        edits = data.draw(
            st.lists(
                st.tuples(st.sampled_from(key_paths(content)), st.sampled_from(["drop", "set", "set"]), JSON_VALUES),
                min_size=1,
                max_size=3,
            )
        )
        for key_path, op, value in edits:
            try:
                mutate_path(content, key_path, op, value)
            except (KeyError, IndexError, TypeError):
                continue  # an earlier edit removed or replaced the parent
        path.write_text(json.dumps(content))
    try:
        segmenter = SynthesizedSegmenter.from_pretrained(folder)
    except CheckpointError as error:
        assert_actionable(error, CheckpointError)
        return
    check_loaded(segmenter.model.state_dict(), saved_segmenter / "model.safetensors")
    (mask,) = segmenter.predict([blob_pair(7)[0]])
    assert mask.shape == (32, 40) and mask.dtype == bool
    str(segmenter_card(segmenter))


MASK_KINDS = ["blob", "blob", "empty", "full", "nonbinary", "other-size", "other-aspect", "rgb", "garbage", "missing"]


def write_mask(path, kind: str, mask: np.ndarray, rng: np.random.Generator) -> None:
    if kind == "missing":
        return
    if kind == "garbage":
        path.write_bytes(rng.bytes(int(rng.integers(0, 64))))
        return
    array = {
        "blob": mask.astype(np.uint8) * 255,
        "empty": np.zeros(mask.shape, np.uint8),
        "full": np.full(mask.shape, 255, np.uint8),
        "nonbinary": rng.integers(0, 256, size=mask.shape).astype(np.uint8),
        "other-size": np.kron(mask, np.ones((2, 2), bool)).astype(np.uint8),
        "other-aspect": np.ones((mask.shape[0], mask.shape[0]), np.uint8) * 255,
        "rgb": np.stack([mask * 255, mask * 0, mask * 255], -1).astype(np.uint8),
    }[kind]
    Image.fromarray(array).save(path)


@settings(max_examples=120)
@given(
    masks=st.lists(st.sampled_from(MASK_KINDS), min_size=0, max_size=4),
    broken_image=st.booleans(),
    extra_mask=st.booleans(),
    labels=st.integers(0, 2),
    seed=st.integers(0, 1000),
)
def test_segmentation_task_folders_build_or_explain(tmp_path_factory, masks, broken_image, extra_mask, labels, seed):
    rng = np.random.default_rng(seed)
    folder = tmp_path_factory.mktemp("segtask")
    (folder / "images").mkdir()
    for label in range(labels):
        (folder / "masks" / f"label{label}").mkdir(parents=True)
    for i, kind in enumerate(masks):
        image, mask = blob_pair(seed + i)
        image.save(folder / "images" / f"{i:03d}.png")
        if labels:
            write_mask(folder / "masks" / "label0" / f"{i:03d}.png", kind, mask, rng)
    if broken_image and masks:
        (folder / "images" / "000.png").write_bytes(b"\x89PNG\r\n\x1a\n" + rng.bytes(20))
    if extra_mask and labels:
        Image.fromarray(np.zeros((32, 40), np.uint8)).save(folder / "masks" / "label0" / "orphan.png")
    try:
        task = SegmentationTask("fuzz", folder, label="label0" if labels else None)
    except (InvalidTaskError, ImageLoadError) as error:
        assert_actionable(error)
        return
    assert 1 <= len(task) <= len(masks) and task.num_positive >= 1
    assert all(
        m.dtype == bool and m.shape == (img.height, img.width) for m, img in zip(task.masks, task.images, strict=True)
    )
    assert not all(m.all() for m in task.masks)
    info = task.to_dict()
    assert info["num_examples"] == len(task) and 0 <= info["num_negative"] < len(task)
