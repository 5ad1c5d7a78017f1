"""Meta-training of the baselines with the SGPS budget, cached so that a re-run of the benchmark never retrains.

Fairness: every trained baseline starts from the *same* supervised pre-training of the target body as
the SGPS checkpoint (:func:`sgps_hf.training.pretrain.pretrain_body` with the checkpoint's own training
config and seed, run once and shared), then gets as many meta-training episodes as SGPS had optimizer
steps, drawn by the same :class:`~sgps_hf.data.episodes.EpisodeSampler` (same pools, shape, seed and
flips: the very same episodes), with the same optimizer, schedule and gradient clipping as the SGPS
body. The checkpoint kept is the one with the best meta-validation accuracy, as for SGPS.

Every stage is an Accelerate loop; results live under ``<cache_dir>/<stage>-<key>/`` as safetensors,
where ``key`` hashes everything the weights depend on. Meta-training saves ``accelerator.save_state``
checkpoints, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from safetensors.torch import load_file, save_file
from torch import nn
from torch.func import functional_call
from tqdm.auto import tqdm
from transformers import get_scheduler

from ..atomic import atomic_directory
from ..configuration_sgps import SGPSConfig
from ..data.episodes import ClassPool, Episode, EpisodeSampler
from ..image_processing_sgps import SGPSImageProcessor
from ..target import create_target
from ..training.config import TrainingConfig
# Shared with SGPS meta-training on purpose: identical flips, checkpoint layout and validation episodes.
from ..training.augment import random_flips
from ..training.meta_train import SCHEDULES, TrainerState, list_checkpoints, save_checkpoint, validation_episodes
from ..training.pretrain import pretrain_body
from .baselines import FOMAMLMethod, HeadedBody, ProtoNetMethod, inner_loop, squared_distances, zero_head

logger = logging.getLogger(__name__)
WEIGHTS = "model.safetensors"
INFO = "info.json"


@dataclass
class BaselineBudget:
    """Meta-training settings of the baselines (the rest comes from the SGPS run's TrainingConfig)."""

    steps: int  # meta-training episodes: the SGPS run's optimizer steps
    learning_rate: float  # outer learning rate: the SGPS run's body (base) learning rate
    val_episodes: int = 40
    eval_every: int = 500
    fomaml_inner_steps: int = 2  # per meta-training episode (first order); 10 at test time, see BenchmarkConfig
    fomaml_inner_lrs: tuple[float, ...] = (0.003, 0.01, 0.03, 0.1)  # meta-training inner lr grid, picked on meta-val


def _key(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _pools_summary(pools: list[ClassPool]) -> list[list[Any]]:
    # Lists, not tuples: the summary is stored in info.json and must compare equal after loading it back.
    return sorted([p.task, p.class_name, len(p)] for p in pools)


def _arch(model_config: SGPSConfig) -> dict[str, Any]:
    keys = ("target_architecture", "channel_multiplier", "depth_multiplier", "image_size", "image_mean", "image_std")
    return {k: getattr(model_config, k) for k in keys}


def _save(folder: Path, module: nn.Module, info: dict[str, Any]) -> None:
    with atomic_directory(folder) as staging:
        save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()}, str(staging / WEIGHTS))
        (staging / INFO).write_text(json.dumps(info, indent=2, default=str), encoding="utf-8")


def _load_into(folder: Path, module: nn.Module) -> dict[str, Any]:
    module.load_state_dict(load_file(str(folder / WEIGHTS)), strict=True)
    return json.loads((folder / INFO).read_text(encoding="utf-8"))


# --------------------------------------------------------------------------------------------------
# Stage 1: the shared pre-trained body


def pretrained_body(
    model_config: SGPSConfig, config: TrainingConfig, train_pools: list[ClassPool], cache_dir: Path
) -> tuple[nn.Module, dict[str, Any]]:
    """The target body after the SGPS run's supervised pre-training stage (trained once, then loaded)."""
    images = sum(len(p) for p in train_pools)
    batch = min(config.pretrain_batch_size, max(2, images // 2))  # tiny sources: at least two batches per epoch
    settings = {k: getattr(config, k) for k in ("pretrain_epochs", "pretrain_learning_rate", "weight_decay", "max_grad_norm", "seed")}
    payload = {"arch": _arch(model_config), "pools": _pools_summary(train_pools), **settings, "batch": batch}
    folder = cache_dir / f"pretrained-body-{_key(payload)}"
    set_seed(config.seed)  # the same initialisation SGPS's target body got
    body = create_target(model_config, num_classes=0)
    if (folder / WEIGHTS).is_file():
        return body, _load_into(folder, body)
    started = time.monotonic()
    history: list[dict[str, float]] = []
    if config.pretrain_epochs > 0:
        history = pretrain_body(Accelerator(), body, train_pools, SGPSImageProcessor.from_sgps_config(model_config),
                                replace(config, pretrain_batch_size=batch))
    info = {"stage": "pretrained body", "key": _key(payload), **payload, "history": history, "seconds": time.monotonic() - started}
    _save(folder, body, info)
    return body, info


# --------------------------------------------------------------------------------------------------
# Stage 2: episodic meta-training of ProtoNet and first-order MAML


def _protonet_loss(body: nn.Module, support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor,
                   query_labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    features = body(torch.cat([support, query]))
    s, q = features[: len(support)], features[len(support):]
    prototypes = torch.zeros(num_classes, s.shape[1]).index_add(0, labels, s)
    prototypes = prototypes / torch.bincount(labels, minlength=num_classes).unsqueeze(1)
    return nn.functional.cross_entropy(-squared_distances(q, prototypes), query_labels)


def _fomaml_loss(model: HeadedBody, support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor,
                 query_labels: torch.Tensor, num_classes: int, steps: int, lr: float) -> torch.Tensor:
    """Query loss at the adapted weights, written as ``theta + stop_grad(theta' - theta)``: its gradient
    with respect to ``theta`` is the first-order MAML meta-gradient, and it flows through the ordinary
    ``accelerator.backward`` into the model's parameters."""
    body_params = {k: v for k, v in model.named_parameters() if not k.startswith("head.")}
    buffers = dict(model.named_buffers())
    adapted = inner_loop(model, {**body_params, **zero_head(model, num_classes)}, buffers, support, labels, steps, lr)
    shifted = {k: v + (adapted[k] - v).detach() for k, v in body_params.items()}
    head = {k: adapted[k].detach() for k in ("head.weight", "head.bias")}
    return nn.functional.cross_entropy(functional_call(model, {**shifted, **head, **buffers}, (query,)), query_labels)


def _validate(method: Any, episodes: list[Episode]) -> float:
    return float(np.mean([(method.adapt(e)(e.query).argmax(-1) == e.query_labels).float().mean().item() for e in episodes]))


def _pick_inner_lr(model: HeadedBody, processor: SGPSImageProcessor, episodes: list[Episode], budget: BaselineBudget) -> tuple[float, dict[str, float]]:
    """FOMAML's inner learning rate, chosen on meta-val episodes from the pre-trained initialisation."""
    scores = {lr: _validate(FOMAMLMethod(model, processor, lr, budget.fomaml_inner_steps), episodes) for lr in budget.fomaml_inner_lrs}
    return max(scores, key=scores.get), {str(k): v for k, v in scores.items()}


def meta_train_baseline(
    kind: str,
    body: nn.Module,
    body_info: dict[str, Any],
    model_config: SGPSConfig,
    config: TrainingConfig,
    budget: BaselineBudget,
    train_pools: list[ClassPool],
    val_pools: list[ClassPool],
    cache_dir: Path,
) -> tuple[nn.Module, dict[str, Any]]:
    """Meta-train ``kind`` (``"protonet"`` or ``"fomaml"``) from ``body``, or load the cached result.

    Returns the body (ProtoNet) or the :class:`HeadedBody` (FOMAML) with the best-on-meta-val weights,
    and an info dict (validation history, chosen hyperparameters, seconds).
    """
    if kind not in ("protonet", "fomaml"):
        raise ValueError(f"kind must be protonet or fomaml, got {kind!r}.")
    processor = SGPSImageProcessor.from_sgps_config(model_config)
    episode_settings = {k: getattr(config, k) for k in ("n_way", "k_shot", "q_query", "text_dropout", "image_dropout", "augment",
                                                        "seed", "weight_decay", "warmup_steps", "schedule", "max_grad_norm")}
    payload = {"kind": kind, "body": body_info["key"], "pools": _pools_summary(train_pools),
               "val": _pools_summary(val_pools), **episode_settings, **asdict(budget)}
    output = cache_dir / f"{kind}-{_key(payload)}"
    model: nn.Module = HeadedBody(body, config.n_way) if kind == "fomaml" else body
    best = output / "best"
    if (output / "done.json").is_file():
        _load_into(best, model)
        return model, json.loads((output / "done.json").read_text(encoding="utf-8"))

    val_episodes = validation_episodes(val_pools, replace(config, eval_episodes=budget.val_episodes)) or []
    info: dict[str, Any] = {"stage": kind, **payload}
    if kind == "fomaml":
        if not val_episodes:
            raise ValueError("FOMAML's inner learning rate is tuned on meta-val episodes, but there are no meta-val pools.")
        info["inner_lr"], info["inner_lr_scores"] = _pick_inner_lr(model, processor, val_episodes, budget)
    return model, _run_meta_training(kind, model, processor, config, budget, train_pools, val_episodes, output, info)


def _run_meta_training(kind: str, model: nn.Module, processor: SGPSImageProcessor, config: TrainingConfig, budget: BaselineBudget,
                       train_pools: list[ClassPool], val_episodes: list[Episode], output: Path, info: dict[str, Any]) -> dict[str, Any]:
    accelerator = Accelerator(step_scheduler_with_optimizer=False)
    set_seed(config.seed)
    params = [p for n, p in model.named_parameters() if not n.startswith("head.")]
    optimizer = torch.optim.AdamW(params, lr=budget.learning_rate, weight_decay=config.weight_decay)
    scheduler = get_scheduler(SCHEDULES[config.schedule], optimizer, num_warmup_steps=min(config.warmup_steps, budget.steps // 10),
                              num_training_steps=budget.steps)
    prepared, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    state = TrainerState()
    accelerator.register_for_checkpointing(state)
    checkpoints = list_checkpoints(output)
    if checkpoints:
        accelerator.load_state(str(checkpoints[-1]))
        logger.info("Resumed %s meta-training at step %d.", kind, state.step)
    sampler = EpisodeSampler(train_pools, n_way=config.n_way, k_shot=tuple(config.k_shot), q_query=config.q_query, seed=config.seed,
                             text_dropout=config.text_dropout, image_dropout=config.image_dropout)
    unwrapped = accelerator.unwrap_model(prepared)
    method = (ProtoNetMethod(unwrapped, processor) if kind == "protonet"
              else FOMAMLMethod(unwrapped, processor, info["inner_lr"], budget.fomaml_inner_steps))
    started = time.monotonic()
    bar = tqdm(total=budget.steps, initial=state.step, desc=f"meta-training {kind}", disable=not accelerator.is_main_process)
    while state.step < budget.steps:
        loss = _episode_loss(kind, unwrapped, sampler.episode(state.step), processor, config, info.get("inner_lr", 0.0),
                             budget.fomaml_inner_steps)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(params, config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        state.step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        done = state.step >= budget.steps
        if val_episodes and (state.step % budget.eval_every == 0 or done):
            accuracy = _validate(method, val_episodes)
            state.history.append({"step": state.step, "val_accuracy": accuracy})
            if accuracy > state.best_val_accuracy:
                state.best_val_accuracy = accuracy
                _save(output / "best", unwrapped, {**info, "step": state.step, "val_accuracy": accuracy})
        if state.step % config.checkpoint_every == 0 or done:
            save_checkpoint(accelerator, output, state, keep=1)
    bar.close()
    if not val_episodes:  # nothing to select on: keep the final weights
        _save(output / "best", unwrapped, {**info, "step": state.step})
    final = {**_load_into(output / "best", unwrapped), "history": state.history,
             "seconds_this_session": time.monotonic() - started, "best_val_accuracy": state.best_val_accuracy}
    (output / "done.json").write_text(json.dumps(final, indent=2, default=str), encoding="utf-8")
    return final


def _episode_loss(kind: str, model: nn.Module, episode: Episode, processor: SGPSImageProcessor, config: TrainingConfig,
                  inner_lr: float, inner_steps: int) -> torch.Tensor:
    support, query = episode.support, episode.query
    if config.augment:  # the flips SGPS meta-training applied to this very episode
        rng = np.random.default_rng(config.seed * 1_000_003 + episode.index)
        support, query = random_flips(support, rng), random_flips(query, rng)
    support, query = processor.normalize_uint8(support), processor.normalize_uint8(query)
    n = len(episode.class_names)
    model.eval()  # BatchNorm on running statistics, as at test time (see baselines.py)
    if kind == "protonet":
        return _protonet_loss(model, support, episode.support_labels, query, episode.query_labels, n)
    return _fomaml_loss(model, support, episode.support_labels, query, episode.query_labels, n, inner_steps, inner_lr)
