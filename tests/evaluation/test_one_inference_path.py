"""The benchmark scores the code users run: one episode of real images that need resizing (non-square, larger than
the model size) gives the same logits through the public ``synthesize`` + ``predict`` as through the benchmark's
data loading (``dataset_pools``, ``make_episodes``) and its SGPS method."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from sgps_testing import SHARED_DATA

from sgps_hf import ClassSpec, SGPSSynthesizer, TaskSpec
from sgps_hf.data.loading import to_rgb_square
from sgps_hf.data.sources import dataset_pools
from sgps_hf.evaluation.baselines import SGPSMethod
from sgps_hf.evaluation.protocol import make_episodes
from sgps_hf.hub.checkpoints import DEFAULT_CHECKPOINT
from sgps_hf.training.episode_inputs import TextBank

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("torch_single_thread")]

SOURCE = SHARED_DATA / "derm-smartphone-pad-ufes-20"
CLASSES = ("melanoma", "nevus", "basal_cell_carcinoma")
#: Width x height: non-square and larger than the model's 128 px, so both paths resize and crop.
SIZE = (211, 163)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Three real classes of three images each, enlarged to a non-square size, as an imagefolder."""
    if not SOURCE.is_dir():
        pytest.skip(f"shared data not found at {SOURCE}")
    root = tmp_path_factory.mktemp("one-path") / SOURCE.name  # the task's name: its packaged class texts apply
    for name in CLASSES:
        (root / name).mkdir(parents=True)
        for index in range(3):
            image = Image.open(SOURCE / name / f"{index:04d}.jpg").convert("RGB").resize(SIZE, Image.BICUBIC)
            image.save(root / name / f"{index}.png")
    return root


@pytest.fixture(scope="module")
def shipped():
    return SGPSSynthesizer.from_pretrained(DEFAULT_CHECKPOINT)


@pytest.mark.parametrize("task_batchnorm", [100, None], ids=["task-batchnorm", "body-as-is"])
def test_benchmark_and_product_give_the_same_logits_on_resized_images(folder, shipped, task_batchnorm):
    # Without task BatchNorm the benchmark reads the body's features from its memo; with it, it runs the pixels.
    synthesizer = SGPSSynthesizer(shipped.config.with_changes(task_batchnorm_images=task_batchnorm))
    synthesizer.load_state_dict(shipped.state_dict())
    synthesizer.eval()
    size = synthesizer.config.image_size
    pools = dataset_pools(str(folder), size)
    episode = make_episodes(pools, ways=3, shot=2, queries=1, count=1, seed=0)[0]

    # The benchmark's path: cached uint8 arrays of the dataset, the SGPS method's predictor.
    texts = TextBank(synthesizer.config, [pool.text for pool in pools])
    benchmark = SGPSMethod(synthesizer, texts).adapt(episode)(episode.query)

    # The user's path: the same image files in a task, synthesize, predict.
    files = {to_rgb_square(Image.open(path), size).tobytes(): path for path in sorted(folder.glob("*/*.png"))}

    def paths(images):
        return [files[np.ascontiguousarray(image.permute(1, 2, 0).numpy()).tobytes()] for image in images]

    support = paths(episode.support)
    text = {pool.class_name: pool.text for pool in pools}
    classes = [
        ClassSpec(
            name=name,
            description=text[name],
            images=[p for p, c in zip(support, episode.support_labels, strict=True) if c == i],
        )
        for i, name in enumerate(episode.class_names)
    ]
    classifier = synthesizer.synthesize(TaskSpec(classes=classes, name="one path"))
    queries = paths(episode.query)
    with torch.no_grad():
        product = classifier.model(classifier.image_processor(queries)["pixel_values"])
    assert all(Image.open(p).size == SIZE for p in support + queries)
    assert classifier.label_names == episode.class_names and product.shape == (3, 3)
    # Identical up to float rounding (the materialised timm model and the functional body order sums differently).
    torch.testing.assert_close(benchmark, product, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(classifier.predict_proba(queries), benchmark.softmax(-1), rtol=1e-5, atol=1e-5)
