"""The trust benchmark: conformal coverage and set size, and the subgroup audit, on the held-out tasks.

For each held-out task and each random draw of ``shots`` support images per class, the bundled synthesizer writes a
classifier; every other image of the task is classified once. Then, ``splits`` times, those images are split at
random in half: split-conformal prediction (:mod:`sgps_hf.trust.conformal`) is calibrated on one half and its
empirical coverage and mean set size are measured on the other, at each target coverage. Calibration and test come
from the same task (exchangeable), which is what the guarantee assumes. The subgroup criterion runs the same
code as ``sgps evaluate-classifier --subgroups`` (:mod:`sgps_hf.trust.own_cases`) on the held-out PAD-UFES-20 task
and its ``metadata.csv``. ``scripts/trust_benchmark.py`` runs it and writes ``benchmarks/trust.md``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from ..data.folders import task_from_folder
from ..data.registry import task_dir
from ..imaging import image_fingerprint, load_image
from ..trust.conformal import BENCHMARK_COVERAGES, coverage_and_size, fit_conformal, set_membership
from ..trust.own_cases import evaluate_classifier, predict_cases, support_fingerprints

SUBGROUP_TASK = "derm-smartphone-pad-ufes-20"
SUBGROUP_COLUMNS = ("sex", "fitzpatrick", "age")


def not_support(classifier: Any) -> Callable[[str | Path], bool]:
    """A test of whether an image file is none of ``classifier``'s support images, by content (sha256), not path.

    PAD-UFES-20 holds byte-identical images under two classes (basal_cell_carcinoma/0020.jpg is
    squamous_cell_carcinoma/0031.jpg): a support image's twin among the test cases would make a measure optimistic.
    """
    support = support_fingerprints(classifier)
    return lambda path: image_fingerprint(path) not in support


def conformal_task(
    synthesizer: Any,
    processor: Any,
    task: str,
    *,
    shots: int = 5,
    draws: int = 3,
    splits: int = 200,
    coverages: Sequence[float] = BENCHMARK_COVERAGES,
    methods: Sequence[str] = ("lac", "aps"),
    max_classes: int = 10,
    seed: int = 0,
    data_dir: str | None = None,
) -> dict[str, Any]:
    """Coverage and set size of one held-out task (mean over draws x splits), with the classifiers' accuracy."""
    rng = np.random.default_rng(seed)
    folder = task_dir(task, data_dir)
    runs: dict[str, dict[str, list[tuple[float, float]]]] = {m: {str(c): [] for c in coverages} for m in methods}
    accuracies, num_classes, num_images = [], 0, 0
    for _ in range(draws):
        spec, rest = task_from_folder(folder, n_way=max_classes, shots=shots, rng=rng)
        classifier = synthesizer.synthesize(spec, processor=processor)
        independent = not_support(classifier)
        rest = {name: [f for f in rest[name] if independent(f)] for name in classifier.label_names}
        files = [f for name in classifier.label_names for f in rest[name]]
        labels = np.array([i for i, name in enumerate(classifier.label_names) for _ in rest[name]])
        images = [load_image(f) for f in files]
        probs = predict_cases(classifier, images, progress=False)
        accuracies.append(float((probs.argmax(-1) == labels).mean()))
        num_classes, num_images = len(classifier.label_names), len(files)
        for _ in range(splits):
            order = rng.permutation(len(files))
            calibration, test = order[: len(order) // 2], order[len(order) // 2 :]
            for method in methods:
                for coverage in coverages:
                    fitted = fit_conformal(probs[calibration], labels[calibration], coverage, method)
                    inside = set_membership(probs[test], fitted)
                    runs[method][str(coverage)].append(coverage_and_size(inside, labels[test]))
    summary = {
        method: {
            coverage: {
                "coverage": float(np.mean([c for c, _ in values])),
                "coverage_sd": float(np.std([c for c, _ in values])),
                "set_size": float(np.mean([s for _, s in values])),
            }
            for coverage, values in by_coverage.items()
        }
        for method, by_coverage in runs.items()
    }
    return {
        "task": task,
        "classes": num_classes,
        "shots": shots,
        "draws": draws,
        "splits": splits,
        "images_per_draw": num_images,
        "accuracy": float(np.mean(accuracies)),
        "conformal": summary,
    }


def subgroup_audit_task(
    synthesizer: Any, processor: Any, *, shots: int = 5, seed: int = 0, data_dir: str | None = None
) -> dict[str, Any]:
    """The subgroup audit of one synthesized PAD-UFES-20 classifier on every image but its support images."""
    from ..data.loading import load_image_dataset

    rng = np.random.default_rng(seed)
    folder = task_dir(SUBGROUP_TASK, data_dir)
    spec, _ = task_from_folder(folder, n_way=10, shots=shots, rng=rng)
    classifier = synthesizer.synthesize(spec, processor=processor)
    independent = not_support(classifier)
    dataset = load_image_dataset(folder, keep_metadata=True)
    paths = dataset.cast_column("image", _undecoded())["image"]
    keep = [i for i, item in enumerate(paths) if independent(item["path"])]
    evaluation = evaluate_classifier(classifier, dataset.select(keep), subgroups=list(SUBGROUP_COLUMNS))
    out = evaluation.to_dict()
    out.pop("predictions")
    out["shots"] = shots
    return out


def _undecoded() -> Any:
    from datasets import Image

    return Image(decode=False)


def run_trust_benchmark(
    synthesizer: Any,
    processor: Any,
    tasks: Sequence[str],
    *,
    shots: int = 5,
    draws: int = 3,
    splits: int = 200,
    seed: int = 0,
    data_dir: str | None = None,
) -> dict[str, Any]:
    started = time.time()
    results = [
        conformal_task(
            synthesizer, processor, task, shots=shots, draws=draws, splits=splits, seed=seed, data_dir=data_dir
        )
        for task in tqdm(tasks, desc="held-out tasks")
    ]
    subgroups = (
        subgroup_audit_task(synthesizer, processor, shots=shots, seed=seed, data_dir=data_dir)
        if SUBGROUP_TASK in tasks
        else None
    )
    return {"tasks": results, "subgroups": subgroups, "wall_seconds": time.time() - started}


def render_markdown(results: dict[str, Any], command: str, environment: str) -> str:
    """``benchmarks/trust.md``: coverage and set size per task and target, then the PAD-UFES-20 subgroup audit."""

    tasks = results["tasks"]
    first = tasks[0]
    coverages = list(first["conformal"]["lac"])
    lines = [
        "# Trust benchmark: conformal coverage and subgroup audit on the held-out tasks",
        "",
        f"Command: `{command}` ({environment}; {results['wall_seconds'] / 60:.1f} min).",
        "",
        f"Per held-out task: {first['draws']} random draws of {first['shots']} support images per class (all "
        "classes, at most 10), one classifier each from the bundled synthesizer; every other image of the task "
        "(support images and their byte-identical copies left out) classified once; "
        f"then {first['splits']} random half/half splits of those images into calibration and test cases. Split "
        "conformal prediction is calibrated on one half and measured on the other (calibration and test from the same "
        "task, as the guarantee assumes). Coverage: share of test cases whose set holds the true class (mean over "
        "draws x splits, with its standard deviation across splits); size: mean number of classes per set.",
        "",
    ]
    for method, title in (("lac", "LAC (1 - probability; smallest sets)"), ("aps", "APS (non-randomised; adaptive)")):
        lines += [f"## {title}", ""]
        header = ["task", "classes", "images", "accuracy"]
        header += [f"coverage @{c}" for c in coverages] + [f"size @{c}" for c in coverages]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for t in tasks:
            by = t["conformal"][method]
            cells = [t["task"], str(t["classes"]), str(t["images_per_draw"]), f"{t['accuracy']:.3f}"]
            cells += [f"{by[c]['coverage']:.3f} ± {by[c]['coverage_sd']:.3f}" for c in coverages]
            cells += [f"{by[c]['set_size']:.2f}" for c in coverages]
            lines.append("| " + " | ".join(cells) + " |")
        means = [np.mean([t["conformal"][method][c]["coverage"] for t in tasks]) for c in coverages]
        sizes = [np.mean([t["conformal"][method][c]["set_size"] for t in tasks]) for c in coverages]
        lines.append(
            "| **mean** | | | | "
            + " | ".join(f"**{m:.3f}**" for m in means)
            + " | "
            + " | ".join(f"**{s:.2f}**" for s in sizes)
            + " |"
        )
        lines.append("")
    if results.get("subgroups"):
        lines += subgroup_audit_lines(results["subgroups"])
    return "\n".join(lines)


def subgroup_audit_lines(sub: dict[str, Any]) -> list[str]:
    """Markdown of :func:`subgroup_audit_task`'s result (this report and the main benchmark's subgroup section)."""
    from ..trust.subgroup_audit import format_group_rows

    s = sub["scores"]
    lines = [
        "## Subgroups (PAD-UFES-20, metadata.csv)",
        "",
        f"One classifier from {sub['shots']} support images per class, evaluated on the other {s['num_images']} "
        "images (support images and their byte-identical copies left out) with the code of "
        f"`sgps evaluate-classifier --subgroups {' '.join(SUBGROUP_COLUMNS)}`: accuracy "
        f"{s['accuracy']['value']:.3f} [{s['accuracy']['low']:.3f}, {s['accuracy']['high']:.3f}], "
        f"balanced accuracy {s['balanced_accuracy']['value']:.3f}, ECE {s['ece']:.3f}.",
        "",
        "| column | group | n | accuracy [95 % CI] | ECE | classes | flag |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = format_group_rows(sub["subgroups"], s["label_names"])
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
    lines += [
        "",
        "'too few images to conclude': under 30 images, the interval is too wide. 'lacks ...': the group misses some "
        "classes, so its accuracy reflects its class mix (in PAD-UFES-20, unknown sex and skin type occur only in "
        "actinic keratosis, nevus and seborrheic keratosis).",
        "",
    ]
    return lines
