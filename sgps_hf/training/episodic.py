"""The second training stage: episodic adaptation of the body through the closed-form head (R2D2-style).

After the supervised adaptation (:mod:`sgps_hf.training.pretrain`) the body is trained on meta-train *episodes*
the way synthesis will use it: the support images of an episode (augmented) give the closed-form ridge head of
:mod:`sgps_hf.models.sgps.heads` in the forward pass, that head classifies the episode's augmented queries, and the
cross-entropy flows back through the ridge solve into the body (Bertinetto et al. 2019, "Meta-learning with
differentiable closed-form solvers"). The supervised stage teaches the body the meta-train classes; this one teaches
it to separate the classes of a task from a few examples, which is what a synthesized classifier does on a new task.

The body keeps its BatchNorm statistics (eval mode, as every synthesized classifier computes its features) and its
weights move; the head's own meta-parameters are not trained here (calibration fits them afterwards on meta-val),
except a logit scale that keeps the loss well conditioned and is thrown away. Episodes are drawn from the meta-train
classes only (with ``episodic_balance: family`` every family equally likely, so families with one meta-train task are
not drowned by those with seven), deterministically by index, and the stage is checkpointed per epoch
(``<output>/episodic``), so ``--resume`` continues it bit for bit.
"""

from __future__ import annotations

import numpy as np
import torch
from accelerate import Accelerator
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..data.episodes import ClassPool, EpisodeSampler
from ..models.sgps.heads import normalize_rows, ridge_head, standardize, support_shots
from ..models.sgps.image_processing_sgps import SGPSImageProcessor
from ..models.sgps.modeling_sgps import SGPSSynthesizer
from .augment import medical_augment
from .checkpointing import EpochCheckpoints
from .config import TrainingConfig
from .pools import episode_task_weights

#: Offset of the episodic stage's episode seed from the run's seed (its episodes differ from calibration's).
EPISODE_SEED_OFFSET = 4_242


class EpisodicLearner(nn.Module):
    """The body with the synthesizer's closed-form head on top: ``forward`` returns one episode's query loss and
    accuracy. A module of its own so Accelerate can prepare (and DDP wrap) it."""

    def __init__(self, model: SGPSSynthesizer) -> None:
        super().__init__()
        self.body = model.target
        self.ridge_at = model.ridge_at  # the synthesizer's ridge for a number of shots (not trained here)
        self.normalize = bool(model.config.normalize_support_rows)
        self.register_buffer("feature_scale", model.log_feature_scale.detach().exp().clone())
        self.log_logit_scale = nn.Parameter(model.log_logit_scale.detach().clone())

    def train(self, mode: bool = True) -> "EpisodicLearner":
        super().train(mode)
        self.body.eval()  # frozen BatchNorm statistics: the features a synthesized classifier computes
        return self

    def forward(
        self, support: Tensor, support_labels: Tensor, query: Tensor, query_labels: Tensor, num_classes: int
    ) -> tuple[Tensor, Tensor]:
        # channels-last: oneDNN's faster depthwise convolutions on CPU (as body_features)
        features = self.body(torch.cat([support, query]).contiguous(memory_format=torch.channels_last))
        support_features, query_features = features[: len(support)], features[len(support) :]
        mean = support_features.mean(0)
        z = standardize(support_features, mean, self.feature_scale)
        if self.normalize:
            z = normalize_rows(z)
        ridge = self.ridge_at(float(support_shots(support_labels, num_classes)))
        weights = ridge_head(z, support_labels, num_classes, torch.tensor(ridge, device=z.device))
        logits = self.log_logit_scale.exp() * standardize(query_features, mean, self.feature_scale) @ weights
        loss = nn.functional.cross_entropy(logits, query_labels)
        return loss, (logits.argmax(-1) == query_labels).float().mean()


def episodic_adapt(
    accelerator: Accelerator,
    model: SGPSSynthesizer,
    pools: list[ClassPool],
    processor: SGPSImageProcessor,
    config: TrainingConfig,
    checkpoints: EpochCheckpoints | None = None,
) -> list[dict[str, float]]:
    """Train ``model``'s body in place for ``config.episodic_epochs`` epochs of ``config.episodic_episodes_per_epoch``
    meta-train episodes (``episodic_ways`` classes, ``k_shot`` and ``q_query`` images per class, tasks drawn as
    ``episodic_balance`` says); returns per-epoch loss/accuracy/lr."""
    learner = EpisodicLearner(model)
    sampler = EpisodeSampler(
        pools,
        n_way=config.episodic_ways,
        k_shot=tuple(config.k_shot),
        q_query=config.q_query,
        seed=config.seed + EPISODE_SEED_OFFSET,
        task_weights=episode_task_weights(pools, config),
    )
    per_epoch = config.episodic_episodes_per_epoch
    optimizer = torch.optim.AdamW(
        learner.parameters(), lr=config.episodic_learning_rate, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=config.episodic_learning_rate,
        total_steps=config.episodic_epochs * per_epoch,
        pct_start=0.1,
    )
    generator = torch.Generator().manual_seed(config.seed + EPISODE_SEED_OFFSET)
    learner, optimizer, scheduler = accelerator.prepare(learner, optimizer, scheduler)
    first_epoch, history = 0, []
    if checkpoints is not None:
        first_epoch, history = checkpoints.start(accelerator, generator), checkpoints.state.pretrain_history
    learner.train()
    # A step is one episode per process (DDP averages their gradients), so every process takes the same number of
    # steps: an epoch's episodes beyond a multiple of the process count are left out.
    rank, world = accelerator.process_index, accelerator.num_processes
    steps = max(per_epoch // world, 1)
    for epoch in range(first_epoch, config.episodic_epochs):
        losses, accuracies = [], []
        indices = [epoch * per_epoch + step * world + rank for step in range(steps)]
        for index in tqdm(
            indices,
            desc=f"episodic adaptation {epoch + 1}/{config.episodic_epochs}",
            disable=not accelerator.is_main_process,
        ):
            episode = sampler.episode(index)
            support = processor.normalize_uint8(medical_augment(episode.support, generator))
            query = processor.normalize_uint8(medical_augment(episode.query, generator))
            loss, accuracy = learner(
                support.to(accelerator.device),
                episode.support_labels.to(accelerator.device),
                query.to(accelerator.device),
                episode.query_labels.to(accelerator.device),
                episode.n_way,
            )
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(learner.parameters(), config.max_grad_norm)
            optimizer.step()
            scheduler.step()  # Accelerate's scheduler steps once per process: the schedule counts episodes
            optimizer.zero_grad()
            losses.append(loss.item())
            accuracies.append(accuracy.item())
        row = {
            "epoch": epoch + 1,
            "loss": float(np.mean(losses)),
            "accuracy": float(np.mean(accuracies)),
            "lr": float(scheduler.get_last_lr()[0]),
        }
        accelerator.print(
            f"episodic adaptation epoch {epoch + 1}: loss {row['loss']:.3f}, accuracy {row['accuracy']:.3f}"
        )
        if checkpoints is not None:
            checkpoints.end_epoch(accelerator, row)
        else:
            history.append(row)
    return history
