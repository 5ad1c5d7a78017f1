"""The training command: adapt the body with Accelerate, freeze it, fit the head's meta-parameters on meta-val.

1. The body is adapted on the meta-train classes (``pretrain_epochs`` epochs of balanced, augmented draws;
   :func:`~sgps_hf.training.pretrain.pretrain_body`, DDP through ``accelerate launch``), with an Accelerate checkpoint
   after every epoch, and mixed with its starting weights (WiSE-FT, ``body_interpolation``). Then it is adapted on
   ``episodic_epochs`` epochs of meta-train episodes through the closed-form head
   (:func:`~sgps_hf.training.episodic.episodic_adapt`), with its own checkpoints under ``<output_dir>/episodic``.
2. The body is frozen and its features cached: the identity view of every meta-train image (the text memory's class
   means, ``feature_mean``) and the synthesizer's own support views of every meta-val image.
3. Calibration (:func:`~sgps_hf.training.calibration.calibrate`) fits the closed-form head's meta-parameters and the
   post-hoc choices on ``eval_episodes`` meta-val episodes; the result is exported to ``<output_dir>/final``.

``--resume`` continues from the newest epoch checkpoint (bit-identical to an uninterrupted run); a run killed after
its last epoch (while caching or calibrating) resumes without adapting the body again.
"""

from __future__ import annotations

from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from ..body.backbones import load_pretrained_body
from ..data.episodes import Episode, EpisodeSampler
from ..errors import OutputPathError
from ..models.sgps.configuration_sgps import SGPSConfig
from ..models.sgps.image_processing_sgps import SGPSImageProcessor
from ..models.sgps.modeling_sgps import SGPSSynthesizer
from .calibration import calibrate
from .checkpointing import (
    EpochCheckpoints,
    TrainerState,
    list_checkpoints,
    newest_epoch,
    remove_partial_checkpoints,
)
from .config import TrainingConfig
from .episode_inputs import TextBank
from .episodic import episodic_adapt
from .export import export_synthesizer
from .feature_cache import pool_features
from .pools import training_pools
from .pretrain import interpolate_bodies, pretrain_body
from .training_log import CsvLog, plot_learning_curve

#: The episodic stage's checkpoints and log, inside the run's ``output_dir``.
EPISODIC_DIR = "episodic"


def build_model(config: TrainingConfig) -> SGPSSynthesizer:
    """The synthesizer a run starts from: ``init_from``, or a new one whose body holds ``body_init`` weights."""
    if config.init_from:
        return SGPSSynthesizer.from_pretrained(config.init_from)
    model = SGPSSynthesizer(SGPSConfig(**config.model))
    if model.config.body_init != "none":
        load_pretrained_body(model.target, model.config.body_init)
    return model


def train(config: TrainingConfig, resume: bool = False) -> Path:
    """Run (or resume) training; returns the folder of the exported synthesizer (``<output_dir>/final``)."""
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    output = Path(config.output_dir)
    accelerator = Accelerator(mixed_precision=config.mixed_precision)
    if not resume and (list_checkpoints(output) or list_checkpoints(output / EPISODIC_DIR)):
        raise OutputPathError(
            f"{output} already holds checkpoints of a run: pass --resume to continue it, or choose another output_dir."
        )
    set_seed(config.seed)
    model = build_model(config)
    image_processor = SGPSImageProcessor.from_sgps_config(model.config)
    train_pools, val_pools, data_summary = training_pools(config, model.config.image_size)
    texts = TextBank(model.config, [p.text for p in train_pools + val_pools])
    val_episodes = validation_episodes(val_pools, config)
    log = CsvLog(output / "log.csv", enabled=accelerator.is_main_process)
    if accelerator.is_main_process:
        output.mkdir(parents=True, exist_ok=True)
        remove_partial_checkpoints(output)
        remove_partial_checkpoints(output / EPISODIC_DIR)
        config.save(output / "training_config.json")
    accelerator.wait_for_everyone()

    state = TrainerState()
    if config.pretrain_epochs:
        checkpoints = EpochCheckpoints(
            output, state, config.keep_checkpoints, resume=resume, on_epoch=log.timed_writer()
        )
        log.truncate_after(newest_epoch(output) if resume else 0)  # rows of epochs after the checkpoint are redone
        start = {name: tensor.clone() for name, tensor in model.target.state_dict().items()}
        pretrain_body(accelerator, model.target, train_pools, image_processor, config, checkpoints)
        model.cpu()  # from here on the body is frozen; caching and calibration run on CPU tensors
        if config.body_interpolation < 1:
            model.target.load_state_dict(
                interpolate_bodies(model.target.state_dict(), start, config.body_interpolation)
            )
    elif resume:
        accelerator.print("--resume: no body adaptation (pretrain_epochs 0) to resume; caching and calibrating.")
    if config.episodic_epochs:
        adapt_episodically(model, train_pools, image_processor, config, state, resume)
    accelerator.wait_for_everyone()
    final = output / "final"
    if accelerator.is_main_process:
        model.target.requires_grad_(False)  # caching and calibration run in the main process only
        features = {
            **pool_features(model, train_pools, image_processor, views=["identity"]),
            **pool_features(model, val_pools, image_processor),
        }
        with torch.no_grad():
            model.feature_mean.copy_(torch.cat([features[(p.task, p.class_name)][:, 0] for p in train_pools]).mean(0))
        calibrate(model, state, val_episodes, image_processor, texts, features, train_pools)
        export_synthesizer(model, final, config, state, data_summary)
        if state.pretrain_history:
            plot_learning_curve(output)
    accelerator.end_training()
    return final


def adapt_episodically(
    model: SGPSSynthesizer,
    pools: list,
    processor: SGPSImageProcessor,
    config: TrainingConfig,
    state: TrainerState,
    resume: bool,
) -> None:
    """The episodic stage (:mod:`sgps_hf.training.episodic`) with its own Accelerator, checkpoints and
    ``log.csv`` under ``<output_dir>/episodic``; its history goes to ``state.episodic_history``."""
    folder = Path(config.output_dir) / EPISODIC_DIR
    accelerator = Accelerator(mixed_precision=config.mixed_precision)  # its own registry of checkpointed objects
    log = CsvLog(folder / "log.csv", enabled=accelerator.is_main_process)
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
    log.truncate_after(newest_epoch(folder) if resume else 0)
    stage = TrainerState()
    checkpoints = EpochCheckpoints(folder, stage, config.keep_checkpoints, resume=resume, on_epoch=log.timed_writer())
    state.episodic_history = episodic_adapt(accelerator, model, pools, processor, config, checkpoints)
    model.cpu()


def validation_episodes(pools: list, config: TrainingConfig) -> list[Episode]:
    """The ``eval_episodes`` meta-val episodes calibration fits the head on (fixed by the seed)."""
    if not pools:
        return []
    sampler = EpisodeSampler(
        pools, n_way=config.n_way, k_shot=tuple(config.k_shot), q_query=config.q_query, seed=config.seed + 9_999
    )
    return [sampler.episode(i) for i in range(config.eval_episodes)]
