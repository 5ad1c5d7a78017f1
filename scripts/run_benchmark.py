"""Few-shot benchmark of a synthesizer against trained and tuned baselines. Same as `sgps evaluate`.

    python scripts/evaluate.py --split held_out --out benchmarks/results --report benchmarks/RESULTS.md
    python scripts/evaluate.py --data-dir my_task/ --descriptions texts.json --ways 5 --shots 0 1 5 --episodes 600 --out results/

See sgps_hf/evaluation/runner.py for every option and benchmarks/RESULTS.md for the protocol.
"""

import sys
from pathlib import Path

# Python puts this script's folder first on sys.path, where this file would shadow the `evaluate` library.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

from sgps_hf.cli.evaluate import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
