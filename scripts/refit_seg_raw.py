"""Re-fit the raw pass-through of a meta-trained segmentation synthesizer, decoder untouched:
``python scripts/refit_seg_raw.py --output DIR [--checkpoint DIR] [--no-standardize] [--level-norm dim|energy]``.

The learned decoder never mixes with the raw block (they meet only in the closed-form 1x1 head), so the raw block's
standardisation / principal axes can be re-fitted after meta-training without changing what the decoder computes.
The fit is the one of meta-training (``fit_raw_in_loop``: the ``passthrough`` keys of the training config, 48 images
per meta-train binary task, seed 0, float16 features as in the training run); with the defaults it reproduces the
bundled checkpoint's raw buffers. Research tool for the raw-block variants of benchmarks/seg_notes.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from sgps_hf import DEFAULT_SEG_CHECKPOINT, SGPSSegSynthesizer
from sgps_hf.data.segmentation import load_seg_dataset, seg_splits, task_arrays
from sgps_hf.training.seg_meta_train import FeatureBank, fit_raw_in_loop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", default=DEFAULT_SEG_CHECKPOINT)
    parser.add_argument("--output", required=True)
    parser.add_argument(
        "--no-standardize", action="store_true", help="one scale per stage instead of per-channel standardisation"
    )
    parser.add_argument("--level-norm", choices=["dim", "energy"], default="dim")
    parser.add_argument("--num-threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.num_threads)
    model = SGPSSegSynthesizer.from_pretrained(args.checkpoint).eval()
    training = (
        json.loads((Path(args.checkpoint) / "training.json").read_text())
        if (Path(args.checkpoint) / "training.json").is_file()
        else {}
    )
    spec = dict(training.get("config", {}).get("passthrough", {}))
    spec.update(standardize=not args.no_standardize, level_norm=args.level_norm)
    names = seg_splits()["meta_train"]
    bank = FeatureBank(model, task_arrays(load_seg_dataset(tasks=names), names), mirrored=False)
    fit_raw_in_loop(model, bank, spec)
    model.save_pretrained(args.output)
    # keep the meta-training record beside the weights, with the re-fit noted (the decoder is that run's)
    training["raw_refit"] = {**spec, "script": "scripts/refit_seg_raw.py"}
    (Path(args.output) / "training.json").write_text(json.dumps(training, indent=2))
    print(f"raw pass-through re-fitted with {spec}; saved to {args.output}")


if __name__ == "__main__":
    main()
