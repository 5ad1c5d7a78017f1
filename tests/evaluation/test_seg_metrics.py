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


def test_dice_per_image_is_the_evaluate_modules_dice():
    """Training and head selection score with the module's own function, bit for bit what ``evaluate`` computes."""
    import torch

    from sgps_hf.metrics import dice_per_image, load_metric

    rng = np.random.default_rng(0)
    predictions = [rng.random((16, 12)) > 0.5 for _ in range(6)] + [np.zeros((16, 12), bool)]
    references = [rng.random((16, 12)) > 0.3 for _ in range(6)] + [np.zeros((16, 12), bool)]
    expected = load_metric("dice").compute(predictions=predictions, references=references)["per_image"]
    assert dice_per_image(predictions, references) == expected and expected[-1] == 1.0
    tensors = dice_per_image([torch.from_numpy(p) for p in predictions], [torch.from_numpy(r) for r in references])
    assert tensors == expected
    with pytest.raises(ValueError, match="shape"):
        dice_per_image([predictions[0]], [np.zeros((4, 4), bool)])
