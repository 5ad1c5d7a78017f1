"""Optional first stage: medical multi-domain adaptation of the body on all meta-train classes.

The body (ImageNet-initialised by default) is trained as an ordinary many-way classifier: every
meta-train class is one label, with a throwaway linear head. Sampling is task- and class-balanced
(each task equally often, each class of a task equally often), so the 141-class dermatology task does
not drown the 2-class ones, and images are augmented as suits medical images
(:func:`~sgps_hf.training.augment.medical_augment`). Only meta-train classes are used, so validation
and held-out tasks stay unseen. :func:`interpolate_bodies` then mixes the adapted and the starting
weights (WiSE-FT), which keeps part of what ImageNet features give families absent from training.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn
from tqdm.auto import tqdm

from ..data.episodes import ClassPool
from ..models.sgps.image_processing_sgps import SGPSImageProcessor
from ..body.timm_network import batchnorm_layers
from .augment import medical_augment
from .config import TrainingConfig


def pretrain_body(
    accelerator: Accelerator, body: nn.Module, pools: list[ClassPool], processor: SGPSImageProcessor, config: TrainingConfig
) -> list[dict[str, float]]:
    """Train ``body`` in place for ``config.pretrain_epochs`` epochs; returns per-epoch loss/accuracy."""
    images = np.concatenate([pool.images for pool in pools])
    labels = np.concatenate([np.full(len(pool.images), i) for i, pool in enumerate(pools)])
    dataset = torch.utils.data.TensorDataset(torch.from_numpy(images).permute(0, 3, 1, 2), torch.from_numpy(labels).long())
    generator = torch.Generator().manual_seed(config.seed)
    sampler = torch.utils.data.WeightedRandomSampler(
        balanced_weights(pools), num_samples=config.pretrain_samples_per_epoch or len(dataset), replacement=True, generator=generator
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=config.pretrain_batch_size, sampler=sampler, drop_last=True)
    classifier = nn.Sequential(body, nn.Linear(body.num_features, len(pools)))
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=config.pretrain_learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.pretrain_learning_rate, total_steps=config.pretrain_epochs * len(loader), pct_start=0.15
    )
    classifier, optimizer, loader, scheduler = accelerator.prepare(classifier, optimizer, loader, scheduler)
    momenta = [(bn, bn.momentum) for _, bn in batchnorm_layers(body)]
    for bn, _ in momenta:
        bn.momentum = 0.1  # ordinary running statistics while pre-training
    history = []
    classifier.train()
    try:
        for epoch in range(config.pretrain_epochs):
            losses, correct, seen = [], 0, 0
            for batch_images, batch_labels in tqdm(loader, desc=f"pre-training body {epoch + 1}/{config.pretrain_epochs}", disable=not accelerator.is_main_process):
                batch_images = medical_augment(batch_images, generator)
                logits = classifier(processor.normalize_uint8(batch_images))
                loss = nn.functional.cross_entropy(logits, batch_labels, label_smoothing=0.1)
                accelerator.backward(loss)
                accelerator.clip_grad_norm_(classifier.parameters(), config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
                losses.append(loss.item())
                correct += (logits.argmax(-1) == batch_labels).sum().item()
                seen += len(batch_labels)
            history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "accuracy": correct / max(seen, 1)})
            accelerator.print(f"pre-training epoch {epoch + 1}: loss {history[-1]['loss']:.3f}, train accuracy {history[-1]['accuracy']:.3f}")
    finally:
        for bn, momentum in momenta:
            bn.momentum = momentum
    return history


def balanced_weights(pools: list[ClassPool]) -> torch.Tensor:
    """Per-image sampling weight: every task equally likely, every class equally likely within its task."""
    classes_per_task = Counter(pool.task for pool in pools)
    weights = [
        torch.full((len(pool),), 1.0 / (classes_per_task[pool.task] * len(pool))) for pool in pools
    ]
    return torch.cat(weights).double()


@torch.no_grad()
def interpolate_bodies(adapted: dict[str, torch.Tensor], start: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """WiSE-FT: ``alpha * adapted + (1 - alpha) * start`` for every floating tensor (BatchNorm statistics too)."""
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}.")
    return {
        name: torch.lerp(start[name], tensor, alpha) if tensor.is_floating_point() else tensor.clone()
        for name, tensor in adapted.items()
    }
