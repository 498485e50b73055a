"""The demo in a real browser: Debian's Chromium driven by Playwright against the app served on loopback, at desktop
size (1440 x 900) and phone size (390 x 844). Screenshots of each stage are left in test-artifacts/.

What a visitor sees is checked: the turned photo and both results in view together after a click, without
scrolling; on a phone the turned photo in view after a turn, the two results side by side; and the page's state
after each event (a refused upload, a replaced photo, a typed or keyed angle, segment everything, the sweep).
"""

from __future__ import annotations

import functools
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import expect, sync_playwright

import app
from app_server import serve, standin_models
from conftest import REPO

pytestmark = pytest.mark.slow  # Chromium driven through Playwright

CHROMIUM = "/usr/bin/chromium"  # Debian's package, installed by `make setup-dev`; never a downloaded browser
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = REPO / "test-artifacts"
TIMEOUT_MS = 180_000  # a model run on a busy 2-core CI machine
EVERYTHING = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}
DESKTOP, PHONE = {"width": 1440, "height": 900}, {"width": 390, "height": 844}
expect.set_options(timeout=TIMEOUT_MS)
PHOTO_CALLS: list[int] = []  # one entry per run of the photo handler


@pytest.fixture(scope="module")
def url(paper_canonicalizer, standin_sam_path):
    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} is missing: run `make setup-dev` (it installs Debian's chromium)"
    with pytest.MonkeyPatch.context() as patch:
        real = app.Handlers.photo

        @functools.wraps(real)  # the same signature, so that Gradio still passes the gr.Request
        def counted(self, *args, **kwargs):
            PHOTO_CALLS.append(1)
            return real(self, *args, **kwargs)

        patch.setattr(app.Handlers, "photo", counted)
        with serve(standin_models(paper_canonicalizer, standin_sam_path), everything_options=EVERYTHING) as address:
            yield address


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def open_page(browser, url, viewport):
    tab = browser.new_context(viewport=viewport).new_page()
    tab.set_default_timeout(TIMEOUT_MS)
    tab.goto(url)
    return tab


@pytest.fixture(scope="module")
def desktop(browser, url):
    return open_page(browser, url, DESKTOP)


@pytest.fixture(scope="module")
def phone(browser, url):
    return open_page(browser, url, PHONE)


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.wait_for_function("[...document.querySelectorAll('img')].every(i => i.complete)")
    page.screenshot(path=str(ARTIFACTS / f"browser-{name}.png"))


def image(page, selector: str) -> np.ndarray:
    """The picture an image panel shows, fetched the way the browser fetched it."""
    src = page.locator(f"{selector} img").first.get_attribute("src")
    return np.asarray(Image.open(io.BytesIO(page.request.get(src).body())).convert("RGB"))


def status(page):
    return page.locator("#status")


def pick_example(page, caption: str) -> None:
    """A click on an example, then the wait for SAM to be ready for it: after the turned photo has changed, for the
    status line may say "SAM is ready" of the photo before."""
    before = page.evaluate("document.querySelector('#view img')?.src || ''")
    page.locator("#examples").get_by_text(caption, exact=True).click()
    page.wait_for_function("(before) => (document.querySelector('#view img')?.src || '') !== before", arg=before)
    expect(status(page)).to_contain_text("SAM is ready")


def click_view(page, fx: float = 0.5, fy: float = 0.5) -> None:
    """A click on the turned photo, then the wait for the answer to that click (the canonicalized panel's new
    picture), not for an earlier "Done"."""
    before = page.evaluate("document.querySelector('#sam-canonicalized img')?.src || ''")
    view = page.locator("#view img").first
    box = view.bounding_box()
    view.click(position={"x": box["width"] * fx, "y": box["height"] * fy})
    page.wait_for_function("(before) => (document.querySelector('#sam-canonicalized img')?.src || '') !== before",
                           arg=before)
    expect(status(page)).to_contain_text("Done")


def visible_share(page, selector: str) -> float:
    """How much of an element lies inside the viewport (0 to 1), where the page is scrolled now."""
    return page.evaluate("""(selector) => {
        const r = document.querySelector(selector).getBoundingClientRect();
        const w = Math.max(0, Math.min(r.right, innerWidth) - Math.max(r.left, 0));
        const h = Math.max(0, Math.min(r.bottom, innerHeight) - Math.max(r.top, 0));
        return (w * h) / (r.width * r.height); }""", selector)


# ----------------------------------------------------------------------------------------------------- desktop


def test_a_refused_upload_says_so_and_leaves_the_box_empty(desktop, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes((REPO / "examples" / "animals_cat.jpg").read_bytes()[:3000])
    desktop.locator("#upload input[type=file]").set_input_files(str(broken))
    expect(status(desktop)).to_contain_text("⚠ broken.jpg could not be decoded")
    expect(desktop.locator("#upload img")).to_have_count(0)


def test_a_turned_example_shows_both_results_beside_the_photo_without_scrolling(desktop):
    pick_example(desktop, "horses 90°")
    turned = image(desktop, "#view")
    assert turned.shape == (640, 415, 3)  # the 640 x 415 horses, portrait now
    click_view(desktop)
    assert desktop.evaluate("window.scrollY") == 0
    for panel in ("#view", "#sam-alone", "#sam-canonicalized"):
        assert visible_share(desktop, panel) >= 0.5, panel
    for panel in ("#sam-alone", "#sam-canonicalized"):
        shown = image(desktop, panel)
        assert shown.shape == turned.shape
        assert (np.abs(shown.astype(int) - turned.astype(int)).sum(axis=2) > 30).mean() > 0.01, panel
    verdict = desktop.locator("#verdict")
    expect(verdict).to_contain_text("You turned the photo 90°: ✔ matches (assuming your photo was upright)")
    expect(verdict).to_contain_text("Agreement of the two panels")
    assert visible_share(desktop, "#verdict") > 0.9
    shot(desktop, "desktop-clicked")


def test_the_display_options_redraw_the_panels(desktop):
    before = image(desktop, "#sam-canonicalized")
    desktop.locator("#show").get_by_text("difference").click()
    expect(desktop.locator("#verdict")).to_contain_text("Magenta")
    assert not np.array_equal(image(desktop, "#sam-canonicalized"), before)
    desktop.locator("#show").get_by_text("best mask").click()
    expect(desktop.locator("#verdict")).not_to_contain_text("Magenta")  # redrawn before the next test clicks


def test_keyboard_shortcuts_choose_the_click_mode_and_undo(desktop):
    radios = desktop.locator("#mode input[type=radio]")
    desktop.locator("body").press("2")
    expect(radios.nth(1)).to_be_checked()
    desktop.locator("body").press("1")
    expect(radios.nth(0)).to_be_checked()
    click_view(desktop, 0.3, 0.7)  # a second point
    marked, before = image(desktop, "#view"), desktop.locator("#view img").first.get_attribute("src")
    desktop.locator("body").press("u")
    desktop.wait_for_function("(before) => document.querySelector('#view img')?.src !== before", arg=before)
    assert not np.array_equal(image(desktop, "#view"), marked)  # the point is gone from the photo
    expect(status(desktop)).to_contain_text("Done")


def test_a_typed_angle_applies_on_enter_and_the_arrow_keys_turn_too(desktop):
    number = desktop.locator("#angle input[type=number]")
    number.fill("180")
    number.press("Enter")
    expect(desktop.locator("#verdict")).to_contain_text("You turned the photo 180°")
    expect(status(desktop)).to_contain_text("Done")  # the click's prompts, answered at the new turn
    desktop.locator("#angle input[type=range]").focus()
    desktop.keyboard.press("ArrowRight")
    expect(desktop.locator("#verdict")).to_contain_text("plus a +1° tilt")
    desktop.get_by_role("button", name="90°", exact=True).click()
    expect(desktop.locator("#verdict")).to_contain_text("You turned the photo 90°:")
    expect(number).to_have_value("90")


def test_segment_everything_keeps_the_clicks(desktop):
    desktop.get_by_role("button", name="Segment everything").click()
    expect(status(desktop)).to_contain_text("Done")
    expect(desktop.locator("#verdict")).to_contain_text("areas covered")
    desktop.get_by_role("button", name="Undo").click()
    expect(desktop.locator("#verdict")).to_contain_text("the best masks")  # the click from before is back


def test_the_sweep_goes_stale_when_the_prompts_change_and_a_new_photo_clears_it(desktop):
    desktop.locator("#sweep-quarter-turns").click()
    expect(desktop.locator("#sweep-summary")).to_contain_text("SAM + canonicalizer 1.00 / 1.00 / 1.00")
    expect(desktop.locator("#sweep img")).to_have_count(8)
    shot(desktop, "desktop-sweep")
    desktop.locator("#sweep-tilts").click()  # beside it, the same prompts on the photo tilted
    expect(desktop.locator("#sweep-summary")).to_contain_text("photo tilted 15° / 30° / 45°")
    expect(desktop.locator("#sweep img")).to_have_count(8)
    expect(desktop.locator("#sweep")).to_contain_text("SAM+canon. 45°")
    desktop.locator("#sweep").scroll_into_view_if_needed()
    shot(desktop, "desktop-tilt-sweep")
    click_view(desktop, 0.3, 0.3)
    expect(desktop.locator("#sweep-summary")).to_contain_text("Outdated")
    calls = len(PHOTO_CALLS)
    desktop.locator("#upload input[type=file]").set_input_files(str(REPO / "examples" / "animals_cat.jpg"))
    expect(status(desktop)).to_contain_text("SAM is ready")  # the light step ("Photo loaded"), then SAM's
    assert len(PHOTO_CALLS) == calls + 1  # one run of the photo handler, not two
    expect(desktop.locator("#sweep")).to_be_hidden()
    expect(desktop.locator("#angle input[type=number]")).to_have_value("0")
    expect(desktop.locator("#sam-alone img")).to_have_count(0)


def test_the_tilt_stage_is_the_visitors_to_switch_on_and_off(desktop):
    """The server serves quarter turns only; a visitor ticks the box beside the turn and the canonicalizer reads the
    tilt and undoes it, SAM's masks following; unticked, the tilt is left again."""
    pick_example(desktop, "tower 270°")
    number = desktop.locator("#angle input[type=number]")
    number.fill("290")
    number.press("Enter")
    verdict = desktop.locator("#verdict")
    expect(verdict).to_contain_text("plus a +20° tilt it does not undo")
    click_view(desktop)
    box = desktop.locator("#tilt-stage input[type=checkbox]")
    expect(box).not_to_be_checked()
    box.check()
    expect(verdict).to_contain_text("looks tilted")
    expect(verdict).to_contain_text("matches within 5°")
    expect(status(desktop)).to_contain_text("Done")
    shot(desktop, "desktop-tilt-stage")
    box.uncheck()
    expect(verdict).to_contain_text("tilt it does not undo")
    expect(status(desktop)).to_contain_text("Done")


def test_the_sam_menu_shows_its_names_whole(desktop):
    field = desktop.locator("#sam-size input").first
    assert field.evaluate("e => e.scrollWidth <= e.clientWidth + 1"), field.input_value()


# ------------------------------------------------------------------------------------------------------- phone


def test_on_a_phone_a_turn_brings_the_photo_into_view_and_the_results_sit_side_by_side(phone):
    pick_example(phone, "cat 180°")
    phone.get_by_role("button", name="90°", exact=True).click()
    expect(phone.locator("#verdict")).to_contain_text("You turned the photo 90°")
    phone.wait_for_function("document.querySelector('#view').getBoundingClientRect().top < innerHeight / 2")
    assert visible_share(phone, "#view") >= 0.5
    click_view(phone)
    alone, canonicalized = (phone.locator(s).bounding_box() for s in ("#sam-alone", "#sam-canonicalized"))
    assert abs(alone["y"] - canonicalized["y"]) < 2 and canonicalized["x"] > alone["x"] + alone["width"] - 1
    assert canonicalized["x"] + canonicalized["width"] <= PHONE["width"]
    phone.locator("#sam-alone").scroll_into_view_if_needed()
    shot(phone, "phone-clicked")
    tilt_stage = phone.locator("#tilt-stage")  # the turn's controls whole on the screen, the tilt stage's too
    tilt_stage.scroll_into_view_if_needed()
    box = tilt_stage.bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
    shot(phone, "phone-turn-controls")


def test_on_a_phone_the_sweep_shows_every_column_and_the_table_keeps_its_words(phone):
    for button in phone.locator("#sweep-quarter-turns, #sweep-tilts").all():  # both whole on the screen
        box = button.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
    phone.locator("#sweep-quarter-turns").click()
    expect(phone.locator("#sweep img")).to_have_count(8)
    boxes = [img.bounding_box() for img in phone.locator("#sweep img").all()]
    assert len({round(b["y"]) for b in boxes}) == 2  # two rows of four
    assert all(b["x"] >= 0 and b["x"] + b["width"] <= PHONE["width"] for b in boxes)
    cells = phone.locator("#details td")
    assert cells.count() > 0 and all(c.evaluate("e => getComputedStyle(e).whiteSpace") == "nowrap"
                                     for c in cells.all())
    phone.locator("#sweep").scroll_into_view_if_needed()
    shot(phone, "phone-sweep")
