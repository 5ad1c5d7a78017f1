"""Split-conformal prediction sets: the guarantee on exchangeable data, storage in the folder and card, real data."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sgps_testing import REAL_TASK, SHARED_DATA, skip_without_real_data

from sgps_hf import SynthesizedClassifier
from sgps_hf.cli import main
from sgps_hf.errors import CheckpointError, DataError, NoCoverageGuaranteeWarning
from sgps_hf.trust.conformal import coverage_and_size, fit_conformal, min_cases, prediction_sets

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def _noisy_task(rng, n, classes=5):
    """Probabilities of a mediocre classifier and labels drawn from them (so the data are exchangeable)."""
    logits = rng.normal(size=(n, classes)) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(classes, p=p) for p in probs])
    return probs, labels


@pytest.mark.parametrize("method", ["lac", "aps"])
def test_coverage_holds_on_average_over_random_splits(method):
    rng = np.random.default_rng(0)
    for coverage in (0.8, 0.9, 0.95):
        covered = []
        for _ in range(60):
            probs, labels = _noisy_task(rng, 400)
            calibration = fit_conformal(probs[:200], labels[:200], coverage, method)
            covered.append(coverage_and_size(prediction_sets(probs[200:], calibration), labels[200:])[0])
        # LAC is tight; non-randomised APS is valid but conservative (the true class's whole mass is in its score)
        upper = coverage + (0.02 if method == "lac" else 0.1)
        assert coverage - 0.01 <= np.mean(covered) <= upper, (method, coverage, np.mean(covered))


def test_sets_grow_with_coverage_and_need_enough_cases():
    rng = np.random.default_rng(1)
    probs, labels = _noisy_task(rng, 300)
    sizes = [coverage_and_size(prediction_sets(probs, fit_conformal(probs, labels, c)), labels)[1] for c in (0.5, 0.9)]
    assert 0 < sizes[0] < sizes[1]  # 50 %: often a single class or none (empty sets are allowed)
    assert min_cases(0.9) == 9 and min_cases(0.95) == 19
    fit_conformal(probs[:9], labels[:9], 0.9)
    with pytest.raises(DataError, match="at least 9"):
        fit_conformal(probs[:8], labels[:8], 0.9)
    with pytest.raises(DataError, match="coverage"):
        fit_conformal(probs, labels, 1.5)
    assert prediction_sets(np.full((2, 4), 0.25), {"method": "lac", "threshold": 0.1}) == [[], []]  # none plausible
    membership = np.array([[True, False], [True, True]])
    assert coverage_and_size(membership, [1, 1]) == coverage_and_size([[0], [0, 1]], [1, 1]) == (0.5, 1.5)


def test_calibrate_predict_sets_save_and_card(tiny_classifier, labelled_folder, tmp_path, capsys):
    image = next((labelled_folder / "class_0").iterdir())
    with pytest.warns(NoCoverageGuaranteeWarning, match="no prediction set comes with a coverage guarantee"):
        (row,) = tiny_classifier.predict_sets([image])
    assert row["prediction_set"] is None and row["coverage"] is None and len(row["probabilities"]) == 3

    folder = tmp_path / "clf"
    tiny_classifier.save_pretrained(folder)
    assert "no coverage guarantee" in (folder / "README.md").read_text()
    assert main(["calibrate", "--classifier", str(folder), "--data", str(labelled_folder), "--coverage", "0.8"]) == 0
    assert "Calibrated on 18 cases" in capsys.readouterr().out
    stored = json.loads((folder / "sgps_task.json").read_text())["conformal"]
    assert stored["coverage"] == 0.8 and stored["num_cases"] == 18 and stored["method"] == "lac"
    assert "at least\n**80 %**" in (folder / "README.md").read_text()
    loaded = SynthesizedClassifier.from_pretrained(folder)
    (row,) = loaded.predict_sets([image])
    assert row["coverage"] == 0.8 and set(row["prediction_set"]) <= set(loaded.label_names)
    ranked = sorted(row["probabilities"], key=row["probabilities"].get, reverse=True)
    assert row["prediction_set"] == ranked[: len(row["prediction_set"])]  # LAC: the most probable classes

    stored["threshold"] = 7.0  # a tampered file is refused with the key named
    (folder / "sgps_task.json").write_text(
        json.dumps({**json.loads((folder / "sgps_task.json").read_text()), "conformal": stored})
    )
    with pytest.raises(CheckpointError, match="conformal"):
        SynthesizedClassifier.from_pretrained(folder).predict_sets([image])


@pytest.mark.integration
@skip_without_real_data()
def test_coverage_on_the_held_out_pad_ufes_task(pad_ufes_classifier):
    """Calibrate on half of the held-out PAD-UFES-20 images (support images left out), test on the other half."""
    support = {h for c in pad_ufes_classifier.info["task"]["classes"] for h in c["image_sha256"]}
    from sgps_hf.imaging import image_fingerprint

    rng = np.random.default_rng(0)
    calibration, test = {}, {}
    for name in pad_ufes_classifier.label_names:
        files = [p for p in sorted((SHARED_DATA / REAL_TASK / name).iterdir()) if image_fingerprint(p) not in support]
        files = [files[i] for i in rng.permutation(len(files))][::2]  # half of each class keeps the test quick
        calibration[name], test[name] = files[: len(files) // 2], files[len(files) // 2 :]
    result = pad_ufes_classifier.calibrate_conformal(calibration, coverage=0.9)
    files = [f for name in test for f in test[name]]
    labels = [name for name in test for _ in test[name]]
    rows = pad_ufes_classifier.predict_sets(files)
    covered = np.mean([label in row["prediction_set"] for row, label in zip(rows, labels, strict=True)])
    size = np.mean([len(row["prediction_set"]) for row in rows])
    # one calibration/test split of ~200 cases each: the coverage is 0.9 up to sampling noise (sd ~0.02)
    assert result["num_cases"] > 150 and 0.84 <= covered <= 0.97, (covered, size)
    assert 1 < size < len(pad_ufes_classifier.label_names)
