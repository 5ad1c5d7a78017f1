"""The episodic stage of the training command (sgps_hf.training.episodic): tiny body, synthetic pools, in process."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from sgps_testing import tiny_synthesizer

from sgps_hf.data.episodes import ClassPool, EpisodeSampler
from sgps_hf.models.sgps.image_processing_sgps import SGPSImageProcessor
from sgps_hf.training.checkpointing import EpochCheckpoints, TrainerState, list_checkpoints
from sgps_hf.training.config import TrainingConfig
from sgps_hf.training.episodic import EpisodicLearner, episodic_adapt

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def pools() -> list[ClassPool]:
    """Two tasks of three classes whose images differ by brightness, so the episodes can be learned."""
    rng = np.random.default_rng(0)
    return [
        ClassPool(
            task,
            f"class-{i}",
            np.clip(rng.normal(60 + 60 * (i % 3), 20, (6, 32, 32, 3)), 0, 255).astype(np.uint8),
            f"text {i}",
        )
        for i, task in enumerate(("a", "a", "a", "b", "b", "b"))
    ]


def config(**overrides) -> TrainingConfig:
    return TrainingConfig(
        **{
            "episodic_epochs": 2,
            "episodic_episodes_per_epoch": 3,
            "episodic_learning_rate": 3e-3,
            "n_way": 3,
            "k_shot": [1, 2],
            "q_query": 2,
            **overrides,
        }
    )


def adapt(output=None, epochs: int = 2, resume: bool = False, keep: int = 2):
    torch.manual_seed(0)
    synth = tiny_synthesizer()
    processor = SGPSImageProcessor.from_sgps_config(synth.config)
    checkpoints = None if output is None else EpochCheckpoints(output, TrainerState(), keep=keep, resume=resume)
    history = episodic_adapt(
        Accelerator(cpu=True), synth, pools(), processor, config(episodic_epochs=epochs), checkpoints
    )
    return synth, history


@pytest.mark.parametrize("ridge", [None, (0.05, 2.0)], ids=["config", "shot-dependent"])
def test_the_learner_classifies_with_the_head_synthesis_uses(ridge):
    """The loss the body is trained on is the cross-entropy of the synthesized classifier's own logits (identity view,
    the body as it is, the synthesizer's ridge for the episode's shots and its temperature)."""
    synth = tiny_synthesizer()
    if ridge is not None:
        synth.set_ridge(*ridge)
    processor = SGPSImageProcessor.from_sgps_config(synth.config)
    episode = EpisodeSampler(pools(), n_way=3, k_shot=2, q_query=2, seed=3).episode(0)
    support, query = processor.normalize_uint8(episode.support), processor.normalize_uint8(episode.query)
    learner = EpisodicLearner(synth).train()
    loss, accuracy = learner(support, episode.support_labels, query, episode.query_labels, episode.n_way)
    with torch.no_grad():
        out = synth(
            support_pixel_values=support,
            support_labels=episode.support_labels,
            num_classes=episode.n_way,
            query_pixel_values=query,
            query_labels=episode.query_labels,
            views=["identity"],
            task_batchnorm_images=None,
        )
    torch.testing.assert_close(loss.detach(), out.loss, rtol=1e-4, atol=1e-5)
    assert accuracy.item() == (out.logits.argmax(-1) == episode.query_labels).float().mean().item()
    assert not learner.body.training, "BatchNorm keeps the statistics a synthesized classifier uses"


def test_episodic_adapt_trains_the_weights_and_keeps_the_batchnorm_statistics():
    before = tiny_synthesizer().target.state_dict()
    synth, history = adapt()
    after = synth.target.state_dict()
    assert [row["epoch"] for row in history] == [1, 2]
    assert all(np.isfinite(row["loss"]) and 0 <= row["accuracy"] <= 1 and row["lr"] > 0 for row in history)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.endswith("weight"))
    running = [k for k in before if "running_" in k or "num_batches_tracked" in k]
    assert running and all(torch.equal(before[k], after[k]) for k in running)
    assert set(after) == set(before), "the throwaway logit scale is not left in the body"


@pytest.mark.parametrize("ways, expected", [(None, 2), (3, 3)], ids=["n_way", "episodic_n_way"])
def test_the_stage_draws_episodic_n_way_classes_per_episode(monkeypatch, ways, expected):
    """The stage's episodes may have more classes than the meta-val episodes calibration fits the head on."""
    seen = []

    def recording(self, *args, **kwargs):
        loss, accuracy = forward(self, *args, **kwargs)
        seen.append(args[-1])
        return loss, accuracy

    forward = EpisodicLearner.forward
    monkeypatch.setattr(EpisodicLearner, "forward", recording)
    synth = tiny_synthesizer()
    processor = SGPSImageProcessor.from_sgps_config(synth.config)
    episodic_adapt(Accelerator(cpu=True), synth, pools(), processor, config(n_way=2, episodic_n_way=ways))
    assert seen == [expected] * 6


def test_resuming_the_episodic_stage_gives_the_uninterrupted_weights(tmp_path):
    reference, reference_history = adapt(tmp_path / "reference", epochs=3)
    assert [p.name for p in list_checkpoints(tmp_path / "reference")] == ["checkpoint-2", "checkpoint-3"]
    adapt(tmp_path / "run", epochs=3, keep=3)
    for name in ("checkpoint-3", "checkpoint-2"):  # as if killed after epoch 1 was checkpointed
        shutil.rmtree(tmp_path / "run" / name)
    resumed, history = adapt(tmp_path / "run", epochs=3, resume=True)
    assert history == reference_history
    assert all(torch.equal(v, resumed.target.state_dict()[k]) for k, v in reference.target.state_dict().items())


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"episodic_epochs": -1}, "episodic_epochs must be a non-negative integer"),
        ({"episodic_episodes_per_epoch": 0}, "episodic_episodes_per_epoch must be a positive integer"),
        ({"episodic_learning_rate": 0.0}, "episodic_learning_rate must be positive"),
        ({"episodic_n_way": 1}, "episodic_n_way must be an integer of at least 2"),
        ({"episodic_balance": "site"}, "episodic_balance must be one of task, family, got 'site'"),
    ],
)
def test_bad_episodic_settings_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        config(**overrides)
