"""scripts/select_body.py end to end on small real subsets: adaptation, WiSE-FT rows, V2 distillation, caching."""

from __future__ import annotations

import re

import pytest
from sgps_testing import script_on_small_pools

pytestmark = pytest.mark.usefixtures("torch_single_thread")

# one small task per split, a dozen images per class: the script's plumbing on real images in seconds
SUBSET = {"meta_train": "pathology-colon-lc25000", "meta_val": "endoscopy-larynx-contact"}


@pytest.fixture()
def script(monkeypatch, tmp_path):
    return script_on_small_pools("select_body", SUBSET, 12, monkeypatch, tmp_path / "cache")


def test_report_has_every_body_and_a_rerun_reuses_the_trained_bodies(script, tmp_path, monkeypatch):
    args = [
        "--epochs",
        "1",
        "--samples",
        "32",
        "--batch-size",
        "16",
        "--alphas",
        "0",
        "1",
        "--episodes",
        "4",
        "--distill",
        "tf_efficientnetv2_b0",
        "--distill-epochs",
        "1",
        "--num-threads",
        "1",
        "--work-dir",
        str(tmp_path / "work"),
        "--out",
        str(tmp_path / "report.md"),
    ]
    assert script.main(args) == 0
    report = (tmp_path / "report.md").read_text()
    assert "--distill tf_efficientnetv2_b0 --distill-epochs 1" in report
    overall = report.split("Per family")[0]
    rows = {
        line.split(" | ")[0].lstrip("| "): line
        for line in overall.splitlines()
        if line.startswith("| ") and "---" not in line
    }
    for body in ("Lite0, alpha 0.0", "Lite0, alpha 1.0", "tf_efficientnetv2_b0 distilled from frozen Lite0"):
        scores = [float(x) for x in re.findall(r"\d\.\d{3}", rows[body])]
        assert len(scores) == 4 and all(0 <= s <= 1 for s in scores), rows[body]
    assert '"explained_variance"' in report
    assert sorted(p.name for p in (tmp_path / "work").glob("*.safetensors")) == [
        "adapted-1ep-32.safetensors",
        "distilled-tf_efficientnetv2_b0-1ep-32.safetensors",
    ]

    # a second run trains nothing: both bodies come from the work dir, and the report is the same
    def no_training(*_, **__):
        raise AssertionError("the cached body should have been reused")

    monkeypatch.setattr(script, "pretrain_body", no_training)
    monkeypatch.setattr(script, "distill_body", no_training)
    assert script.main(args) == 0
    assert (tmp_path / "report.md").read_text() == report
