"""The few-shot benchmark protocol: SGPS against trained and tuned baselines on the same episodes.

:func:`run_benchmark` returns one JSON-ready dict; :mod:`sgps_hf.evaluation.report` renders it. The
protocol, in order:

1. Baselines stand on the synthesizer's own body (by default the frozen ImageNet EfficientNet-Lite0 at
   128 px): the same body for every method, its features memoised per image and shared.
2. Tuning on meta-val episodes only: each baseline's few test-time hyperparameters (grids below), then
   a softmax temperature per method (for the calibration criterion). Held-out tasks are never used
   to choose anything.
3. Main table: for every shot, the same seeded episodes for every method; accuracy, macro-F1 and
   AUROC per episode (mean and 95% CI), ECE of the pooled queries, seconds to adapt per task.
4. Criteria: data-efficiency curve, generalization gap (meta-train vs evaluation tasks), calibration
   with/without temperature scaling, corrupted queries (domain shift), subgroups, speed.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from ..data.episodes import ClassPool
from ..models.sgps.modeling_sgps import SGPSSynthesizer
from ..training.episode_inputs import TextBank
from .criteria import (
    calibration_report,
    data_efficiency,
    domain_shift,
    generalization_gap,
    main_table,
    speed,
    subgroup_report,
)
from .protocol import BenchmarkConfig, build_methods, clip_shot, make_episodes, max_feasible_shot, tune

# --------------------------------------------------------------------------------------------------
# Everything


def run_benchmark(
    synthesizer: SGPSSynthesizer,
    eval_pools: list[ClassPool],
    train_pools: list[ClassPool],
    val_pools: list[ClassPool],
    bench: BenchmarkConfig,
    subgroups: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the whole protocol (module docstring) and return the results as a JSON-ready dict."""
    started = time.time()
    synthesizer.eval()
    texts = TextBank(synthesizer.config, [p.text for p in eval_pools + train_pools + val_pools])
    methods = build_methods(synthesizer, texts, bench)
    trained = time.time()
    focus = clip_shot(bench.focus_shot, eval_pools)
    bench_used = BenchmarkConfig(**{**asdict(bench), "focus_shot": focus})
    val_episodes = (
        make_episodes(
            val_pools,
            bench.ways,
            min(focus, max_feasible_shot(val_pools)),
            bench.queries,
            bench.tune_episodes,
            bench.seed + 1,
        )
        if val_pools
        else []
    )
    tune(methods, val_episodes, bench)
    shots = sorted({clip_shot(s, eval_pools) for s in bench.shots} | {focus})
    table, runs = main_table(methods, eval_pools, bench_used, shots)
    results = {
        "config": {**asdict(bench), "focus_shot_used": focus, "shots_used": shots},
        "methods": {
            name: {
                "description": m.describe(),
                **({"temperature": methods.temperatures[name]} if name in methods.temperatures else {}),
            }
            for name, m in methods.methods.items()
        },
        "training": methods.training,
        "tuning": methods.tuning,
        "main": table,
        "data_efficiency": data_efficiency(methods, eval_pools, bench, runs),
        "generalization_gap": generalization_gap(methods, train_pools, bench, focus, runs),
        "calibration": calibration_report(methods, runs, focus),
        "domain_shift": domain_shift(runs, focus, bench.severity),
        "speed": speed(methods, synthesizer, eval_pools, bench, focus, runs),
        "subgroups": subgroup_report(subgroups),
        "eval_tasks": sorted({p.task for p in eval_pools}),
        "seconds": {"setup": trained - started, "total": time.time() - started},
    }
    return results
