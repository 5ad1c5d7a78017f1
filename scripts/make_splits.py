#!/usr/bin/env python
"""Generate the meta-learning splits file ``sgps_hf/data/configs/splits.yaml``.

Deterministic: the same seed, data directory and held-out tasks always give byte-identical output.

    python scripts/make_splits.py --seed 0                 # rewrite the packaged splits.yaml
    python scripts/make_splits.py --seed 0 --output -      # print instead
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sgps_hf.data.registry import list_tasks
from sgps_hf.data.splits import DEFAULT_HELD_OUT_TASKS, default_splits_path, make_splits


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0, help="seed of the class split (default 0)")
    parser.add_argument(
        "--data-dir", default=None, help="folder of task folders (default: SGPS_DATA_DIR or ../shared/data)"
    )
    parser.add_argument(
        "--output", default=None, help="where to write the YAML; '-' for stdout (default: the packaged splits.yaml)"
    )
    parser.add_argument(
        "--held-out",
        nargs="+",
        default=list(DEFAULT_HELD_OUT_TASKS),
        metavar="TASK",
        help="whole tasks to hold out (default: one per family)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    splits = make_splits(list_tasks(args.data_dir), seed=args.seed, held_out_tasks=args.held_out)
    text = splits.to_yaml()
    if args.output == "-":
        sys.stdout.write(text)
        return 0
    output = Path(args.output) if args.output else default_splits_path()
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8")
    n_train = sum(map(len, splits.meta_train.values()))
    n_val = sum(map(len, splits.meta_val.values()))
    print(
        f"wrote {output}: {len(splits.held_out_tasks)} held-out tasks, "
        f"{n_train} meta_train and {n_val} meta_val classes"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
