"""The benchmark's criteria beyond the main table: data efficiency, generalization gap, calibration, domain shift,
speed and subgroups. Each takes the methods and runs of :mod:`.protocol` and returns a JSON-ready dict.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import timm
import torch
from torch import Tensor

from ..body.timm_network import materialize
from ..data.episodes import ClassPool, Episode
from ..metrics import calibration, episode_accuracy, mean_ci
from ..models.sgps.image_processing_sgps import SGPSImageProcessor
from ..models.sgps.modeling_sgps import SGPSSynthesizer
from ..training.episode_inputs import TextBank
from .baselines import FineTuneMethod, SGPSMethod
from .corruptions import CORRUPTIONS
from .protocol import (
    FINETUNE_ALL,
    SGPS_FULL,
    SGPS_TEXT,
    BenchmarkConfig,
    MethodRun,
    Methods,
    clip_shot,
    is_finetune_all,
    make_episodes,
    max_feasible_shot,
    run_method,
)

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# Criteria


def main_table(
    methods: Methods, pools: list[ClassPool], bench: BenchmarkConfig, shots: list[int]
) -> tuple[dict[str, Any], dict[tuple[str, int], MethodRun]]:
    """Per method and shot: the metrics of :meth:`MethodRun.summary`, all methods on the same episodes."""
    table: dict[str, Any] = {}
    runs: dict[tuple[str, int], MethodRun] = {}
    for shot in shots:
        episodes = make_episodes(pools, bench.ways, shot, bench.queries, bench.episodes, bench.seed)
        chosen = {SGPS_TEXT: methods.methods[SGPS_TEXT]} if shot == 0 else methods.image_methods()
        for name, method in chosen.items():
            logger.info("main: %s, %d-shot", name, shot)
            shift = bench.shift_episodes if shot == bench.focus_shot else 0
            chosen_episodes = episodes[: bench.finetune_all_episodes] if is_finetune_all(name) else episodes
            runs[name, shot] = run_method(
                method, chosen_episodes, shift_episodes=shift, severity=bench.severity, seed=bench.seed
            )
            table.setdefault(name, {})[str(shot)] = runs[name, shot].summary()
    return table, runs


def data_efficiency(
    methods: Methods, pools: list[ClassPool], bench: BenchmarkConfig, main_runs: dict[tuple[str, int], MethodRun]
) -> dict[str, Any]:
    """Accuracy against shots (clipped to the data); shots of the main table reuse its runs."""
    curve: dict[str, Any] = {"requested": list(bench.curve_shots), "points": {}}
    shots = sorted({clip_shot(s, pools) for s in bench.curve_shots if s > 0})
    curve["shots"] = shots
    for shot in shots:
        episodes = None
        for name, method in methods.cheap_image_methods().items():
            run = main_runs.get((name, shot))
            if run is None:
                episodes = episodes or make_episodes(
                    pools, bench.ways, shot, bench.queries, bench.curve_episodes, bench.seed
                )
                run = run_method(method, episodes)
            curve["points"].setdefault(name, {})[str(shot)] = mean_ci(s["accuracy"] for s in run.scores)
    return curve


def generalization_gap(
    methods: Methods,
    train_pools: list[ClassPool],
    bench: BenchmarkConfig,
    shot: int,
    main_runs: dict[tuple[str, int], MethodRun],
) -> dict[str, Any]:
    """Accuracy on meta-train-class episodes minus accuracy on the evaluation tasks, at ``shot``."""
    shot = min(shot, max_feasible_shot(train_pools))
    episodes = make_episodes(train_pools, bench.ways, shot, bench.queries, bench.gap_episodes, bench.seed)
    gap: dict[str, Any] = {"shot": shot, "episodes": bench.gap_episodes, "methods": {}}
    for name, method in methods.cheap_image_methods().items():
        train_accuracy = mean_ci(s["accuracy"] for s in run_method(method, episodes).scores)
        held = main_runs.get((name, shot))
        test_accuracy = mean_ci(s["accuracy"] for s in held.scores) if held else None
        gap["methods"][name] = {
            "meta_train": train_accuracy,
            "evaluation": test_accuracy,
            "gap": train_accuracy["mean"] - test_accuracy["mean"] if test_accuracy else None,
        }
    return gap


def calibration_report(methods: Methods, main_runs: dict[tuple[str, int], MethodRun], shot: int) -> dict[str, Any]:
    """ECE and reliability bins with and without the meta-val temperature, at ``shot``."""
    out: dict[str, Any] = {"shot": shot, "methods": {}}
    for (name, run_shot), run in main_runs.items():
        if run_shot != shot:
            continue
        temperature = methods.temperatures.get(name, 1.0)
        out["methods"][name] = {
            "temperature": temperature,
            "raw": calibration(*run.pooled(1.0)),
            "temperature_scaled": calibration(*run.pooled(temperature)),
        }
    return out


def domain_shift(main_runs: dict[tuple[str, int], MethodRun], shot: int, severity: int) -> dict[str, Any]:
    """Accuracy on corrupted queries next to the same episodes' clean accuracy."""
    out: dict[str, Any] = {"shot": shot, "severity": severity, "corruptions": list(CORRUPTIONS), "methods": {}}
    for (name, run_shot), run in main_runs.items():
        if run_shot != shot or not run.shifted:
            continue
        n = len(next(iter(run.shifted.values())))
        row = {"clean": mean_ci(s["accuracy"] for s in run.scores[:n])}
        row.update({c: mean_ci(v) for c, v in run.shifted.items()})
        out["methods"][name] = row
    return out


def speed(
    methods: Methods,
    synthesizer: SGPSSynthesizer,
    pools: list[ClassPool],
    bench: BenchmarkConfig,
    shot: int,
    main_runs: dict[tuple[str, int], MethodRun],
) -> dict[str, Any]:
    """Synthesis seconds vs fine-tuning seconds to its best accuracy; synthesized vs plain timm inference speed."""
    finetune: FineTuneMethod = methods.methods[FINETUNE_ALL]
    episodes = make_episodes(pools, bench.ways, shot, bench.queries, bench.speed_episodes, bench.seed)
    curves: dict[int, list[float]] = {}
    at_step: dict[int, list[float]] = {}  # seconds since adapt() started (trace time excluded), per step
    seconds: list[float] = []
    for episode in episodes:
        clock = {"start": time.perf_counter(), "trace": 0.0}

        def trace(
            step: int, predict: Callable[[Tensor], Tensor], episode: Episode = episode, clock: dict = clock
        ) -> None:
            started = time.perf_counter()
            at_step.setdefault(step, []).append(started - clock["start"] - clock["trace"])
            accuracy = episode_accuracy(predict(episode.query), episode.query_labels)
            curves.setdefault(step, []).append(accuracy)
            clock["trace"] += time.perf_counter() - started

        keys = ("body", "processor", "lr", "steps", "weight_decay", "probe_lr", "probe_steps", "top_blocks", "seed")
        traced = FineTuneMethod(
            **{k: getattr(finetune, k) for k in keys}, trace=trace, trace_every=max(1, finetune.steps // 5)
        )
        clock["start"] = time.perf_counter()
        traced.adapt(episode)
        seconds.append(time.perf_counter() - clock["start"] - clock["trace"])
    mean_curve = {step: float(np.mean(v)) for step, v in sorted(curves.items())}
    best_step = max(mean_curve, key=lambda s: (mean_curve[s], -s))  # the earliest step reaching the best accuracy
    finetune_to_best = float(np.mean(at_step[best_step]))  # includes the linear-probe head initialisation
    synthesis = (
        main_runs[SGPS_FULL, shot].summary()["adapt_seconds"]["mean"]
        if (SGPS_FULL, shot) in main_runs
        else float("nan")
    )
    return {
        "shot": shot,
        "synthesis_seconds_per_task": synthesis,
        "finetune_accuracy_by_step": {str(k): v for k, v in mean_curve.items()},
        "finetune_best_step": best_step,
        "finetune_seconds_to_best": finetune_to_best,
        "finetune_seconds_full_budget": float(np.mean(seconds)),
        "ratio_finetune_to_synthesis": finetune_to_best / synthesis if synthesis > 0 else None,
        **inference_throughput(synthesizer, episodes[0]),
    }


@torch.no_grad()
def inference_throughput(
    synthesizer: SGPSSynthesizer, episode: Episode, batch: int = 64, repeats: int = 5
) -> dict[str, float]:
    """Images/s of a synthesized classifier (materialised timm model) and of a plain timm model of the same
    architecture: the synthesized classifier is an ordinary network, so the ratio should be 1.0."""
    processor = SGPSImageProcessor.from_sgps_config(synthesizer.config)
    method = SGPSMethod(synthesizer, TextBank(synthesizer.config, episode.class_texts), True, True)
    n = len(episode.class_names)
    weights = synthesizer(  # the one inference path (forward), as synthesize runs it
        support_pixel_values=processor.normalize_uint8(episode.support),
        support_labels=episode.support_labels,
        num_classes=n,
        text_embeds=method.text_bank(episode.class_texts),
        text_mask=torch.ones(n, dtype=torch.bool),
    ).weights
    synthesized = materialize(synthesizer.config, weights)
    plain = timm.create_model(
        synthesizer.config.target_architecture, num_classes=n, **synthesizer.config.target_model_args
    ).eval()
    size = synthesizer.config.image_size
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    rates = {"synthesized": [], "plain": []}
    for model in (synthesized, plain):  # warm-up: the first call of a shape builds kernels
        model(images)
    for _ in range(repeats):  # interleaved, so both see the same machine load
        for name, model in (("synthesized", synthesized), ("plain", plain)):
            started = time.perf_counter()
            model(images)
            rates[name].append(batch / (time.perf_counter() - started))
    synthesized_rate, plain_rate = float(np.median(rates["synthesized"])), float(np.median(rates["plain"]))
    return {
        "synthesized_images_per_s": synthesized_rate,
        "plain_timm_images_per_s": plain_rate,
        "inference_ratio": synthesized_rate / plain_rate,
    }


def subgroup_report(groups: dict[str, Any] | None) -> dict[str, Any]:
    """What the subgroup criterion found (see :func:`sgps_hf.evaluation.subgroups.subgroup_metadata`)."""
    return groups or {"available": False}
