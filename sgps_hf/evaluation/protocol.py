"""The benchmark protocol: its configuration, the seeded episodes every method sees, how a method is run on them, the
methods on the synthesizer's own body and their tuning on meta-val episodes only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..data.episodes import ClassPool, Episode, EpisodeSampler
from ..metrics import calibration, episode_accuracy, episode_scores, mean_ci
from ..models.sgps.image_processing_sgps import SGPSImageProcessor
from ..models.sgps.modeling_sgps import SGPSSynthesizer
from ..training.episode_inputs import TextBank
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
from .views import TaskEmbedding

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
    # Every baseline again with SGPS's support views and (where the synthesizer uses it) task-adaptive BatchNorm.
    view_baselines: bool = True


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


def make_episodes(
    pools: Sequence[ClassPool], ways: int, shot: int, queries: int, count: int, seed: int
) -> list[Episode]:
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
        out: dict[str, Any] = {
            name: mean_ci(s[name] for s in self.scores) for name in ("accuracy", "macro_f1", "auroc")
        }
        pooled = calibration(*self.pooled(temperature))
        out["ece"] = pooled["ece"]
        out["adapt_seconds"] = mean_ci(self.adapt_seconds)
        out["episodes"] = len(self.scores)
        out["per_task_accuracy"] = {
            task: mean_ci(s["accuracy"] for s, t in zip(self.scores, self.tasks, strict=False) if t == task)
            for task in sorted(set(self.tasks))
        }
        return out

    def pooled(self, temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """Softmax probabilities (at ``temperature``) and labels of every query; episodes may differ in N."""
        width = max(x.shape[1] for x in self.logits)
        probs = [nn.functional.pad(torch.softmax(x / temperature, -1), (0, width - x.shape[1])) for x in self.logits]
        return torch.cat(probs).numpy(), torch.cat(self.labels).numpy()


def run_method(
    method: FewShotMethod, episodes: Sequence[Episode], *, shift_episodes: int = 0, severity: int = 3, seed: int = 0
) -> MethodRun:
    """Adapt ``method`` to each episode and score its queries.

    The first ``shift_episodes`` episodes also get corrupted queries.
    """
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
                accuracy = episode_accuracy(shifted, episode.query_labels)
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
    width = max(x.shape[1] for x in logits)
    stacked = torch.cat([nn.functional.pad(x, (0, width - x.shape[1]), value=-torch.inf) for x in logits])
    targets = torch.cat(list(labels))

    def nll(log_t: Tensor) -> Tensor:  # [G] -> [G]
        scaled = stacked.unsqueeze(0) / log_t.exp().view(-1, 1, 1)
        return -scaled.log_softmax(-1).gather(-1, targets.view(1, -1, 1).expand(len(log_t), -1, 1)).squeeze(-1).mean(1)

    grid = torch.linspace(np.log(low), np.log(high), 121, dtype=torch.float64)
    best = grid[nll(grid).argmin()]
    step = grid[1] - grid[0]
    fine = torch.linspace(float(best - step), float(best + step), 41, dtype=torch.float64).clamp(
        np.log(low), np.log(high)
    )
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
        """Image methods without all-layer fine-tuning, which the curve and gap criteria cannot afford on a CPU, and
        without the baselines' SGPS-view variants (in the main table, calibration and domain shift only: CPU cost)."""
        return {
            name: m
            for name, m in self.image_methods().items()
            if not is_finetune_all(name) and not name.endswith(VIEWS_SUFFIXES)
        }


FINETUNE_ALL, FINETUNE_TOP, PROBE = "Fine-tune all layers", "Fine-tune top layers", "Fine-tune head (linear probe)"
NEAREST = "Nearest neighbour"
BASELINES = ("ProtoNet", FINETUNE_ALL, FINETUNE_TOP, PROBE, NEAREST)
VIEWS_SUFFIXES = (" + SGPS views", " + SGPS views + task BN")


def with_views(name: str, task_batchnorm: bool) -> str:
    """The name of a baseline's variant with SGPS's support views (and task-adaptive BatchNorm)."""
    return name + VIEWS_SUFFIXES[int(task_batchnorm)]


def is_finetune_all(name: str) -> bool:
    """All-layer fine-tuning, with or without SGPS's views: run on the first ``finetune_all_episodes`` only."""
    return name == FINETUNE_ALL or name.startswith(FINETUNE_ALL + " + ")


def base_name(name: str) -> str:
    """A baseline's name without its SGPS-view suffix."""
    for suffix in reversed(VIEWS_SUFFIXES):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


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
        FINETUNE_ALL: FineTuneMethod(
            copy.deepcopy(body), processor, steps=bench.finetune_steps, seed=bench.seed, name=FINETUNE_ALL
        ),
        FINETUNE_TOP: FineTuneMethod(
            copy.deepcopy(body),
            processor,
            steps=bench.finetune_steps,
            top_blocks=bench.finetune_top_blocks,
            seed=bench.seed,
            name=FINETUNE_TOP,
        ),
        PROBE: LinearProbeMethod(shared, processor),
        NEAREST: NearestNeighbourMethod(shared, processor),
    }
    if bench.view_baselines:
        methods.update(view_baselines(synthesizer, body, shared, processor, bench))
    body_facts = (
        f"the synthesizer's body ({synthesizer.config.target_architecture}, {synthesizer.config.image_size} px)"
    )
    training = {
        "shared body": body_facts
        + ", identical for every method; no method is trained on the meta-train tasks beyond it",
        "ProtoNet": "nearest-prototype rule on the shared body (its episodic training would change the body: with "
        "one shared body, ProtoNet is its rule)",
        FINETUNE_ALL: f"all layers from the shared body, on the first {bench.finetune_all_episodes} episodes of each "
        "shot (CPU cost)",
        FINETUNE_TOP: f"last {bench.finetune_top_blocks} block stages + conv_head + head from the shared body",
        PROBE: "frozen shared body",
        NEAREST: "frozen shared body",
    }
    if bench.view_baselines:
        training["SGPS-view variants"] = (
            "each baseline again on the same body with the synthesizer's support views ("
            + ", ".join(synthesizer.config.support_views)
            + ") and, when the synthesizer uses it, its task-adaptive BatchNorm; ProtoNet and nearest neighbour "
            "average a support image's views, the linear probe trains on every view, fine-tuning draws one view per "
            "image and step and starts the trained layers from the task's statistics"
        )
    return Methods(methods, training)


def view_baselines(
    synthesizer: SGPSSynthesizer,
    body: nn.Module,
    shared: FeatureMemo,
    processor: SGPSImageProcessor,
    bench: BenchmarkConfig,
) -> dict[str, FewShotMethod]:
    """Every baseline with the synthesizer's support views and task-adaptive BatchNorm (when it has it)."""
    import copy

    views = tuple(synthesizer.config.support_views)
    prior = synthesizer.config.task_batchnorm_images
    embedding = TaskEmbedding(body, processor, views, prior, memo=shared if prior is None else None)
    finetune = {"steps": bench.finetune_steps, "seed": bench.seed, "support_views": views}
    finetune["task_batchnorm_images"] = prior
    named = {
        "ProtoNet": ProtoNetMethod(body, processor, views=embedding),
        FINETUNE_ALL: FineTuneMethod(copy.deepcopy(body), processor, **finetune),
        FINETUNE_TOP: FineTuneMethod(copy.deepcopy(body), processor, top_blocks=bench.finetune_top_blocks, **finetune),
        PROBE: LinearProbeMethod(body, processor, views=embedding),
        NEAREST: NearestNeighbourMethod(body, processor, views=embedding),
    }
    out: dict[str, FewShotMethod] = {}
    for name, method in named.items():
        method.name = with_views(name, prior is not None)
        out[method.name] = method
    return out


def tune(methods: Methods, val_episodes: list[Episode], bench: BenchmarkConfig) -> None:
    """Pick each baseline's test-time hyperparameters on meta-val episodes, then fit every temperature there."""
    if not val_episodes:
        methods.tuning["note"] = "no meta-val pools: defaults used and temperatures left at 1"
        return
    m = methods.methods
    grids: dict[str, tuple[str, list[Any]]] = {
        name: grid
        for name in m
        for base, grid in (
            (PROBE, ("lr", list(bench.probe_lrs))),
            (FINETUNE_TOP, ("lr", list(bench.finetune_lrs))),
            (NEAREST, ("metric", list(bench.nn_metrics))),
        )
        if base_name(name) == base
    }
    runs: dict[str, MethodRun] = {}
    for name, (attribute, values) in grids.items():
        suffix = name[len(base_name(name)) :]  # the view variants tune and borrow among themselves
        scores = {}
        for value in values:
            setattr(m[name], attribute, value)
            runs[f"{name}={value}"] = run_method(m[name], val_episodes)
            scores[value] = accuracy_of(runs[f"{name}={value}"])
        best = max(scores, key=scores.get)
        setattr(m[name], attribute, best)
        for finetune in (FINETUNE_TOP + suffix, FINETUNE_ALL + suffix):
            if base_name(name) == PROBE and finetune in m:  # both fine-tuning baselines start from the tuned probe
                m[finetune].probe_lr = best
        if base_name(name) == FINETUNE_TOP and FINETUNE_ALL + suffix in m:  # too costly to tune apart: same lr
            m[FINETUNE_ALL + suffix].lr = best
        methods.tuning[name] = {
            "parameter": attribute,
            "scores": {str(k): v for k, v in scores.items()},
            "chosen": best,
        }
        runs[name] = runs[f"{name}={best}"]
    for name, method in m.items():
        if is_finetune_all(name):  # too costly to run on meta-val as well: it borrows the top-layer variant's settings
            continue
        run = runs.get(name) or run_method(method, val_episodes)
        methods.temperatures[name] = fit_temperature(run.logits, run.labels)
        methods.tuning.setdefault(name, {})["meta_val_accuracy"] = accuracy_of(run)
    for name in filter(is_finetune_all, m):
        top = FINETUNE_TOP + name[len(FINETUNE_ALL) :]
        methods.temperatures[name] = methods.temperatures.get(top, 1.0)
        methods.tuning[name] = {"note": f"lr, probe lr and temperature of {top} (not tuned separately: CPU cost)"}
    methods.tuning["episodes"] = len(val_episodes)
