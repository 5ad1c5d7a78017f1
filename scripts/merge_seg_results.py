"""Carry methods over from an earlier run of evaluate_seg.py into benchmarks/seg_results_<split>.json:
``python scripts/merge_seg_results.py held_out EARLIER.json finetune-imagenet [finetune:finetune-previous-64ch ...]``.

Only for methods that do not depend on the synthesizer checkpoint (e.g. ``finetune-imagenet``: ImageNet body plus a
fresh decoder, seeded) and only when the earlier run used the same tasks, seed, queries and K; its episodes are the
first ``episodes_per_task_and_k`` of this run's (SegEpisodeSampler.fixed is prefix-stable). A method that did depend
on the earlier checkpoint must be renamed (``SRC:DST``, e.g. ``finetune:finetune-previous-64ch``). Recorded under
``protocol.carried_over`` (one record per merged run)."""

import argparse
import json
import sys
from pathlib import Path

B = Path(__file__).resolve().parents[1] / "benchmarks"
parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("split", help="held_out, meta_val or meta_train: merges into benchmarks/seg_results_<split>.json")
parser.add_argument("earlier_file", help="the earlier run's results JSON")
parser.add_argument("methods", nargs="*", help="methods to carry over, METHOD or SRC:DST")
args = parser.parse_args()
split, earlier_file, methods = args.split, args.earlier_file, args.methods
main = json.loads((B / f"seg_results_{split}.json").read_text())
earlier = json.loads(Path(earlier_file).read_text())
for key in ("tasks", "seed", "queries_per_episode", "ks"):
    assert main["protocol"][key] == earlier["protocol"][key], (key, main["protocol"][key], earlier["protocol"][key])
for spec in methods:
    m, _, dst = spec.partition(":")
    dst = dst or m
    assert dst not in ("synthesizer", "synthesizer-prototype", "synthesizer-ridge", "finetune"), (
        f"{m} depends on the checkpoint: rename it"
    )
    for t in main["per_task"]:
        main["per_task"][t][dst] = {
            k: {**v, "episodes": v.get("episodes", earlier["protocol"]["episodes_per_task_and_k"])}
            for k, v in earlier["per_task"][t][m].items()
        }
    main["summary"][dst] = earlier["summary"][m]
    if m in earlier.get("timing_s", {}):
        main["timing_s"][dst] = earlier["timing_s"][m]
record = {
    "methods": [m.partition(":")[2] or m for m in methods],
    "episodes_per_task_and_k": earlier["protocol"]["episodes_per_task_and_k"],
    "from": {
        k: earlier["protocol"][k] for k in ("checkpoint", "finetune_imagenet_steps", "finetune_imagenet_lr", "wall_s")
    },
}
# several merges (from different earlier runs) keep one record each
previous = main["protocol"].get("carried_over")
records = [] if previous is None else (previous if isinstance(previous, list) else [previous])
main["protocol"]["carried_over"] = [r for r in records if not set(r["methods"]) & set(record["methods"])] + [record]
# paired differences against carried-over methods that kept their per-episode Dice (same episodes, prefix-stable)
sys.path.insert(0, str(B.parent))
from sgps_hf.evaluation.segmentation import paired_difference  # noqa: E402

for spec in methods:
    dst = spec.partition(":")[2] or spec
    per = main["per_task"]
    if "synthesizer" in next(iter(per.values())) and all(
        "episode_dice" in per[t][dst][str(k)] for t in per for k in main["protocol"]["ks"]
    ):
        main.setdefault("paired", {})[f"synthesizer - {dst}"] = {
            str(k): paired_difference(per, "synthesizer", dst, k) for k in main["protocol"]["ks"]
        }
(B / f"seg_results_{split}.json").write_text(json.dumps(main, indent=2))
print("carried over", methods)
