"""Few-shot benchmark of a synthesizer against trained and tuned baselines. Same as `sgps evaluate`.

    python scripts/run_benchmark.py --split held_out --out benchmarks/results --report benchmarks/RESULTS.md
    python scripts/run_benchmark.py --data-dir my_task/ --descriptions texts.json --ways 5 --shots 0 1 5 \
        --episodes 600 --out results/

See sgps_hf/cli/evaluate.py for every option and benchmarks/RESULTS.md for the protocol.
"""

from sgps_hf.cli.evaluate import main

if __name__ == "__main__":
    raise SystemExit(main())
