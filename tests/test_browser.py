"""The demo in a real browser: Debian's Chromium driven by Playwright against the app served on loopback.

A visitor uploads a photo, turns it by 90 degrees and clicks on it; both result panels must then show a mask and the
canonicalizer's chart must have followed the turn. A screenshot of the page is left in test-artifacts/.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect, sync_playwright

from app_server import serve, standin_models
from conftest import REPO

pytestmark = pytest.mark.slow  # Chromium driven through Playwright

CHROMIUM = "/usr/bin/chromium"  # Debian's package, installed by `make setup`; never a downloaded browser
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = REPO / "test-artifacts"
TIMEOUT_MS = 180_000  # a model run on a busy 2-core CI machine
expect.set_options(timeout=TIMEOUT_MS)


@pytest.fixture(scope="module")
def url(paper_canonicalizer, standin_sam_path):
    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} is missing: run `make setup` (it installs Debian's chromium)"
    with serve(standin_models(paper_canonicalizer, standin_sam_path)) as address:
        yield address


@pytest.fixture(scope="module")
def page(url):
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        tab = context.new_page()
        tab.set_default_timeout(TIMEOUT_MS)
        tab.goto(url)
        yield tab
        browser.close()


def _image(page, selector: str) -> np.ndarray:
    """The picture an image panel shows, fetched the way the browser fetched it."""
    src = page.locator(f"{selector} img").first.get_attribute("src")
    return np.asarray(Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB"))


def _top_class(page) -> str:
    return page.locator("#probabilities h2").first.inner_text().strip()


def test_a_corrupt_upload_gets_a_message_in_the_page(page, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes((REPO / "examples" / "animals_cat.jpg").read_bytes()[:3000])
    page.locator("#upload input[type=file]").set_input_files(str(broken))
    expect(page.locator("#status")).to_contain_text("⚠ broken.jpg could not be decoded")


def test_an_example_loads_with_one_click(page):
    page.get_by_role("button", name="horses").click()
    expect(page.locator("#status")).to_contain_text("Photo loaded")
    assert _image(page, "#view").shape == (415, 640, 3)


def test_upload_turn_click_shows_both_masks(page):
    page.locator("#upload input[type=file]").set_input_files(str(REPO / "examples" / "animals_cat.jpg"))
    expect(page.locator("#status")).to_contain_text("Photo loaded")
    expect(page.locator("#probabilities")).to_contain_text("turned 0°")
    upright_top = _top_class(page)

    page.get_by_role("button", name="90°", exact=True).click()
    expect(page.locator("#probabilities h2").first).to_have_text("turned 90°")
    assert upright_top == "turned 0°"  # the chart followed the turn
    view = page.locator("#view img").first
    expect(view).to_be_visible()
    turned = _image(page, "#view")
    assert turned.shape[:2] == (640, 480)  # the 480 x 640 cat, portrait now

    box = view.bounding_box()
    view.click(position={"x": box["width"] / 2, "y": box["height"] / 2})
    expect(page.locator("#details")).to_contain_text("Agreement")
    for panel in ("#sam-alone", "#sam-canonicalized"):
        shown = _image(page, panel)
        assert shown.shape == turned.shape
        tinted = np.abs(shown.astype(int) - turned.astype(int)).sum(axis=2) > 30
        assert tinted.mean() > 0.01, f"{panel} shows no mask"
    expect(page.locator("#details")).to_contain_text("blue: score")
    expect(page.locator("#panel-note")).to_contain_text("Same colour")

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser.png"), full_page=True)


def test_sweep_shows_both_rows(page):
    """After the click above: the sweep's gallery, SAM alone on top, the canonicalized row identical at every turn."""
    page.get_by_role("button", name="Run sweep").click()
    expect(page.locator("#sweep-summary")).to_contain_text("SAM + canonicalizer 1.00 / 1.00 / 1.00")
    expect(page.locator("#sweep img")).to_have_count(8)
    page.screenshot(path=str(ARTIFACTS / "browser-sweep.png"), full_page=True)
