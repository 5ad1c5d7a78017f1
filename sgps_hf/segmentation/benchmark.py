"""Few-shot segmentation benchmark on whole held-out tasks (``scripts/evaluate_seg.py``).

Every method sees the same seeded episodes (K examples + queries per held-out binary task and K):

* ``synthesizer``: the meta-trained synthesizer (its configured head), one forward pass;
* ``synthesizer-prototype`` / ``synthesizer-ridge``: the same decoder with one closed-form head forced at every K (ablation);
* ``mean-mask``: the mean of the K example masks, thresholded at 0.5 (no image information);
* ``panet-imagenet``: PANet-style masked-average-pooling prototypes with cosine similarity on the same frozen
  ImageNet Lite0 body (encoder stages upsampled to 1/4 resolution and concatenated), no meta-training;
* ``finetune``: the synthesized network fine-tuned on the K examples (decoder + classifier, Adam, fixed budget);
* ``finetune-imagenet``: the same UperNet from ImageNet encoder and a fresh decoder, fine-tuned on the K examples.

The encoder is frozen for every method, so its features are computed once per image (float32).
Dice and IoU are computed through the packaged local ``evaluate`` modules, per query image.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .data import Episode, EpisodeSampler, TaskArrays
from .meta_train import FeatureBank, episode_logits
from .metrics import dice_iou
from .modeling_sgps_seg import SGPSSegSynthesizer, segmentation_loss

PANET_SCALE = 20.0  # PANet's cosine-similarity temperature


@dataclass
class BenchmarkConfig:
    ks: list[int] = field(default_factory=lambda: [1, 2, 5, 8])
    episodes: int = 8
    n_query: int = 8
    seed: int = 2024
    finetune_steps: int = 20
    finetune_lr: float = 1e-3
    finetune_imagenet_steps: int = 40
    finetune_imagenet_lr: float = 3e-3
    methods: list[str] = field(default_factory=lambda: ["synthesizer", "synthesizer-prototype", "synthesizer-ridge", "mean-mask", "panet-imagenet", "finetune", "finetune-imagenet"])
    panet_levels: list[int] = field(default_factory=lambda: [0, 1, 2, 3])


def panet_predict(bank: FeatureBank, episode: Episode, levels: Sequence[int]) -> torch.Tensor:
    feats, masks = bank.get(episode.task, list(episode.support) + list(episode.query))
    size = feats[0].shape[-2:]
    x = torch.cat([F.normalize(F.interpolate(feats[i], size=size, mode="bilinear", align_corners=False), dim=1) for i in levels], 1)
    k = episode.k
    y = F.adaptive_avg_pool2d(masks[:k], size)
    support = x[:k]
    fg = (support * y).sum((0, 2, 3)) / y.sum().clamp_min(1e-6)
    bg = (support * (1 - y)).sum((0, 2, 3)) / (1 - y).sum().clamp_min(1e-6)
    query = F.normalize(x[k:], dim=1)
    sims = torch.stack([torch.einsum("qchw,c->qhw", query, F.normalize(p, dim=0)) for p in (bg, fg)], 1) * PANET_SCALE
    logits = F.interpolate(sims, size=masks.shape[-2:], mode="bilinear", align_corners=False)
    return logits[:, 1] > logits[:, 0]


def mean_mask_predict(bank: FeatureBank, episode: Episode) -> torch.Tensor:
    masks = bank.masks[episode.task]
    mean = masks[list(episode.support)].mean(0)[0]
    return (mean >= 0.5).expand(len(episode.query), *mean.shape)


def finetune_predict(model: SGPSSegSynthesizer, bank: FeatureBank, episode: Episode, steps: int, lr: float, init_head: bool, seed: int) -> torch.Tensor:
    """Fine-tune a copy of the decoder + 1x1 classifier on the K examples (mirrored too), then segment the queries."""
    torch.manual_seed(seed)
    work = copy.deepcopy(model)
    work.eval()  # BatchNorm keeps its running statistics (K can be 1)
    head = work.segmenter.decode_head
    if init_head:
        with torch.no_grad():
            levels, masks = bank.get(episode.task, episode.support)
            weight, bias = work.head_from_support(work.decode(levels), masks)
            head.classifier.weight.copy_(weight)
            head.classifier.bias.copy_(bias)
    params = [p for p in head.parameters()]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=lr)
    plain, masks = bank.get(episode.task, episode.support)
    mirrored, mirrored_masks = bank.get(episode.task, episode.support, flip=True)
    inputs = [torch.cat([a, b]) for a, b in zip(plain, mirrored)]
    targets = torch.cat([masks, mirrored_masks])
    for _ in range(steps):
        logits = F.interpolate(head(inputs), size=targets.shape[-2:], mode="bilinear", align_corners=False)
        loss = segmentation_loss(logits, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        queries, _ = bank.get(episode.task, episode.query)
        logits = F.interpolate(head(queries), size=targets.shape[-2:], mode="bilinear", align_corners=False)
    return logits[:, 1] > logits[:, 0]


def synth_predict(model: SGPSSegSynthesizer, bank: FeatureBank, episode: Episode, head: str | None = None) -> torch.Tensor:
    with torch.no_grad():
        logits, _ = episode_logits(model, bank, episode, head=head)
    return logits[:, 1] > logits[:, 0]


def run_benchmark(
    model: SGPSSegSynthesizer,
    tasks: dict[str, TaskArrays],
    config: BenchmarkConfig,
    imagenet_model: SGPSSegSynthesizer | None = None,
    log: Callable[[str], None] = print,
    bank: FeatureBank | None = None,
) -> dict[str, Any]:
    """``{"per_task": {task: {method: {k: {"dice", "iou", "n"}}}}, "timing_s": {method: seconds per episode}}``."""
    model.eval()
    bank = bank or FeatureBank(model, tasks, mirrored=True, dtype=torch.float32)
    sampler = EpisodeSampler({n: len(a) for n, a in tasks.items()}, (1, max(config.ks)), config.n_query, config.seed)
    methods: dict[str, Callable[[Episode, int], torch.Tensor]] = {
        "synthesizer": lambda ep, i: synth_predict(model, bank, ep),
        "synthesizer-prototype": lambda ep, i: synth_predict(model, bank, ep, head="prototype"),
        "synthesizer-ridge": lambda ep, i: synth_predict(model, bank, ep, head="ridge"),
        "mean-mask": lambda ep, i: mean_mask_predict(bank, ep),
        "panet-imagenet": lambda ep, i: panet_predict(bank, ep, config.panet_levels),
        "finetune": lambda ep, i: finetune_predict(model, bank, ep, config.finetune_steps, config.finetune_lr, True, config.seed + i),
    }
    if imagenet_model is not None:
        methods["finetune-imagenet"] = lambda ep, i: finetune_predict(
            imagenet_model, bank, ep, config.finetune_imagenet_steps, config.finetune_imagenet_lr, False, config.seed + i
        )
    selected = [m for m in config.methods if m in methods]
    names: dict[str, str] = {}
    per_task: dict[str, Any] = {}
    timing: dict[str, list[float]] = {names.get(m, m): [] for m in selected}
    for task in sorted(tasks):
        per_task[task] = {names.get(m, m): {} for m in selected}
        for k in config.ks:
            episodes = sampler.fixed(task, k, config.episodes)
            references = [bank.masks[task][list(ep.query)][:, 0].bool().numpy() for ep in episodes]
            for method in selected:
                started = time.perf_counter()
                predictions = [methods[method](ep, i).numpy() for i, ep in enumerate(episodes)]
                timing[names.get(method, method)].append((time.perf_counter() - started) / len(episodes))
                scores = dice_iou([m for batch in predictions for m in batch], [m for batch in references for m in batch])
                per_task[task][names.get(method, method)][str(k)] = {"dice": scores["dice"], "iou": scores["iou"], "n": sum(len(b) for b in predictions)}
            log(f"{task} K={k}: " + ", ".join(f"{names.get(m, m)} {per_task[task][names.get(m, m)][str(k)]['dice']:.3f}" for m in selected))
    return {"per_task": per_task, "timing_s": {m: float(np.mean(v)) for m, v in timing.items() if v}}


def summarize(per_task: dict[str, Any], ks: Sequence[int]) -> dict[str, dict[str, dict[str, float]]]:
    """Mean over tasks: ``{method: {k: {"dice", "iou"}}}``."""
    methods = next(iter(per_task.values())).keys()
    return {
        m: {str(k): {metric: float(np.mean([per_task[t][m][str(k)][metric] for t in per_task])) for metric in ("dice", "iou")} for k in ks}
        for m in methods
    }
