"""The segmentation model tests read the data-seg tasks through ``datasets``: its caches stay per session."""

from sgps_testing import isolated_caches  # noqa: F401  (autouse)
