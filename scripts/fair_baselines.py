#!/usr/bin/env python
"""The fair comparison on its own: chosen rows of the main table (SGPS's modes, baselines, the baselines with SGPS's
support views and task-adaptive BatchNorm) rerun on the seeded episodes of a previous full benchmark run, beside that
run's other rows.

The full benchmark (`scripts/run_benchmark.py`) runs every baseline both ways; on 2 CPU cores that is several hours.
This script runs only the methods it is told to (tuned on the same meta-val episodes as the full run), on the same
episodes (same split, seed, ways, queries and episode count), and writes the headline table of
`sgps_hf.evaluation.report.headline` against the previous run's results.json. Rows it reuses are valid only on the
same body: the script refuses to reuse them unless the synthesizer given here has the previous run's body tensors
bit for bit (``--previous-synthesizer`` names the previous run's synthesizer when it has been replaced since).
With ``--new-body`` (a synthesizer whose body changed) it reuses none of them, only the previous run's protocol
(episodes, seeds, tuning grids): the headline then compares the rows run here.

    python scripts/fair_baselines.py --previous benchmarks/results/results.json --out benchmarks/fair_baselines.md
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from sgps_hf import SGPSSynthesizer
from sgps_hf.body.timm_network import tensors_fingerprint
from sgps_hf.data.episodes import build_pools
from sgps_hf.evaluation.criteria import main_table
from sgps_hf.evaluation.protocol import (
    BASELINES,
    SGPS_FULL,
    SGPS_IMAGE,
    SGPS_TEXT,
    BenchmarkConfig,
    Methods,
    build_methods,
    make_episodes,
    max_feasible_shot,
    tune,
    with_views,
)
from sgps_hf.evaluation.report import HEADLINE_COLUMNS, _fmt, _table, headline
from sgps_hf.hub.checkpoints import DEFAULT_CHECKPOINT
from sgps_hf.training.config import TrainingConfig
from sgps_hf.training.episode_inputs import TextBank
from sgps_hf.training.pools import split_meta_val


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--previous", default="benchmarks/results/results.json", help="results.json of the full run")
    parser.add_argument("--synthesizer", default=str(DEFAULT_CHECKPOINT))
    parser.add_argument(
        "--methods",
        nargs="+",
        default=["ProtoNet", "Nearest neighbour", "Fine-tune head (linear probe)"],
        choices=[*BASELINES, SGPS_FULL, SGPS_IMAGE, SGPS_TEXT],
        help="methods to rerun: SGPS modes as named, baselines with SGPS's views (default: the three baselines that "
        "share one body pass per episode)",
    )
    parser.add_argument(
        "--previous-synthesizer",
        default=None,
        help="the previous run's synthesizer, to check the body is the same (default: the body fingerprint its "
        "results.json records, else the synthesizer path it records)",
    )
    parser.add_argument(
        "--new-body",
        action="store_true",
        help="the synthesizer's body differs from the previous run's: reuse none of its rows, only its protocol",
    )
    parser.add_argument("--episodes", type=int, default=None, help="default: the previous run's episodes per shot")
    parser.add_argument("--tune-episodes", type=int, default=None, help="default: the previous run's")
    parser.add_argument("--out", default="benchmarks/fair_baselines.md")
    parser.add_argument("--num-threads", type=int, default=2)
    return parser.parse_args(argv)


def check_same_body(previous: dict, synthesizer: SGPSSynthesizer, previous_synthesizer: str | None) -> None:
    """Refuse to mix rows of two bodies: every baseline row depends on the body tensors (a view row names its task
    BatchNorm in its name, so it stays true whatever SGPS's own setting is). The previous run's body is its recorded
    fingerprint; for a run that recorded none, ``previous_synthesizer`` or the path it recorded (whose checkpoint may
    have been replaced since: name the old one with --previous-synthesizer)."""
    recorded = previous["run"].get("body_sha256")
    if recorded is None or previous_synthesizer is not None:
        path = previous_synthesizer or previous["run"]["synthesizer"]
        recorded = tensors_fingerprint(SGPSSynthesizer.from_pretrained(path).body_tensors())
    if recorded != tensors_fingerprint(synthesizer.body_tensors()):
        raise SystemExit(
            "The synthesizer's body differs from the previous run's: its rows cannot be reused. Pass --new-body to "
            "rerun every compared row on this body, or run the full benchmark (scripts/run_benchmark.py)."
        )


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.num_threads)
    started = time.time()
    previous = json.loads(Path(args.previous).read_text(encoding="utf-8"))
    cfg = previous["config"]
    fields = ("ways", "queries", "seed", "probe_lrs", "finetune_lrs", "nn_metrics", "finetune_steps")
    bench = BenchmarkConfig(
        **{k: tuple(cfg[k]) if isinstance(cfg[k], list) else cfg[k] for k in fields},
        episodes=args.episodes or cfg["episodes"],
        tune_episodes=args.tune_episodes or cfg["tune_episodes"],
        focus_shot=cfg["focus_shot_used"],
    )
    synthesizer = SGPSSynthesizer.from_pretrained(args.synthesizer).eval()
    if not args.new_body:
        check_same_body(previous, synthesizer, args.previous_synthesizer)
    size = synthesizer.config.image_size
    # Tuned on the meta-val tasks the synthesizer was calibrated on, as the full benchmark tunes them.
    config = TrainingConfig.saved_or_default(Path(args.synthesizer) / "training_config.json")
    eval_pools, (_, val_pools) = build_pools("held_out", size), split_meta_val(build_pools("meta_val", size), config)
    texts = TextBank(synthesizer.config, [p.text for p in eval_pools + val_pools])
    everything = build_methods(synthesizer, texts, bench)
    with_tbn = synthesizer.config.task_batchnorm_images is not None
    names = [name if name.startswith("SGPS") else with_views(name, with_tbn) for name in args.methods]
    methods = Methods({name: everything.methods[name] for name in names}, everything.training)
    val_shot = min(bench.focus_shot, max_feasible_shot(val_pools))
    val_episodes = make_episodes(val_pools, bench.ways, val_shot, bench.queries, bench.tune_episodes, bench.seed + 1)
    tune(methods, val_episodes, bench)
    shots = [int(s) for s in cfg["shots_used"] if int(s) > 0 or SGPS_TEXT in names]
    subset = bench.episodes < cfg["episodes"]
    table, runs = main_table(methods, eval_pools, bench, shots)
    main = table if args.new_body else {**previous["main"], **table}
    rows = []
    for name, by_shot in table.items():
        for shot, r in by_shot.items():
            rows.append([name, shot, _fmt(r["accuracy"]), _fmt(r["macro_f1"]), _fmt(r["ece"]), f"{r['episodes']}"])
    heads = []
    for row in headline(main):
        cells = [row["shot"], _fmt(row["sgps"])]
        for kind in ("plain", "views", "best"):
            entry = row.get(kind)
            cells.append(
                "n/a"
                if entry is None
                else f"{entry['method']} {_fmt(entry['accuracy'])} ({entry['margin'] * 100:+.1f})"
            )
        heads.append(cells)
    lines = [
        "# The fair comparison: baselines with SGPS's support views and task-adaptive BatchNorm",
        "",
        f"Command: `python scripts/fair_baselines.py --previous {args.previous}"
        + (" --new-body" if args.new_body else "")
        + f" --episodes {bench.episodes} --methods "
        + " ".join(f"'{m}'" for m in args.methods)
        + f" --out {args.out}`",
        "",
        f"Synthesizer `{Path(args.synthesizer).name}`; held-out split; seed {bench.seed}, {bench.ways}-way, "
        f"{bench.queries} queries per class: the seeded episodes of the previous full run (`{args.previous}`), "
        + (
            "whose rows are not reused (a new body: every row below ran here)"
            if args.new_body
            else f"whose SGPS and published-baseline rows ({cfg['episodes']} episodes per shot) are reused"
        )
        + f"; the new rows ran on the first {bench.episodes} of them"
        + (" (a subset: their means carry the subset's sampling noise beside the full run's)" if subset else "")
        + f". The new rows' hyperparameters were tuned on {bench.tune_episodes} meta-val episodes ({val_shot}-shot) "
        f"as in the full run. {time.time() - started:.0f} s on {args.num_threads} threads.",
        "",
        "## Headline: SGPS (image + text) against the best baseline of either kind",
        "",
        *_table(HEADLINE_COLUMNS, heads),
        "",
        "## New rows",
        "",
        *_table(["method", "shots", "accuracy", "macro-F1", "ECE", "episodes"], rows),
        "",
        "Tuning on meta-val: "
        + "; ".join(f"{k}: {v}" for k, v in methods.tuning.items() if isinstance(v, dict) and "chosen" in v),
        "",
    ]
    Path(args.out).write_text("\n".join(lines), encoding="utf-8")
    # Per-episode accuracies beside the report: rows run on different episode counts compare on a common prefix.
    per_episode = {f"{name} | {shot}": [s["accuracy"] for s in run.scores] for (name, shot), run in runs.items()}
    Path(args.out).with_suffix(".json").write_text(
        json.dumps({"rows": table, "episode_accuracy": per_episode}, indent=1), encoding="utf-8"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
