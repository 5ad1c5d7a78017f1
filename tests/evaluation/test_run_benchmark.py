"""scripts/run_benchmark.py --quick end to end on tiny imagefolders and a tiny random synthesizer; `sgps evaluate`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import sgps_testing

SCRIPT = sgps_testing.PROJECT_ROOT / "scripts" / "run_benchmark.py"


def _run(bench_data, out, *extra: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        str(SCRIPT),
        "--synthesizer",
        str(bench_data["synth"]),
        "--data-dir",
        str(bench_data["eval"]),
        "--train-sources",
        str(bench_data["train"]),
        "--val-sources",
        str(bench_data["val"]),
        "--ways",
        "3",
        "--shots",
        "0",
        "1",
        "5",
        "--quick",
        "--out",
        str(out),
        "--num-threads",
        "1",
        *extra,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=600, env=env, cwd=str(sgps_testing.PROJECT_ROOT)
    )
    if result.returncode != 0:
        pytest.fail(f"run_benchmark.py failed:\n{result.stderr[-4000:]}")
    return result


@pytest.fixture(scope="module")
def quick_run(bench_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("quick")
    descriptions = root / "texts.json"
    descriptions.write_text(json.dumps({"class_0": "bright reddish tile", "class_1": "dark greenish tile"}))
    _run(
        bench_data, root / "out", "--descriptions", str(descriptions), "--report", str(root / "report" / "RESULTS.md")
    )
    return root


def test_results_json_has_every_method_shot_and_criterion(quick_run):
    results = json.loads((quick_run / "out" / "results.json").read_text())
    main = results["main"]
    assert set(main["SGPS (text only)"]) == {"0"}
    image_methods = [
        "SGPS (image + text)",
        "SGPS (image only)",
        "ProtoNet",
        "Fine-tune all layers",
        "Fine-tune top layers",
        "Fine-tune head (linear probe)",
        "Nearest neighbour",
    ]
    for name in image_methods:
        assert set(main[name]) == {"1", "5"}, name
        row = main[name]["5"]
        episodes = (
            2 if name == "Fine-tune all layers" else 3
        )  # all-layer fine-tuning runs on the first N episodes only
        for metric in ("accuracy", "macro_f1", "auroc"):
            assert 0.0 <= row[metric]["mean"] <= 1.0 and row[metric]["n"] == episodes
        assert 0.0 <= row["ece"] <= 1.0 and row["adapt_seconds"]["mean"] > 0
    # every baseline again with SGPS's support views (the tiny synthesizer has no task BatchNorm)
    for name in image_methods[2:]:
        assert set(main[f"{name} + SGPS views"]) == {"1", "5"}, name
    assert main["Fine-tune all layers + SGPS views"]["5"]["accuracy"]["n"] == 2
    assert set(results["data_efficiency"]["points"]["ProtoNet"]) == {"1", "2"}
    assert set(results["generalization_gap"]["methods"]) == set(image_methods) - {"Fine-tune all layers"}
    assert all(r["temperature"] > 0 for r in results["calibration"]["methods"].values())
    assert set(results["domain_shift"]["methods"]["Fine-tune top layers"]) == {
        "clean",
        "blur",
        "noise",
        "contrast",
        "jpeg",
    }
    assert results["subgroups"]["available"] is False
    speed = results["speed"]
    assert speed["synthesis_seconds_per_task"] > 0 and speed["inference_ratio"] > 0.3
    assert "identical for every method" in results["training"]["shared body"]
    assert "Fine-tune all layers" in results["tuning"] and "--quick" in results["run"]["command"]
    # the body every row stands on, whatever the synthesizer's path holds later (scripts/fair_baselines.py checks it)
    from sgps_hf import SGPSSynthesizer
    from sgps_hf.body.timm_network import tensors_fingerprint

    synthesizer = SGPSSynthesizer.from_pretrained(results["run"]["synthesizer"])
    assert results["run"]["body_sha256"] == tensors_fingerprint(synthesizer.body_tensors())


def test_markdown_and_plots(quick_run):
    markdown = (quick_run / "out" / "results.md").read_text()
    for section in (
        "## Headline: SGPS against the best baseline of either kind",
        "## Main results",
        "## Data efficiency",
        "## Generalization gap",
        "## Calibration",
        "## Domain shift",
        "## Subgroups",
        "## Speed",
        "Environment:",
    ):
        assert section in markdown
    for plot in ("data_efficiency", "reliability", "domain_shift", "generalization_gap"):
        assert (quick_run / "out" / f"{plot}.png").read_bytes()[:4] == b"\x89PNG"
    report = (quick_run / "report" / "RESULTS.md").read_text()
    assert "](../out/reliability.png)" in report


def test_sgps_evaluate_is_registered():
    from sgps_hf.cli import build_parser

    args = build_parser().parse_args(
        ["evaluate", "--out", "x", "--split", "held_out", "--shots", "1", "5", "--episodes", "600"]
    )
    assert args.episodes == 600 and args.shots == [1, 5] and callable(args.handler)


def test_unknown_description_class_is_a_clear_error(bench_data, tmp_path):
    from sgps_hf.data.sources import dataset_pools
    from sgps_hf.errors import DataError

    texts = tmp_path / "texts.json"
    texts.write_text(json.dumps({"melanoma": "dark lesion"}))
    with pytest.raises(DataError, match="melanoma"):
        dataset_pools(str(bench_data["eval"]), 32, texts)


def test_reports_name_a_checkpoint_inside_the_working_directory_by_its_relative_path(tmp_path, monkeypatch):
    from sgps_hf.cli.evaluate import _display_path

    (tmp_path / "ckpt").mkdir()
    monkeypatch.chdir(tmp_path)
    assert _display_path(str(tmp_path / "ckpt")) == "ckpt"  # committed reports carry no machine paths
    elsewhere = str(tmp_path.parent / "other")
    assert _display_path(elsewhere) == elsewhere
    assert _display_path("org/sgps-model") == "org/sgps-model"  # a Hub id stays as given
