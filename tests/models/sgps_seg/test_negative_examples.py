"""Negative examples (issue 25): an example whose mask is empty is accepted beside one that shows the structure, and
the closed-form head takes its pixels as background evidence."""

import numpy as np
import pytest
import torch
from PIL import Image
from seg_testing import blob_pair, tiny_seg_synthesizer, write_task_folder

from sgps_hf import SegmentationTask
from sgps_hf.cli import main
from sgps_hf.errors import InvalidTaskError

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def negative(seed: int) -> tuple[Image.Image, np.ndarray]:
    image, _ = blob_pair(seed)
    return image, np.zeros((32, 40), bool)


def test_empty_masks_are_negatives_beside_a_positive():
    task = SegmentationTask("blob", [blob_pair(0), negative(1), negative(2)])
    assert len(task) == 3 and task.num_positive == 1
    info = task.to_dict()
    assert info["num_examples"] == 3 and info["num_negative"] == 2
    with pytest.raises(InvalidTaskError, match="at least one example must show the structure"):
        SegmentationTask("blob", [negative(1), negative(2)])


@pytest.mark.parametrize("head", ["prototype", "ridge"])
def test_the_head_uses_negatives_as_background_evidence(head):
    model = tiny_seg_synthesizer(0)
    torch.manual_seed(0)
    features = torch.randn(2, 8, 4, 5)
    masks = torch.zeros(2, 1, 4, 5)
    masks[0, 0, 1:3, 1:3] = 1  # example 0 shows the structure, example 1 is a negative
    weight, bias = model.head_from_support(features, masks, head=head)
    alone = model.head_from_support(features[:1], masks[:1], head=head)
    assert not torch.allclose(weight, alone[0])  # the negative changed the classifier
    if head == "prototype":
        x = features.permute(0, 2, 3, 1).reshape(-1, 8).double()
        y = masks.reshape(-1).double()
        background = (x[y == 0]).mean(0)  # every background pixel, the negative's included
        scale = model.scale.double()
        torch.testing.assert_close(weight[0, :, 0, 0].double(), 2 * scale * background, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bias[0].double(), -scale * (background**2).sum(), rtol=1e-5, atol=1e-6)


def test_the_head_is_chosen_by_the_examples_that_show_the_structure():
    model = tiny_seg_synthesizer(0, prototype_max_k=1)
    segmenter = model.synthesize(SegmentationTask("blob", [blob_pair(0), negative(1), negative(2)]))
    assert segmenter.info["head"] == "prototype" and segmenter.info["task"]["num_negative"] == 2
    assert model.synthesize(SegmentationTask("blob", [blob_pair(0), blob_pair(1)])).info["head"] == "ridge"


def test_a_task_folder_with_an_empty_mask_synthesizes_from_the_cli(tmp_path, capsys):
    synth = tiny_seg_synthesizer(0)
    synth.save_pretrained(tmp_path / "synth")
    examples = write_task_folder(tmp_path / "lesions", 3)
    Image.fromarray(np.zeros((32, 40), np.uint8)).save(examples / "masks" / "lesion" / "0001.png")
    out = tmp_path / "segmenter"
    code = main(
        ["segment", "synthesize", "--examples", str(examples), "--out", str(out)]
        + ["--synthesizer", str(tmp_path / "synth")]
    )
    assert code == 0, capsys.readouterr().err
    card = (out / "README.md").read_text()
    assert "1 of them are negatives" in card
