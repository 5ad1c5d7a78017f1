"""Episodic meta-training of the segmentation synthesizer with Accelerate (``scripts/train_seg.py``).

The ImageNet encoder is frozen, so its feature maps of every meta-train / meta-val image (and of its horizontal
mirror, the augmentation) are computed once (``seg_features.FeatureBank``); each step then runs only the UperNet
decoder on the episode's examples and queries, synthesizes the classifier in closed form from the examples and
back-propagates the queries' BCE + Dice loss into the decoder and the meta-learned scalars.

The shared pieces of the classification side: the config loader (``training.config``: a YAML file plus ``--key value``
flags), the CSV training log (``training_log.CsvLog``, truncated to the checkpoint on ``--resume``), atomic
checkpoints (``hub.atomic``), ``transformers.get_scheduler`` and the ``evaluate`` Dice (``metrics``). The best step
by meta-val Dice is exported as a ``save_pretrained`` folder (``best``) and then shaped by the training-free steps of
``seg_calibration`` (head per K, raw block re-fit, prototype weight per K), so the training command alone produces the
shipped synthesizer.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from ..data.segmentation import SegEpisodeSampler, load_seg_dataset, seg_splits, task_arrays
from ..hub.atomic import atomic_directory, atomic_write_text
from ..models.sgps_seg.configuration_sgps_seg import SGPSSegConfig
from ..models.sgps_seg.modeling_sgps_seg import SGPSSegSynthesizer, segmentation_loss
from .config import read_config_file
from .seg_calibration import (
    MIX_SELECTION_DEFAULTS,
    fit_raw_block,
    raw_fit_record,
    refit_raw_block,
    select_head_on_meta_val,
    select_prototype_mix,
    update_training_record,
    write_prototype_mix,
)
from .seg_features import FeatureBank, episode_logits, evaluate_bank
from .training_log import CsvLog

#: Columns of the segmentation training log (``log.csv``).
SEG_LOG_FIELDS = [
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
#: The trainer state inside each checkpoint folder (saved with it, atomically).
STATE_FILE = "trainer_state.json"
_RAW_FIT_KEYS = {"fit_images_per_task", "fit_seed", "shift_margin", "standardize", "level_norm"}


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
    # raw encoder pass-through (``model.raw_levels`` set): its standardisation / principal axes are fitted on
    # meta-train images before the first step (keys fit_images_per_task, fit_seed, shift_margin, standardize,
    # level_norm) and the head sees learned + raw channels throughout meta-training
    passthrough: dict[str, Any] = field(default_factory=dict)
    # regularisation: per episode, each learned decoder channel is zeroed (in examples and queries alike) with this
    # probability, so the head cannot lean on the learned block alone (the raw block is never dropped)
    learned_dropout: float = 0.0
    # after training: per K, the ridge vs prototype head of the best step on meta-val (this many episodes per K);
    # the prototype head is kept for K <= prototype_max_k when it is better at every such K. 0 disables.
    head_selection_episodes: int = 24
    # after head selection: re-fit the raw block of the export with these pass-through keys on top of ``passthrough``
    # (e.g. {standardize: false, level_norm: energy}); empty: no re-fit
    raw_refit: dict[str, Any] = field(default_factory=dict)
    # last: the blended head's prototype weight per K on the meta-train and meta-val tasks (keys of
    # seg_calibration.MIX_SELECTION_DEFAULTS; ``{}`` with the defaults is spelled ``{episodes: 16}``); empty: off
    prototype_mix_selection: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("passthrough", "raw_refit"):
            unknown = set(getattr(self, name)) - _RAW_FIT_KEYS
            if unknown:
                raise ValueError(f"Unknown {name} keys {sorted(unknown)}; known: {sorted(_RAW_FIT_KEYS)}.")
        unknown = set(self.prototype_mix_selection) - set(MIX_SELECTION_DEFAULTS)
        if unknown:
            raise ValueError(
                f"Unknown prototype_mix_selection keys {sorted(unknown)}; known: {sorted(MIX_SELECTION_DEFAULTS)}."
            )
        for name in ("steps", "episodes_per_step", "n_query", "log_every", "eval_every", "checkpoint_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")

    @classmethod
    def from_file(cls, path: str | Path) -> "SegTrainingConfig":
        """The config of a YAML/JSON file (the loader of the classification side: ``training.config``)."""
        return cls(**read_config_file(cls, path))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def train_seg(config: SegTrainingConfig, resume: bool = False) -> dict[str, Any]:
    """Meta-train, export the best step by meta-val Dice to ``output_dir/best`` and run the post-hoc steps on it
    (:func:`calibrate_export`) once the run has reached ``steps``. Returns the trainer state."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    if config.num_threads:
        torch.set_num_threads(int(config.num_threads))
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
    accelerator = Accelerator(cpu=True, step_scheduler_with_optimizer=False)  # the schedule counts optimizer steps
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
        f"features of {sum(map(len, train_tasks.values()))} train / {sum(map(len, val_tasks.values()))} val pairs "
        f"in {time.time() - started:.0f}s"
    )
    if model.config.raw_levels:
        fit_raw_block(model, train_bank, config.passthrough)
        accelerator.print(f"raw pass-through: {model.raw_channels} raw channels beside {model.config.hidden_size}")
    sampler = SegEpisodeSampler(
        {n: len(a) for n, a in train_tasks.items()}, tuple(config.k_range), config.n_query, config.seed
    )
    val_sampler = SegEpisodeSampler(
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
    scheduler = get_scheduler(
        "cosine", optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=config.steps
    )
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    raw = accelerator.unwrap_model(model)

    checkpoint = out / "checkpoint"
    log = CsvLog(out / "log.csv", enabled=accelerator.is_main_process, fields=SEG_LOG_FIELDS)
    state: dict[str, Any] = {"step": 0, "best_dice": -1.0, "best_step": None, "elapsed_s": 0.0}
    if resume and (checkpoint / STATE_FILE).is_file():
        accelerator.load_state(str(checkpoint))
        state = json.loads((checkpoint / STATE_FILE).read_text())
        log.truncate_after(state["step"])  # rows a killed run wrote after its checkpoint are redone
        accelerator.print(
            f"resumed at step {state['step']} "
            f"(best meta-val Dice {state['best_dice']:.4f} at step {state['best_step']})"
        )
    elif resume:
        accelerator.print(f"--resume: no checkpoint in {out}; starting from scratch.")
    if state["step"] == 0 and log.path.exists():
        log.path.unlink()  # a fresh run of this output_dir starts a fresh log

    def save_checkpoint() -> None:
        with atomic_directory(checkpoint) as staging:  # a kill mid-save keeps the previous checkpoint whole
            accelerator.save_state(str(staging))
            (staging / STATE_FILE).write_text(json.dumps(state))

    clock = time.time() - state["elapsed_s"]
    running: list[float] = []
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
                record = {"step": step, "meta_val": evaluated, "config": config.to_dict()}
                atomic_write_text(out / "best" / "training.json", json.dumps(record, indent=2))
        if step % config.log_every == 0 or evaluated is not None:
            log.write(log_row(raw, step, running, scheduler.get_last_lr()[0], evaluated, state["elapsed_s"]))
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
    if log.path.exists():
        plot_curve(log.path, out / "learning_curve.png")
    if step >= config.steps and (out / "best").is_dir():
        state["post_hoc"] = calibrate_export(
            out / "best", config, train_bank, val_bank, val_sampler, accelerator.print
        )
    return state


def log_row(
    model: SGPSSegSynthesizer,
    step: int,
    losses: list[float],
    lr: float,
    evaluated: dict[str, float] | None,
    elapsed_s: float,
) -> dict[str, str | int]:
    """One row of the training log (``SEG_LOG_FIELDS``)."""
    val = evaluated or {}
    return {
        "step": step,
        "loss": f"{np.mean(losses):.5f}",
        "lr": f"{lr:.6g}",
        "log_scale": f"{model.log_scale.item():.4f}",
        "log_ridge_lambda": f"{model.log_ridge_lambda.item():.4f}",
        "val_dice": f"{val['dice']:.4f}" if "dice" in val else "",
        "val_dice_k1": f"{val['dice_k1']:.4f}" if "dice_k1" in val else "",
        "val_dice_k5": f"{val['dice_k5']:.4f}" if "dice_k5" in val else "",
        "elapsed_s": f"{elapsed_s:.1f}",
        "raw_weight": f"{float(model.raw_gain().detach()):.4f}" if model.config.raw_levels else "",
    }


def calibrate_export(
    folder: Path,
    config: SegTrainingConfig,
    train_bank: FeatureBank,
    val_bank: FeatureBank,
    val_sampler: SegEpisodeSampler,
    log=print,
) -> dict[str, Any]:
    """The post-hoc, training-free steps of ``seg_calibration`` on the exported synthesizer in ``folder``, as
    ``config`` asks for them (each recorded in its ``training.json``): head per K, raw block re-fit, prototype mix."""
    done: dict[str, Any] = {}
    if config.head_selection_episodes:
        done["head_selection"] = select_head_on_meta_val(
            folder, val_bank, val_sampler, config.eval_k, config.head_selection_episodes
        )
        log(f"head selection on meta-val: prototype_max_k {done['head_selection']['prototype_max_k']}")
    if config.raw_refit:
        done["raw_refit"] = refit_raw_block(folder, folder, config.raw_refit, train_bank)
        log(f"raw block re-fitted with {done['raw_refit']}")
    if config.prototype_mix_selection:
        model = SGPSSegSynthesizer.from_pretrained(folder)
        result = select_prototype_mix(
            model, config.data_dir, config.splits_file, log=log, **config.prototype_mix_selection
        )
        result["raw_fit"] = raw_fit_record(folder)
        write_prototype_mix(folder, result["prototype_mix"])
        atomic_write_text(folder.parent / "prototype_mix_selection.json", json.dumps(result, indent=2))
        summary = {key: result[key] for key in ("chosen", "prototype_mix", "leave_one_task_out_gain_over_ridge")}
        update_training_record(folder, "prototype_mix_selection", {**summary, **config.prototype_mix_selection})
        done["prototype_mix_selection"] = summary
        log(f"prototype weight per K: {result['prototype_mix']}")
    return done


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
