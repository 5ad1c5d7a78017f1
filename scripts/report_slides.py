"""Markdown tables of the slide benchmark JSONs (scripts/slide_benchmark.py): per shots, mean over episodes.

python scripts/report_slides.py benchmarks/slide_fewshot_heldout*.json --rule topk_mean@0.25
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def table(paths: list[str], rule: str | None) -> str:
    """One table over the episodes of all ``paths`` (runs of the same configuration with different episodes)."""
    episodes = [e for path in paths for e in json.load(open(path))["episodes"]]
    shots = sorted({int(s) for e in episodes for s in e["shots"]})
    rules = list(episodes[0]["shots"][str(shots[0])]["sgps"])
    shown = [rule] if rule else rules
    head = [
        "slides per class",
        *[f"SGPS {r}" for r in shown],
        "nearest centroid (tile votes)",
        "linear probe (mean tile features)",
    ]
    head += ["synthesis s", "predict_slide s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k in shots:
        cells = [e["shots"][str(k)] for e in episodes if str(k) in e["shots"]]
        row = [
            f"{k} ({len(cells)} episodes, {sum(e['query_slides'] for e in episodes if str(k) in e['shots'])} slides)"
        ]
        row += [f"{np.mean([c['sgps'][r] for c in cells]):.3f}" for r in shown]
        row += [
            f"{np.mean([c[key] for c in cells]):.3f}"
            for key in ("nearest_centroid_vote", "linear_probe_mean_features")
        ]
        row += [f"{np.mean([c[key] for c in cells]):.0f}" for key in ("synthesis_seconds",)]
        row += [f"{np.mean([c[key] for c in cells]):.1f}" for key in ("predict_slide_seconds",)]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--rule", default=None, help="show only this SGPS rule (default: all)")
    args = parser.parse_args()
    print(f"**{', '.join(args.files)}**\n\n{table(args.files, args.rule)}\n")
