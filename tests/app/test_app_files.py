"""The files the app makes for its users do not outlive the server: gradio's cache (uploads, served files) is swept
by age and emptied when the server stops, and the export area's folder goes with the process."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from conftest import free_port, launch
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


def test_sgps_demo_stopped_with_sigterm_leaves_no_files(tiny_synth_dir, image_files, tmp_path):
    """A Space, a container or `timeout` stops the app with SIGTERM: it stops like Ctrl+C, deleting the uploads and
    the export folder, and exits 0."""
    import os
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    from gradio_client.exceptions import AppError

    temp, cache = tmp_path / "tmp", tmp_path / "gradio"
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp), "GRADIO_TEMP_DIR": str(cache)}
    port = free_port()
    command = [sys.executable, "-m", "sgps_hf.cli", "demo", "--synthesizer", str(tiny_synth_dir), "--port", str(port)]
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(url, timeout=1).close()
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()
                time.sleep(0.5)
        with pytest.raises(AppError, match="No classifier yet"):
            Client(url, verbose=False).predict([handle_file(str(image_files["png"]))], 0.5, api_name="/predict")
        assert "rgb.png" in [p.name for p in cache.rglob("*") if p.is_file()]
        assert len(list(temp.glob("sgps-app-exports-*"))) == 1
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    # Gradio's multipart parser leaves an empty temp file per upload, which no Blocks tracks: none of the image
    assert not [p for p in cache.rglob("*") if p.is_file() and p.stat().st_size > 0]
    assert not list(temp.glob("sgps-app-exports-*"))
