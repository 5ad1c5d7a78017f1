"""Conformal coverage / set size on the held-out tasks and the PAD-UFES-20 subgroup audit (benchmarks/trust.md).

OMP_NUM_THREADS=1 python scripts/trust_benchmark.py --out benchmarks/trust --report benchmarks/trust.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--synthesizer", default=None, help="checkpoint (default: the bundled DEFAULT_CHECKPOINT)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--tasks", nargs="+", default=None, help="default: the held-out tasks of the splits file")
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--splits", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/trust")
    parser.add_argument("--report", default="benchmarks/trust.md")
    args = parser.parse_args(argv)

    import torch

    from sgps_hf import DEFAULT_CHECKPOINT, SGPSProcessor, SGPSSynthesizer
    from sgps_hf.data.splits import load_splits
    from sgps_hf.evaluation.trust_benchmark import render_markdown, run_trust_benchmark

    torch.set_num_threads(args.threads)
    checkpoint = args.synthesizer or DEFAULT_CHECKPOINT
    synthesizer = SGPSSynthesizer.from_pretrained(checkpoint)
    processor = SGPSProcessor.from_pretrained(checkpoint)
    tasks = args.tasks or load_splits().held_out_tasks
    results = run_trust_benchmark(
        synthesizer,
        processor,
        tasks,
        shots=args.shots,
        draws=args.draws,
        splits=args.splits,
        seed=args.seed,
        data_dir=args.data_dir,
    )
    command = "python scripts/trust_benchmark.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    environment = (
        f"{platform.platform()}, Python {platform.python_version()}, torch {torch.__version__}, "
        f"{os.cpu_count()} CPUs, {args.threads} torch thread(s)"
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results["run"] = {"command": command, "environment": environment}
    (out / "results.json").write_text(json.dumps(results, indent=2), encoding="utf-8")
    Path(args.report).write_text(render_markdown(results, command, environment), encoding="utf-8")
    print(f"Wrote {out / 'results.json'} and {args.report} ({results['wall_seconds']:.0f} s).")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
