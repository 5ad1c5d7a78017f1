"""What the browser tests of the app share: the headless Chromium they drive and Gradio upload waiting."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def require_chromium() -> None:
    """Skip the calling test module without Chromium, except on CI (CI=true), where the browser tests are mandatory."""
    if not CHROMIUM.exists() and not os.environ.get("CI"):
        pytest.skip(
            f"{CHROMIUM} is missing (apt-get install -y chromium); CI=true makes this test mandatory",
            allow_module_level=True,
        )


def uploaded(component, file_name: str) -> None:
    """Wait until a File component lists ``file_name`` (shown as "<stem> <suffix>") and has finished uploading."""
    from playwright.sync_api import expect

    expect(component).to_contain_text(Path(file_name).stem)
    expect(component).not_to_contain_text("Uploading")
