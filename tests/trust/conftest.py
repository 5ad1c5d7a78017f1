"""Fixtures of the trust tests: a tiny classifier with a labelled folder (and metadata), a real PAD-UFES-20 one."""

from __future__ import annotations

import csv

import pytest
from sgps_testing import (  # noqa: F401  (isolated_caches is autouse: the suite's caches stay per session)
    isolated_caches,
    real_data_available,
    synthetic_task,
    tiny_synthesizer,
    write_images,
)


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    """A tiny untrained 3-class classifier (synthetic noise task): fast, its accuracy is whatever it is."""
    task = synthetic_task(tmp_path_factory.mktemp("support"), images_per_class=(2, 2, 2))
    return tiny_synthesizer(seed=0).synthesize(task)


@pytest.fixture(scope="module")
def labelled_folder(tmp_path_factory):
    """An imagefolder of 3 classes x 6 noise images with a metadata.csv (sex, age, site; some values missing)."""
    root = tmp_path_factory.mktemp("labelled")
    rows = []
    for c in range(3):
        for path in write_images(root / f"class_{c}", "case", 6, seed=40 + c):
            i = len(rows)
            rows.append(
                {
                    "file_name": path.relative_to(root).as_posix(),
                    "sex": ["F", "M", ""][i % 3],
                    "age": 20 + 4 * i,
                    "site": "A" if i < 9 else "B",
                }
            )
    with (root / "metadata.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


@pytest.fixture(scope="session")
def default_synthesizer():
    from sgps_hf import DEFAULT_CHECKPOINT, SGPSProcessor, SGPSSynthesizer

    return SGPSSynthesizer.from_pretrained(DEFAULT_CHECKPOINT), SGPSProcessor.from_pretrained(DEFAULT_CHECKPOINT)


@pytest.fixture(scope="session")
def pad_ufes_classifier(default_synthesizer):
    """The bundled synthesizer's 6-class PAD-UFES-20 classifier from 2 images + the clinical text per class."""
    from sgps_testing import real_task

    if not real_data_available():
        pytest.skip("real data not available")
    synth, processor = default_synthesizer
    return synth.synthesize(real_task(num_classes=6, shots=2), processor=processor)
