"""Per-subgroup audit: binning and flags on toy values, then on the real PAD-UFES-20 metadata."""

from __future__ import annotations

import csv
from collections import Counter

import numpy as np
import pytest
from sgps_testing import REAL_TASK, SHARED_DATA, skip_without_real_data

from sgps_hf.errors import DataError
from sgps_hf.trust.subgroup_audit import audit_subgroups, group_values

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def test_group_values_bins_ages_and_keeps_small_numeric_codes():
    groups, binned = group_values("age", [15, 45, 61.0, 85, None, ""])
    assert binned and groups == ["<40", "40-<60", "60-<80", ">=80", "unknown", "unknown"]
    groups, binned = group_values("fitzpatrick", [1.0, 2, "3", float("nan"), 6])
    assert not binned and groups == ["1", "2", "3", "unknown", "6"]
    groups, binned = group_values("sex", ["FEMALE", " MALE ", None])
    assert groups == ["FEMALE", "MALE", "unknown"]
    assert group_values("size_mm", list(range(40)))[1]  # many distinct numbers: quartile bins


def test_audit_counts_flags_and_class_confounding():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6], [0.6, 0.4]])
    labels = np.array([0, 0, 1, 1, 1])
    audit = audit_subgroups(probs, labels, {"site": ["A", "A", "B", "B", "B"]}, ["site"], min_size=3)
    a, b = audit["site"]["groups"]["A"], audit["site"]["groups"]["B"]
    assert (a["n"], a["accuracy"]["value"], a["too_small"], a["missing_classes"]) == (2, 1.0, True, [1])
    assert (b["n"], b["accuracy"]["value"], b["too_small"]) == (3, 2 / 3, False)
    with pytest.raises(DataError, match="site"):
        audit_subgroups(probs, labels, {"site": ["A"] * 5}, ["sex"])


@pytest.mark.integration
@skip_without_real_data()
def test_pad_ufes_subgroups_with_the_metadata_file(pad_ufes_classifier):
    """Every 4th PAD-UFES-20 image with its metadata.csv: the counts are the file's, the caveats are flagged."""
    from sgps_hf.data.loading import load_image_dataset
    from sgps_hf.trust.own_cases import evaluate_classifier

    folder = SHARED_DATA / REAL_TASK
    dataset = load_image_dataset(folder, keep_metadata=True)
    subset = dataset.select(range(0, len(dataset), 4))
    evaluation = evaluate_classifier(pad_ufes_classifier, subset, subgroups=["sex", "fitzpatrick", "age"])
    with (folder / "metadata.csv").open() as handle:
        rows = {r["file_name"]: r for r in csv.DictReader(handle)}
    names = [p["file"] for p in evaluation.predictions]
    expected = Counter(rows[n]["sex"] or "unknown" for n in names)
    sex = evaluation.subgroups["sex"]["groups"]
    assert {k: g["n"] for k, g in sex.items()} == dict(expected) and set(sex) == {"FEMALE", "MALE", "unknown"}
    labels = pad_ufes_classifier.label_names
    # SOURCES.md: unknown sex only in actinic keratosis, nevus and seborrheic keratosis -> flagged as class-confounded
    assert {labels[c] for c in sex["unknown"]["missing_classes"]} >= {"melanoma", "squamous_cell_carcinoma"}
    fitz = evaluation.subgroups["fitzpatrick"]["groups"]
    assert all(fitz[t]["too_small"] for t in fitz if t in ("5", "6")) and not fitz["2"]["too_small"]
    assert evaluation.subgroups["age"]["binned"]
    for g in sex.values():
        assert g["accuracy"]["low"] <= g["accuracy"]["value"] <= g["accuracy"]["high"]
