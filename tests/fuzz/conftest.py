"""Hypothesis settings for the fuzz suite, and the one property every fuzzed boundary must satisfy.

The ``sgps-ci`` profile is derandomized (the same examples on every run, so CI is reproducible and a failure
reproduces locally) and has no per-example deadline (2 shared CPU cores make timings noisy); hangs are caught by
pytest-timeout instead. ``HYPOTHESIS_PROFILE=sgps-explore`` runs randomized, 10x longer campaigns by hand.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "sgps-ci",
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
settings.register_profile("sgps-explore", parent=settings.get_profile("sgps-ci"), derandomize=False, max_examples=1000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "sgps-ci"))
