"""Re-fit the raw pass-through of a meta-trained segmentation synthesizer, decoder untouched:
``python scripts/refit_seg_raw.py --output DIR [--checkpoint DIR] [--no-standardize] [--level-norm dim|energy]``.

The post-hoc step ``raw_refit`` of the training config (``sgps_hf.training.seg_calibration.refit_raw_block``), on its
own: the fit of meta-training (48 images per meta-train binary task, seed 0, float16 features) with these settings.
Research tool for the raw-block variants of benchmarks/seg_notes.md.
"""

from __future__ import annotations

import argparse

import torch

from sgps_hf import DEFAULT_SEG_CHECKPOINT, SGPSSegSynthesizer
from sgps_hf.training.seg_calibration import meta_train_bank, refit_raw_block


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--checkpoint", default=DEFAULT_SEG_CHECKPOINT)
    parser.add_argument("--output", required=True)
    parser.add_argument(
        "--no-standardize", action="store_true", help="one scale per stage instead of per-channel standardisation"
    )
    parser.add_argument("--level-norm", choices=["dim", "energy"], default="dim")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--num-threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.num_threads)
    bank = meta_train_bank(SGPSSegSynthesizer.from_pretrained(args.checkpoint).eval(), args.data_dir)
    spec = refit_raw_block(
        args.checkpoint, args.output, {"standardize": not args.no_standardize, "level_norm": args.level_norm}, bank
    )
    print(f"raw pass-through re-fitted with {spec}; saved to {args.output}")


if __name__ == "__main__":
    main()
