"""Meta-train the segmentation synthesizer: ``python scripts/train_seg.py --config scripts/configs/seg_default.yaml [--resume] [key=value ...]``."""

import argparse
import json

from sgps_hf.training.seg_meta_train import SegTrainingConfig, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="scripts/configs/seg_default.yaml")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint of output_dir")
    parser.add_argument(
        "overrides", nargs="*", help="config overrides as key=value (e.g. steps=200 output_dir=runs/x)"
    )
    args = parser.parse_args()
    state = train(SegTrainingConfig.from_file(args.config, args.overrides), resume=args.resume)
    print(json.dumps(state))


if __name__ == "__main__":
    main()
