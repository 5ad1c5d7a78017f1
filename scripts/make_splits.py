#!/usr/bin/env python
"""Generate the meta-learning splits file ``sgps_hf/data/configs/splits.yaml``.

Deterministic: the same data directory and task lists always give byte-identical output.

    python scripts/make_splits.py                 # rewrite the packaged splits.yaml
    python scripts/make_splits.py --output -      # print instead
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sgps_hf.data.registry import list_tasks
from sgps_hf.data.splits import DEFAULT_HELD_OUT_TASKS, DEFAULT_META_VAL_TASKS, default_splits_path, make_splits


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
        help="whole tasks to hold out for the reported results (default: DEFAULT_HELD_OUT_TASKS)",
    )
    parser.add_argument(
        "--meta-val",
        nargs="+",
        default=list(DEFAULT_META_VAL_TASKS),
        metavar="TASK",
        help="whole tasks for model selection (default: DEFAULT_META_VAL_TASKS)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    splits = make_splits(list_tasks(args.data_dir), held_out_tasks=args.held_out, meta_val_tasks=args.meta_val)
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
        f"wrote {output}: {len(splits.held_out_tasks)} held-out tasks, {len(splits.meta_val_tasks)} meta-val tasks "
        f"({n_val} classes), {n_train} meta_train classes"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
