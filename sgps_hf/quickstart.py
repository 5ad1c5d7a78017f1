"""``sgps quickstart``: synthesize classifiers for the held-out tasks of the shared data and score them.

This is the README's main job: it exercises the whole user path (TaskSpec from image files and
clinical texts -> one-pass synthesis -> a saved timm classifier) on tasks the bundled synthesizer
never saw in meta-training, and reports accuracy against chance. With one image per class, which image
is drawn decides much of the accuracy, so each task is synthesized from several random draws of its
support images and the mean is reported with its range; the classifier of the first draw is saved.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .data.folders import task_from_folder
from .data.registry import task_dir
from .data.splits import load_splits
from .errors import CheckpointError
from .models.sgps.modeling_sgps import SGPSSynthesizer
from .models.sgps.processing_sgps import SGPSProcessor


@dataclass
class QuickstartResult:
    task: str
    num_classes: int
    shots: int
    accuracies: list[float]
    num_queries: int
    saved_to: Path | None

    @property
    def accuracy(self) -> float:
        """Mean accuracy over the draws of support images."""
        return float(np.mean(self.accuracies))

    @property
    def chance(self) -> float:
        return 1.0 / self.num_classes


def run_quickstart(
    checkpoint: str,
    data_dir: str | None = None,
    out: str | Path = "outputs/quickstart",
    *,
    n_way: int = 5,
    shots: int = 1,
    max_queries_per_class: int = 20,
    seed: int = 0,
    draws: int = 5,
) -> list[QuickstartResult]:
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}.")
    if Path(checkpoint).is_absolute() and not Path(checkpoint).is_dir():
        raise CheckpointError(
            f"Synthesizer checkpoint {checkpoint} not found. Train one with "
            "`accelerate launch scripts/train.py --config scripts/configs/default.yaml` or pass --synthesizer."
        )
    synth = SGPSSynthesizer.from_pretrained(checkpoint)
    processor = SGPSProcessor.from_pretrained(checkpoint)
    results = []
    rng = np.random.default_rng(seed)
    for name in tqdm(load_splits().held_out_tasks, desc="held-out tasks"):
        accuracies, saved = [], None
        for draw in range(draws):
            task, rest = task_from_folder(task_dir(name, data_dir), n_way=n_way, shots=shots, rng=rng)
            classifier = synth.synthesize(task, processor=processor)
            queries = {cls: files[:max_queries_per_class] for cls, files in rest.items()}
            accuracies.append(classifier.evaluate(queries)["accuracy"])
            if draw == 0:
                saved = classifier.save_pretrained(Path(out) / name)
        results.append(
            QuickstartResult(name, len(task.classes), shots, accuracies, sum(map(len, queries.values())), saved)
        )
    return results


def format_results(results: list[QuickstartResult]) -> str:
    draws = len(results[0].accuracies) if results else 0
    lines = [
        f"{'held-out task':34s} {'classes':>7s} {'shots':>5s} {'accuracy':>8s} {'min-max':>11s} {'chance':>6s} "
        f"{'queries':>7s}"
    ]
    for r in results:
        spread = f"{min(r.accuracies):.3f}-{max(r.accuracies):.3f}"
        lines.append(
            f"{r.task:34s} {r.num_classes:7d} {r.shots:5d} {r.accuracy:8.3f} {spread:>11s} {r.chance:6.3f} "
            f"{r.num_queries:7d}"
        )
    mean_acc = np.mean([r.accuracy for r in results])
    mean_chance = np.mean([r.chance for r in results])
    lines.append(f"{'mean':34s} {'':7s} {'':5s} {mean_acc:8.3f} {'':11s} {mean_chance:6.3f}")
    lines.append(
        f"accuracy: mean over {draws} random draws of the support images per task (min-max: the worst and best draw)"
    )
    return "\n".join(lines)
