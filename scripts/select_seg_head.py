"""Choose the K-dependent prototype weight of the blended head on the selection tasks (never the held-out ones).

``python scripts/select_seg_head.py [--checkpoint DIR] [--write]``

The post-hoc step ``prototype_mix_selection`` of the training config
(``sgps_hf.training.seg_calibration.select_prototype_mix``, whose docstring gives the rule), on its own. ``--write``
stores the choice as ``prototype_mix`` in the checkpoint's config (the weights are unchanged: the head is computed at
synthesis time); ``--write --from-json FILE`` writes the choice recorded in an earlier run's JSON without re-running.
``--meta-train-features all --output benchmarks/seg_head_selection_all_features.json`` is the variant with the learned
channels kept on the meta-train tasks. About 5 minutes on 1 CPU thread.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from sgps_hf import DEFAULT_SEG_CHECKPOINT, SGPSSegSynthesizer
from sgps_hf.hub.atomic import atomic_write_text
from sgps_hf.training.seg_calibration import (
    MIX_SELECTION_DEFAULTS,
    raw_fit_record,
    select_prototype_mix,
    write_prototype_mix,
)


def main(argv=None) -> None:
    defaults = MIX_SELECTION_DEFAULTS
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=DEFAULT_SEG_CHECKPOINT)
    parser.add_argument("--episodes", type=int, default=defaults["episodes"])
    parser.add_argument("--ks", type=int, nargs="+", default=defaults["ks"])
    parser.add_argument("--grid", type=float, nargs="+", default=defaults["grid"])
    parser.add_argument("--seed", type=int, default=defaults["seed"])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--output", default="benchmarks/seg_head_selection.json")
    parser.add_argument("--num-threads", type=int, default=1)
    parser.add_argument(
        "--meta-train-features",
        choices=["raw", "all"],
        default=defaults["meta_train_features"],
        help="features of the meta-train tasks: learned channels zeroed (raw) or all",
    )
    parser.add_argument("--write", action="store_true", help="store the chosen prototype_mix in the checkpoint")
    parser.add_argument("--from-json", default=None, help="with --write: the choice of an earlier run's JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.num_threads)
    if args.from_json:
        result = json.loads(Path(args.from_json).read_text())
    else:
        model = SGPSSegSynthesizer.from_pretrained(args.checkpoint)
        options = {"episodes": args.episodes, "ks": args.ks, "grid": args.grid, "seed": args.seed}
        result = select_prototype_mix(
            model,
            args.data_dir,
            log=lambda line: print(line, flush=True),
            meta_train_features=args.meta_train_features,
            **options,
        )
        result["checkpoint"] = args.checkpoint
        result["raw_fit"] = raw_fit_record(args.checkpoint)
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.output, json.dumps(result, indent=2))
    print("chosen prototype weight per K:", result["chosen"], "-> prototype_mix", result["prototype_mix"])
    gain = result["leave_one_task_out_gain_over_ridge"]
    print("leave-one-task-out gain over ridge:", {k: round(v, 4) for k, v in gain.items()})
    if args.write:
        write_prototype_mix(args.checkpoint, result["prototype_mix"])
        print(f"wrote prototype_mix into {args.checkpoint}/config.json")


if __name__ == "__main__":
    main()
