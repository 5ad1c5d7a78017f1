"""Episodic meta-training of the segmentation synthesizer with Accelerate (``scripts/train_seg.py``).

The ImageNet encoder is frozen, so its feature maps of every meta-train / meta-val image (and of its
horizontal mirror, the augmentation) are computed once and kept in memory; each step then runs only the
UperNet decoder on the episode's examples and queries, synthesizes the classifier in closed form from the
examples and back-propagates the queries' BCE + Dice loss into the decoder and the two meta-learned scalars.

Conventions of the classification side: a YAML config plus ``--key value`` overrides, ``--resume`` from the
latest Accelerate state, the best step by meta-val Dice exported as a ``save_pretrained`` folder, a CSV log
and a learning curve.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import yaml

from ..data.segmentation import EpisodeSampler, TaskArrays, load_seg_dataset, seg_splits, task_arrays
from ..models.sgps_seg.configuration_sgps_seg import SGPSSegConfig
from ..models.sgps_seg.modeling_sgps_seg import SGPSSegSynthesizer, segmentation_loss


@dataclass
class SegTrainingConfig:
    output_dir: str = "runs/sgps-seg"
    data_dir: str | None = None
    splits_file: str | None = None  # default: the packaged configs/splits.yaml
    model: dict[str, Any] = field(default_factory=dict)
    steps: int = 1500
    episodes_per_step: int = 2
    k_range: list[int] = field(default_factory=lambda: [1, 8])
    n_query: int = 4
    augment: bool = True
    learning_rate: float = 1e-3
    scalar_learning_rate: float = 1e-2
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    max_grad_norm: float = 1.0
    seed: int = 0
    log_every: int = 25
    eval_every: int = 150
    eval_episodes_per_k: int = 8
    eval_k: list[int] = field(default_factory=lambda: [1, 2, 5, 8])
    checkpoint_every: int = 150
    max_minutes: float | None = None
    num_threads: int | None = 1
    # raw encoder pass-through. In the loop (``model.raw_levels`` set): its standardisation / principal axes are fitted on
    # meta-train images before the first step (keys fit_images_per_task, fit_seed, shift_margin, standardize, level_norm) and the head sees
    # learned + raw channels throughout meta-training. The other keys belonged to a removed post-hoc route (legacy).
    passthrough: dict[str, Any] = field(default_factory=dict)
    # regularisation: per episode, each learned decoder channel is zeroed (in examples and queries alike) with this
    # probability, so the head cannot lean on the learned block alone (the raw block is never dropped)
    learned_dropout: float = 0.0
    # after training: per K, the ridge vs prototype head of the best step on meta-val (this many episodes per K);
    # the prototype head is kept for K <= prototype_max_k when it is better at every such K. 0 disables.
    head_selection_episodes: int = 24

    @classmethod
    def from_file(cls, path: str | Path | None, overrides: Sequence[str] = ()) -> "SegTrainingConfig":
        raw = yaml.safe_load(Path(path).read_text()) if path else {}
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(raw) - names
        if unknown:
            raise ValueError(f"Unknown training config keys: {sorted(unknown)}")
        for item in overrides:
            key, _, value = item.partition("=")
            key = key.lstrip("-").replace("-", "_")
            if key not in names:
                raise ValueError(f"Unknown training config key {key!r}")
            raw[key] = yaml.safe_load(value)
        return cls(**raw)


class FeatureBank:
    """Frozen-encoder feature maps of every image of some binary tasks, plus their mirrored copies."""

    def __init__(
        self,
        model: SGPSSegSynthesizer,
        tasks: dict[str, TaskArrays],
        mirrored: bool,
        batch_size: int = 32,
        dtype: torch.dtype = torch.float16,
    ) -> None:
        self.tasks = tasks
        self.features: dict[str, list[list[torch.Tensor]]] = {}  # task -> [plain levels, mirrored levels]
        self.masks: dict[str, torch.Tensor] = {}
        model.eval()
        mean = torch.tensor(model.config.image_mean).view(1, 3, 1, 1)
        std = torch.tensor(model.config.image_std).view(1, 3, 1, 1)
        for name, arrays in tasks.items():
            views = []
            for flip in [False, True] if mirrored else [False]:
                levels: list[list[torch.Tensor]] = []
                for start in range(0, len(arrays), batch_size):
                    pixels = (
                        torch.from_numpy(arrays.images[start : start + batch_size]).permute(0, 3, 1, 2).float() / 255
                    )
                    pixels = (pixels - mean) / std
                    if flip:
                        pixels = pixels.flip(-1)
                    levels.append([f.to(dtype) for f in model.encode(pixels)])
                views.append([torch.cat([chunk[i] for chunk in levels]) for i in range(len(levels[0]))])
            self.features[name] = views
            self.masks[name] = torch.from_numpy(arrays.masks).float()[:, None]

    def get(self, name: str, indices: Sequence[int], flip: bool = False) -> tuple[list[torch.Tensor], torch.Tensor]:
        index = torch.tensor(list(indices), dtype=torch.long)
        levels = [f[index].float() for f in self.features[name][1 if flip else 0]]
        masks = self.masks[name][index]
        return levels, masks.flip(-1) if flip else masks


def episode_logits(
    model: SGPSSegSynthesizer,
    bank: FeatureBank,
    episode,
    flip: bool = False,
    head: str | None = None,
    learned_keep: torch.Tensor | None = None,
):
    """Query logits and masks of one episode; ``learned_keep``: optional 0/1 mask over the learned decoder channels
    (learned-channel dropout in meta-training, the same for examples and queries)."""
    indices = list(episode.support) + list(episode.query)
    levels, masks = bank.get(episode.task, indices, flip=flip)
    decoded = model.decode(levels)
    if learned_keep is not None:
        hidden = model.config.hidden_size
        decoded = torch.cat(
            [decoded[:, :hidden] * learned_keep.to(decoded)[None, :, None, None], decoded[:, hidden:]], 1
        )
    k = episode.k
    weight, bias = model.head_from_support(decoded[:k], masks[:k], head=head)
    logits = model.query_logits(decoded[k:], weight, bias, tuple(masks.shape[-2:]))
    return logits, masks[k:]


def dice_scores(predicted: torch.Tensor, target: torch.Tensor) -> list[float]:
    """Per-image Dice of bool predictions vs targets ``(Q, H, W)``."""
    p, t = predicted.bool().flatten(1), target.bool().flatten(1)
    inter = (p & t).sum(1).double()
    total = p.sum(1).double() + t.sum(1).double()
    return torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.ones_like(total)).tolist()


@torch.no_grad()
def evaluate_bank(
    model: SGPSSegSynthesizer,
    bank: FeatureBank,
    sampler: EpisodeSampler,
    ks: Sequence[int],
    n_per_k: int,
    head: str | None = None,
) -> dict[str, float]:
    model.eval()
    out: dict[str, float] = {}
    for k in ks:
        scores = []
        for name in sampler.names:
            for episode in sampler.fixed(name, k, n_per_k):
                logits, target = episode_logits(model, bank, episode, head=head)
                scores.extend(dice_scores(logits[:, 1] > logits[:, 0], target[:, 0]))
        out[f"dice_k{k}"] = float(np.mean(scores))
    out["dice"] = float(np.mean([out[f"dice_k{k}"] for k in ks]))
    return out


def train(config: SegTrainingConfig, resume: bool = False) -> dict[str, Any]:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    if config.num_threads:
        torch.set_num_threads(int(config.num_threads))
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))
    accelerator = Accelerator(cpu=True)
    set_seed(config.seed)

    splits = seg_splits(config.splits_file)
    dataset = load_seg_dataset(config.data_dir, tasks=splits["meta_train"] + splits["meta_val"])
    train_tasks = task_arrays(dataset, splits["meta_train"])
    val_tasks = task_arrays(dataset, splits["meta_val"])
    model = SGPSSegSynthesizer.from_imagenet(SGPSSegConfig(**config.model), seed=config.seed)
    started = time.time()
    train_bank = FeatureBank(model, train_tasks, mirrored=config.augment)
    val_bank = FeatureBank(model, val_tasks, mirrored=False)
    accelerator.print(
        f"features of {sum(map(len, train_tasks.values()))} train / {sum(map(len, val_tasks.values()))} val pairs in {time.time() - started:.0f}s"
    )
    if model.config.raw_levels:
        fit_raw_in_loop(model, train_bank, config.passthrough)
        accelerator.print(
            f"raw pass-through in the loop: {model.raw_channels} raw channels beside {model.config.hidden_size} learned"
        )
    sampler = EpisodeSampler(
        {n: len(a) for n, a in train_tasks.items()}, tuple(config.k_range), config.n_query, config.seed
    )
    val_sampler = EpisodeSampler(
        {n: len(a) for n, a in val_tasks.items()}, (1, max(config.eval_k)), 8, config.seed + 1
    )

    for p in model.segmenter.backbone.parameters():
        p.requires_grad_(False)
    decoder = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("log_")]
    scalars = [model.log_scale, model.log_ridge_lambda] + (
        [model.log_raw_weight] if hasattr(model, "log_raw_weight") else []
    )
    optimizer = torch.optim.AdamW(
        [
            {"params": decoder, "lr": config.learning_rate, "weight_decay": config.weight_decay},
            {"params": scalars, "lr": config.scalar_learning_rate, "weight_decay": 0.0},
        ]
    )

    def schedule(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    raw = accelerator.unwrap_model(model)

    state_file, ckpt_dir, log_file = out / "state.json", out / "checkpoint", out / "log.csv"
    state = {"step": 0, "best_dice": -1.0, "best_step": None, "elapsed_s": 0.0}
    if resume and state_file.is_file() and ckpt_dir.is_dir():
        accelerator.load_state(str(ckpt_dir))
        state = json.loads(state_file.read_text())
        accelerator.print(
            f"resumed at step {state['step']} (best meta-val Dice {state['best_dice']:.4f} at step {state['best_step']})"
        )
    elif log_file.exists():
        log_file.unlink()
    new_log = not log_file.exists()
    log = log_file.open("a", newline="")
    writer = csv.writer(log)
    if new_log:
        writer.writerow(
            [
                "step",
                "loss",
                "lr",
                "log_scale",
                "log_ridge_lambda",
                "val_dice",
                "val_dice_k1",
                "val_dice_k5",
                "elapsed_s",
                "raw_weight",
            ]
        )

    clock = time.time() - state["elapsed_s"]
    running: list[float] = []

    def save_checkpoint() -> None:
        tmp = out / "checkpoint.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        accelerator.save_state(str(tmp))
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        tmp.rename(ckpt_dir)
        state_file.write_text(json.dumps(state))

    step = state["step"]
    while step < config.steps:
        model.train()
        flips = np.random.default_rng([config.seed, step, 1]).random(config.episodes_per_step) < 0.5
        loss_total = 0.0
        drop_rng = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        for e in range(config.episodes_per_step):
            episode = sampler.episode(step * config.episodes_per_step + e)
            keep = None
            if config.learned_dropout > 0:
                keep = (torch.rand(raw.config.hidden_size, generator=drop_rng) >= config.learned_dropout).float()
            logits, target = episode_logits(
                raw, train_bank, episode, flip=bool(flips[e] and config.augment), learned_keep=keep
            )
            loss = segmentation_loss(logits, target) / config.episodes_per_step
            accelerator.backward(loss)
            loss_total += loss.item()
        accelerator.clip_grad_norm_(decoder + scalars, config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        step += 1
        state["step"] = step
        running.append(loss_total)
        state["elapsed_s"] = time.time() - clock
        evaluated = None
        if step % config.eval_every == 0 or step == config.steps:
            evaluated = evaluate_bank(raw, val_bank, val_sampler, config.eval_k, config.eval_episodes_per_k)
            if evaluated["dice"] > state["best_dice"]:
                state["best_dice"], state["best_step"] = evaluated["dice"], step
                raw.save_pretrained(out / "best")
                (out / "best" / "training.json").write_text(
                    json.dumps({"step": step, "meta_val": evaluated, "config": dataclasses.asdict(config)}, indent=2)
                )
        if step % config.log_every == 0 or evaluated is not None:
            writer.writerow(
                [
                    step,
                    f"{np.mean(running):.5f}",
                    f"{scheduler.get_last_lr()[0]:.6g}",
                    f"{raw.log_scale.item():.4f}",
                    f"{raw.log_ridge_lambda.item():.4f}",
                    "" if evaluated is None else f"{evaluated['dice']:.4f}",
                    "" if evaluated is None or "dice_k1" not in evaluated else f"{evaluated['dice_k1']:.4f}",
                    "" if evaluated is None or "dice_k5" not in evaluated else f"{evaluated['dice_k5']:.4f}",
                    f"{state['elapsed_s']:.1f}",
                    f"{float(raw.raw_gain().detach()):.4f}" if raw.config.raw_levels else "",
                ]
            )
            log.flush()
            accelerator.print(
                f"step {step} loss {np.mean(running):.4f}"
                + (
                    ""
                    if evaluated is None
                    else f" val dice {evaluated['dice']:.4f} ("
                    + " ".join(f"k{k} {evaluated[f'dice_k{k}']:.3f}" for k in config.eval_k)
                    + ")"
                )
                + f" {state['elapsed_s']:.0f}s"
            )
            running = []
        if step % config.checkpoint_every == 0:
            save_checkpoint()
        if config.max_minutes and state["elapsed_s"] > config.max_minutes * 60:
            accelerator.print(
                f"stopping at step {step}: max_minutes {config.max_minutes} reached (resume with --resume)"
            )
            save_checkpoint()
            break
    else:
        save_checkpoint()
    log.close()
    plot_curve(log_file, out / "learning_curve.png")
    if step >= config.steps and config.head_selection_episodes and (out / "best").is_dir():
        state["head_selection"] = select_head_on_meta_val(
            out / "best", val_bank, val_sampler, config.eval_k, config.head_selection_episodes
        )
        state_file.write_text(json.dumps(state))
        accelerator.print(f"head selection on meta-val: {state['head_selection']}")
    return state


def fit_raw_in_loop(model: SGPSSegSynthesizer, bank: FeatureBank, spec: dict[str, Any]) -> None:
    """Fit the raw pass-through's standardisation / principal axes on a seeded subset of the meta-train images."""
    rng = np.random.default_rng(int(spec.get("fit_seed", 0)))
    per_task = int(spec.get("fit_images_per_task", 48))
    names = sorted(bank.features)
    picks = {name: torch.from_numpy(np.sort(rng.permutation(len(bank.masks[name]))[:per_task])) for name in names}
    features = [
        torch.cat([bank.features[name][0][level][picks[name]].float() for name in names])
        for level in range(len(model.config.out_indices))
    ]
    model.fit_raw_passthrough(
        features,
        shift_margin=float(spec.get("shift_margin", 2.0)),
        standardize=bool(spec.get("standardize", True)),
        level_norm=str(spec.get("level_norm", "dim")),
    )


@torch.no_grad()
def select_head_on_meta_val(
    best_dir: Path, bank: FeatureBank, sampler: EpisodeSampler, ks: Sequence[int], n_per_k: int
) -> dict[str, Any]:
    """Per K, ridge vs prototype head of the exported best synthesizer on meta-val; sets ``prototype_max_k`` of the
    export to the largest K such that the prototype head is better at every K up to it (``None``: ridge everywhere)."""
    model = SGPSSegSynthesizer.from_pretrained(best_dir).eval()
    scores = {head: evaluate_bank(model, bank, sampler, ks, n_per_k, head=head) for head in ("ridge", "prototype")}
    limit = None
    for k in sorted(ks):
        if scores["prototype"][f"dice_k{k}"] > scores["ridge"][f"dice_k{k}"]:
            limit = k
        else:
            break
    model.config.prototype_max_k = limit
    model.config.head = "ridge"
    model.save_pretrained(best_dir)
    info_file = best_dir / "training.json"
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    info["head_selection"] = {"episodes_per_k": n_per_k, "meta_val": scores, "prototype_max_k": limit}
    info_file.write_text(json.dumps(info, indent=2))
    return info["head_selection"]


def plot_curve(log_file: Path, target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(log_file.open()))
    if not rows:
        return
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    ax[0].plot([int(r["step"]) for r in rows], [float(r["loss"]) for r in rows])
    ax[0].set(xlabel="step", ylabel="episode loss (BCE + Dice)", title="meta-train loss")
    val = [r for r in rows if r["val_dice"]]
    ax[1].plot([int(r["step"]) for r in val], [float(r["val_dice"]) for r in val], marker="o", label="mean K=1,2,5,8")
    for key, label in (("val_dice_k1", "K=1"), ("val_dice_k5", "K=5")):
        if all(r.get(key) for r in val):
            ax[1].plot([int(r["step"]) for r in val], [float(r[key]) for r in val], marker=".", label=label)
    ax[1].set(xlabel="step", ylabel="Dice", title="meta-val Dice")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    plt.close(fig)
