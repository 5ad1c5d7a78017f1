"""Write ``benchmarks/SEGMENTATION.md`` and ``benchmarks/seg_data_efficiency.png`` from the JSON results of
``scripts/evaluate_seg.py`` (held_out, meta_val, meta_train); ``benchmarks/seg_notes.md`` is inserted as the
assessment."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
ORDER = [
    "synthesizer",
    "synthesizer-prototype",
    "synthesizer-ridge",
    "synthesizer-blend-std-raw",
    "synthesizer-previous-bundled",
    "synthesizer-posthoc-previous",
    "panet-imagenet",
    "panet-imagenet-all-levels",
    "finetune",
    "finetune-ridge-init",
    "finetune-previous-64ch",
    "finetune-imagenet",
    "mean-mask",
]
DESCRIBE = {
    "synthesizer": (
        "**SGPS-Seg, the bundled synthesizer**: decoder meta-trained with the raw encoder pass-through in the loop "
        "(learned + raw channels), raw block re-fitted post hoc (one scale per stage, each stage at unit mean pixel "
        "energy, as PANet weighs its levels); blended closed-form head, the ridge and prototype margins mixed with "
        "prototype weight 0.5 / 0.4 / 0.2 / 0.2 at K = 1 / 2 / 5 / 8 (`prototype_mix`; raw fit and weights chosen "
        "post hoc on the meta-val and meta-train tasks, see below): one forward pass, no gradient"
    ),
    "synthesizer-blend-std-raw": (
        "the first candidate of this round: the meta-training raw block (standardised channels, 1/sqrt(dim) per "
        "stage) with its own blend weights 0.1 / 0.2 / 0.1 / 0.1; carried over from its single held-out run (same "
        "episodes)"
    ),
    "synthesizer-previous-bundled": (
        "the previous bundled synthesizer (the same decoder, the meta-training raw block, ridge head at every K): "
        "carried over from this round's first held-out run (same episodes)"
    ),
    "synthesizer-posthoc-previous": (
        "the previous bundled synthesizer (decoder meta-trained without the raw block, raw pass-through added post "
        "hoc, ridge at every K): carried over from the previous run on the same episodes"
    ),
    "synthesizer-prototype": "the same features + prototype (PANet distance rule) head: ablation",
    "synthesizer-ridge": (
        "the same features + ridge head at every K (the previous bundled synthesizer's head, on the re-fitted raw "
        "block)"
    ),
    "panet-imagenet": (
        "PANet-style cosine prototypes on the frozen ImageNet Lite0 body, no meta-training; feature stages 0+1 "
        "(stride 4 and 8), the levels chosen on meta-val"
    ),
    "panet-imagenet-all-levels": (
        "the same PANet rule on all four stages (0-3) of the body (runner-up on meta-val by 0.002; the stronger "
        "PANet on the held-out tasks)"
    ),
    "finetune": (
        "fine-tune the bundled synthesized network's learned decoder + its whole (learned + raw) 1x1 classifier on "
        "the examples, starting from the synthesized (blended-head) weights (20 Adam steps, lr 1e-3, examples + "
        "mirrors; raw block fixed)"
    ),
    "finetune-ridge-init": (
        "the same fine-tuning started from the previous bundled synthesizer's ridge-head weights (the previous "
        "round's `finetune`): carried over, 8 episodes"
    ),
    "finetune-previous-64ch": (
        "fine-tuning the *previous* bundled synthesized network (64 learned channels, no raw block; 20 Adam steps, "
        "lr 1e-3): carried over from the earlier run, 8 episodes (for comparison with `finetune` on the new network)"
    ),
    "finetune-imagenet": (
        "fine-tune the same UperNet from ImageNet body + fresh decoder (40 Adam steps, lr 3e-3, examples + mirrors)"
    ),
    "mean-mask": "mean of the example masks, thresholded at 0.5",
}


def load(split: str) -> dict | None:
    path = BENCH / f"seg_results_{split}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def carried_methods(protocol: dict) -> list[str]:
    records = protocol.get("carried_over") or []
    return [m for r in (records if isinstance(records, list) else [records]) for m in r["methods"]]


def methods_of(result: dict) -> list[str]:
    present = list(result["summary"])
    return [m for m in ORDER if m in present] + [m for m in present if m not in ORDER]


def table(result: dict, metric: str = "dice") -> list[str]:
    ks = result["protocol"]["ks"]
    lines = [
        "| method | episodes / task / K | " + " | ".join(f"K={k}" for k in ks) + " |",
        "|---|---|" + "---|" * len(ks),
    ]
    best = {str(k): max(result["summary"][m][str(k)][metric] for m in result["summary"]) for k in ks}
    for m in methods_of(result):
        cells = []
        for k in ks:
            cell = result["summary"][m][str(k)]
            v = cell[metric]
            text = f"**{v:.3f}**" if abs(v - best[str(k)]) < 1e-9 else f"{v:.3f}"
            if metric == "dice" and "dice_ci" in cell:
                text += f" [{cell['dice_ci'][0]:.3f}, {cell['dice_ci'][1]:.3f}]"
            cells.append(text)
        n = {
            per[m][str(k)].get("episodes", result["protocol"]["episodes_per_task_and_k"])
            for per in result["per_task"].values()
            for k in ks
        }
        lines.append(f"| {m} | {'/'.join(map(str, sorted(n)))} | " + " | ".join(cells) + " |")
    return lines


def paired(result: dict) -> list[str]:
    ks = result["protocol"]["ks"]
    lines = ["| difference (same episodes) | " + " | ".join(f"K={k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
    for name, by_k in result.get("paired", {}).items():
        if all(
            abs(by_k[str(k)]["diff"]) < 1e-12 for k in ks
        ):  # a method identical to the synthesizer (e.g. its own head forced)
            continue
        lines.append(
            f"| {name} | "
            + " | ".join(
                f"{by_k[str(k)]['diff']:+.3f} [{by_k[str(k)]['ci'][0]:+.3f}, {by_k[str(k)]['ci'][1]:+.3f}]" for k in ks
            )
            + " |"
        )
    return lines


def head_selection() -> list[str]:
    """The blended head's prototype weight per K on the selection tasks (``scripts/select_seg_head.py``)."""
    path = BENCH / "seg_head_selection.json"
    if not path.is_file():
        return []
    r = json.loads(path.read_text())
    ks = list(r["chosen"])
    learned = (
        "zeroed (they were meta-trained on those masks)" if r.get("meta_train_features", "raw") == "raw" else "kept"
    )
    lines = [
        "## Blended head: selection of the prototype weight (meta-val + meta-train tasks only)",
        "",
        "`python scripts/select_seg_head.py --write` (`benchmarks/seg_head_selection.json`): "
        f"{r['episodes_per_binary_task_and_k']} episodes per binary task and K (seed {r['seed']}, 8 queries), tasks "
        f"{', '.join(r['selection_tasks'])} (meta-val: {', '.join(r['meta_val'])}); binary tasks averaged within "
        f"their task, then the {len(r['selection_tasks'])} tasks equally. On the meta-train tasks the learned "
        f"channels are {learned}. Mean Dice by prototype weight (0 = ridge, 1 = prototype):",
        "",
        "| K | " + " | ".join(str(m) for m in r["grid"]) + " | chosen | leave-one-task-out gain over ridge |",
        "|---|" + "---|" * (len(r["grid"]) + 2),
    ]
    for k in ks:
        row = r["mean_over_tasks"][k]
        lines.append(
            f"| {k} | "
            + " | ".join(f"{row[str(m)]:.3f}" for m in r["grid"])
            + f" | {r['chosen'][k]} | {r['leave_one_task_out_gain_over_ridge'][k]:+.4f} |"
        )
    lines += [
        "",
        f"Stored `prototype_mix` (K = 1..{len(r['prototype_mix'])}, linear between evaluated K): "
        f"{r['prototype_mix']}.",
        "",
    ]
    return lines + raw_variants()


def raw_variants() -> list[str]:
    """Raw-block fits compared on the selection tasks, each with its own chosen prototype weights."""
    files = sorted(f for f in BENCH.glob("seg_head_selection_raw_*.json") if not f.stem.endswith("all_features"))
    if not files:
        return []
    lines = [
        "Raw-block fits of the same decoder (`scripts/refit_seg_raw.py`), each with its own prototype weights chosen "
        "by the rule above; six-task mean Dice at the chosen weights (ridge alone in brackets). The fit with the "
        "highest mean over K is bundled:",
        "",
        "| standardise channels | stage scale | chosen weights K=1/2/5/8 | "
        + " | ".join(f"K={k}" for k in (1, 2, 5, 8))
        + " | mean |",
        "|---|---|---|" + "---|" * 5,
    ]
    for f in files:
        r = json.loads(f.read_text())
        ks = list(r["chosen"])
        at = [r["mean_over_tasks"][k][str(r["chosen"][k])] for k in ks]
        ridge = [r["mean_over_tasks"][k]["0.0"] for k in ks]
        fit = r.get("raw_fit", {})
        scale = "1/sqrt(kept energy)" if fit.get("level_norm") == "energy" else "1/sqrt(dim)"
        lines.append(
            f"| {'yes' if fit.get('standardize', True) else 'no (one scale per stage)'} | {scale} | "
            f"{' / '.join(str(r['chosen'][k]) for k in ks)} | "
            + " | ".join(f"{a:.3f} ({b:.3f})" for a, b in zip(at, ridge, strict=False))
            + f" | {sum(at) / len(at):.4f} |"
        )
    return lines + [""]


def per_task(result: dict) -> list[str]:
    ks = result["protocol"]["ks"]
    lines = ["| task | method | " + " | ".join(f"K={k} Dice / IoU" for k in ks) + " |", "|---|---|" + "---|" * len(ks)]
    for task, by_method in result["per_task"].items():
        for m in methods_of(result):
            cells = [f"{by_method[m][str(k)]['dice']:.3f} / {by_method[m][str(k)]['iou']:.3f}" for k in ks]
            lines.append(f"| {task} | {m} | " + " | ".join(cells) + " |")
    return lines


def plot(result: dict, target: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = result["protocol"]["ks"]
    fig, ax = plt.subplots(figsize=(8, 4))
    for m in methods_of(result):
        ax.plot(
            ks,
            [result["summary"][m][str(k)]["dice"] for k in ks],
            marker="o",
            label=m,
            linewidth=2.5 if m == "synthesizer" else 1.2,
        )
    ax.set(
        xlabel="examples K",
        ylabel="mean Dice over held-out tasks",
        title="Few-shot segmentation: data efficiency",
        xticks=ks,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    plt.close(fig)


def main() -> None:
    argparse.ArgumentParser(description=__doc__).parse_args()  # no options; --help must not rewrite the report
    held, val, train = load("held_out"), load("meta_val"), load("meta_train")
    if held is None:
        raise SystemExit("run scripts/evaluate_seg.py --split held_out first")
    p = held["protocol"]
    out = [
        "# Few-shot segmentation benchmark (sgps-hf segmentation synthesizer)",
        "",
        "Generated by `python scripts/evaluate_seg.py --split held_out|meta_val|meta_train` and `python "
        "scripts/report_seg.py`.",
        "",
        f"Protocol: whole held-out tasks {', '.join(p['tasks'])}; {p['episodes_per_task_and_k']} seeded episodes per "
        f"task and K (seed {p['seed']}; the fine-tuning baselines on the first "
        f"{p.get('finetune_episodes') or p['episodes_per_task_and_k']} of them), {p['queries_per_episode']} query "
        "images each, the same episodes for every method; Dice and IoU per query image (local `evaluate` modules "
        "`sgps_hf/metric_modules/dice|iou`), averaged over queries, then over tasks. 128 px, checkpoint "
        f"`{p['checkpoint']}`, {p['threads']} torch thread; wall {p['wall_s']:.0f} s. Brackets: 95% bootstrap "
        "interval of the task-mean Dice (episodes resampled within each task, 2000 replicates)."
        + (
            f" `{', '.join(carried_methods(p))}` are carried over from earlier runs of the same protocol, on the "
            "first n of the same episodes (n in the episodes column; `scripts/merge_seg_results.py`)."
            if p.get("carried_over")
            else ""
        ),
        "",
        "Methods:",
        *[f"- `{m}`: {DESCRIBE.get(m, m)}" for m in methods_of(held)],
        "",
    ]
    notes = BENCH / "seg_notes.md"
    if notes.is_file():
        out += [notes.read_text().strip(), ""]
    out += [
        "## Held-out tasks: mean Dice",
        "",
        *table(held),
        "",
        "Paired differences of task-mean Dice (95% bootstrap interval):",
        "",
        *paired(held),
        "",
        "## Held-out tasks: mean IoU",
        "",
        *table(held, "iou"),
        "",
        "![data efficiency](seg_data_efficiency.png)",
        "",
        "## Per held-out task",
        "",
        *per_task(held),
        "",
        *head_selection(),
    ]
    if val:
        out += ["## Meta-validation task (model selection only): mean Dice", "", *table(val), "", *paired(val), ""]
        panet = sorted(BENCH.glob("seg_results_meta_val_panet_*.json"))
        if panet:
            out += [
                "PANet feature levels on meta-val (stages of the Lite0 body, 0 = stride 4; the level choice was made "
                "in the earlier run, 8 episodes per K; this run's 24-episode numbers for the two reported variants "
                "last):",
                "",
            ]
            for f in panet:
                r = json.loads(f.read_text())
                out.append(
                    f"- levels {r['protocol']['panet_levels']} (8 episodes): "
                    + ", ".join(
                        f"K={k} {r['summary']['panet-imagenet'][str(k)]['dice']:.3f}" for k in r["protocol"]["ks"]
                    )
                )
            for key, levels in (
                ("panet-imagenet", val["protocol"]["panet_levels"]),
                ("panet-imagenet-all-levels", [0, 1, 2, 3]),
            ):
                if key in val["summary"]:
                    out.append(
                        f"- levels {levels} ({val['protocol']['episodes_per_task_and_k']} episodes): "
                        + ", ".join(f"K={k} {val['summary'][key][str(k)]['dice']:.3f}" for k in val["protocol"]["ks"])
                    )
            out.append("")
    if train:
        out += [
            "## Generalization gap (mean Dice, meta-train tasks minus held-out tasks; new episodes of the meta-train "
            "images)",
            "",
            "| method | " + " | ".join(f"K={k}" for k in p["ks"]) + " |",
            "|---|" + "---|" * len(p["ks"]),
        ]
        for m in methods_of(train):
            if m in held["summary"]:
                cells = [
                    f"{train['summary'][m][str(k)]['dice']:.3f} - {held['summary'][m][str(k)]['dice']:.3f} = "
                    f"{train['summary'][m][str(k)]['dice'] - held['summary'][m][str(k)]['dice']:+.3f}"
                    for k in p["ks"]
                ]
                out.append(f"| {m} | " + " | ".join(cells) + " |")
        out.append("")
    t = held.get("timing_s", {})
    if t:
        out += [
            "## Adaptation + inference time per episode (CPU, 1 thread, encoder features cached)",
            "",
            "| method | seconds |",
            "|---|---|",
            *[f"| {m} | {t[m]:.3f} |" for m in methods_of(held) if m in t],
            "",
        ]
    out += [
        "## Meta-training",
        "",
        "Log `benchmarks/seg_training_log.csv`, curve `benchmarks/seg_learning_curve.png`, config "
        "`scripts/configs/seg_default.yaml`.",
        "",
        "![learning curve](seg_learning_curve.png)",
        "",
    ]
    (BENCH / "SEGMENTATION.md").write_text("\n".join(out))
    plot(held, BENCH / "seg_data_efficiency.png")
    print("wrote benchmarks/SEGMENTATION.md")


if __name__ == "__main__":
    main()
