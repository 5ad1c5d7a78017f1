"""The app's segmentation tab in a real browser (Debian chromium driven by Playwright): upload example images with
their masks, synthesize with the bundled segmentation synthesizer, segment a new image, read the overlay the page
shows back and check it is the segmenter's own mask, open the card, build the zip, and see a bad upload explained.

Uses five real thyroid-ultrasound examples from ../shared/data-seg when it is there, else synthetic bright discs.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from browser_testing import require_chromium, uploaded
from PIL import Image
from seg_testing import write_task_folder

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("torch_single_thread")]

REAL_SEG_TASK = Path(__file__).resolve().parents[2] / ".." / "shared" / "data-seg" / "ultrasound-thyroid-nodule"

require_chromium()


def seg_files(tmp_path: Path) -> tuple[str, list[Path], list[Path], Path]:
    """(label, 5 example images, their masks, one new image)."""
    if REAL_SEG_TASK.is_dir():
        images = sorted((REAL_SEG_TASK / "images").iterdir())
        masks = {p.stem: p for p in (REAL_SEG_TASK / "masks" / "nodule").iterdir()}
        with_mask = [p for p in images if p.stem in masks and np.asarray(Image.open(masks[p.stem])).any()]
        return "nodule", with_mask[:5], [masks[p.stem] for p in with_mask[:5]], with_mask[10]
    folder = write_task_folder(tmp_path / "task", 6, size=(64, 48))
    images = sorted((folder / "images").iterdir())
    masks = sorted((folder / "masks" / "lesion").iterdir())
    return "lesion", images[:5], masks[:5], images[5]


def red_pixels(overlay: np.ndarray, original: np.ndarray) -> np.ndarray:
    """Where the page's overlay was tinted towards the app's red (OVERLAY_COLOUR) relative to the original image."""
    diff = overlay.astype(np.float32) - original.astype(np.float32)
    return (diff[..., 0] - diff[..., 1] > 20) & (diff[..., 0] - diff[..., 2] > 20)


def test_segmentation_tab_in_a_browser(app_server, browser, tmp_path):
    from playwright.sync_api import expect

    from sgps_hf import SegmentationTask
    from sgps_hf.app.segmentation import get_synthesizer
    from sgps_hf.imaging import load_image

    expect.set_options(timeout=60_000)
    _, url = app_server
    label, images, masks, new_image = seg_files(tmp_path)
    page = browser.new_page(viewport={"width": 1280, "height": 2200})
    page.set_default_timeout(60_000)
    page.goto(url)
    page.get_by_role("tab", name="Segmentation").click()
    page.locator("#seg-name textarea").fill(label)
    page.locator("#seg-description textarea").fill("Hypoechoic thyroid nodule")
    page.locator("#seg-images input[type=file]").set_input_files([str(p) for p in images])
    uploaded(page.locator("#seg-images"), images[-1].name)
    page.locator("#seg-masks input[type=file]").set_input_files([str(p) for p in masks])
    uploaded(page.locator("#seg-masks"), masks[-1].name)
    page.locator("#seg-synthesize").click()
    expect(page.locator("#seg-status")).to_contain_text(f"Synthesized a segmenter for {label} from 5 example(s)")
    page.get_by_text("Model card").last.click()
    expect(page.locator("#seg-card")).to_contain_text("Not for clinical use")

    page.locator("#seg-query input[type=file]").set_input_files([str(new_image)])
    uploaded(page.locator("#seg-query"), new_image.name)
    page.locator("#seg-predict").click()
    expect(page.locator("#seg-outcome")).to_contain_text("Segmented 1 image(s)")
    expect(page.locator("#seg-outcome")).to_contain_text("not for clinical use")
    shown = page.locator("#seg-gallery img").first
    expect(shown).to_be_visible()
    expect(page.locator("#seg-gallery")).to_contain_text(f"% {label}")
    # the overlay the page shows is the segmenter's own mask: the same examples synthesized here give the same pixels
    source = shown.get_attribute("src")
    body = page.request.get(source if source.startswith("http") else url + "/" + source.lstrip("/")).body()
    overlay = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))
    original = load_image(new_image)
    assert overlay.shape[:2] == (original.height, original.width)
    expected = (
        get_synthesizer()
        .synthesize(SegmentationTask(label, list(zip(images, masks, strict=False))))
        .predict([original])[0]
    )
    assert expected.sum() > 50  # a non-trivial mask, so the comparison can fail
    red = red_pixels(overlay, np.asarray(original.convert("RGB")))
    dice = 2 * (red & expected).sum() / (red.sum() + expected.sum())
    assert dice > 0.95, dice

    page.locator("#seg-download").click()
    expect(page.locator("#seg-zip")).to_contain_text("segmenter")
    expect(page.locator("#seg-push-status")).to_contain_text("pipeline('image-segmentation'")
    page.screenshot(path=str(tmp_path / "seg-tab.png"), full_page=True)
    assert (tmp_path / "seg-tab.png").stat().st_size > 20_000

    # a bad upload (fewer masks than images) is explained in the page, not a crash
    page.locator("#seg-masks button[aria-label='Clear']").first.click()
    page.locator("#seg-masks input[type=file]").set_input_files([str(p) for p in masks[:2]])
    uploaded(page.locator("#seg-masks"), masks[1].name)
    page.locator("#seg-synthesize").click()
    expect(page.locator("#seg-status")).to_contain_text("5 images but 2 masks")
    page.close()
