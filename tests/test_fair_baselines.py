"""scripts/fair_baselines.py end to end on small real subsets: rows of a new body never mix with a previous run's."""

from __future__ import annotations

import json

import pytest
from sgps_testing import script_on_small_pools, tiny_synthesizer

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
    module = script_on_small_pools("fair_baselines", SUBSET, 6, monkeypatch, tmp_path / "cache")
    current, previous = tmp_path / "current", tmp_path / "previous"
    tiny_synthesizer(seed=1).save_pretrained(current)
    tiny_synthesizer(seed=2).save_pretrained(previous)  # another body
    results = tmp_path / "results.json"

    def main(*extra: str, run_record: dict | None = None) -> str:
        """The script's report; the previous run recorded ``run_record`` (default: the other body's path only)."""
        record = run_record if run_record is not None else {"synthesizer": str(previous)}
        results.write_text(json.dumps({"config": PROTOCOL, "main": {"Stale baseline": {"1": STALE}}, "run": record}))
        out = tmp_path / "report.md"
        module.main(
            ["--previous", str(results), "--synthesizer", str(current), "--episodes", "2", "--num-threads", "1"]
            + ["--methods", "SGPS (image + text)", "Nearest neighbour", "--out", str(out), *extra]
        )
        return out.read_text()

    main.current, main.previous = current, previous
    return main


def fingerprint(path) -> str:
    from sgps_hf import SGPSSynthesizer
    from sgps_hf.body.timm_network import tensors_fingerprint

    return tensors_fingerprint(SGPSSynthesizer.from_pretrained(path).body_tensors())


def test_rows_of_another_body_are_refused(run):
    with pytest.raises(SystemExit, match="body differs from the previous run's.*--new-body"):
        run()


def test_the_recorded_body_fingerprint_wins_over_a_path_whose_checkpoint_was_replaced(run):
    """A run that recorded its body's fingerprint is checked against it, not against whatever its synthesizer path
    holds now (a replaced bundled checkpoint would otherwise be compared with itself)."""
    replaced = {"synthesizer": str(run.current), "body_sha256": fingerprint(run.previous)}
    with pytest.raises(SystemExit, match="body differs from the previous run's"):
        run(run_record=replaced)
    same = {"synthesizer": str(run.previous), "body_sha256": fingerprint(run.current)}
    report = run(run_record=same)
    assert "whose SGPS and published-baseline rows" in report and "Stale baseline 0.990" in report


def test_new_body_reruns_every_compared_row_and_reuses_none(run, tmp_path):
    report = run("--new-body")
    assert "--new-body --episodes 2" in report and "whose rows are not reused" in report
    assert "Stale baseline" not in report and "0.990" not in report
    headline = report.split("## New rows")[0]
    assert "Nearest neighbour + SGPS views" in headline, headline
    rows = json.loads((tmp_path / "report.json").read_text())["rows"]
    assert sorted(rows) == ["Nearest neighbour + SGPS views", "SGPS (image + text)"]
