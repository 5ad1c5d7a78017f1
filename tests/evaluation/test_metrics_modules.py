"""The packaged ``evaluate`` metric modules, loaded by path, against hand-computed and scikit-learn values."""

from __future__ import annotations

import evaluate
import numpy as np
import pytest

from sgps_hf.metrics import METRIC_NAMES, calibration, episode_scores, load_metric, mean_ci, metric_module_path


@pytest.mark.parametrize("name", METRIC_NAMES)
def test_modules_load_by_path_without_hub(name):
    module = evaluate.load(str(metric_module_path(name)))
    assert isinstance(module, evaluate.EvaluationModule)
    assert load_metric(name) is load_metric(name)  # cached per process


def test_unknown_metric_is_a_clear_error():
    with pytest.raises(ValueError, match="Unknown metric"):
        metric_module_path("f2")


def test_values_match_scikit_learn():
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=60)
    labels = rng.integers(0, 4, size=60)
    scores = episode_scores(probs, labels)
    assert scores["accuracy"] == pytest.approx(accuracy_score(labels, probs.argmax(1)))
    assert scores["macro_f1"] == pytest.approx(f1_score(labels, probs.argmax(1), average="macro"))
    assert scores["auroc"] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr"))


def test_auroc_handles_ties_and_perfect_ranking():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.2, 0.8], [0.1, 0.9]])
    assert load_metric("auroc").compute(predictions=probs, references=[0, 0, 1, 1])["auroc"] == 1.0
    tied = np.full((4, 2), 0.5)
    assert load_metric("auroc").compute(predictions=tied, references=[0, 0, 1, 1])["auroc"] == 0.5


def test_ece_by_hand():
    # Two bins used: confidence 0.9 (both right) and 0.6 (one of two right): ECE = 0.5*0.1 + 0.5*0.1.
    probs = np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4], [0.4, 0.6]])
    result = calibration(probs, np.array([0, 1, 0, 0]), n_bins=10)
    assert result["ece"] == pytest.approx(0.1)
    assert sum(result["bin_count"]) == 4
    assert result["bin_accuracy"][8] == pytest.approx(1.0) and result["bin_accuracy"][5] == pytest.approx(0.5)


def test_ece_of_perfectly_calibrated_one_hot_is_zero():
    probs = np.eye(3)[[0, 1, 2, 1]]
    assert calibration(probs, np.array([0, 1, 2, 1]))["ece"] == 0.0


def test_mean_ci_skips_nan_and_handles_single_values():
    assert mean_ci([0.5, float("nan"), 0.7]) == pytest.approx(
        {"mean": 0.6, "ci95": 1.96 * np.std([0.5, 0.7], ddof=1) / np.sqrt(2), "n": 2}
    )
    single = mean_ci([0.3])
    assert single["mean"] == 0.3 and np.isnan(single["ci95"])
