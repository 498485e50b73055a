"""The demo without a browser: the session and models of canon.demo, app.py's event functions called directly (clicks
built as gr.SelectData), the named API through gradio_client against the app on loopback, and the command line.

SAM is the 2-block stand-in of conftest.py, loaded on first use through the real path; the canonicalizer is the
paper's. Photos and rotations are reused across tests, since the canonicalizer caches per photo.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import gradio as gr
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

import app
from app_server import received, serve, standin_models
from canon import geometry, maskio
from canon.runtime import image_digest
from benchmarks.app_memory import free_port
from canon.demo import CLICK_KINDS, SHOW, Click, ExportFolder, Models, Session, run
from canon.render import PALETTE, PALETTE_NAMES
from canon.prompts import MAX_POINTS
from conftest import REPO

CAT = REPO / "examples" / "animals_cat.jpg"  # 480 x 640
OBJECT, BACKGROUND, BOX = app.CLICK_MODES  # the radio's labels
EVERYTHING = {"points_per_side": 4, "pred_iou_thresh": 0.0, "stability_score_thresh": 0.0}  # quick, and the
# stand-in's random masks pass


@pytest.fixture(scope="module")
def models(paper_canonicalizer, standin_sam_path, tmp_path_factory):
    missing = tmp_path_factory.mktemp("no-sam") / "sam_vit_b_01ec64.pth"
    return standin_models(paper_canonicalizer, standin_sam_path, missing=str(missing))


@pytest.fixture(scope="module")
def handlers(models):
    return app.Handlers(models, everything_options=EVERYTHING)


@pytest.fixture(scope="module")
def loaded(handlers) -> app.Page:
    return handlers.photo(None, received(handlers, str(CAT)))


def select(x: int, y: int) -> gr.SelectData:
    """A click on pixel (column x, row y) of the displayed image, as Gradio reports it."""
    return gr.SelectData(None, {"index": [x, y], "value": None})


def top(page: app.Page) -> str:
    return max(page.probabilities, key=page.probabilities.get)


def downloaded_masks(page: app.Page, name: str) -> np.ndarray:
    path = next(p for p in page.downloads if Path(p).name == f"{name}.json")
    return maskio.masks_from_coco(json.loads(Path(path).read_text()))[0]


def tinted(page_image: np.ndarray, plain: np.ndarray) -> float:
    """Share of pixels an overlay changed."""
    return float((np.abs(page_image.astype(int) - plain.astype(int)).sum(axis=2) > 30).mean())


# --------------------------------------------------------------------------------------------- session, models


def test_export_folder_keeps_the_latest_exports_only(models, loaded):
    session = loaded.session.clicked(320.5, 240.5, "object")
    result = run(models, session, "standin").result
    exports = ExportFolder(keep=2)
    paths = [exports.save({"sam_alone": result.sam}) for _ in range(3)]
    assert [len(p) for p in paths] == [2, 2, 2]
    assert not paths[0][0].exists() and all(p.exists() for p in paths[1] + paths[2])


# ---------------------------------------------------------------------------------------------- event functions


class Screen:
    """What one visitor's page shows, event after event, as Gradio keeps it: each output's latest value (an event's
    SKIP leaves it as it was). ``light`` runs a light event; ``then_sam`` then runs the heavy step that follows it, for
    the session the page holds by then, and keeps every status line it showed."""

    def __init__(self, handlers, sam: str = "standin", multimask: bool = True, show: str = SHOW[0],
                 opacity: float = 0.35):
        self.handlers, self.options = handlers, [sam, multimask, show, opacity]
        self.values = {name: None for name in app.Page._fields} | {"session": None, "shown": None}
        self.statuses: list[str] = []

    def __getattr__(self, name):
        return self.__dict__["values"][name] if name in app.Page._fields else super().__getattribute__(name)

    def apply(self, page: app.Page) -> app.Page:
        for name, value in page._asdict().items():
            if value is not app.SKIP:
                self.values[name] = value
        if getattr(page, "status", app.SKIP) is not app.SKIP:
            self.statuses.append(page.status)
        return page

    def light(self, event, *args, request=None) -> "Screen":
        self.apply(event(*args, request=request) if request is not None else event(*args))
        return self

    def then_sam(self, request=None) -> "Screen":
        for page in self.handlers.sam_step(self.session, self.shown, *self.options, request=request):
            self.apply(page)
        return self

    def load(self, path) -> "Screen":
        return self.light(self.handlers.photo, self.session, received(self.handlers, str(path))).then_sam()

    def click(self, x: int, y: int, mode: str = OBJECT) -> "Screen":
        return self.light(self.handlers.click, self.session, self.shown, mode, select(x, y)).then_sam()

    def turn(self, angle) -> "Screen":
        return self.light(self.handlers.rotate, self.session, self.shown, angle).then_sam()


class Visitor:
    """A stand-in for Gradio's request: the session hash that names one visitor."""

    def __init__(self, name: str):
        self.session_hash = name


@pytest.fixture
def screen(handlers) -> Screen:
    return Screen(handlers).load(CAT)


def test_every_palette_colour_has_a_name():
    assert len(PALETTE_NAMES) == len(PALETTE) == len(set(PALETTE_NAMES))
    assert set(app.CLICK_MODES.values()) == set(CLICK_KINDS)


def test_a_new_photo_shows_the_canonicalizer_at_once(loaded):
    assert "Photo loaded" in loaded.status and not loaded.status.startswith("⚠")
    assert loaded.view.shape == (480, 640, 3) and loaded.session.photo.shape == (480, 640, 3)
    assert set(loaded.probabilities) == {"turned 0°", "turned 90°", "turned 180°", "turned 270°"}
    assert top(loaded) == "turned 0°" and loaded.angle == 0
    assert loaded.canonical.shape == (480, 640, 3)
    assert loaded.sam is None and loaded.canonicalized is None and loaded.downloads is None
    assert "**Canonicalizer:**" in loaded.details and "Both panels see the same image" in loaded.verdict


def test_sam_embeds_the_photo_before_the_first_click(handlers, models, tmp_path):
    """Embedding ahead: once the heavy step after a photo or turn has run, a click runs the decoders only; the
    canonical image is embedded first, and once for every turn of the photo."""
    mirrored = tmp_path / "mirrored_cat.png"  # a photo no other test has embedded
    Image.open(CAT).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirrored)
    screen = Screen(handlers).load(mirrored)
    assert any("image embedding 1 of 1: the image the canonicalizer hands SAM" in s for s in screen.statuses)
    screen.statuses.clear()
    screen.turn(270)
    assert "SAM is ready" in screen.status
    assert [s for s in screen.statuses if "image embedding" in s] == [
        "⏳ SAM's image embedding 1 of 1: the turned photo, for SAM alone (about 1 s here, once per photo and "
        "turn; your clicks are kept meanwhile)…"]
    backend = models.sam("standin")
    assert backend.has_embedding(screen.session.view())
    screen.click(240, 320)
    assert screen.status.startswith("Done") and "| image encoder | cached | cached |" in screen.details


def test_turn_then_click_shows_both_results(screen):
    screen.light(screen.handlers.turn(90), screen.session, screen.shown).then_sam()
    assert screen.angle == 90 and screen.view.shape == (640, 480, 3) and top(screen) == "turned 90°"
    assert "You turned the photo 90°: ✔ matches (assuming your photo was upright)" in screen.verdict
    assert screen.sam is None
    before = screen.view
    screen.click(240, 320)
    assert not screen.status.startswith("⚠"), screen.status
    for panel in (screen.sam, screen.canonicalized):
        assert panel.shape == (640, 480, 3) and tinted(panel, before) > 0.01
    assert "Agreement of the two panels" in screen.verdict and "blue: score" in screen.details
    assert sorted(Path(p).name for p in screen.downloads) == [
        "sam_alone.json", "sam_alone.png", "sam_canonicalized.json", "sam_canonicalized.png"]
    assert downloaded_masks(screen, "sam_canonicalized").shape == (3, 640, 480)


def test_prompts_turn_with_the_photo_and_the_canonicalized_masks_exactly(screen):
    screen.click(320, 240)
    upright = downloaded_masks(screen, "sam_canonicalized")
    for angle in (90, 270):
        screen.turn(angle)
        k = angle // 90
        assert np.array_equal(downloaded_masks(screen, "sam_canonicalized"), geometry.rotate_masks(upright, k))
        np.testing.assert_allclose(screen.session.prompts().points,
                                   geometry.rotate_points([[320.5, 240.5]], k, (480, 640)))


def test_the_slider_release_after_its_input_does_nothing_twice(screen):
    screen.turn(90)
    assert screen.handlers.rotate(screen.session, screen.shown, 90) == app.Page()


def test_a_box_takes_two_clicks(screen):
    screen.click(100, 80, BOX)
    assert "opposite corner" in screen.status and screen.sam is None
    screen.click(400, 300, BOX)
    assert screen.session.prompts().box.tolist() == [100.5, 80.5, 400.5, 300.5]
    assert screen.sam is not None and len(downloaded_masks(screen, "sam_alone")) == 3


def test_background_points_undo_and_clear(handlers):
    screen = Screen(handlers, multimask=False).load(CAT).click(320, 240).click(20, 20, BACKGROUND)
    assert screen.session.prompts().labels.tolist() == [1, 0]
    assert len(downloaded_masks(screen, "sam_alone")) == 1  # multimask off
    screen.light(handlers.undo, screen.session, screen.shown).then_sam()
    assert screen.session.prompts().labels.tolist() == [1] and screen.sam is not None
    screen.light(handlers.clear, screen.session, screen.shown).then_sam()
    assert not screen.session.has_prompts and screen.sam is None and screen.downloads is None
    assert screen.probabilities is not None and "Agreement" not in screen.verdict


def test_a_free_angle_keeps_its_tilt_and_says_so(screen):
    screen.turn(100)
    assert screen.view.shape[:2] == geometry.free_rotated_size((480, 640), 100) and top(screen) == "turned 90°"
    assert "You turned the photo 90° plus a +10° tilt it does not undo" in screen.verdict
    assert f"Tick *{app.TILT_STAGE}*" in screen.verdict
    session = screen.session
    corner = screen.handlers.click(session, screen.shown, OBJECT, select(1, 1))
    assert corner.status.startswith("⚠ that click is in a corner") and corner.session is app.SKIP
    assert all(value is app.SKIP for name, value in corner._asdict().items() if name != "status")


def test_segment_everything_keeps_the_clicks(screen):
    screen.click(320, 240)
    clicks = screen.session.clicks
    screen.light(screen.handlers.everything, screen.session, screen.shown).then_sam()
    assert screen.session.everything and not screen.status.startswith("⚠")
    assert screen.sam is not None and "areas covered" in screen.verdict
    assert re.search(r"\| masks \| \d+ masks \| \d+ masks \|", screen.details)
    screen.light(screen.handlers.undo, screen.session, screen.shown).then_sam()
    assert not screen.session.everything and screen.session.clicks == clicks  # the prompts from before


def test_segment_everything_without_masks_says_so(models):
    handlers = app.Handlers(models, everything_options=EVERYTHING | {"pred_iou_thresh": 2.0})  # no mask passes
    screen = Screen(handlers).load(CAT)
    screen.light(handlers.everything, screen.session, screen.shown).then_sam()
    assert screen.status == "SAM found no masks on this photo, in either panel."
    assert "SAM found no masks in either panel" in screen.verdict and "IoU" not in screen.verdict


def test_display_options_redraw_without_sam(screen, monkeypatch):
    screen.turn(90).click(240, 320)
    best = screen.sam
    monkeypatch.setattr(screen.handlers, "_encode", None)  # no model may run now
    monkeypatch.setattr(app, "run", None)
    screen.light(screen.handlers.redraw, screen.session, screen.shown, "difference", 0.35)
    assert not np.array_equal(screen.sam, best) and "Magenta" in screen.verdict
    screen.light(screen.handlers.redraw, screen.session, screen.shown, "best mask", 0.0)
    assert not np.array_equal(screen.sam, best)  # no fill, outlines only
    refused = screen.handlers.redraw(screen.session, screen.shown, "sideways", 0.3)
    assert refused.status.startswith("⚠ show one of")


def test_sweep_shows_the_canonicalized_row_identical_and_goes_stale(screen):
    page = screen.handlers.sweep("quarter turns")(screen.session, screen.shown, "standin", True)
    assert page.sweep_summary.startswith("⚠ add a point") and not page.sweep.visible
    screen.click(320, 240)
    screen.light(screen.handlers.sweep("quarter turns"), screen.session, screen.shown, "standin", True)
    assert screen.sweep.visible and len(screen.sweep.value) == 8
    assert "SAM + canonicalizer 1.00 / 1.00 / 1.00" in screen.sweep_summary
    screen.turn(180)  # a quarter turn: the sweep still holds
    assert "1.00 / 1.00 / 1.00" in screen.sweep_summary
    screen.click(100, 100)
    assert screen.sweep_summary == app.SWEEP_OUTDATED
    screen.load(CAT)  # a new photo: no sweep, the turn back at 0
    assert not screen.sweep.visible and screen.sweep_summary == app.SWEEP_INTRO and screen.angle == 0


def test_clicks_made_while_sam_works_are_kept(handlers):
    """Two clicks before the heavy step runs: it answers both; a heavy step overtaken by a newer one stops."""
    visitor = Visitor("two-clicks")
    screen = Screen(handlers).load(CAT)
    screen.light(handlers.click, screen.session, screen.shown, OBJECT, select(320, 240), request=visitor)
    first = screen.session
    screen.light(handlers.click, screen.session, screen.shown, OBJECT, select(100, 100), request=visitor)
    assert list(handlers.sam_step(first, screen.shown, "standin", True, SHOW[0], 0.35, request=visitor)) == [app.Page()]
    screen.then_sam(request=visitor)
    assert len(screen.session.clicks) == 2 and screen.status.startswith("Done")
    assert screen.shown.request == handlers.request_key(screen.session, "standin", True)
    [again] = handlers.sam_step(screen.session, screen.shown, "standin", True, SHOW[0], 0.35)  # shown already:
    assert again == app.Page(status=screen.status)  # the status line only, nothing computed or redrawn


class ZeroGpuSpaces:
    """A stand-in for Hugging Face's ``spaces`` package as ZeroGPU runs it: a ``spaces.GPU`` function runs in a
    worker process, so its arguments and result cross pickled; every call is counted, and ``inside`` says whether
    one is running."""

    def __init__(self):
        self.calls, self.inside = 0, False

    def GPU(self, duration: int):  # noqa: N802 -- the package's name
        def wrap(fn):
            def call(*args, **kwargs):
                args, kwargs = pickle.loads(pickle.dumps((args, kwargs)))
                self.calls, self.inside = self.calls + 1, True
                try:
                    result = fn(*args, **kwargs)
                finally:
                    self.inside = False
                return pickle.loads(pickle.dumps(result))
            return call
        return wrap


def test_zerogpu_makes_the_gpu_calls_the_embeddings_need_and_none_per_click(paper_canonicalizer, standin_sam_path,
                                                                             monkeypatch):
    spaces = ZeroGpuSpaces()
    monkeypatch.setattr(app, "spaces", spaces)
    models = Models(paper_canonicalizer, {"standin": str(standin_sam_path)}, device="cpu")
    handlers = app.Handlers(models)
    model = models.sam("standin").model
    runs = {"encoder": [], "decoder": []}  # for each run of SAM's image encoder, and of its prompt encoder (the
    # decoder's first step): whether it ran inside a GPU call
    model.image_encoder.register_forward_pre_hook(lambda module, args: runs["encoder"].append(spaces.inside))
    model.prompt_encoder.register_forward_pre_hook(lambda module, args: runs["decoder"].append(spaces.inside))
    screen = Screen(handlers).load(CAT).turn(90)
    for x, y in [(240, 320), (100, 100), (400, 500), (200, 150), (300, 600)]:  # the view is 480 x 640 now
        screen.click(x, y)
        assert screen.status.startswith("Done") and screen.sam is not None
    segmenter = models.segmenter("standin")
    needed = {image_digest(image) for angle in (0, 90)
              for _, image in segmenter.images_needed(Session().with_photo(screen.session.photo, angle).view())}
    assert spaces.calls == len(needed) == len(runs["encoder"])  # 3, or 2 when the photo is canonical at 0 or 90
    assert all(runs["encoder"])
    assert len(runs["decoder"]) >= 5 and not any(runs["decoder"])  # the clicks ran on this side, no GPU call


def test_an_undo_before_the_newer_answer_says_done(handlers):
    """A click, a second click and its undo before SAM answers it: the panels show the first click's answer
    already, and the status says so instead of "working"."""
    visitor = Visitor("quick-undo")
    screen = Screen(handlers).load(CAT).click(320, 240)
    screen.light(handlers.click, screen.session, screen.shown, OBJECT, select(100, 100), request=visitor)
    screen.light(handlers.undo, screen.session, screen.shown, request=visitor)
    assert screen.status.startswith("⏳")
    screen.then_sam(request=visitor)
    assert screen.status.startswith("Done") and len(screen.session.clicks) == 1


def test_with_the_tilt_stage_the_verdict_says_the_tilt_found(handlers, paper_canonicalizer, standin_sam_path):
    tilting = app.Handlers(standin_models(paper_canonicalizer.with_tilt(), standin_sam_path))
    for each, says in ((tilting, "looks tilted **+"), (handlers, "tilt it does not undo")):
        session = each.example(None, gr.SelectData(None, {"index": 2, "value": None})).session  # the tower
        verdict = each.rotate(session, None, 20).verdict
        assert "You turned the photo 0° plus a +20° tilt" in verdict and says in verdict


def test_a_visitor_switches_the_tilt_stage_on_and_keeps_it_for_the_next_photo(handlers):
    """The server serves quarter turns only; one visitor ticks the tilt stage: the verdict reads the tilt, SAM's
    masks are made again for the new canonical image, a sweep on the page is outdated, and the choice outlives the
    photo. Anything but a yes or a no is refused."""
    screen = Screen(handlers).light(handlers.example, None, gr.SelectData(None, {"index": 2, "value": None}))
    height, width = screen.session.photo.shape[:2]
    screen.then_sam().click(width // 2, height // 2)
    screen.light(handlers.sweep("tilts"), screen.session, screen.shown, "standin", True)
    screen.turn(20)
    assert screen.session.tilt_stage is False and "tilt it does not undo" in screen.verdict
    before = screen.shown.outcome.canonicalization

    screen.light(handlers.tilt_stage, screen.session, screen.shown, True)
    assert screen.session.tilt_stage is True and screen.status.startswith("⏳ Updating SAM's masks")
    assert "looks tilted **+" in screen.verdict and "does not undo" not in screen.verdict
    assert screen.sweep_summary == app.SWEEP_OUTDATED  # the sweep was made without the stage
    screen.then_sam()
    after = screen.shown.outcome.canonicalization
    assert screen.status.startswith("Done") and before.tilt_deg == 0 and after.tilt_deg != 0
    assert screen.shown.request == handlers.request_key(screen.session, "standin", True)
    assert after.canonical_image.shape != before.canonical_image.shape  # untilted onto a larger canvas

    tower = screen.session.photo_id
    screen.light(handlers.example, screen.session, gr.SelectData(None, {"index": 0, "value": None}))
    assert screen.session.tilt_stage is True and screen.session.photo_id != tower
    cleared = handlers.photo(screen.session, None)
    assert cleared.session.tilt_stage is True and cleared.session.photo is None
    for hostile in ("yes", 1, None, {"value": True}):
        page = handlers.tilt_stage(screen.session, screen.shown, hostile)
        assert page.status == f"⚠ *{app.TILT_STAGE}* is a yes or a no." and page.session is app.SKIP
    off = handlers.tilt_stage(cleared.session, None, False)
    assert off.session.tilt_stage is False and off.view is app.SKIP  # no photo: the choice only
    # Gradio dropped the session after a long idle: the box, still ticked, decides for the next photo.
    assert handlers.example(None, gr.SelectData(None, {"index": 0, "value": None}), True).session.tilt_stage
    assert handlers.photo(None, None, True).session.tilt_stage is True
    again = handlers.tilt_stage(handlers.tilt_stage(screen.session, None, False).session, None, True).session
    assert again.key == screen.session.key  # off and on again: the same request


def _undone(summary: str) -> list[float]:
    """The turns the canonicalizer undid, as a tilt sweep's summary lists them (signed, one decimal)."""
    return [float(a) for a in re.findall(r"([+-]\d+\.\d)°", summary.split("the canonicalizer undid")[1])]


def test_the_tilt_sweep_follows_the_tilts_with_the_tilt_stage_only(handlers, paper_canonicalizer,
                                                                   standin_sam_path):
    tilting = app.Handlers(standin_models(paper_canonicalizer.with_tilt(), standin_sam_path))
    tilts = app.SWEEPS["tilts"]
    for each in (tilting, handlers):
        screen = Screen(each).light(each.example, None, gr.SelectData(None, {"index": 2, "value": None}))  # tower
        height, width = screen.session.photo.shape[:2]
        screen.then_sam().click(width // 2, height // 2)
        screen.light(each.sweep("tilts"), screen.session, screen.shown, "standin", True)
        assert screen.sweep.visible and len(screen.sweep.value) == 2 * len(tilts)
        captions = [item["caption"] for item in screen.sweep.value]
        assert [c.split(" · ")[0] for c in captions] == [f"{n} {a}°" for n in ("SAM", "SAM+canon.") for a in tilts]
        undone = _undone(screen.sweep_summary)
        decisions = [each.models.canonicalizer.canonicalize(geometry.rotate_image_free(screen.session.photo, a))
                     for a in tilts]
        assert undone == pytest.approx([(d.rotation_deg + 180) % 360 - 180 for d in decisions], abs=0.05)
        if each is tilting:  # the tower's edges give tilts away
            assert any(found % 90 for found in undone) and "quarter turns only" not in screen.sweep_summary
        else:  # quarter turns only: each tilt reaches SAM, whichever quarter turn is undone
            assert all(found % 90 == 0 for found in undone) and "quarter turns only" in screen.sweep_summary
    screen.turn(30)  # the tilt sweep turns the upright photo: a turn leaves it current, a click does not
    assert screen.sweep_summary != app.SWEEP_OUTDATED
    view_height, view_width = screen.session.view().shape[:2]
    screen.click(view_width // 2 + 9, view_height // 2 + 9)
    assert screen.sweep_summary == app.SWEEP_OUTDATED


def test_examples_load_turned(handlers):
    screen = Screen(handlers)
    index = next(i for i, example in enumerate(app.EXAMPLES) if example[1] == 90)
    screen.light(handlers.example, None, gr.SelectData(None, {"index": index, "value": None})).then_sam()
    name, angle = app.EXAMPLES[index][:2]
    assert screen.angle == angle and screen.session.angle == angle and screen.status.startswith("SAM is ready")
    assert screen.view.shape[:2] == np.asarray(Image.open(app.EXAMPLES_DIR / name)).shape[1::-1]
    for index in (-1, len(app.EXAMPLES), "0", True, None):
        page = handlers.example(None, gr.SelectData(None, {"index": index, "value": None}))
        assert page.status == "⚠ pick one of the examples." and page.session is app.SKIP
    assert any("gets this one wrong" in example[3] for example in app.EXAMPLES if "owl" in example[0])


def test_the_page_says_at_load_which_sam_cannot_be_had(models, paper_canonicalizer, standin_sam_path,
                                                        tmp_path):
    menu, status = app.Handlers(models).welcome()
    assert ("missing (not available here)", "missing") in menu.choices and ("standin", "standin") in menu.choices
    assert status == app.HOW_TO  # the default, the stand-in, is here
    gone = standin_models(paper_canonicalizer, tmp_path / "sam_vit_b_01ec64.pth")
    menu, status = app.Handlers(gone).welcome()
    assert status.startswith("⚠ SAM standin is not available on this server now") and "/" not in status


def test_without_sam_the_canonicalizer_still_answers(handlers, caplog):
    with caplog.at_level("INFO", logger="canon"):
        screen = Screen(handlers, sam="missing").load(CAT).click(320, 240)
    assert screen.status.startswith("⚠ Only the canonicalizer could run")
    assert ("⚠ SAM missing cannot be loaded on this server now (its weights are not here and could not be "
            "downloaded); the canonicalizer still works.") in screen.verdict
    # The server's paths and the fix are for the operator: in the log, not on the page.
    assert "no-sam0/sam_vit_b_01ec64.pth does not exist" in caplog.text
    assert screen.sam is None and screen.probabilities is not None and screen.canonical is not None


def _corrupt_jpeg(path: Path) -> None:
    path.write_bytes(CAT.read_bytes()[:2000])


def _huge_png(path: Path) -> None:
    Image.new("1", (8000, 6000)).save(path)  # 48 megapixels; cheap at one bit per pixel


@pytest.mark.parametrize("name, make, message", [
    ("notes.jpg", lambda p: p.write_text("not a photo"), "not an image format"),
    ("empty.png", lambda p: p.write_bytes(b""), "is empty"),
    ("cut.jpg", _corrupt_jpeg, "truncated or corrupt"),
    ("huge.png", _huge_png, "megapixels"),
])
def test_bad_uploads_get_one_sentence(screen, tmp_path, name, make, message):
    path = tmp_path / name
    make(path)
    screen.click(320, 240).load(path)
    assert screen.status.startswith("⚠") and message in screen.status and "Traceback" not in screen.status
    assert screen.session.photo is None and screen.view is None and screen.sam is None
    assert screen.upload is None  # the box does not keep the refused file


def test_events_without_a_photo_say_what_to_do(handlers):
    for angle in (90, 30, 1e9, "left"):  # whatever the angle, the missing photo is what is said
        assert handlers.rotate(None, None, angle).status == "⚠ Upload a photo first."
    assert handlers.click(None, None, OBJECT, select(1, 1)).status == "⚠ Upload a photo first."
    assert handlers.undo(None, None).status == "⚠ Upload a photo first."
    assert handlers.everything(None, None).status == "⚠ Upload a photo first."
    assert handlers.sweep("tilts")(None, None, "standin", True).sweep_summary == "⚠ Upload a photo first."
    assert handlers.photo(None, None).status == app.HOW_TO
    assert list(handlers.options(None, None, "standin", True, SHOW[0], 0.35)) == [app.Page()]
    assert handlers.redraw(None, None, SHOW[0], 0.35) == app.Page()


def test_prompts_the_library_refuses_get_one_sentence(handlers, loaded):
    crowded = replace(loaded.session, clicks=(Click(10, 10, "object"),) * (MAX_POINTS + 1))
    pages = list(handlers.options(crowded, None, "standin", True, SHOW[0], 0.35))
    assert pages[-1].status == f"⚠ {MAX_POINTS + 1} points is too many; at most {MAX_POINTS} are accepted."


def test_api_functions_refuse_bad_prompts(handlers):
    for points, box, message in [("[[1, 2", "", "Give points as JSON"), ("[[5000, 5, 1]]", "", "outside"),
                                 ("[]", "1,2,3", "Give a box"), ("[]", "", "at least one point")]:
        with pytest.raises(gr.Error) as info:
            handlers.api_segment(received(handlers, str(CAT)), 0, points, box, "standin", True)
        assert message in info.value.message and info.value.message.endswith(".")
    with pytest.raises(gr.Error) as info:
        handlers.api_canonicalize(None, 0)
    assert info.value.message == "Send a photo."


# ---------------------------------------------------------------------------------------- served on loopback


def test_gradio_client_segment_and_canonicalize(models):
    with serve(models) as url:
        client = Client(url, verbose=False)
        sam_file, canonicalized_file, info = client.predict(
            handle_file(str(CAT)), 90, "[[320, 240, 1], [20, 20, 0]]", "[200, 120, 460, 400]", "standin", True,
            api_name="/segment")
        assert np.asarray(Image.open(sam_file)).shape == (640, 480, 3)
        assert np.asarray(Image.open(canonicalized_file)).shape == (640, 480, 3)
        assert info["canonicalizer"]["angle_deg"] == 90 and 0 <= info["iou"] <= 1
        masks, scores = maskio.masks_from_coco(info["canonicalized"]["masks"])
        assert masks.shape == (3, 640, 480) and np.allclose(scores, info["canonicalized"]["scores"])

        # The call the "Use via API" page generates works, given the caller's photo.jpg.
        parameters = client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/segment"][
            "parameters"]
        examples = [parameter["example_input"] for parameter in parameters]
        assert examples[0]["path"] == "photo.jpg" and "http" not in json.dumps(examples)
        *_, info = client.predict(handle_file(str(CAT)), *examples[1:], api_name="/segment")
        assert info["canonicalizer"]["angle_deg"] == 90 and len(info["sam"]["masks"]["annotations"]) == 3

        with pytest.raises(AppError, match="not an image format"):
            client.predict(handle_file(str(REPO / "pyproject.toml")), 0, "[[1, 1, 1]]", "", "standin", True,
                           api_name="/segment")
        canonical_file, info = client.predict(handle_file(str(CAT)), 180, api_name="/canonicalize")  # still up
        assert info["canonicalizer"]["k"] == 2 and np.asarray(Image.open(canonical_file)).shape == (480, 640, 3)


# -------------------------------------------------------------------------------------------------- command line


@pytest.mark.slow  # a Python process of its own
def test_help_documents_the_options_and_their_variables():
    out = subprocess.run([sys.executable, "app.py", "--help"], cwd=REPO, capture_output=True, text=True,
                         timeout=120).stdout
    for option in ("--sam", "--sam-precision", "--device", "--share", "--server-name", "--port", "--auth", "CANON_SAM",
                   "CANON_SAM_PRECISION", "CANON_DEVICE", "GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT"):
        assert option in out


@pytest.mark.slow  # a Python process of its own
def test_app_starts_offline_without_sam(tmp_path):
    """`python app.py` on a machine without the Hub: the canonicalizer answers, SAM says how to get it."""
    if (REPO / "canon" / "weights" / "sam_vit_b_01ec64.pth").exists():
        pytest.skip("weights/ holds SAM ViT-B here, so the app is not without SAM")
    port = free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), CANON_CACHE_DIR=str(tmp_path / "c"),
               GRADIO_SERVER_PORT=str(port), CANON_DEVICE="cpu")
    server = subprocess.Popen([sys.executable, "app.py", "--server-name", "127.0.0.1"], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(url, timeout=5)
                break
            except OSError:
                assert server.poll() is None, server.stdout.read()
                assert time.monotonic() < deadline, "the app did not start within 3 minutes"
                time.sleep(1)
        client = Client(url, verbose=False)
        _, info = client.predict(handle_file(str(CAT)), 0, api_name="/canonicalize")
        assert info["canonicalizer"]["k"] == 0
        with pytest.raises(AppError) as info:
            client.predict(handle_file(str(CAT)), 0, "[[1, 1, 1]]", "", "vit_b", True, api_name="/segment")
        assert info.value.message == ("SAM vit_b cannot be loaded on this server now (its weights are not here and "
                                      "could not be downloaded); the canonicalizer still works.")
    finally:
        server.terminate()
        log = server.communicate(timeout=30)[0]
    # The operator's log says how to get SAM, in one line, with no traceback for the refused request.
    assert "HF_HUB_OFFLINE is set: pass --sam PATH" in log and "Traceback" not in log, log[-3000:]
