"""Fixtures of the segmentation tests: a tiny (untrained, 32 px) synthesizer and synthetic images with masks."""

from __future__ import annotations

import pytest

from seg_testing import blob_pair, tiny_seg_synthesizer
from sgps_testing import isolated_caches  # noqa: F401  (datasets / sgps caches in a temporary folder)


@pytest.fixture(scope="module")
def tiny_synth():
    return tiny_seg_synthesizer(0)


@pytest.fixture(scope="module")
def tiny_task():
    from sgps_hf import SegmentationTask

    return SegmentationTask("blob", [blob_pair(i) for i in range(3)], description="bright disc")
