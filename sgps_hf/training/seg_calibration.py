"""The training-free steps that shape a meta-trained segmentation synthesizer after its decoder is trained.

All run from the segmentation training command (``scripts/train_seg.py``, :func:`~.seg_meta_train.train_seg`) on the
exported best step, in this order, each recorded in the export's ``training.json``:

1. **Head per K** (``head_selection_episodes``): ridge vs prototype head on meta-val; ``prototype_max_k`` is the
   largest K up to which the prototype head is better at every K (``None``: ridge everywhere).
2. **Raw block re-fit** (``raw_refit``): the raw pass-through's standardisation / principal axes fitted again on
   meta-train images with other settings. The learned decoder never mixes with the raw block (they meet only in the
   closed-form 1x1 head), so the decoder is untouched.
3. **Prototype weight per K** (``prototype_mix_selection``): the blended head's prototype weight, chosen on whole
   tasks (meta-val and meta-train, never held-out): per K the grid weight with the best mean Dice over the tasks
   (binary tasks averaged within their task first), linearly interpolated between the evaluated K. On the
   meta-train tasks the learned channels are zeroed (``meta_train_features="raw"``): they were meta-trained on those
   masks, which would favour ridge for a reason that does not carry to new tasks. A leave-one-task-out run of the
   same rule estimates what the choice gains on a task it did not see.

Each step writes a new config (``with_changes``) and saves the synthesizer atomically; none assigns a config field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..data.segmentation import SegEpisode, SegEpisodeSampler, load_seg_dataset, seg_splits, task_arrays
from ..hub.atomic import atomic_write_text
from ..metrics import dice_per_image
from ..models.sgps_seg.modeling_sgps_seg import SGPSSegSynthesizer
from .seg_features import FeatureBank, evaluate_bank, foreground

#: Defaults of the ``prototype_mix_selection`` keys of the training config.
MIX_SELECTION_DEFAULTS: dict[str, Any] = {
    "episodes": 16,
    "ks": [1, 2, 5, 8],
    "grid": [round(0.1 * i, 1) for i in range(11)],
    "seed": 2024,
    "n_query": 8,
    "meta_train_features": "raw",
}


def with_config(model: SGPSSegSynthesizer, **changes: Any) -> SGPSSegSynthesizer:
    """The same synthesizer (weights and buffers) under a new config equal to its own but for ``changes``."""
    updated = type(model)(model.config.with_changes(**changes))
    updated.load_state_dict(model.state_dict())
    return updated.eval()


def update_training_record(folder: str | Path, key: str, value: Any) -> dict[str, Any]:
    """Set ``key`` of the folder's ``training.json`` (written atomically); returns the whole record."""
    path = Path(folder) / "training.json"
    info = json.loads(path.read_text()) if path.is_file() else {}
    info[key] = value
    atomic_write_text(path, json.dumps(info, indent=2))
    return info


# -- raw pass-through -------------------------------------------------------------------------------------------------
def fit_raw_block(model: SGPSSegSynthesizer, bank: FeatureBank, spec: dict[str, Any]) -> None:
    """Fit the raw pass-through's standardisation / principal axes on a seeded subset of the bank's (meta-train)
    images: ``spec`` keys fit_images_per_task (48), fit_seed (0), shift_margin (2), standardize (true), level_norm."""
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


def refit_raw_block(folder: str | Path, output: str | Path, spec: dict[str, Any], bank: FeatureBank) -> dict:
    """Re-fit the raw block of the synthesizer saved in ``folder`` on ``bank`` (meta-train images) and save it to
    ``output`` (may be ``folder``) with its ``training.json``, the re-fit recorded as ``raw_refit``."""
    model = SGPSSegSynthesizer.from_pretrained(folder).eval()
    source = Path(folder) / "training.json"
    training = json.loads(source.read_text()) if source.is_file() else {}
    full = {**training.get("config", {}).get("passthrough", {}), **spec}
    fit_raw_block(model, bank, full)
    model.save_pretrained(output)
    training["raw_refit"] = full
    atomic_write_text(Path(output) / "training.json", json.dumps(training, indent=2))
    return full


def meta_train_bank(model: SGPSSegSynthesizer, data_dir=None, splits_file=None) -> FeatureBank:
    """Float16 features of the meta-train images, as meta-training caches them (the raw block is fitted on these)."""
    names = seg_splits(splits_file)["meta_train"]
    return FeatureBank(model, task_arrays(load_seg_dataset(data_dir, tasks=names), names), mirrored=False)


# -- ridge vs prototype per K -----------------------------------------------------------------------------------------
@torch.no_grad()
def select_head_on_meta_val(
    folder: Path, bank: FeatureBank, sampler: SegEpisodeSampler, ks: Sequence[int], n_per_k: int
) -> dict[str, Any]:
    """Per K, ridge vs prototype head of the synthesizer in ``folder`` on meta-val; saves it with ``prototype_max_k``
    the largest K such that the prototype head is better at every K up to it (``None``: ridge everywhere)."""
    model = SGPSSegSynthesizer.from_pretrained(folder).eval()
    scores = {head: evaluate_bank(model, bank, sampler, ks, n_per_k, head=head) for head in ("ridge", "prototype")}
    limit = None
    for k in sorted(ks):
        if scores["prototype"][f"dice_k{k}"] > scores["ridge"][f"dice_k{k}"]:
            limit = k
        else:
            break
    with_config(model, prototype_max_k=limit, head="ridge").save_pretrained(folder)
    choice = {"episodes_per_k": n_per_k, "meta_val": scores, "prototype_max_k": limit}
    update_training_record(folder, "head_selection", choice)
    return choice


# -- prototype weight of the blended head per K ---------------------------------------------------------------------
def task_of(binary: str) -> str:
    return binary.split("/")[0]


def choose(scores: dict, tasks: list[str], k: int, grid: list[float]) -> float:
    """The grid weight with the best mean over ``tasks`` of the task Dice at ``k`` (first one on ties)."""
    means = [np.mean([scores[t][str(k)][str(m)] for t in tasks]) for m in grid]
    return grid[int(np.argmax(means))]


def interpolate(chosen: dict[int, float], max_k: int) -> list[float]:
    ks = sorted(chosen)
    return [round(float(np.interp(k, ks, [chosen[j] for j in ks])), 4) for k in range(1, max_k + 1)]


@torch.no_grad()
def decoded_bank(model: SGPSSegSynthesizer, bank: FeatureBank, batch: int = 32) -> dict[str, torch.Tensor]:
    """Decoder features (learned + raw) of every image, computed once (eval mode: per image, batch-independent)."""
    out = {}
    for name in sorted(bank.features):
        n = len(bank.masks[name])
        out[name] = torch.cat(
            [model.decode(bank.get(name, range(s, min(s + batch, n)))[0]) for s in range(0, n, batch)]
        )
    return out


def without_learned(model: SGPSSegSynthesizer, decoded: torch.Tensor) -> torch.Tensor:
    """The decoder features with the learned channels zeroed (the head then rests on the raw block alone)."""
    out = decoded.clone()
    out[:, : model.config.hidden_size] = 0
    return out


@torch.no_grad()
def mix_dice(
    model: SGPSSegSynthesizer, decoded: torch.Tensor, masks: torch.Tensor, episodes: list[SegEpisode], mix: float
) -> float:
    """Mean over ``episodes`` of the query Dice of the blended head with prototype weight ``mix`` (0: ridge)."""
    head = "ridge" if mix == 0 else "blend"  # weight 0 is exactly the ridge head
    predicted, targets, sizes = [], [], [0]
    for episode in episodes:
        support, query = list(episode.support), list(episode.query)
        weight, bias = model.head_from_support(decoded[support], masks[support], head=head, prototype_weight=mix)
        predicted.extend(foreground(model.query_logits(decoded[query], weight, bias, tuple(masks.shape[-2:]))))
        targets.extend(masks[query][:, 0])
        sizes.append(sizes[-1] + len(query))
    scores = dice_per_image(predicted, targets)
    return float(np.mean([np.mean(scores[a:b]) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]))


def select_prototype_mix(
    model: SGPSSegSynthesizer,
    data_dir: str | None = None,
    splits_file: str | None = None,
    log: Callable[[str], None] = print,
    **options: Any,
) -> dict[str, Any]:
    """Choose the blended head's prototype weight per K on the meta-train and meta-val tasks (``options``: the keys of
    :data:`MIX_SELECTION_DEFAULTS`). Returns the full record; ``"prototype_mix"`` is the choice for K = 1..max(ks)."""
    unknown = set(options) - set(MIX_SELECTION_DEFAULTS)
    if unknown:
        raise ValueError(
            f"Unknown prototype_mix_selection keys: {sorted(unknown)}; known: {sorted(MIX_SELECTION_DEFAULTS)}."
        )
    opts = {**MIX_SELECTION_DEFAULTS, **options}
    ks, grid = [int(k) for k in opts["ks"]], [float(m) for m in opts["grid"]]
    splits = seg_splits(splits_file)
    names = splits["meta_train"] + splits["meta_val"]
    tasks = task_arrays(load_seg_dataset(data_dir, tasks=names), names)
    model = model.eval()
    bank = FeatureBank(model, tasks, mirrored=False, dtype=torch.float32)
    decoded = decoded_bank(model, bank)
    if opts["meta_train_features"] == "raw":
        decoded = {n: d if task_of(n) in splits["meta_val"] else without_learned(model, d) for n, d in decoded.items()}
    sampler = SegEpisodeSampler(
        {n: len(a) for n, a in tasks.items()}, (1, max(ks)), int(opts["n_query"]), opts["seed"]
    )
    binary: dict = {}
    for name in sorted(tasks):
        binary[name] = {}
        for k in ks:
            episodes = sampler.fixed(name, k, int(opts["episodes"]))
            binary[name][str(k)] = {
                str(m): mix_dice(model, decoded[name], bank.masks[name], episodes, m) for m in grid
            }
            log(f"{name} K={k}: " + " ".join(f"{m}:{v:.3f}" for m, v in binary[name][str(k)].items()))
    whole = sorted({task_of(n) for n in binary})
    scores = {
        t: {
            str(k): {
                str(m): float(np.mean([binary[n][str(k)][str(m)] for n in binary if task_of(n) == t])) for m in grid
            }
            for k in ks
        }
        for t in whole
    }
    chosen = {k: choose(scores, whole, k, grid) for k in ks}
    loto = {}
    for left in whole:
        rest = [t for t in whole if t != left]
        loto[left] = {
            str(k): {
                "weight": (w := choose(scores, rest, k, grid)),
                "dice": scores[left][str(k)][str(w)],
                "ridge": scores[left][str(k)]["0.0"],
            }
            for k in ks
        }
    return {
        "checkpoint": str(model.config.name_or_path),
        "selection_tasks": whole,
        "meta_val": splits["meta_val"],
        "episodes_per_binary_task_and_k": int(opts["episodes"]),
        "seed": opts["seed"],
        "meta_train_features": opts["meta_train_features"],
        "grid": grid,
        "per_binary_task": binary,
        "per_task": scores,
        "mean_over_tasks": {
            str(k): {str(m): float(np.mean([scores[t][str(k)][str(m)] for t in whole])) for m in grid} for k in ks
        },
        "chosen": {str(k): w for k, w in chosen.items()},
        "prototype_mix": interpolate(chosen, max(ks)),
        "leave_one_task_out": loto,
        "leave_one_task_out_gain_over_ridge": {
            str(k): float(np.mean([loto[t][str(k)]["dice"] - loto[t][str(k)]["ridge"] for t in whole])) for k in ks
        },
    }


def raw_fit_record(folder: str | Path) -> dict[str, Any]:
    """How the raw block in ``folder`` was fitted (training.json: a re-fit if any, else the meta-training fit)."""
    path = Path(folder) / "training.json"
    info = json.loads(path.read_text()) if path.is_file() else {}
    spec = info.get("raw_refit") or info.get("config", {}).get("passthrough", {})
    return {"standardize": bool(spec.get("standardize", True)), "level_norm": str(spec.get("level_norm", "dim"))}


def write_prototype_mix(folder: str | Path, prototype_mix: list[float]) -> None:
    """Save the synthesizer in ``folder`` with ``prototype_mix`` in a new config (weights unchanged)."""
    model = SGPSSegSynthesizer.from_pretrained(folder)
    with_config(model, prototype_mix=list(prototype_mix)).save_pretrained(folder)
