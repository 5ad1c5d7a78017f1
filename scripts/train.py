"""Meta-train an SGPS synthesizer (Accelerate). Same as `sgps train`.

accelerate launch scripts/train.py --config configs/default.yaml [--resume] [--steps N ...]
"""

from sgps_hf.training import main

if __name__ == "__main__":
    main()
