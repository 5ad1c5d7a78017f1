"""The files the app makes for its users do not outlive the server: gradio's cache (uploads, served files) is swept
by age and emptied when the server stops, and the export area's folder goes with the process."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from conftest import launch
from gradio_client import Client, handle_file

from sgps_hf.app.limits import DEFAULT_LIMITS

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("torch_single_thread")]


def cached_files(demo) -> set[Path]:
    return {Path(path) for files in demo.temp_file_sets for path in files}


def test_uploads_are_deleted_when_the_server_stops(tiny_synth_dir, image_files):
    from gradio_client.exceptions import AppError

    from sgps_hf.app.ui import build_demo

    limits = dataclasses.replace(DEFAULT_LIMITS, file_max_age_s=600)
    demo = build_demo(str(tiny_synth_dir), limits=limits, show_examples=False)
    assert demo.delete_cache == (600, 600)
    page = " ".join(str(getattr(block, "value", "")) for block in demo.blocks.values())
    assert "deletes them, and every file it made for you, once they are 10 minutes old" in page
    url = launch(demo)
    try:
        with pytest.raises(AppError, match="No classifier yet"):  # the upload is cached before the handler runs
            Client(url, verbose=False).predict([handle_file(str(image_files["png"]))], 0.5, api_name="/predict")
        uploads = cached_files(demo)
        assert uploads and all(path.is_file() for path in uploads)
        assert {path.suffix for path in uploads} == {".png"}
    finally:
        demo.close()
        demo.sgps_exports.close()
    assert not [path for path in uploads if path.exists()]
    assert not demo.sgps_exports.root.exists()
