"""Merge follow-up runs of evaluate_seg.py into benchmarks/seg_results_<split>.json: `python scripts/merge_seg_results.py held_out extra1.json ...`.

The main run's `synthesizer` (then the ridge head at every K) becomes `synthesizer-ridge` and its all-level PANet `panet-imagenet-all-levels`;
the follow-up runs add the bundled synthesizer (prototype head for K <= 2) and PANet on the meta-val-chosen levels, and must reproduce
`synthesizer-ridge` bit for bit on the same episodes (asserted)."""
import json, sys
from pathlib import Path
B = Path(__file__).resolve().parents[1] / "benchmarks"
split, extra_files = sys.argv[1], sys.argv[2:]
main = json.loads((B / f"seg_results_{split}.json").read_text())
renames = {"synthesizer": "synthesizer-ridge", "panet-imagenet": "panet-imagenet-all-levels"}
def rename(d):
    return {renames.get(k, k): v for k, v in d.items()}
for t in main["per_task"]:
    main["per_task"][t] = rename(main["per_task"][t])
main["summary"] = rename(main["summary"])
main["timing_s"] = rename(main.get("timing_s", {}))
notes = []
for f in extra_files:
    extra = json.loads(Path(f).read_text())
    for t, by in extra["per_task"].items():
        for m, v in by.items():
            if m == "synthesizer-ridge" and "synthesizer-ridge" in main["per_task"][t]:
                old = main["per_task"][t]["synthesizer-ridge"]
                assert all(abs(old[k]["dice"] - v[k]["dice"]) < 1e-9 for k in v), (t, old, v)  # same episodes, same bits
                continue
            main["per_task"][t][m] = v
    for m, v in extra["summary"].items():
        main["summary"].setdefault(m, v) if m == "synthesizer-ridge" else main["summary"].__setitem__(m, v)
    for m, v in extra.get("timing_s", {}).items():
        main["timing_s"].setdefault(m, v)
    notes.append(extra["protocol"])
main["protocol"]["follow_up_runs"] = notes
(B / f"seg_results_{split}.json").write_text(json.dumps(main, indent=2))
print(json.dumps(main["summary"], indent=0)[:3000])
