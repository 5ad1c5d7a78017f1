"""The training stage: medical multi-domain adaptation of the body on all meta-train classes (Accelerate).

The body (ImageNet-initialised by default) is trained as an ordinary many-way classifier: every
meta-train class is one label, with a throwaway linear head. Sampling is task- and class-balanced
(each task equally often, each class of a task equally often), so the 141-class dermatology task does
not drown the 2-class ones, and images are augmented as suits medical images
(:func:`~sgps_hf.training.augment.medical_augment`). Only meta-train classes are used, so validation
and held-out tasks stay unseen. :func:`interpolate_bodies` then mixes the adapted and the starting
weights (WiSE-FT), which keeps part of what ImageNet features give families absent from training.
:func:`distill_body` trains a body with no reachable pretrained weights to reproduce another's features
on the same balanced, augmented draws.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn
from tqdm.auto import tqdm

from ..body.timm_network import batchnorm_layers
from ..data.episodes import ClassPool
from ..models.sgps.image_processing_sgps import SGPSImageProcessor
from .augment import medical_augment
from .checkpointing import EpochCheckpoints
from .config import TrainingConfig


def pretrain_body(
    accelerator: Accelerator,
    body: nn.Module,
    pools: list[ClassPool],
    processor: SGPSImageProcessor,
    config: TrainingConfig,
    checkpoints: EpochCheckpoints | None = None,
) -> list[dict[str, float]]:
    """Train ``body`` in place for ``config.pretrain_epochs`` epochs; returns per-epoch loss/accuracy/lr.

    ``checkpoints``: save an Accelerate checkpoint after every epoch (and resume from the newest, if it says so).
    """
    classifier = nn.Sequential(body, nn.Linear(body.num_features, len(pools)))

    def step(module: nn.Module, pixels: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, float]:
        logits = module(pixels)
        loss = nn.functional.cross_entropy(logits, labels, label_smoothing=0.1)
        return loss, (logits.argmax(-1) == labels).float().mean().item()

    return _train_on_pools(
        accelerator, classifier, body, step, pools, processor, config, "adapting body", "accuracy", checkpoints
    )


def distill_body(
    accelerator: Accelerator,
    student: nn.Module,
    teacher: nn.Module,
    pools: list[ClassPool],
    processor: SGPSImageProcessor,
    config: TrainingConfig,
) -> list[dict[str, float]]:
    """Feature distillation: train the body ``student`` in place to reproduce the frozen body ``teacher``.

    Both see the same augmented meta-train image (balanced draws, as :func:`pretrain_body`); a linear map
    of the student's pooled features regresses the teacher's (thrown away afterwards, so the two may have
    different widths). The loss is the mean squared error over the teacher features' variance in the
    batch, so ``1 - loss`` is the fraction of the teacher's feature variance the student explains (the
    per-epoch ``explained_variance``). This is how a body with no reachable pretrained weights
    (EfficientNet-V2 offline) can inherit the ImageNet teacher's features.
    """
    teacher.eval().requires_grad_(False)
    distiller = nn.Sequential(student, nn.Linear(student.num_features, teacher.num_features))

    def step(module: nn.Module, pixels: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, float]:
        with torch.no_grad():
            target = teacher(pixels)
        loss = nn.functional.mse_loss(module(pixels), target) / target.var(dim=0).mean().clamp_min(1e-8)
        return loss, 1.0 - loss.item()

    teacher.to(accelerator.device)
    return _train_on_pools(
        accelerator, distiller, student, step, pools, processor, config, "distilling body", "explained_variance"
    )


def _train_on_pools(
    accelerator: Accelerator,
    trainable: nn.Module,
    body: nn.Module,
    step,
    pools: list[ClassPool],
    processor: SGPSImageProcessor,
    config: TrainingConfig,
    description: str,
    metric: str,
    checkpoints: EpochCheckpoints | None = None,
) -> list[dict[str, float]]:
    """The loop body adaptation and distillation share: balanced augmented draws, AdamW, one-cycle schedule.

    ``step(trainable, pixels, labels)`` returns the batch loss and a per-batch metric (averaged over
    the batches of an epoch, weighted by batch size, as ``metric``). One generator draws the samples and their
    augmentations; with ``checkpoints`` its state is saved with every epoch's checkpoint.
    """
    images = np.concatenate([pool.images for pool in pools])
    labels = np.concatenate([np.full(len(pool.images), i) for i, pool in enumerate(pools)])
    dataset = torch.utils.data.TensorDataset(
        torch.from_numpy(images).permute(0, 3, 1, 2), torch.from_numpy(labels).long()
    )
    generator = torch.Generator().manual_seed(config.seed)
    sampler = torch.utils.data.WeightedRandomSampler(
        balanced_weights(pools),
        num_samples=config.pretrain_samples_per_epoch or len(dataset),
        replacement=True,
        generator=generator,
    )
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=config.pretrain_batch_size, sampler=sampler, drop_last=True
    )
    optimizer = torch.optim.AdamW(
        trainable.parameters(), lr=config.pretrain_learning_rate, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=config.pretrain_learning_rate,
        total_steps=config.pretrain_epochs * len(loader),
        pct_start=0.15,
    )
    trainable, optimizer, loader, scheduler = accelerator.prepare(trainable, optimizer, loader, scheduler)
    first_epoch, history = 0, []
    if checkpoints is not None:  # after prepare: load_state restores the prepared objects
        first_epoch, history = checkpoints.start(accelerator, generator), checkpoints.state.pretrain_history
        if first_epoch > config.pretrain_epochs:
            raise ValueError(
                f"The checkpoint to resume has {first_epoch} epochs of body adaptation, more than pretrain_epochs "
                f"({config.pretrain_epochs}): resume with the run's own training_config.json."
            )
    momenta = [(bn, bn.momentum) for _, bn in batchnorm_layers(body)]
    for bn, _ in momenta:
        bn.momentum = 0.1  # ordinary running statistics while training the body
    trainable.train()
    try:
        for epoch in range(first_epoch, config.pretrain_epochs):
            losses, total, seen = [], 0.0, 0
            for batch_images, batch_labels in tqdm(
                loader,
                desc=f"{description} {epoch + 1}/{config.pretrain_epochs}",
                disable=not accelerator.is_main_process,
            ):
                batch_images = medical_augment(batch_images, generator)
                loss, value = step(trainable, processor.normalize_uint8(batch_images), batch_labels)
                accelerator.backward(loss)
                accelerator.clip_grad_norm_(trainable.parameters(), config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
                losses.append(loss.item())
                total += value * len(batch_labels)
                seen += len(batch_labels)
            row = {
                "epoch": epoch + 1,
                "loss": float(np.mean(losses)),
                metric: total / max(seen, 1),
                "lr": float(scheduler.get_last_lr()[0]),
            }
            accelerator.print(f"{description} epoch {epoch + 1}: loss {row['loss']:.3f}, {metric} {row[metric]:.3f}")
            if checkpoints is not None:
                checkpoints.end_epoch(accelerator, row)  # appends the row to its state's history (``history``)
            else:
                history.append(row)
    finally:
        for bn, momentum in momenta:
            bn.momentum = momentum
    return history


def balanced_weights(pools: list[ClassPool]) -> torch.Tensor:
    """Per-image sampling weight: every task equally likely, every class equally likely within its task."""
    classes_per_task = Counter(pool.task for pool in pools)
    weights = [torch.full((len(pool),), 1.0 / (classes_per_task[pool.task] * len(pool))) for pool in pools]
    return torch.cat(weights).double()


@torch.no_grad()
def interpolate_bodies(
    adapted: dict[str, torch.Tensor], start: dict[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """WiSE-FT: ``alpha * adapted + (1 - alpha) * start`` for every floating tensor (BatchNorm statistics too)."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}.")
    return {
        name: torch.lerp(start[name], tensor, alpha) if tensor.is_floating_point() else tensor.clone()
        for name, tensor in adapted.items()
    }
