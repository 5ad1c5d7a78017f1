"""The bundled DEFAULT_SEG_CHECKPOINT on a real held-out task (offline), against trivial predictors on the same
queries."""

import numpy as np
import pytest

from sgps_hf import DEFAULT_SEG_CHECKPOINT, SegmentationTask, SGPSSegSynthesizer
from sgps_hf.data.segmentation import load_seg_dataset, seg_splits, task_arrays
from sgps_hf.hub.checkpoints import resolve_checkpoint
from sgps_hf.hub.model_card import segmenter_card
from sgps_hf.metrics import dice_iou

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("torch_single_thread")]


def test_default_checkpoint_loads_offline_and_beats_trivial_masks(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    synth = SGPSSegSynthesizer.from_pretrained(DEFAULT_SEG_CHECKPOINT)
    assert synth.config.image_size == 128
    held_out = seg_splits()["held_out"]
    assert not set(getattr(synth.config, "training_tasks", [])) & set(held_out)
    task_name = "ultrasound-thyroid-nodule"
    arrays = task_arrays(load_seg_dataset(tasks=[task_name]), [task_name])[f"{task_name}/nodule"]
    order = np.random.default_rng(0).permutation(len(arrays))
    support, queries = order[:5], order[5:25]
    task = SegmentationTask("nodule", [(arrays.images[i], arrays.masks[i]) for i in support])
    segmenter = synth.synthesize(task)
    assert (
        segmenter.info["head"] == "blend" and synth.config.prototype_mix
    )  # the bundled head: ridge + prototype blend
    predicted = segmenter.predict([arrays.images[i] for i in queries])
    references = [arrays.masks[i] for i in queries]
    dice = dice_iou(predicted, references)["dice"]
    everything = dice_iou([np.ones_like(m) for m in references], references)["dice"]
    assert dice > everything + 0.05, (dice, everything)
    again = synth.synthesize(task)
    assert again.info["weights_sha256"] == segmenter.info["weights_sha256"]
    # provenance names the bundled checkpoint by its package-relative name (loadable, no local path), like a
    # classifier's
    reference = segmenter.info["synthesizer"]["name_or_path"]
    assert (
        reference == "sgps_hf/checkpoints/sgps-seg-lite0-128"
        and resolve_checkpoint(reference) == DEFAULT_SEG_CHECKPOINT
    )
    assert DEFAULT_SEG_CHECKPOINT not in segmenter_card(segmenter).text


@pytest.mark.e2e
def test_default_checkpoints_wide_segmenter_loads_with_plain_transformers_and_gives_the_same_masks(
    tmp_path, monkeypatch
):
    from PIL import Image
    from seg_testing import PLAIN_TRANSFORMERS, check_plain
    from sgps_testing import last_json_line, run_python

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    synth = SGPSSegSynthesizer.from_pretrained(DEFAULT_SEG_CHECKPOINT)
    assert (
        synth.config.raw_levels and synth.raw_channels > 0
    )  # the bundled synthesizer passes raw encoder stages through
    task_name = "microscopy-em-neuronal-membranes"
    arrays = task_arrays(load_seg_dataset(tasks=[task_name]), [task_name])[f"{task_name}/membrane"]
    order = np.random.default_rng(1).permutation(len(arrays))
    segmenter = synth.synthesize(
        SegmentationTask("membrane", [(arrays.images[i], arrays.masks[i]) for i in order[:5]])
    )
    assert segmenter.model.config.hidden_size == synth.config.hidden_size + synth.raw_channels
    files = []
    for i in order[5:8]:
        path = tmp_path / f"{i}.png"
        Image.fromarray(arrays.images[i]).save(path)
        files.append(str(path))
    out = last_json_line(
        run_python(PLAIN_TRANSFORMERS, str(segmenter.save_pretrained(tmp_path / "seg")), *files).stdout
    )
    check_plain(out, segmenter, files)
    dice = dice_iou(segmenter.predict(files), [arrays.masks[i] for i in order[5:8]])["dice"]
    assert dice > 0.4, dice
