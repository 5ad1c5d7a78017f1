"""Batched segmenter inference: the masks and probabilities of one-by-one prediction, whatever the batch size."""

from __future__ import annotations

import numpy as np
import pytest
from seg_testing import blob_pair

from sgps_hf.errors import UsageError

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture(scope="module")
def segmenter(tiny_synth, tiny_task):
    return tiny_synth.synthesize(tiny_task)


def test_batched_masks_equal_one_by_one(segmenter):
    images = [blob_pair(70 + i, size)[0] for i, size in enumerate([(40, 32), (23, 61), (50, 50), (31, 17), (40, 32)])]
    single = [segmenter.predict([image], batch_size=1)[0] for image in images]
    assert [m.shape for m in single] == [(32, 40), (61, 23), (50, 50), (17, 31), (32, 40)]
    assert any(m.any() for m in single) and not all(m.all() for m in single)  # not a constant prediction
    for batch_size in (2, 5, 8):
        batched = segmenter.predict(images, batch_size=batch_size)
        assert len(batched) == len(images)
        for one, many in zip(single, batched, strict=True):
            np.testing.assert_array_equal(one, many)
    single_proba = [segmenter.predict_proba(image, batch_size=1)[0] for image in images]
    for one, many in zip(single_proba, segmenter.predict_proba(images, batch_size=3), strict=True):
        np.testing.assert_allclose(one, many, atol=1e-5)
    with pytest.raises(UsageError, match="batch_size must be a positive integer"):
        segmenter.predict(images, batch_size=0)


def test_segment_files_in_batches_keeps_order_and_bad_files(segmenter, tmp_path):
    from PIL import Image

    from sgps_hf.evaluation.seg_own_cases import segment_files

    files = []
    for i in range(5):
        files.append(tmp_path / f"q{i}.png")
        blob_pair(80 + i, (36 + i, 30))[0].save(files[-1])
    files.insert(2, tmp_path / "broken.png")
    files[2].write_bytes(b"\x89PNG nope")
    rows = segment_files(segmenter, files, tmp_path, batch_size=2)
    assert [r["file"] for r in rows] == [str(f) for f in files]
    assert [r["error"] is None for r in rows] == [True, True, False, True, True, True]
    good = [f for f in files if f.name != "broken.png"]
    expected = [segmenter.predict([str(f)], batch_size=1)[0] for f in good]
    for path, mask in zip(good, expected, strict=True):
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / f"{path.stem}_mask.png")) == 255, mask)
