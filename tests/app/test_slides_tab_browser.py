"""The app's Slides tab in a real browser (Chromium + Playwright): upload a slide per class, synthesize, screen a new
slide, see the heatmap, the top tiles and the card."""

from __future__ import annotations

import pytest
from browser_testing import require_chromium, uploaded
from test_slides_tab import write_slides

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("torch_single_thread")]

require_chromium()


def test_slides_tab_in_a_browser(app_server, browser, tmp_path):
    from playwright.sync_api import expect

    expect.set_options(timeout=60_000)
    _, url = app_server
    slides = write_slides(tmp_path / "slides")
    page = browser.new_page(viewport={"width": 1280, "height": 2400})
    page.set_default_timeout(60_000)
    page.goto(url)
    page.get_by_role("tab", name="Slides").click()
    page.locator("#slides-task-name textarea").fill("toy-slides")
    for i, name in enumerate(("pink", "purple")):
        page.locator(f"#slides-class-{i} textarea").fill(name)
        page.locator(f"#slides-files-{i} input[type=file]").set_input_files([str(slides[name][0])])
        uploaded(page.locator(f"#slides-files-{i}"), slides[name][0].name)
    page.locator("#slides-synthesize").click()
    expect(page.locator("#slides-status")).to_contain_text("Synthesized a slide classifier for toy-slides")
    page.locator("#slides-query input[type=file]").set_input_files([str(slides["purple"][1])])
    uploaded(page.locator("#slides-query"), slides["purple"][1].name)
    page.locator("#slides-screen").click()
    expect(page.locator("#slides-outcome")).to_contain_text("purple-1.tiff")
    expect(page.locator("#slides-outcome")).to_contain_text("tissue tiles")
    for element in ("#slides-heatmap img", "#slides-top-tiles img", "#slides-overlay img"):
        expect(page.locator(element).first).to_be_visible()
    page.get_by_text("Model card").last.click()
    expect(page.locator("#slides-card")).to_contain_text("Whole-slide use")
    page.locator("#slides-download").click()
    expect(page.locator("#slides-zip-status")).to_contain_text("slide_rule.json")
