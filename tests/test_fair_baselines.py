"""scripts/fair_baselines.py end to end on small real subsets: rows of a new body never mix with a previous run's."""

from __future__ import annotations

import json

import pytest
from sgps_testing import load_script, tiny_synthesizer

from sgps_hf.data import build_pools

pytestmark = pytest.mark.usefixtures("torch_single_thread")

SUBSET = {"held_out": "hematology-wbc-tecom", "meta_val": "endoscopy-larynx-contact"}
PROTOCOL = {
    "ways": 2,
    "queries": 2,
    "seed": 0,
    "episodes": 4,
    "tune_episodes": 1,
    "probe_lrs": [0.01],
    "finetune_lrs": [0.001],
    "nn_metrics": ["cosine"],
    "finetune_steps": 2,
    "focus_shot_used": 1,
    "shots_used": [1],
}
STALE = {"accuracy": {"mean": 0.99, "ci95": 0.0, "n": 4}, "episodes": 4}


@pytest.fixture()
def run(monkeypatch, tmp_path):
    module = load_script("fair_baselines")

    def small_pools(split, image_size):
        pools = build_pools(split, image_size, tasks=[SUBSET[split]])
        for pool in pools:
            pool.images = pool.images[:6]
        return pools

    monkeypatch.setattr(module, "build_pools", small_pools)
    monkeypatch.setenv("SGPS_CACHE_DIR", str(tmp_path / "cache"))
    current, previous = tmp_path / "current", tmp_path / "previous"
    tiny_synthesizer(seed=1).save_pretrained(current)
    tiny_synthesizer(seed=2).save_pretrained(previous)  # another body
    results = tmp_path / "results.json"
    results.write_text(
        json.dumps(
            {"config": PROTOCOL, "main": {"Stale baseline": {"1": STALE}}, "run": {"synthesizer": str(previous)}}
        )
    )

    def main(*extra: str) -> str:
        out = tmp_path / "report.md"
        module.main(
            ["--previous", str(results), "--synthesizer", str(current), "--episodes", "2", "--num-threads", "1"]
            + ["--methods", "SGPS (image + text)", "Nearest neighbour", "--out", str(out), *extra]
        )
        return out.read_text()

    return main


def test_rows_of_another_body_are_refused(run):
    with pytest.raises(SystemExit, match="body differs from the previous run's"):
        run()


def test_new_body_reruns_every_compared_row_and_reuses_none(run, tmp_path):
    report = run("--new-body")
    assert "--new-body --episodes 2" in report and "whose rows are not reused" in report
    assert "Stale baseline" not in report and "0.990" not in report
    headline = report.split("## New rows")[0]
    assert "Nearest neighbour + SGPS views" in headline, headline
    rows = json.loads((tmp_path / "report.json").read_text())["rows"]
    assert sorted(rows) == ["Nearest neighbour + SGPS views", "SGPS (image + text)"]
