r"""Command line of the benchmark: ``scripts/run_benchmark.py`` and ``sgps evaluate`` share these arguments.

Full run (the numbers in benchmarks/RESULTS.md; the time it took is recorded there)::

    python scripts/run_benchmark.py --split held_out --out benchmarks/results --report benchmarks/RESULTS.md

Any imagefolder directory of classes (or a Hub dataset) can be evaluated instead::

    python scripts/run_benchmark.py --data-dir my_task/ --descriptions texts.json --ways 5 --shots 0 1 5 \
        --episodes 600 --out results/
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import sys
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from ..data.splits import SPLIT_NAMES

#: Settings of ``--quick``: every criterion exercised on a handful of episodes (for tests and smoke runs).
QUICK = dict(
    episodes=3,
    curve_shots=(1, 2),
    curve_episodes=2,
    gap_episodes=2,
    shift_episodes=2,
    tune_episodes=2,
    speed_episodes=1,
    finetune_steps=3,
    finetune_all_episodes=2,
    probe_lrs=(0.01, 0.1),
    finetune_lrs=(3e-4, 1e-3),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("what to evaluate")
    data.add_argument(
        "--synthesizer", default=None, help="synthesizer folder or Hub id (default: the bundled checkpoint)"
    )
    data.add_argument(
        "--data-dir",
        default=None,
        help="with --split: the folder of task folders (default ../shared/data); "
        "without: one imagefolder directory of classes (<class>/<image>) or a Hub dataset name",
    )
    data.add_argument(
        "--split",
        choices=SPLIT_NAMES,
        default=None,
        help="evaluate on a split of the shared data (default held_out when no --data-dir)",
    )
    data.add_argument(
        "--descriptions",
        default=None,
        help="JSON file class -> clinical text (default: built-in texts, else the class name)",
    )
    protocol = parser.add_argument_group("protocol")
    protocol.add_argument("--ways", type=int, default=5)
    protocol.add_argument(
        "--shots", type=int, nargs="+", default=[0, 1, 5], help="0 = text only (zero-shot; SGPS only)"
    )
    protocol.add_argument("--episodes", type=int, default=300, help="episodes per shot of the main table")
    protocol.add_argument("--queries", type=int, default=15, help="query images per class")
    protocol.add_argument("--seed", type=int, default=0)
    protocol.add_argument(
        "--focus-shot",
        type=int,
        default=5,
        help="shot of the gap, calibration, domain-shift, tuning and speed criteria",
    )
    protocol.add_argument("--curve-shots", type=int, nargs="+", default=[1, 2, 5, 10, 20])
    for name, default in (("curve", 15), ("gap", 25), ("shift", 30), ("tune", 15), ("speed", 5)):
        protocol.add_argument(f"--{name}-episodes", type=int, default=default)
    protocol.add_argument(
        "--severity",
        type=int,
        default=3,
        choices=range(1, 6),
        help="corruption severity of the domain-shift criterion",
    )
    protocol.add_argument("--finetune-steps", type=int, default=20, help="step budget of both fine-tuning baselines")
    protocol.add_argument(
        "--finetune-all-episodes", type=int, default=10, help="episodes per shot of all-layer fine-tuning (CPU cost)"
    )
    protocol.add_argument(
        "--finetune-top-blocks", type=int, default=1, help="block stages the cheaper fine-tuning baseline trains"
    )
    protocol.add_argument(
        "--no-view-baselines",
        dest="view_baselines",
        action="store_false",
        help="skip the baselines' variants with SGPS's support views and task BatchNorm (rows of the fair comparison)",
    )
    data.add_argument(
        "--train-config",
        default=None,
        help="TrainingConfig YAML/JSON naming the meta-train/meta-val data "
        "(generalization gap, tuning; default: the synthesizer's own training_config.json)",
    )
    data.add_argument(
        "--train-sources", nargs="+", default=None, help="meta-train imagefolders/Hub datasets (override the config)"
    )
    data.add_argument(
        "--val-sources", nargs="+", default=None, help="meta-val imagefolders/Hub datasets (override the config)"
    )
    run = parser.add_argument_group("run")
    run.add_argument("--out", required=True, help="output folder: results.json, results.md, PNG plots")
    run.add_argument(
        "--report",
        default=None,
        help="also write the Markdown report here (e.g. benchmarks/RESULTS.md), plot links relative to it",
    )
    run.add_argument(
        "--quick", action="store_true", help="a few episodes and steps per criterion (smoke test; numbers meaningless)"
    )
    run.add_argument("--num-threads", type=int, default=2)


def _training_config(args: argparse.Namespace, synthesizer_path: str) -> Any:
    from ..training.config import TrainingConfig

    path = Path(args.train_config) if args.train_config else Path(synthesizer_path) / "training_config.json"
    config = TrainingConfig.saved_or_default(path)  # only its data sources are used
    if args.train_sources is not None:
        config = replace(config, train_sources=list(args.train_sources), val_sources=list(args.val_sources or []))
    return config


def _bench_config(args: argparse.Namespace) -> Any:
    from ..evaluation.protocol import BenchmarkConfig

    given = {f.name: getattr(args, f.name) for f in fields(BenchmarkConfig) if hasattr(args, f.name)}
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in given.items()}
    return BenchmarkConfig(**{**given, **(QUICK if args.quick else {})})


def _eval_pools(args: argparse.Namespace, image_size: int) -> tuple[list[Any], str]:
    from ..data.episodes import build_pools
    from ..data.sources import dataset_pools

    if args.split is None and args.data_dir is not None:
        return dataset_pools(args.data_dir, image_size, args.descriptions), f"dataset {args.data_dir}"
    split = args.split or "held_out"
    if args.descriptions:
        raise SystemExit(
            "--descriptions applies to --data-dir datasets; the shared splits use the packaged descriptions."
        )
    return build_pools(
        split, image_size, data_dir=args.data_dir
    ), f"{split} split of {args.data_dir or 'the shared data'}"


def environment(threads: int) -> str:
    import torch

    return (
        f"{platform.platform()}, Python {platform.python_version()}, torch {torch.__version__}, "
        f"{os.cpu_count()} CPUs, {threads} torch threads"
    )


def run(args: argparse.Namespace, argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark described by ``args``; writes results.json, results.md and plots into ``--out``."""
    import torch

    from ..body.timm_network import tensors_fingerprint
    from ..evaluation.benchmark import run_benchmark
    from ..evaluation.report import render_markdown, write_plots
    from ..evaluation.subgroups import subgroup_metadata
    from ..evaluation.trust_benchmark import SUBGROUP_TASK, subgroup_audit_task
    from ..hub.checkpoints import DEFAULT_CHECKPOINT
    from ..models.sgps.modeling_sgps import SGPSSynthesizer
    from ..training.pools import training_pools

    torch.set_num_threads(args.num_threads)
    started = time.time()
    synthesizer_path = args.synthesizer or DEFAULT_CHECKPOINT
    synthesizer = SGPSSynthesizer.from_pretrained(synthesizer_path)
    image_size = synthesizer.config.image_size
    config = _training_config(args, synthesizer_path)
    eval_pools, data_label = _eval_pools(args, image_size)
    train_pools, val_pools, _ = training_pools(config, image_size)
    subgroups = subgroup_metadata(
        args.data_dir if args.split is None else None,
        args.split or ("held_out" if args.data_dir is None else None),
        args.data_dir if args.split else None,
    )
    if subgroups.get("available") and SUBGROUP_TASK in subgroups.get("columns", {}):
        from ..models.sgps.processing_sgps import SGPSProcessor

        processor = SGPSProcessor.from_pretrained(synthesizer_path)
        subgroups["audit"] = subgroup_audit_task(synthesizer, processor, shots=5, seed=args.seed)
    results = run_benchmark(synthesizer, eval_pools, train_pools, val_pools, _bench_config(args), subgroups)
    command = "python scripts/run_benchmark.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    results["run"] = {
        "command": command,
        "environment": environment(args.num_threads),
        "synthesizer": _display_path(synthesizer_path),
        "body_sha256": tensors_fingerprint(synthesizer.body_tensors()),
        "data": data_label,
        "quick": bool(args.quick),
        "wall_seconds": time.time() - started,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=_json_default), encoding="utf-8")
    plots = write_plots(results, out)
    (out / "results.md").write_text(render_markdown(results, plots), encoding="utf-8")
    if args.report:
        report = Path(args.report)
        report.parent.mkdir(parents=True, exist_ok=True)
        relative = {k: os.path.relpath(out / v, report.parent) for k, v in plots.items()}
        report.write_text(render_markdown(results, relative), encoding="utf-8")
    return results


def _display_path(path: str) -> str:
    """A local checkpoint inside the working directory as a relative path (reports are committed; no machine paths)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    results = run(args, argv if argv is not None else sys.argv[1:])
    print(f"Wrote {Path(args.out) / 'results.json'} and results.md ({results['run']['wall_seconds']:.0f} s).")
    return 0
