"""Optional first stage: supervised pre-training of the target body on all meta-train classes.

A body trained from scratch on episodes alone learns slowly on a CPU budget; pre-training it as an
ordinary many-way classifier (every meta-train class is one label, a throwaway linear head) gives the
synthesizer a useful feature space to build prototypes in, which episodic meta-training then
refines. Only meta-train classes are used, so validation and held-out tasks stay unseen.
"""

from __future__ import annotations

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn
from tqdm.auto import tqdm

from ..data.episodes import ClassPool
from ..image_processing_sgps import SGPSImageProcessor
from ..target import batchnorm_layers
from .config import TrainingConfig


def pretrain_body(
    accelerator: Accelerator, body: nn.Module, pools: list[ClassPool], processor: SGPSImageProcessor, config: TrainingConfig
) -> list[dict[str, float]]:
    """Train ``body`` in place for ``config.pretrain_epochs`` epochs; returns per-epoch loss/accuracy."""
    images = np.concatenate([pool.images for pool in pools])
    labels = np.concatenate([np.full(len(pool.images), i) for i, pool in enumerate(pools)])
    dataset = torch.utils.data.TensorDataset(torch.from_numpy(images).permute(0, 3, 1, 2), torch.from_numpy(labels).long())
    generator = torch.Generator().manual_seed(config.seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=config.pretrain_batch_size, shuffle=True, drop_last=True, generator=generator)
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
                batch_images = _flip(batch_images, generator)
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


def _flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flips = torch.rand(images.shape[0], 2, generator=generator) < 0.5
    images = torch.where(flips[:, 0, None, None, None], images.flip(-1), images)
    return torch.where(flips[:, 1, None, None, None], images.flip(-2), images)
