"""Episodic meta-training of the SGPS synthesizer with Accelerate.

One optimizer step = ``gradient_accumulation_steps`` episodes per process. Episode ``i`` is a pure
function of ``(seed, i)`` (see :class:`~sgps_hf.data.episodes.EpisodeSampler`), so a resumed run sees
exactly the episodes an uninterrupted run would, and DDP ranks take disjoint episode indices.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, broadcast, set_seed
from tqdm.auto import tqdm
from transformers import get_scheduler

from ..body.backbones import load_pretrained_body
from ..data.episodes import Episode, EpisodeSampler
from ..metrics import episode_accuracy
from ..models.sgps.configuration_sgps import SGPSConfig
from ..models.sgps.image_processing_sgps import SGPSImageProcessor
from ..models.sgps.modeling_sgps import SGPSSynthesizer
from .augment import episode_seed
from .calibration import calibrate, evaluate_episodes
from .checkpointing import CHECKPOINT_PREFIX, TrainerState, list_checkpoints, resume_state, save_checkpoint
from .config import TrainingConfig
from .episode_inputs import TextBank, episode_inputs
from .export import export_synthesizer
from .feature_cache import pool_features
from .pools import training_pools
from .pretrain import interpolate_bodies, pretrain_body
from .training_log import CsvLog, plot_learning_curve

logger = logging.getLogger(__name__)
SCHEDULES = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}


def build_model(config: TrainingConfig) -> SGPSSynthesizer:
    """The synthesizer a run starts from: ``init_from``, or a new one whose body holds ``body_init`` weights."""
    if config.init_from:
        return SGPSSynthesizer.from_pretrained(config.init_from)
    model = SGPSSynthesizer(SGPSConfig(**config.model))
    if model.config.body_init != "none":
        load_pretrained_body(model.target, model.config.body_init)
    return model


def build_optimizer(model: SGPSSynthesizer, config: TrainingConfig) -> torch.optim.Optimizer:
    """The meta-learned base weights move slower than the freshly initialised generators."""
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]  # a frozen body has none
    base = [p for n, p in trainable if n.startswith("target.")]
    rest = [p for n, p in trainable if not n.startswith("target.")]
    groups = [
        {"params": base, "lr": config.base_learning_rate},
        {"params": rest, "lr": config.learning_rate},
    ]
    return torch.optim.AdamW(groups, weight_decay=config.weight_decay)


def train(config: TrainingConfig, resume: bool = False) -> Path:
    """Run (or resume) meta-training; returns the folder of the exported final synthesizer."""
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    output = Path(config.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        mixed_precision=config.mixed_precision,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        # The schedule is defined in optimizer steps: step it once per optimizer step ourselves. (Accelerate's
        # default steps a prepared scheduler num_processes times per step, so under DDP a cosine schedule
        # would reach its end halfway through and then rise again.)
        step_scheduler_with_optimizer=False,
    )
    set_seed(config.seed)
    model = build_model(config)
    image_processor = SGPSImageProcessor.from_sgps_config(model.config)
    train_pools, val_pools, data_summary = training_pools(config, model.config.image_size)
    texts = TextBank(model.config, [p.text for p in train_pools + val_pools])
    sampler = EpisodeSampler(
        train_pools,
        n_way=config.n_way,
        k_shot=tuple(config.k_shot),
        q_query=config.q_query,
        seed=config.seed,
        text_dropout=config.text_dropout,
        image_dropout=config.image_dropout,
    )
    val_episodes = validation_episodes(val_pools, config)

    state = TrainerState()
    if config.pretrain_epochs and not (resume and list_checkpoints(output)):
        # Pre-training runs before the first checkpoint; a resumed run finds its result in the checkpoint.
        start = {name: tensor.clone() for name, tensor in model.target.state_dict().items()}
        state.pretrain_history = pretrain_body(accelerator, model.target, train_pools, image_processor, config)
        if config.body_interpolation < 1:
            model.target.load_state_dict(
                interpolate_bodies(model.target.state_dict(), start, config.body_interpolation)
            )
    if config.freeze_body:
        model.target.requires_grad_(False)
    optimizer = build_optimizer(model, config)
    scheduler = get_scheduler(
        SCHEDULES[config.schedule], optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=config.steps
    )
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    accelerator.register_for_checkpointing(state)
    log = CsvLog(output / "log.csv", enabled=accelerator.is_main_process)
    if resume:
        resume_state(accelerator, output, state)
        log.truncate_after(state.step)  # rows a killed run wrote after its newest checkpoint are redone
    if accelerator.is_main_process:
        output.mkdir(parents=True, exist_ok=True)
        for stale in output.glob(f".{CHECKPOINT_PREFIX}*.partial"):
            shutil.rmtree(stale, ignore_errors=True)  # a save interrupted by a kill; never a checkpoint
        config.save(output / "training_config.json")
    unwrapped: SGPSSynthesizer = accelerator.unwrap_model(model)
    features = None
    if config.freeze_body:  # after a resume, so that the restored body is the one featurised
        features = {
            **pool_features(unwrapped, train_pools, image_processor, views=config.train_support_views),
            **pool_features(unwrapped, val_pools, image_processor),
        }
        with torch.no_grad():
            unwrapped.feature_mean.copy_(
                torch.cat([features[(p.task, p.class_name)][:, 0] for p in train_pools]).mean(0)
            )
    deadline = time.monotonic() + 60 * config.max_minutes if config.max_minutes else None

    world, rank, accum = accelerator.num_processes, accelerator.process_index, config.gradient_accumulation_steps
    bar = tqdm(total=config.steps, initial=state.step, desc="meta-training", disable=not accelerator.is_main_process)
    window: list[tuple[float, float]] = []
    started = time.monotonic()
    model.train()
    while state.step < config.steps:
        for micro in range(accum):
            index = (state.step * accum + micro) * world + rank
            episode = sampler.episode(index)
            seed = episode_seed(config.seed, index) if config.augment else None
            inputs = episode_inputs(episode, image_processor, texts, seed, features)
            with accelerator.accumulate(model):
                # The head is meta-learned on the body as it is; task BatchNorm is chosen afterwards (calibration).
                output_step = model(**inputs, return_weights=False, task_batchnorm_images=None)
                accelerator.backward(output_step.loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                if accelerator.sync_gradients:
                    scheduler.step()
                optimizer.zero_grad()
            accuracy = episode_accuracy(output_step.logits, inputs["query_labels"])
            window.append((output_step.loss.item(), accuracy))
        state.step += 1
        bar.update(1)
        done = state.step >= config.steps or (deadline is not None and time.monotonic() > deadline)
        if deadline is not None and world > 1:  # every rank must stop at the same step (collectives)
            done = bool(broadcast(torch.tensor([int(done)], device=accelerator.device), from_process=0).item())
        if state.step % config.log_every == 0 or done:
            loss, acc = np.mean(window, axis=0)
            rate = len(window) * world / max(time.monotonic() - started, 1e-9)
            row = {
                "step": state.step,
                "loss": float(loss),
                "episode_accuracy": float(acc),
                "lr": scheduler.get_last_lr()[-1],
                "episodes_per_s": rate,
            }
            bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.3f}", eps=f"{rate:.2f}")
            log.write(row)
            window, started = [], time.monotonic()
        if state.step % config.eval_every == 0 or done:
            val_accuracy = evaluate_episodes(unwrapped, val_episodes, image_processor, texts, features)
            state.history.append({"step": state.step, "val_accuracy": val_accuracy})
            log.write({"step": state.step, "val_accuracy": val_accuracy})
            accelerator.print(f"step {state.step}: meta-val accuracy {val_accuracy:.4f}")
            if val_accuracy > state.best_val_accuracy and accelerator.is_main_process:
                state.best_val_accuracy = val_accuracy
                export_synthesizer(unwrapped, output / "best", config, state, data_summary)
        if state.step % config.checkpoint_every == 0 or done:
            save_checkpoint(accelerator, output, state, config.keep_checkpoints)
        if done:
            break
    bar.close()
    accelerator.wait_for_everyone()
    final = output / "final"
    if accelerator.is_main_process:
        calibrate(unwrapped, state, val_episodes, image_processor, texts, features, train_pools)
        export_synthesizer(unwrapped, final, config, state, data_summary)
        best = output / "best"
        if best.is_dir():  # the best step's synthesizer gets the same post-hoc calibration
            best_model = SGPSSynthesizer.from_pretrained(best)
            calibrate(best_model, state, val_episodes, image_processor, texts, features, train_pools)
            export_synthesizer(best_model, best, config, state, data_summary)
        plot_learning_curve(output)
    accelerator.end_training()
    return final


def validation_episodes(pools: list, config: TrainingConfig) -> list[Episode]:
    if not pools:
        return []
    sampler = EpisodeSampler(
        pools, n_way=config.n_way, k_shot=tuple(config.k_shot), q_query=config.q_query, seed=config.seed + 9_999
    )
    return [sampler.episode(i) for i in range(config.eval_episodes)]
