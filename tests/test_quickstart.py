"""``sgps quickstart`` on the real held-out tasks: several draws of support images per task, the first one saved."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm

from sgps_hf import DEFAULT_CHECKPOINT
from sgps_hf.cli import main
from sgps_hf.data.splits import load_splits
from sgps_hf.quickstart import QuickstartResult, format_results, run_quickstart

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


@pytest.mark.integration
def test_quickstart_scores_every_held_out_task_over_several_draws(tmp_path):
    if not SHARED.is_dir():
        pytest.skip(f"shared data not found at {SHARED}")
    results = run_quickstart(
        DEFAULT_CHECKPOINT, str(SHARED), tmp_path / "qs", n_way=3, max_queries_per_class=4, draws=2
    )
    assert [r.task for r in results] == list(load_splits().held_out_tasks)
    for r in results:
        assert len(r.accuracies) == 2 and all(0.0 <= a <= 1.0 for a in r.accuracies)
        assert r.accuracy == pytest.approx(sum(r.accuracies) / 2)
        assert r.num_classes == 3 and r.num_queries == 12
        model = timm.create_model(
            f"local-dir:{r.saved_to}", pretrained=True
        )  # the first draw's classifier, plain timm
        assert model.pretrained_cfg["num_classes"] == 3
    # the draws differ: with one image per class some task scores differently on another draw
    assert any(r.accuracies[0] != r.accuracies[1] for r in results)


def test_format_results_reports_the_mean_and_range_of_the_draws():
    results = [
        QuickstartResult("task-a", 4, 1, [0.25, 0.75], 40, None),
        QuickstartResult("task-b", 5, 1, [0.5, 0.5], 50, None),
    ]
    text = format_results(results)
    assert "0.500" in text and "0.250-0.750" in text and "0.500-0.500" in text
    assert "mean over 2 random draws" in text
    mean_line = next(line for line in text.splitlines() if line.startswith("mean"))
    assert "0.500" in mean_line and "0.225" in mean_line  # mean chance (1/4 + 1/5) / 2


def test_draws_must_be_positive(capsys):
    with pytest.raises(ValueError, match="draws must be at least 1"):
        run_quickstart(DEFAULT_CHECKPOINT, draws=0)
    assert main(["quickstart", "--draws", "0"]) == 2
    assert "draws must be at least 1" in capsys.readouterr().err
