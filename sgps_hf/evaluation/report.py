"""Render benchmark results (the dict of :func:`~sgps_hf.evaluation.benchmark.run_benchmark`) as Markdown and PNGs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, dict) and "mean" in value:
        ci = value.get("ci95")
        return (
            f"{_fmt(value['mean'], digits)} ± {_fmt(ci, digits)}"
            if ci is not None and not math.isnan(ci)
            else _fmt(value["mean"], digits)
        )
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def render_markdown(results: dict[str, Any], plots: dict[str, str]) -> str:
    """The results as a self-contained Markdown report (``plots``: criterion -> PNG file name)."""
    meta = results.get("run", {})
    cfg = results["config"]
    lines = ["# Few-shot benchmark: SGPS vs baselines", ""]
    if meta:
        lines += [
            f"Command: `{meta.get('command', '')}`",
            "",
            f"Environment: {meta.get('environment', '')}",
            "",
            f"Synthesizer: `{meta.get('synthesizer', '')}`; evaluation data: {meta.get('data', '')} "
            f"(tasks: {', '.join(results.get('eval_tasks', []))}); seed {cfg['seed']}.",
            "",
        ]
    lines += [
        f"{cfg['ways']}-way episodes (fewer where a task has fewer classes), {cfg['queries']} queries per class, "
        f"{cfg['episodes']} episodes per shot; every method sees the same episodes. Mean ± 95% CI over episodes; "
        "ECE over the pooled queries (15 bins). Shots larger than the data allows are clipped "
        f"(used: {', '.join(map(str, cfg['shots_used']))}). Baseline hyperparameters and temperatures were chosen on "
        "meta-val episodes only.",
        "",
    ]
    lines += _headline_section(results["main"], cfg)
    lines += ["## Main results", ""]
    rows = []
    for name, by_shot in results["main"].items():
        for shot, r in by_shot.items():
            rows.append(
                [
                    name,
                    shot,
                    _fmt(r["accuracy"]),
                    _fmt(r["macro_f1"]),
                    _fmt(r["auroc"]),
                    _fmt(r["ece"]),
                    _fmt(r["adapt_seconds"]["mean"], 4),
                ]
            )
    lines += _table(["method", "shots", "accuracy", "macro-F1", "AUROC", "ECE", "s/task to adapt"], rows) + [""]
    lines += _efficiency_section(results["data_efficiency"], plots) + _gap_section(
        results["generalization_gap"], plots
    )
    lines += _calibration_section(results["calibration"], plots) + _shift_section(results["domain_shift"], plots)
    lines += _subgroup_section(results["subgroups"]) + _speed_section(results["speed"])
    lines += _methods_section(results)
    return "\n".join(lines) + "\n"


HEADLINE_COLUMNS = ["shots", "SGPS (image + text)", "best baseline", "best baseline, SGPS views", "best of either"]


def headline(main: dict[str, Any], sgps: str = "SGPS (image + text)") -> list[dict[str, Any]]:
    """Per shot: ``sgps``'s accuracy against the best baseline as published (each support image once, the body's
    BatchNorm statistics) and the best baseline given SGPS's support views (and task BatchNorm), with the margins."""
    rows = []
    for shot, result in main.get(sgps, {}).items():
        if shot == "0":
            continue
        row: dict[str, Any] = {"shot": shot, "sgps": result["accuracy"]["mean"]}
        for kind, viewed in (("plain", False), ("views", True)):
            scores = {
                name: by_shot[shot]["accuracy"]["mean"]
                for name, by_shot in main.items()
                if not name.startswith("SGPS") and shot in by_shot and ("+ SGPS views" in name) == viewed
            }
            if scores:
                best = max(scores, key=scores.get)
                row[kind] = {"method": best, "accuracy": scores[best], "margin": row["sgps"] - scores[best]}
        candidates = [row[k] for k in ("plain", "views") if k in row]
        if candidates:
            row["best"] = max(candidates, key=lambda c: c["accuracy"])
        rows.append(row)
    return rows


def _headline_section(main: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    rows = headline(main)
    if not rows:
        return []
    cells = []
    for row in rows:
        plain, views, best = row.get("plain"), row.get("views"), row.get("best")

        def cell(entry: dict[str, Any] | None) -> str:
            if entry is None:
                return "n/a"
            return f"{entry['method']} {_fmt(entry['accuracy'])} ({entry['margin'] * 100:+.1f} points)"

        cells.append([row["shot"], _fmt(row["sgps"]), cell(plain), cell(views), cell(best)])
    return [
        "## Headline: SGPS against the best baseline of either kind",
        "",
        "SGPS (image + text) accuracy, the best baseline as published (each support image once, the body's BatchNorm "
        "statistics) and the best baseline given the same support views as SGPS (and its task-adaptive BatchNorm "
        "where the synthesizer uses it); margins are SGPS minus the baseline, in accuracy points. The last column is "
        f"the fair comparison. All-layer fine-tuning runs on the first {cfg.get('finetune_all_episodes', 'few')} "
        "episodes of each shot only (CPU cost).",
        "",
        *_table(HEADLINE_COLUMNS, cells),
        "",
    ]


def _efficiency_section(curve: dict[str, Any], plots: dict[str, str]) -> list[str]:
    shots = [str(s) for s in curve["shots"]]
    rows = [[name, *(_fmt(points.get(s)) for s in shots)] for name, points in curve["points"].items()]
    lines = [
        "## Data efficiency",
        "",
        f"Accuracy against shots per class (requested {curve['requested']}, clipped to the data).",
        "",
    ]
    lines += _table(["method", *(f"{s}-shot" for s in shots)], rows) + [""]
    return lines + ([f"![data efficiency]({plots['data_efficiency']})", ""] if "data_efficiency" in plots else [])


def _gap_section(gap: dict[str, Any], plots: dict[str, str]) -> list[str]:
    rows = [[name, _fmt(r["meta_train"]), _fmt(r["evaluation"]), _fmt(r["gap"])] for name, r in gap["methods"].items()]
    lines = [
        "## Generalization gap",
        "",
        f"{gap['shot']}-shot accuracy on episodes of meta-train classes ({gap['episodes']} episodes) "
        "against the evaluation tasks; gap = meta-train minus evaluation.",
        "",
    ]
    lines += _table(["method", "meta-train tasks", "evaluation tasks", "gap"], rows) + [""]
    return lines + (
        [f"![generalization gap]({plots['generalization_gap']})", ""] if "generalization_gap" in plots else []
    )


def _calibration_section(cal: dict[str, Any], plots: dict[str, str]) -> list[str]:
    rows = [
        [name, _fmt(r["raw"]["ece"]), _fmt(r["temperature"]), _fmt(r["temperature_scaled"]["ece"])]
        for name, r in cal["methods"].items()
    ]
    lines = [
        "## Calibration",
        "",
        f"{cal['shot']}-shot, pooled queries; the temperature is fitted (NLL) on meta-val episodes, never on the test "
        "episodes.",
        "",
    ]
    lines += _table(["method", "ECE", "temperature (meta-val)", "ECE, temperature-scaled"], rows) + [""]
    return lines + ([f"![reliability diagrams]({plots['reliability']})", ""] if "reliability" in plots else [])


def _shift_section(shift: dict[str, Any], plots: dict[str, str]) -> list[str]:
    corruptions = shift["corruptions"]
    rows = [[name, _fmt(r["clean"]), *(_fmt(r.get(c)) for c in corruptions)] for name, r in shift["methods"].items()]
    lines = [
        "## Domain shift",
        "",
        f"{shift['shot']}-shot accuracy with corrupted query images (severity {shift['severity']} of 5; "
        "support images clean), on the same episodes as the clean column.",
        "",
    ]
    lines += _table(["method", "clean", *corruptions], rows) + [""]
    return lines + ([f"![domain shift]({plots['domain_shift']})", ""] if "domain_shift" in plots else [])


def _subgroup_section(groups: dict[str, Any]) -> list[str]:
    if not groups.get("available"):
        return ["## Subgroups", "", f"Not reported: {groups.get('reason', 'no subgroup metadata')}.", ""]
    lines = ["## Subgroups", "", f"Subgroup columns found: {groups['columns']}. {groups.get('note', '')}", ""]
    if groups.get("audit"):
        from .trust_benchmark import subgroup_audit_lines

        lines += subgroup_audit_lines(groups["audit"])[1:]  # under this section's own heading
    return lines


def _speed_section(speed: dict[str, Any]) -> list[str]:
    steps = ", ".join(f"{k}: {v:.3f}" for k, v in speed["finetune_accuracy_by_step"].items())
    return [
        "## Speed",
        "",
        f"- {speed['shot']}-shot synthesis: {_fmt(speed['synthesis_seconds_per_task'], 4)} s per task "
        "(one forward pass).",
        f"- Fine-tuning all layers: {_fmt(speed['finetune_seconds_to_best'], 3)} s to its best mean query accuracy "
        f"(step {speed['finetune_best_step']}; accuracy by step {steps}); "
        f"full budget {_fmt(speed['finetune_seconds_full_budget'], 3)} s.",
        f"- Ratio fine-tuning-to-best / synthesis: **{_fmt(speed['ratio_finetune_to_synthesis'], 1)}x**.",
        f"- Inference: synthesized classifier {speed['synthesized_images_per_s']:.0f} images/s vs plain timm model "
        f"of the same architecture {speed['plain_timm_images_per_s']:.0f} images/s: "
        f"ratio **{speed['inference_ratio']:.2f}**.",
        "",
    ]


def _methods_section(results: dict[str, Any]) -> list[str]:
    lines = ["## Methods, training and tuning", ""]
    for name, info in results["methods"].items():
        lines.append(
            f"- **{name}**: {info['description']}"
            + (f"; temperature {info['temperature']:.3f}" if "temperature" in info else "")
        )
    lines += ["", "Body and training (one shared body for every method):", ""]
    for name, info in results["training"].items():
        if isinstance(info, dict):
            info = {k: v for k, v in info.items() if k != "history"}
        lines.append(f"- {name}: {info}")
    lines += ["", "Tuning on meta-val episodes:", ""]
    for name, info in results["tuning"].items():
        lines.append(f"- {name}: {info}")
    return lines + [""]


# --------------------------------------------------------------------------------------------------
# Plots


def write_plots(results: dict[str, Any], out: Path) -> dict[str, str]:
    """PNG plots of the criteria into ``out``; returns criterion -> file name."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = {}
    for key, draw in (
        ("data_efficiency", _plot_efficiency),
        ("reliability", _plot_reliability),
        ("domain_shift", _plot_shift),
        ("generalization_gap", _plot_gap),
    ):
        fig = draw(results, plt)
        if fig is not None:
            fig.tight_layout()
            fig.savefig(out / f"{key}.png", dpi=90)
            plt.close(fig)
            files[key] = f"{key}.png"
    return files


def _plot_efficiency(results: dict[str, Any], plt: Any) -> Any:
    curve = results["data_efficiency"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, points in curve["points"].items():
        shots = [int(s) for s in points]
        ax.errorbar(
            shots,
            [p["mean"] for p in points.values()],
            yerr=[0 if math.isnan(p["ci95"]) else p["ci95"] for p in points.values()],
            marker="o",
            capsize=3,
            label=name,
        )
    ax.set(xscale="log", xlabel="shots per class", ylabel="query accuracy", title="Data efficiency")
    ax.set_xticks(curve["shots"], [str(s) for s in curve["shots"]])
    ax.legend(fontsize=7)
    return fig


def _plot_reliability(results: dict[str, Any], plt: Any) -> Any:
    methods = results["calibration"]["methods"]
    if not methods:
        return None
    cols = min(4, len(methods))
    rows = math.ceil(len(methods) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    for ax, (name, r) in zip(axes.flat, methods.items(), strict=False):
        for key, style in (("raw", "o-"), ("temperature_scaled", "s--")):
            bins = r[key]
            pairs = [
                (c, a)
                for c, a, n in zip(bins["bin_confidence"], bins["bin_accuracy"], bins["bin_count"], strict=False)
                if n
            ]
            if pairs:
                ax.plot(
                    *zip(*pairs, strict=False),
                    style,
                    label=f"{'raw' if key == 'raw' else 'T-scaled'} (ECE {bins['ece']:.3f})",
                )
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy")
        ax.set_title(name, fontsize=8)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(methods) :]:
        ax.axis("off")
    return fig


def _plot_shift(results: dict[str, Any], plt: Any) -> Any:
    shift = results["domain_shift"]
    if not shift["methods"]:
        return None
    conditions = ["clean", *shift["corruptions"]]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / len(shift["methods"])
    for i, (name, r) in enumerate(shift["methods"].items()):
        ax.bar([j + i * width for j in range(len(conditions))], [r[c]["mean"] for c in conditions], width, label=name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(conditions))], conditions)
    ax.set(ylabel="query accuracy", title=f"Corrupted queries (severity {shift['severity']})")
    ax.legend(fontsize=7)
    return fig


def _plot_gap(results: dict[str, Any], plt: Any) -> Any:
    gap = results["generalization_gap"]["methods"]
    if not gap:
        return None
    names = list(gap)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], [gap[n]["meta_train"]["mean"] for n in names], 0.4, label="meta-train tasks")
    ax.bar(
        [i + 0.2 for i in x],
        [gap[n]["evaluation"]["mean"] if gap[n]["evaluation"] else 0 for n in names],
        0.4,
        label="evaluation tasks",
    )
    ax.set_xticks(list(x), names, rotation=30, ha="right", fontsize=7)
    ax.set(ylabel="query accuracy", title="Generalization gap")
    ax.legend(fontsize=7)
    return fig
