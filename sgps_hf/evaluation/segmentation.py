"""Few-shot segmentation benchmark on whole held-out tasks (``scripts/evaluate_seg.py``).

Every method sees the same seeded episodes (K examples + queries per held-out binary task and K):

* ``synthesizer``: the meta-trained synthesizer (its configured head), one forward pass;
* ``synthesizer-prototype`` / ``synthesizer-ridge``: the same decoder with one closed-form head forced at every K
  (ablation);
* ``mean-mask``: the mean of the K example masks, thresholded at 0.5 (no image information);
* ``panet-imagenet``: PANet-style masked-average-pooling prototypes with cosine similarity on the same frozen
  ImageNet Lite0 body (encoder stages upsampled to 1/4 resolution and concatenated), no meta-training, on the
  feature stages ``panet_levels`` (chosen on meta-val); ``panet-imagenet-all-levels``: the same on all four stages;
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

from ..data.segmentation import SegEpisode, SegEpisodeSampler, TaskArrays
from ..metrics import dice_iou
from ..models.sgps_seg.modeling_sgps_seg import SGPSSegSynthesizer, segmentation_loss
from ..training.seg_features import FeatureBank, episode_logits

PANET_SCALE = 20.0  # PANet's cosine-similarity temperature


@dataclass
class SegBenchmarkConfig:
    ks: list[int] = field(default_factory=lambda: [1, 2, 5, 8])
    episodes: int = 8
    n_query: int = 8
    seed: int = 2024
    finetune_steps: int = 20
    finetune_lr: float = 1e-3
    finetune_imagenet_steps: int = 40
    finetune_imagenet_lr: float = 3e-3
    methods: list[str] = field(
        default_factory=lambda: [
            "synthesizer",
            "synthesizer-prototype",
            "synthesizer-ridge",
            "mean-mask",
            "panet-imagenet",
            "panet-imagenet-all-levels",
            "finetune",
            "finetune-imagenet",
        ]
    )
    panet_levels: list[int] = field(default_factory=lambda: [0, 1])
    finetune_episodes: int | None = None  # the fine-tuning methods (seconds per episode) on the first n episodes only
    bootstrap: int = 2000


def panet_predict(bank: FeatureBank, episode: SegEpisode, levels: Sequence[int]) -> torch.Tensor:
    feats, masks = bank.get(episode.task, list(episode.support) + list(episode.query))
    size = feats[0].shape[-2:]
    x = torch.cat(
        [F.normalize(F.interpolate(feats[i], size=size, mode="bilinear", align_corners=False), dim=1) for i in levels],
        1,
    )
    k = episode.k
    y = F.adaptive_avg_pool2d(masks[:k], size)
    support = x[:k]
    fg = (support * y).sum((0, 2, 3)) / y.sum().clamp_min(1e-6)
    bg = (support * (1 - y)).sum((0, 2, 3)) / (1 - y).sum().clamp_min(1e-6)
    query = F.normalize(x[k:], dim=1)
    sims = torch.stack([torch.einsum("qchw,c->qhw", query, F.normalize(p, dim=0)) for p in (bg, fg)], 1) * PANET_SCALE
    logits = F.interpolate(sims, size=masks.shape[-2:], mode="bilinear", align_corners=False)
    return logits[:, 1] > logits[:, 0]


def mean_mask_predict(bank: FeatureBank, episode: SegEpisode) -> torch.Tensor:
    masks = bank.masks[episode.task]
    mean = masks[list(episode.support)].mean(0)[0]
    return (mean >= 0.5).expand(len(episode.query), *mean.shape)


def finetune_predict(
    model: SGPSSegSynthesizer,
    bank: FeatureBank,
    episode: SegEpisode,
    steps: int,
    lr: float,
    init_head: bool,
    seed: int,
) -> torch.Tensor:
    """Fine-tune a copy of the decoder + 1x1 classifier on the K examples (mirrored too), then segment the queries.

    With a raw pass-through block (``config.raw_levels``) the classifier spans learned + raw channels and the raw
    block stays fixed (it is a copy of the frozen encoder's features): the learned decoder and the classifier train.
    """
    torch.manual_seed(seed)
    work = copy.deepcopy(model)
    work.eval()  # BatchNorm keeps its running statistics (K can be 1)
    head = work.segmenter.decode_head
    width = work.config.hidden_size + (work.raw_channels if work.config.raw_levels else 0)
    classifier = torch.nn.Conv2d(width, 2, 1)
    if init_head:
        with torch.no_grad():
            levels, masks = bank.get(episode.task, episode.support)
            weight, bias = work.head_from_support(work.decode(levels), masks)
            classifier.weight.copy_(weight)
            classifier.bias.copy_(bias)
    elif width == head.classifier.in_channels:
        classifier.load_state_dict(head.classifier.state_dict())
    head.classifier = torch.nn.Identity()
    params = [p for p in head.parameters()] + list(classifier.parameters())
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=lr)
    plain, masks = bank.get(episode.task, episode.support)
    mirrored, mirrored_masks = bank.get(episode.task, episode.support, flip=True)
    inputs = [torch.cat([a, b]) for a, b in zip(plain, mirrored, strict=False)]
    targets = torch.cat([masks, mirrored_masks])

    def network(levels):
        return classifier(work.decode(levels))

    for _ in range(steps):
        logits = F.interpolate(network(inputs), size=targets.shape[-2:], mode="bilinear", align_corners=False)
        loss = segmentation_loss(logits, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        queries, _ = bank.get(episode.task, episode.query)
        logits = F.interpolate(network(queries), size=targets.shape[-2:], mode="bilinear", align_corners=False)
    return logits[:, 1] > logits[:, 0]


def synth_predict(
    model: SGPSSegSynthesizer, bank: FeatureBank, episode: SegEpisode, head: str | None = None
) -> torch.Tensor:
    with torch.no_grad():
        logits, _ = episode_logits(model, bank, episode, head=head)
    return logits[:, 1] > logits[:, 0]


def run_seg_benchmark(
    model: SGPSSegSynthesizer,
    tasks: dict[str, TaskArrays],
    config: SegBenchmarkConfig,
    imagenet_model: SGPSSegSynthesizer | None = None,
    log: Callable[[str], None] = print,
    bank: FeatureBank | None = None,
) -> dict[str, Any]:
    """``{"per_task": {task: {method: {k: {"dice", "iou", "n"}}}}, "timing_s": {method: seconds per episode}}``."""
    model.eval()
    bank = bank or FeatureBank(model, tasks, mirrored=True, dtype=torch.float32)
    task_sizes = {n: len(a) for n, a in tasks.items()}
    sampler = SegEpisodeSampler(task_sizes, (1, max(config.ks)), config.n_query, config.seed)
    methods: dict[str, Callable[[SegEpisode, int], torch.Tensor]] = {
        "synthesizer": lambda ep, i: synth_predict(model, bank, ep),
        "synthesizer-prototype": lambda ep, i: synth_predict(model, bank, ep, head="prototype"),
        "synthesizer-ridge": lambda ep, i: synth_predict(model, bank, ep, head="ridge"),
        "mean-mask": lambda ep, i: mean_mask_predict(bank, ep),
        "panet-imagenet": lambda ep, i: panet_predict(bank, ep, config.panet_levels),
        "panet-imagenet-all-levels": lambda ep, i: panet_predict(bank, ep, [0, 1, 2, 3]),
        "finetune": lambda ep, i: finetune_predict(
            model, bank, ep, config.finetune_steps, config.finetune_lr, True, config.seed + i
        ),
    }
    if imagenet_model is not None:
        methods["finetune-imagenet"] = lambda ep, i: finetune_predict(
            imagenet_model,
            bank,
            ep,
            config.finetune_imagenet_steps,
            config.finetune_imagenet_lr,
            False,
            config.seed + i,
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
                n_ep = len(episodes)
                if method.startswith("finetune") and config.finetune_episodes:
                    n_ep = min(n_ep, config.finetune_episodes)
                started = time.perf_counter()
                predictions = [methods[method](ep, i).numpy() for i, ep in enumerate(episodes[:n_ep])]
                timing[names.get(method, method)].append((time.perf_counter() - started) / n_ep)
                scores = dice_iou(
                    [m for batch in predictions for m in batch],
                    [m for batch in references[:n_ep] for m in batch],
                    per_image=True,
                )
                sizes = np.cumsum([0] + [len(b) for b in predictions])
                per_episode = [
                    float(np.mean(scores["dice_per_image"][a:b])) for a, b in zip(sizes[:-1], sizes[1:], strict=False)
                ]
                per_task[task][names.get(method, method)][str(k)] = {
                    "dice": scores["dice"],
                    "iou": scores["iou"],
                    "n": sum(len(b) for b in predictions),
                    "episodes": n_ep,
                    "episode_dice": per_episode,
                }
            log(
                f"{task} K={k}: "
                + ", ".join(
                    f"{names.get(m, m)} {per_task[task][names.get(m, m)][str(k)]['dice']:.3f}" for m in selected
                )
            )
    return {"per_task": per_task, "timing_s": {m: float(np.mean(v)) for m, v in timing.items() if v}}


def summarize(
    per_task: dict[str, Any], ks: Sequence[int], bootstrap: int = 2000, seed: int = 0
) -> dict[str, dict[str, dict[str, float]]]:
    """Mean over tasks: ``{method: {k: {"dice", "iou", "dice_ci": [lo, hi], "episodes"}}}``.

    ``dice_ci``: 95% percentile bootstrap interval of the task-mean Dice, resampling episodes within each task
    (queries of an episode stay together; tasks are fixed). Each method's resampling uses the same episode
    draws, so :func:`paired_difference` intervals are paired.
    """
    methods = next(iter(per_task.values())).keys()
    out: dict[str, dict[str, dict[str, float]]] = {}
    for m in methods:
        out[m] = {}
        for k in ks:
            cells = [per_task[t][m][str(k)] for t in per_task]
            row = {metric: float(np.mean([c[metric] for c in cells])) for metric in ("dice", "iou")}
            if all("episode_dice" in c for c in cells):
                row["dice_ci"] = bootstrap_ci([c["episode_dice"] for c in cells], bootstrap, seed + k)
                row["episodes"] = min(len(c["episode_dice"]) for c in cells)
            out[m][str(k)] = row
    return out


def _resample_means(per_task_scores: Sequence[Sequence[float]], n: int, seed: int) -> np.ndarray:
    """``n`` bootstrap replicates of the mean over tasks of each task's mean episode score."""
    total = np.zeros(n)
    for t, scores in enumerate(per_task_scores):
        scores = np.asarray(scores, dtype=float)
        index = np.random.default_rng([seed, t, len(scores)]).integers(0, len(scores), size=(n, len(scores)))
        total += scores[index].mean(1)
    return total / len(per_task_scores)


def bootstrap_ci(per_task_scores: Sequence[Sequence[float]], n: int = 2000, seed: int = 0) -> list[float]:
    """95% percentile bootstrap interval of the task-mean of per-episode scores (episodes resampled within tasks)."""
    reps = _resample_means(per_task_scores, n, seed)
    return [float(np.percentile(reps, 2.5)), float(np.percentile(reps, 97.5))]


def paired_difference(
    per_task: dict[str, Any], a: str, b: str, k: int, n: int = 2000, seed: int = 0
) -> dict[str, float]:
    """Task-mean Dice of ``a`` minus ``b`` at ``k`` on the same episodes, with a paired 95% bootstrap interval."""
    diffs = []
    for t in per_task:
        da, db = per_task[t][a][str(k)]["episode_dice"], per_task[t][b][str(k)]["episode_dice"]
        m = min(len(da), len(db))
        diffs.append(np.asarray(da[:m]) - np.asarray(db[:m]))
    reps = _resample_means(diffs, n, seed + k)
    return {
        "diff": float(np.mean([d.mean() for d in diffs])),
        "ci": [float(np.percentile(reps, 2.5)), float(np.percentile(reps, 97.5))],
    }
