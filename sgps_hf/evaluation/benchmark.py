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

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import timm
import torch
from torch import Tensor, nn

from ..data.episodes import ClassPool, Episode, EpisodeSampler
from ..models.sgps.image_processing_sgps import SGPSImageProcessor
from ..models.sgps.modeling_sgps import SGPSSynthesizer
from ..body.timm_network import materialize
from ..training.meta_train import TextBank
from .baselines import (
    FeatureMemo,
    FewShotMethod,
    FineTuneMethod,
    LinearProbeMethod,
    NearestNeighbourMethod,
    ProtoNetMethod,
    SGPSMethod,
)
from .corruptions import CORRUPTIONS, corrupt
from .metrics import calibration, episode_scores, mean_ci

logger = logging.getLogger(__name__)

SGPS_FULL, SGPS_IMAGE, SGPS_TEXT = "SGPS (image + text)", "SGPS (image only)", "SGPS (text only)"


@dataclass
class BenchmarkConfig:
    """What to measure and how much of it (defaults: the documented full run, ~30-40 min on 2 cores)."""

    ways: int = 5
    shots: tuple[int, ...] = (0, 1, 5)
    episodes: int = 100
    queries: int = 15
    seed: int = 0
    curve_shots: tuple[int, ...] = (1, 2, 5, 10, 20)
    curve_episodes: int = 15
    focus_shot: int = 5  # shot of the gap, calibration, domain-shift, tuning and speed criteria
    gap_episodes: int = 25
    shift_episodes: int = 30
    severity: int = 3
    tune_episodes: int = 15
    speed_episodes: int = 5
    finetune_steps: int = 20
    finetune_top_blocks: int = 1  # the cheaper fine-tuning baseline trains the last block stage + conv_head + head
    finetune_all_episodes: int = 10  # all-layer fine-tuning costs ~20x more on a CPU: on the first N episodes only
    probe_lrs: tuple[float, ...] = (0.003, 0.01, 0.03, 0.1)
    finetune_lrs: tuple[float, ...] = (1e-4, 3e-4, 1e-3)
    nn_metrics: tuple[str, ...] = ("cosine", "euclidean")


# --------------------------------------------------------------------------------------------------
# Episodes


def max_feasible_shot(pools: Sequence[ClassPool]) -> int:
    """Largest K for which some task has >= 2 classes with K + 1 images (K support + 1 query)."""
    by_task: dict[str, list[int]] = {}
    for pool in pools:
        by_task.setdefault(pool.task, []).append(len(pool))
    best = 0
    for sizes in by_task.values():
        if len(sizes) >= 2:
            best = max(best, sorted(sizes)[-2] - 1)
    if best < 1:
        raise ValueError("No task has two classes with at least 2 images each: no few-shot episode can be formed.")
    return best


def clip_shot(shot: int, pools: Sequence[ClassPool]) -> int:
    """``shot`` clipped to what the data has (0 stays 0: text only)."""
    return 0 if shot == 0 else min(shot, max_feasible_shot(pools))


def make_episodes(pools: Sequence[ClassPool], ways: int, shot: int, queries: int, count: int, seed: int) -> list[Episode]:
    """``count`` seeded episodes; shot 0 draws 1-shot episodes whose support text-only methods ignore."""
    sampler = EpisodeSampler(list(pools), n_way=ways, k_shot=max(shot, 1), q_query=queries, seed=seed)
    return [sampler.episode(i) for i in range(count)]


# --------------------------------------------------------------------------------------------------
# Running one method on episodes


@dataclass
class MethodRun:
    """Everything measured while running one method on a list of episodes."""

    scores: list[dict[str, float]] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    adapt_seconds: list[float] = field(default_factory=list)
    logits: list[Tensor] = field(default_factory=list)
    labels: list[Tensor] = field(default_factory=list)
    shifted: dict[str, list[float]] = field(default_factory=dict)

    def summary(self, temperature: float = 1.0) -> dict[str, Any]:
        out: dict[str, Any] = {name: mean_ci(s[name] for s in self.scores) for name in ("accuracy", "macro_f1", "auroc")}
        pooled = calibration(*self.pooled(temperature))
        out["ece"] = pooled["ece"]
        out["adapt_seconds"] = mean_ci(self.adapt_seconds)
        out["episodes"] = len(self.scores)
        out["per_task_accuracy"] = {
            task: mean_ci(s["accuracy"] for s, t in zip(self.scores, self.tasks) if t == task) for task in sorted(set(self.tasks))
        }
        return out

    def pooled(self, temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """Softmax probabilities (at ``temperature``) and labels of every query; episodes may differ in N."""
        width = max(l.shape[1] for l in self.logits)
        probs = [nn.functional.pad(torch.softmax(l / temperature, -1), (0, width - l.shape[1])) for l in self.logits]
        return torch.cat(probs).numpy(), torch.cat(self.labels).numpy()


def run_method(method: FewShotMethod, episodes: Sequence[Episode], *, shift_episodes: int = 0, severity: int = 3, seed: int = 0) -> MethodRun:
    """Adapt ``method`` to each episode and score its queries; the first ``shift_episodes`` also get corrupted queries."""
    run = MethodRun()
    for i, episode in enumerate(episodes):
        started = time.perf_counter()
        predictor = method.adapt(episode)
        run.adapt_seconds.append(time.perf_counter() - started)
        logits = predictor(episode.query).detach().float()
        run.logits.append(logits)
        run.labels.append(episode.query_labels)
        run.tasks.append(episode.task)
        run.scores.append(episode_scores(torch.softmax(logits, -1).numpy(), episode.query_labels.numpy()))
        if i < shift_episodes:
            for name in CORRUPTIONS:
                shifted = predictor(corrupt(episode.query, name, severity, seed=seed * 100_003 + i))
                accuracy = (shifted.argmax(-1) == episode.query_labels).float().mean().item()
                run.shifted.setdefault(name, []).append(accuracy)
    return run


def accuracy_of(run: MethodRun) -> float:
    return float(np.mean([s["accuracy"] for s in run.scores]))


def fit_temperature(logits: Sequence[Tensor], labels: Sequence[Tensor], low: float = 1e-4, high: float = 1e4) -> float:
    """Temperature in ``[low, high]`` minimising the mean NLL of ``logits / T``.

    A log-spaced grid then a finer grid around the best point: the NLL is smooth in log T, and the
    bounds keep a perfectly separated validation set (NLL falling forever as T -> 0) from giving a
    degenerate temperature.
    """
    stacked = torch.cat([nn.functional.pad(l, (0, max(x.shape[1] for x in logits) - l.shape[1]), value=-torch.inf) for l in logits])
    targets = torch.cat(list(labels))

    def nll(log_t: Tensor) -> Tensor:  # [G] -> [G]
        scaled = stacked.unsqueeze(0) / log_t.exp().view(-1, 1, 1)
        return -scaled.log_softmax(-1).gather(-1, targets.view(1, -1, 1).expand(len(log_t), -1, 1)).squeeze(-1).mean(1)

    grid = torch.linspace(np.log(low), np.log(high), 121, dtype=torch.float64)
    best = grid[nll(grid).argmin()]
    step = grid[1] - grid[0]
    fine = torch.linspace(float(best - step), float(best + step), 41, dtype=torch.float64).clamp(np.log(low), np.log(high))
    return float(fine[nll(fine).argmin()].exp())


# --------------------------------------------------------------------------------------------------
# The methods, their training and tuning


@dataclass
class Methods:
    """The benchmark's methods by name, with the facts of how each was trained and tuned."""

    methods: dict[str, FewShotMethod]
    training: dict[str, Any]
    tuning: dict[str, Any] = field(default_factory=dict)
    temperatures: dict[str, float] = field(default_factory=dict)

    def image_methods(self) -> dict[str, FewShotMethod]:
        return {name: m for name, m in self.methods.items() if m.needs_images}

    def cheap_image_methods(self) -> dict[str, FewShotMethod]:
        """Image methods without all-layer fine-tuning, which the curve and gap criteria cannot afford on a CPU."""
        return {name: m for name, m in self.image_methods().items() if name != FINETUNE_ALL}


FINETUNE_ALL, FINETUNE_TOP, PROBE = "Fine-tune all layers", "Fine-tune top layers", "Fine-tune head (linear probe)"


def build_methods(synthesizer: SGPSSynthesizer, texts: TextBank, bench: BenchmarkConfig) -> Methods:
    """SGPS in its three modes and every baseline, all on the synthesizer's own (frozen) body."""
    import copy

    processor = SGPSImageProcessor.from_sgps_config(synthesizer.config)
    body = copy.deepcopy(synthesizer.target).eval()
    shared = FeatureMemo(body)  # one forward pass per image, whichever method meets it first
    methods: dict[str, FewShotMethod] = {
        SGPS_FULL: SGPSMethod(synthesizer, texts, True, True, SGPS_FULL, features=shared),
        SGPS_IMAGE: SGPSMethod(synthesizer, texts, False, True, SGPS_IMAGE, features=shared),
        SGPS_TEXT: SGPSMethod(synthesizer, texts, True, False, SGPS_TEXT, features=shared),
        "ProtoNet": ProtoNetMethod(shared, processor),
        FINETUNE_ALL: FineTuneMethod(copy.deepcopy(body), processor, steps=bench.finetune_steps, seed=bench.seed, name=FINETUNE_ALL),
        FINETUNE_TOP: FineTuneMethod(copy.deepcopy(body), processor, steps=bench.finetune_steps, top_blocks=bench.finetune_top_blocks,
                                     seed=bench.seed, name=FINETUNE_TOP),
        PROBE: LinearProbeMethod(shared, processor),
        "Nearest neighbour": NearestNeighbourMethod(shared, processor),
    }
    body_facts = f"the synthesizer's body ({synthesizer.config.target_architecture}, {synthesizer.config.image_size} px)"
    training = {
        "shared body": body_facts + ", identical for every method; no method is trained on the meta-train tasks beyond it",
        "ProtoNet": "nearest-prototype rule on the shared body (its episodic training would change the body: with one shared "
                    "body, ProtoNet is its rule)",
        FINETUNE_ALL: f"all layers from the shared body, on the first {bench.finetune_all_episodes} episodes of each shot (CPU cost)",
        FINETUNE_TOP: f"last {bench.finetune_top_blocks} block stages + conv_head + head from the shared body",
        PROBE: "frozen shared body",
        "Nearest neighbour": "frozen shared body",
    }
    return Methods(methods, training)


def tune(methods: Methods, val_episodes: list[Episode], bench: BenchmarkConfig) -> None:
    """Pick each baseline's test-time hyperparameters on meta-val episodes, then fit every temperature there."""
    if not val_episodes:
        methods.tuning["note"] = "no meta-val pools: defaults used and temperatures left at 1"
        return
    m = methods.methods
    grids: dict[str, tuple[str, list[Any]]] = {
        PROBE: ("lr", list(bench.probe_lrs)),
        FINETUNE_TOP: ("lr", list(bench.finetune_lrs)),
        "Nearest neighbour": ("metric", list(bench.nn_metrics)),
    }
    runs: dict[str, MethodRun] = {}
    for name, (attribute, values) in grids.items():
        scores = {}
        for value in values:
            setattr(m[name], attribute, value)
            runs[f"{name}={value}"] = run_method(m[name], val_episodes)
            scores[value] = accuracy_of(runs[f"{name}={value}"])
        best = max(scores, key=scores.get)
        setattr(m[name], attribute, best)
        if name == PROBE:  # both fine-tuning baselines start from the tuned probe
            m[FINETUNE_TOP].probe_lr = m[FINETUNE_ALL].probe_lr = best
        if name == FINETUNE_TOP:  # all-layer fine-tuning is too costly to tune separately: it takes the same lr
            m[FINETUNE_ALL].lr = best
        methods.tuning[name] = {"parameter": attribute, "scores": {str(k): v for k, v in scores.items()}, "chosen": best}
        runs[name] = runs[f"{name}={best}"]
    for name, method in m.items():
        if name == FINETUNE_ALL:  # too costly to run on meta-val as well: it borrows the top-layer variant's settings
            continue
        run = runs.get(name) or run_method(method, val_episodes)
        methods.temperatures[name] = fit_temperature(run.logits, run.labels)
        methods.tuning.setdefault(name, {})["meta_val_accuracy"] = accuracy_of(run)
    methods.temperatures[FINETUNE_ALL] = methods.temperatures[FINETUNE_TOP]
    methods.tuning[FINETUNE_ALL] = {"note": f"lr, probe lr and temperature of {FINETUNE_TOP} (not tuned separately: CPU cost)"}
    methods.tuning["episodes"] = len(val_episodes)


# --------------------------------------------------------------------------------------------------
# Criteria


def main_table(methods: Methods, pools: list[ClassPool], bench: BenchmarkConfig, shots: list[int]) -> tuple[dict[str, Any], dict[tuple[str, int], MethodRun]]:
    """Per method and shot: the metrics of :meth:`MethodRun.summary`, all methods on the same episodes."""
    table: dict[str, Any] = {}
    runs: dict[tuple[str, int], MethodRun] = {}
    for shot in shots:
        episodes = make_episodes(pools, bench.ways, shot, bench.queries, bench.episodes, bench.seed)
        chosen = {SGPS_TEXT: methods.methods[SGPS_TEXT]} if shot == 0 else methods.image_methods()
        for name, method in chosen.items():
            logger.info("main: %s, %d-shot", name, shot)
            shift = bench.shift_episodes if shot == bench.focus_shot else 0
            chosen_episodes = episodes[: bench.finetune_all_episodes] if name == FINETUNE_ALL else episodes
            runs[name, shot] = run_method(method, chosen_episodes, shift_episodes=shift, severity=bench.severity, seed=bench.seed)
            table.setdefault(name, {})[str(shot)] = runs[name, shot].summary()
    return table, runs


def data_efficiency(methods: Methods, pools: list[ClassPool], bench: BenchmarkConfig, main_runs: dict[tuple[str, int], MethodRun]) -> dict[str, Any]:
    """Accuracy against shots (clipped to the data); shots of the main table reuse its runs."""
    curve: dict[str, Any] = {"requested": list(bench.curve_shots), "points": {}}
    shots = sorted({clip_shot(s, pools) for s in bench.curve_shots if s > 0})
    curve["shots"] = shots
    for shot in shots:
        episodes = None
        for name, method in methods.cheap_image_methods().items():
            run = main_runs.get((name, shot))
            if run is None:
                episodes = episodes or make_episodes(pools, bench.ways, shot, bench.queries, bench.curve_episodes, bench.seed)
                run = run_method(method, episodes)
            curve["points"].setdefault(name, {})[str(shot)] = mean_ci(s["accuracy"] for s in run.scores)
    return curve


def generalization_gap(methods: Methods, train_pools: list[ClassPool], bench: BenchmarkConfig, shot: int,
                       main_runs: dict[tuple[str, int], MethodRun]) -> dict[str, Any]:
    """Accuracy on meta-train-class episodes minus accuracy on the evaluation tasks, at ``shot``."""
    shot = min(shot, max_feasible_shot(train_pools))
    episodes = make_episodes(train_pools, bench.ways, shot, bench.queries, bench.gap_episodes, bench.seed)
    gap: dict[str, Any] = {"shot": shot, "episodes": bench.gap_episodes, "methods": {}}
    for name, method in methods.cheap_image_methods().items():
        train_accuracy = mean_ci(s["accuracy"] for s in run_method(method, episodes).scores)
        held = main_runs.get((name, shot))
        test_accuracy = mean_ci(s["accuracy"] for s in held.scores) if held else None
        gap["methods"][name] = {
            "meta_train": train_accuracy, "evaluation": test_accuracy,
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


def speed(methods: Methods, synthesizer: SGPSSynthesizer, pools: list[ClassPool], bench: BenchmarkConfig, shot: int,
          main_runs: dict[tuple[str, int], MethodRun]) -> dict[str, Any]:
    """Synthesis seconds vs fine-tuning seconds to its best accuracy; synthesized vs plain timm inference speed."""
    finetune: FineTuneMethod = methods.methods[FINETUNE_ALL]
    episodes = make_episodes(pools, bench.ways, shot, bench.queries, bench.speed_episodes, bench.seed)
    curves: dict[int, list[float]] = {}
    at_step: dict[int, list[float]] = {}  # seconds since adapt() started (trace time excluded), per step
    seconds: list[float] = []
    for episode in episodes:
        clock = {"start": time.perf_counter(), "trace": 0.0}

        def trace(step: int, predict: Callable[[Tensor], Tensor], episode: Episode = episode, clock: dict = clock) -> None:
            started = time.perf_counter()
            at_step.setdefault(step, []).append(started - clock["start"] - clock["trace"])
            accuracy = (predict(episode.query).argmax(-1) == episode.query_labels).float().mean().item()
            curves.setdefault(step, []).append(accuracy)
            clock["trace"] += time.perf_counter() - started

        keys = ("body", "processor", "lr", "steps", "weight_decay", "probe_lr", "probe_steps", "top_blocks", "seed")
        traced = FineTuneMethod(**{k: getattr(finetune, k) for k in keys}, trace=trace, trace_every=max(1, finetune.steps // 5))
        clock["start"] = time.perf_counter()
        traced.adapt(episode)
        seconds.append(time.perf_counter() - clock["start"] - clock["trace"])
    mean_curve = {step: float(np.mean(v)) for step, v in sorted(curves.items())}
    best_step = max(mean_curve, key=lambda s: (mean_curve[s], -s))  # the earliest step reaching the best accuracy
    finetune_to_best = float(np.mean(at_step[best_step]))  # includes the linear-probe head initialisation
    synthesis = main_runs[SGPS_FULL, shot].summary()["adapt_seconds"]["mean"] if (SGPS_FULL, shot) in main_runs else float("nan")
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
def inference_throughput(synthesizer: SGPSSynthesizer, episode: Episode, batch: int = 64, repeats: int = 5) -> dict[str, float]:
    """Images/s of a synthesized classifier (materialised timm model) and of a plain timm model of the same
    architecture: the synthesized classifier is an ordinary network, so the ratio should be 1.0."""
    processor = SGPSImageProcessor.from_sgps_config(synthesizer.config)
    method = SGPSMethod(synthesizer, TextBank(synthesizer.config, episode.class_texts), True, True)
    n = len(episode.class_names)
    weights = synthesizer.generate_weights(
        n, processor.normalize_uint8(episode.support), episode.support_labels, method.text_bank(episode.class_texts), torch.ones(n, dtype=torch.bool)
    )
    synthesized = materialize(synthesizer.config, weights)
    plain = timm.create_model(synthesizer.config.target_architecture, num_classes=n, **synthesizer.config.target_model_args).eval()
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
    return {"synthesized_images_per_s": synthesized_rate, "plain_timm_images_per_s": plain_rate,
            "inference_ratio": synthesized_rate / plain_rate}


def subgroup_report(groups: dict[str, Any] | None) -> dict[str, Any]:
    """What the subgroup criterion found (see :func:`sgps_hf.evaluation.sources.subgroup_metadata`)."""
    return groups or {"available": False}


# --------------------------------------------------------------------------------------------------
# Everything


def run_benchmark(synthesizer: SGPSSynthesizer, eval_pools: list[ClassPool], train_pools: list[ClassPool], val_pools: list[ClassPool],
                  bench: BenchmarkConfig, subgroups: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the whole protocol (module docstring) and return the results as a JSON-ready dict."""
    started = time.time()
    synthesizer.eval()
    texts = TextBank(synthesizer.config, [p.text for p in eval_pools + train_pools + val_pools])
    methods = build_methods(synthesizer, texts, bench)
    trained = time.time()
    focus = clip_shot(bench.focus_shot, eval_pools)
    bench_used = BenchmarkConfig(**{**asdict(bench), "focus_shot": focus})
    val_episodes = make_episodes(val_pools, bench.ways, min(focus, max_feasible_shot(val_pools)), bench.queries, bench.tune_episodes, bench.seed + 1) if val_pools else []
    tune(methods, val_episodes, bench)
    shots = sorted({clip_shot(s, eval_pools) for s in bench.shots} | {focus})
    table, runs = main_table(methods, eval_pools, bench_used, shots)
    results = {
        "config": {**asdict(bench), "focus_shot_used": focus, "shots_used": shots},
        "methods": {name: {"description": m.describe(), **({"temperature": methods.temperatures[name]} if name in methods.temperatures else {})}
                    for name, m in methods.methods.items()},
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
