"""scripts/select_episodic.py end to end on small real subsets: the episodic stage, paired rows, caching."""

from __future__ import annotations

import re

import pytest
from sgps_testing import script_on_small_pools, tiny_synthesizer

pytestmark = pytest.mark.usefixtures("torch_single_thread")

# one small task per split, a dozen images per class: the script's plumbing on real images in seconds
SUBSET = {"meta_train": "pathology-colon-lc25000", "meta_val": "endoscopy-larynx-contact"}


@pytest.fixture()
def script(monkeypatch, tmp_path):
    return script_on_small_pools("select_episodic", SUBSET, 12, monkeypatch, tmp_path / "cache")


def small_run(tmp_path, candidates: list[str], seeds: list[str]) -> list[str]:
    """Arguments of a run of seconds: a tiny synthesizer, 4 episodes of 2-way 1-2-shot, bodies and report in
    ``tmp_path``."""
    synthesizer = tmp_path / "synthesizer"
    if not synthesizer.exists():
        tiny_synthesizer().save_pretrained(synthesizer)
    return [
        "--synthesizer", str(synthesizer),
        "--candidates", *candidates,
        "--alphas", "1",
        "--episodes", "4",
        "--n-way", "2",
        "--k-shot", "1", "2",
        "--q-query", "2",
        "--num-threads", "1",
        "--seeds", *seeds,
        "--work-dir", str(tmp_path / "work"),
        "--out", str(tmp_path / "report.md"),
    ]  # fmt: skip


def test_report_pairs_every_candidate_with_the_starting_body_and_a_rerun_trains_nothing(script, tmp_path, monkeypatch):
    args = small_run(tmp_path, ["4:1e-3", "4:1e-3:family:3way"], ["0", "1"])
    assert script.main(args) == 0
    report = (tmp_path / "report.md").read_text()
    assert "--candidates 4:0.001 4:0.001:family:3way --alphas 1 --seeds 0 1" in report
    overall = report.split("Per family")[0]
    rows = {line.split(" | ")[0].lstrip("| "): line for line in overall.splitlines() if line.startswith("| ")}
    assert re.fullmatch(r"\| starting body \| 0\.\d{3} \| 0\.\d{3} \|", rows["starting body"].strip())
    for label in ("4 episodes, lr 0.001", "4 episodes, lr 0.001, 3-way, every family equally likely"):
        candidate = rows[f"{label}, alpha 1"]
        assert len(re.findall(r"0\.\d{3} \([+-]\d+\.\d ± \d+\.\d\)", candidate)) == 2, candidate
        assert f"- {label}, seed 0:" in report and f"- {label}, seed 1:" in report
    assert '"accuracy"' in report
    assert sorted(p.name for p in (tmp_path / "work").glob("*.safetensors")) == [
        f"episodic-4-lr0.001{options}-seed{seed}.safetensors" for options in ("-family-3way", "") for seed in (0, 1)
    ]

    def no_training(*_, **__):
        raise AssertionError("the cached body should have been reused")

    monkeypatch.setattr(script, "episodic_adapt", no_training)
    assert script.main(args) == 0
    assert (tmp_path / "report.md").read_text() == report


def test_with_two_seeds_a_candidate_scores_the_mean_of_its_seeds(script, tmp_path):
    def candidate_row(*seeds: str) -> list[float]:
        assert script.main(small_run(tmp_path, ["4:1e-3"], list(seeds))) == 0
        row = next(line for line in (tmp_path / "report.md").read_text().splitlines() if line.startswith("| 4 "))
        return [float(value) for value in re.findall(r"(0\.\d{3}) \(", row)]

    first, second, both = candidate_row("0"), candidate_row("1"), candidate_row("0", "1")
    assert first != second, "two seeds train different bodies"
    for a, b, mean in zip(first, second, both, strict=True):
        assert abs(mean - (a + b) / 2) <= 0.001  # rounding of the report's three decimals


@pytest.mark.parametrize("candidate", ["150", "150:1e-4:site", "150:fast", "150:1e-4:1way"])
def test_a_malformed_candidate_is_refused_with_the_expected_form(script, candidate):
    with pytest.raises(SystemExit, match=r"EPISODES:LEARNING_RATE\[:family\]\[:<N>way\]"):
        script.main(["--synthesizer", "x", "--candidates", candidate])
