"""Meta-train the segmentation synthesizer and run its post-hoc steps (the bundled checkpoint's command):
``python scripts/train_seg.py --config scripts/configs/seg_default.yaml [--resume] [--<key> value ...]``.

The flags are the fields of ``SegTrainingConfig`` (``--steps 200 --output-dir runs/x --model '{"hidden_size": 32}'``),
read by the config loader the classification training uses (``sgps_hf.training.config``).
"""

import argparse
import json

from sgps_hf.training.config import add_arguments, config_from_args
from sgps_hf.training.seg_meta_train import SegTrainingConfig, train_seg


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, SegTrainingConfig)
    parser.set_defaults(config="scripts/configs/seg_default.yaml")
    args = parser.parse_args(argv)
    state = train_seg(config_from_args(args, SegTrainingConfig), resume=args.resume)
    print(json.dumps(state))


if __name__ == "__main__":
    main()
