"""Train an SGPS synthesizer: adapt its body (Accelerate), freeze it, fit its head on meta-val. Same as `sgps train`.

accelerate launch scripts/train.py --config scripts/configs/default.yaml [--resume] [--pretrain-epochs N ...]
"""

from sgps_hf.training import main

if __name__ == "__main__":
    main()
