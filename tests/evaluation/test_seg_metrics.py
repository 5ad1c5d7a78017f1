"""The dice and iou local evaluate modules."""

import numpy as np
import pytest

from sgps_hf.metrics import dice_iou


def test_dice_and_iou_on_known_masks():
    a = np.zeros((8, 8), bool)
    a[:4] = True  # 32 px
    b = np.zeros((8, 8), bool)
    b[2:6] = True  # 32 px, 16 shared
    out = dice_iou([a, a, np.zeros((8, 8), bool)], [b, a, np.zeros((8, 8), bool)], per_image=True)
    assert out["dice_per_image"] == pytest.approx([0.5, 1.0, 1.0])
    assert out["iou_per_image"] == pytest.approx([16 / 48, 1.0, 1.0])
    assert out["dice"] == pytest.approx(2.5 / 3)
    with pytest.raises(ValueError, match="shape"):
        dice_iou([a], [np.zeros((4, 4), bool)])
