"""SegmentationTask: accepted example forms and the errors for bad input."""

import numpy as np
import pytest
from PIL import Image
from seg_testing import blob_pair, write_task_folder

from sgps_hf import SegmentationTask
from sgps_hf.errors import ImageLoadError, InvalidTaskError, SGPSError


def test_pairs_of_paths_pil_and_arrays_with_any_binary_encoding(tmp_path):
    image, mask = blob_pair(1)
    image.save(tmp_path / "img.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "mask.png")
    task = SegmentationTask(
        "blob",
        [
            ("%s" % (tmp_path / "img.png"), tmp_path / "mask.png"),
            (image, mask),
            (np.asarray(image), mask.astype(np.uint8)),
            (image, Image.fromarray(mask)),
        ],
    )
    assert len(task) == 4
    for m in task.masks:
        assert m.dtype == bool and m.shape == (32, 40)
        np.testing.assert_array_equal(m, mask)
    info = task.to_dict()
    assert info["num_examples"] == 4 and len({e["mask_sha256"] for e in info["examples"]}) == 1


def test_mask_of_another_resolution_is_resized_nearest():
    image, mask = blob_pair(2, size=(40, 32))
    big = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((80, 64), Image.NEAREST))
    task = SegmentationTask("blob", [(image, big)])
    assert task.masks[0].shape == (32, 40)
    assert (task.masks[0] == mask).mean() > 0.97


@pytest.mark.parametrize(
    "mask, message",
    [
        (np.zeros((32, 40), np.uint8), "empty"),
        (np.full((32, 40), 7, np.uint8) * np.eye(32, 40, dtype=np.uint8), "not binary"),
        (np.arange(32 * 40).reshape(32, 40) % 3, "not binary"),
        (np.ones((40, 40), bool), "shapes differ"),
        (np.ones((32, 40, 2), np.uint8), "shape"),
    ],
)
def test_bad_masks_raise_clear_task_errors(mask, message):
    image, _ = blob_pair(3)
    with pytest.raises(InvalidTaskError, match=message):
        SegmentationTask("blob", [(image, mask)])


def test_no_examples_unreadable_files_and_full_masks(tmp_path):
    with pytest.raises(InvalidTaskError, match="no examples"):
        SegmentationTask("blob", [])
    with pytest.raises(InvalidTaskError, match="name"):
        SegmentationTask("  ", [blob_pair(0)])
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    image, mask = blob_pair(0)
    with pytest.raises(ImageLoadError, match="example 0"):
        SegmentationTask("blob", [(tmp_path / "broken.png", mask)])
    with pytest.raises(ImageLoadError, match="Cannot read mask"):
        SegmentationTask("blob", [(image, tmp_path / "broken.png")])
    with pytest.raises(ImageLoadError, match="not found"):
        SegmentationTask("blob", [(image, tmp_path / "missing.png")])
    with pytest.raises(InvalidTaskError, match="background"):
        SegmentationTask("blob", [(image, np.ones((32, 40), bool))])
    with pytest.raises(InvalidTaskError, match="pair"):
        SegmentationTask("blob", [image])
    assert issubclass(InvalidTaskError, SGPSError) and issubclass(InvalidTaskError, ValueError)


def test_folder_layout_and_label_choice(tmp_path):
    folder = write_task_folder(tmp_path / "task", 3, labels=("a", "b"))
    with pytest.raises(InvalidTaskError, match="several labels"):
        SegmentationTask("t", folder)
    task = SegmentationTask("t", folder, label="b")
    assert task.label == "b" and len(task) == 3
    with pytest.raises(InvalidTaskError, match="not in"):
        SegmentationTask("t", folder, label="c")
    with pytest.raises(InvalidTaskError, match="images/"):
        SegmentationTask("t", tmp_path)
    (folder / "masks" / "a" / "9999.png").write_bytes((folder / "masks" / "a" / "0000.png").read_bytes())
    with pytest.raises(InvalidTaskError, match="without an image"):
        SegmentationTask("t", folder, label="a")
