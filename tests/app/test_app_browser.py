"""The app in a real browser (Debian chromium driven by Playwright): type, upload, synthesize, classify, screenshot.

Set SGPS_SCREENSHOT_OUT=docs/images/demo-app.png to also write the screenshot used by the docs.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from browser_testing import require_chromium, uploaded
from sgps_testing import SHARED_DATA

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("torch_single_thread")]

REAL_TASK = SHARED_DATA / "derm-smartphone-pad-ufes-20"

require_chromium()


def task_images(image_files: dict[str, Path]) -> tuple[list[tuple[str, str, list[Path]]], Path]:
    """Two classes to type in, with real smartphone photos when the shared data is there, else synthetic files."""
    if REAL_TASK.is_dir():
        pick = lambda cls, n: sorted((REAL_TASK / cls).iterdir())[:n]  # noqa: E731
        classes = [
            (
                "melanoma",
                "Asymmetric pigmented lesion with irregular notched borders and several shades of brown.",
                pick("melanoma", 2),
            ),
            (
                "nevus",
                "Small symmetric round macule of uniform brown colour with a smooth regular border.",
                pick("nevus", 2),
            ),
        ]
        return classes, sorted((REAL_TASK / "melanoma").iterdir())[5]
    classes = [
        ("melanoma", "Asymmetric dark lesion.", [image_files["png"], image_files["jpeg"]]),
        ("nevus", "Round brown macule.", [image_files["tiff"], image_files["dicom"]]),
    ]
    return classes, image_files["png2"]


def test_build_synthesize_and_classify_in_a_browser(app_server, browser, image_files, tmp_path):
    from playwright.sync_api import expect

    expect.set_options(timeout=30_000)
    _, url = app_server
    classes, try_image = task_images(image_files)
    page = browser.new_page(viewport={"width": 1280, "height": 1800})
    page.set_default_timeout(30_000)
    page.goto(url)
    page.locator("#task-name textarea").fill("skin-lesions")
    page.locator("#modality textarea").fill("smartphone photo")
    for i, (name, text, _files) in enumerate(classes):
        page.locator(f"#class-{i}-name textarea").fill(name)
        page.locator(f"#class-{i}-text textarea").fill(text)
    for i, (_name, _text, files) in enumerate(classes):
        page.locator(f"#class-{i}-images input[type=file]").set_input_files([str(f) for f in files])
        uploaded(page.locator(f"#class-{i}-images"), files[-1].name)
    page.locator("#add-class").click()
    page.locator("#class-2-name textarea").wait_for(state="visible")  # a third (empty) class slot appears
    page.locator("#synthesize").click()
    expect(page.locator("#status")).to_contain_text("Synthesized 2-class classifier")
    expect(page.locator("#support-thumbnails img")).to_have_count(4)  # the support images, as pictures per class
    page.get_by_text("Model card").first.click()  # the accordion renders the generated card
    expect(page.locator("#model-card")).to_contain_text("Support images and privacy")

    page.locator("#try-images input[type=file]").set_input_files([str(try_image)])
    uploaded(page.locator("#try-images"), try_image.name)
    page.locator("#predict").click()
    outcome = page.locator("#outcome")
    expect(outcome).to_contain_text(try_image.name)  # the outcome names the file
    assert any(name in outcome.inner_text() for name in ("melanoma", "nevus", "uncertain"))
    probabilities = page.locator("#probabilities").inner_text()
    assert "melanoma" in probabilities and "nevus" in probabilities and "%" in probabilities
    # results as pictures: one card per image with its saliency overlay, the outcome and the top classes as bars
    expect(page.locator("#results .sgps-card img").first).to_be_visible()
    expect(page.locator("#results .sgps-card")).to_contain_text(try_image.name)
    assert "coverage guarantee" in page.locator("#results").inner_text()
    assert str(app_server[0].sgps_synthesizer_path) not in page.content()  # no server path in the page
    screenshot = tmp_path / "demo-app.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 20_000
    if os.environ.get("SGPS_SCREENSHOT_OUT"):
        shutil.copyfile(screenshot, os.environ["SGPS_SCREENSHOT_OUT"])

    page.locator("#try-images button[aria-label='Clear']").first.click()
    page.locator("#try-images input[type=file]").set_input_files([str(image_files["text"])])
    uploaded(page.locator("#try-images"), "notes.png")
    page.locator("#predict").click()
    page.get_by_text("not a PNG, JPEG, TIFF or DICOM image").first.wait_for()  # the error is shown in the page
    expect(page.locator("#results")).not_to_contain_text(try_image.name)  # and the earlier results are gone

    page.locator("#class-0-name textarea").fill(classes[1][0])  # two classes with one name: synthesis fails
    page.locator("#synthesize").click()
    expect(page.locator("#status")).not_to_contain_text("Synthesized")  # no stale success message
    page.close()
