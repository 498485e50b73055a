"""Canonicalized SAM: rotate a photo, prompt Segment Anything, and compare SAM alone with SAM behind a learned
canonicalization network (Mondal et al., NeurIPS 2023), side by side.

This file is the page only: layout, events and wording. Every computation is the ``canon`` library's
(:mod:`canon.demo` holds the session and the actions). ``python app.py --help`` lists the options;
``build_demo(models)`` builds the page around models built elsewhere (tests, other launchers), and :func:`launch`
serves it with this app's settings.

Events come in two kinds. *Light* ones (a photo, a turn, the tilt stage, a click, undo, the display options) run the
canonicalizer at most (a fraction of a second) in their own queue, so they never wait behind another visitor's SAM
run; each is followed by the *heavy* step (:meth:`Handlers.sam_step`), which computes SAM's embeddings of the photo
as soon as it is shown, before any click, and then the masks for whatever prompts the session holds by the time it
runs.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import gradio as gr
import numpy as np
import pydantic
from gradio.exceptions import ComponentProcessingError, InvalidPathError
from gradio.utils import get_upload_folder

from canon import geometry, schema
from canon.cli import whole_number
from canon.demo import (SHOW, SWEEPS, Display, ExportFolder, Models, Outcome, Session, canonicalized, check_sweep,
                        draw_panels, draw_prompts, embeddings_to_prepare, encode, prepare_photo, run, sam_sources,
                        sweep)
from canon.images import MAX_FILE_BYTES, UPLOAD_REFUSAL, ImageError, read_upload
from canon.prompts import parse_prompts
from canon.registry import ModelUnavailableError
from canon.render import PALETTE_NAMES, overlay
from canon.runtime import SAM_PRECISIONS
from canon.schema import is_unsure
from canon.tilt import WITHIN_DEG, angular_error_deg
from canon.segmenter import Embedding, PathResult

try:  # Hugging Face ZeroGPU attaches a GPU only while a function wrapped in spaces.GPU runs
    import spaces
except ImportError:
    spaces = None
# On ZeroGPU this process has no GPU: the canonicalizer and SAM's decoder run on its CPU, SAM's encoder in spaces.GPU.
ZERO_GPU = spaces is not None and "SPACES_ZERO_GPU" in os.environ

log = logging.getLogger("canon.app")

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
# (file, angle shown at, name, note); the photos' authors and licences are in examples/SOURCES.csv. The turned ones
# show the point at the first click; the owl is one the paper's canonicalizer gets wrong.
EXAMPLES = [("animals_horse.jpg", 90, "horses", ""), ("animals_cat.jpg", 180, "cat", ""),
            ("france_eiffelTower.jpg", 270, "tower", ""), ("animals_horse.jpg", 0, "horses", ""),
            ("animals_cat.jpg", 0, "cat", ""),
            ("animals_owl.jpg", 90, "owl ✘", "the paper's canonicalizer gets this one wrong")]
EXAMPLES_NOTE = "✘ The owl is one the paper's canonicalizer gets wrong."
# The click-mode radio's labels -> the kinds of click of canon.demo.Session.
CLICK_MODES = {"object point (green)": "object", "background point (red)": "background", "box: two corners": "corner"}
LIGHT = "light"  # the concurrency group of the events that run the canonicalizer at most
HEAVY = "models"  # the concurrency group of every event that runs SAM
GPU_SECONDS = 120  # ZeroGPU time asked for per call: enough for a first ViT-H embedding, or a sweep's eight
PANEL_HEIGHT = 440  # px: the turned photo and both results in one row, in view together at 1440 x 900

INTRO = """
## Canonicalized SAM · Segment Anything that does not mind a turned photo
Pick an example or upload a photo, turn it, click on an object: **SAM alone** (middle) against **SAM + canonicalizer**
(right), whose small rotation-equivariant network turns the photo back before SAM sees it.
[Mondal et al., NeurIPS 2023](https://openreview.net/forum?id=m6dRQJw280)
"""
NO_PHOTO = "⚠ Upload a photo first."  # what every event that needs a photo says without one
HOW_TO = "Pick an example or upload a photo; turn it; then click on it."
CLICK_ON_IT = "Click on the turned photo to prompt SAM (or press *Segment everything*)."
READY = "SAM is ready for this photo and turn: click on it (each click takes a moment only)."
TILT_STAGE = "Undo the tilt too"  # the checkbox that puts the tilt stage in front of the canonicalizer
SWEEP_INTRO = ("Quarter turns: the canonicalized row should be identical at every angle while SAM alone drifts (up "
               f"to five image embeddings). Tilts: only with *{TILT_STAGE}* can the canonicalizer follow them (up to "
               "eight).")
SWEEP_OUTDATED = "⚠ Outdated: the photo, the prompts or the tilt stage changed since this sweep. Run it again."
LEGEND = ("Outlines: blue = SAM's best mask, then orange, green (the other candidates). Dots: green = object, "
          "red = background.")
DIFFERENCE_LEGEND = ("Magenta: pixels in this panel's best mask and not in the other panel's; light blue: pixels "
                     "both share.")
CSS = """
#status { min-height: 1.6em; }
#status p, #verdict p { margin: 0.1em 0; }
#examples-note p { margin: 0; font-size: 0.85em; }
#results { flex-wrap: nowrap; gap: var(--spacing-md); }
#details table { word-break: normal; overflow-wrap: normal; }
#details td, #details th { white-space: nowrap; }
#details { overflow-x: auto; }
#sweep .caption-label { white-space: normal; font-size: 0.8em; }
@media (max-width: 640px) {  /* a phone: the turned photo across the screen, the two results side by side below */
  #panels { flex-wrap: wrap !important; }
  #view { flex: 1 1 100% !important; min-width: 100% !important; height: 360px !important; }
  #results { flex: 1 1 100% !important; min-width: 100% !important; }
  #sam-alone, #sam-canonicalized { flex: 1 1 0 !important; min-width: 0 !important; height: 280px !important; }
  #sweep .grid-container { grid-template-columns: repeat(4, minmax(0, 1fr)) !important; }
  #sweep-controls { flex-wrap: wrap !important; }  /* the sweep buttons across the screen, the summary below */
  #sweep-buttons { flex: 1 1 100% !important; min-width: 100% !important; }
}
"""
# On a narrow screen the turned photo sits below the controls: a turn brings it into view.
SHOW_VIEW_ON_PHONE = ("() => { if (window.innerWidth <= 640) "
                      "document.getElementById('view')?.scrollIntoView({block: 'start', behavior: 'smooth'}); }")


# Keyboard shortcuts, off while a text field has the focus: 1 / 2 / 3 choose what a click adds, U or Ctrl+Z
# (Cmd+Z) undoes the last prompt, E segments everything.
KEYBOARD = """() => {
  const typing = "input:not([type=radio]):not([type=checkbox]):not([type=range]), textarea, select, [contenteditable]";
  document.addEventListener("keydown", (event) => {
    if (event.altKey || event.repeat || event.target.closest?.(typing)) return;
    const command = event.ctrlKey || event.metaKey;
    const key = event.key.toLowerCase();
    let target = null;
    if ((command && key === "z") || (!command && key === "u")) target = document.getElementById("undo");
    else if (!command && key === "e") target = document.getElementById("everything");
    else if (!command && ["1", "2", "3"].includes(key))
      target = document.querySelectorAll("#mode input[type=radio]")[Number(key) - 1];
    if (target) { event.preventDefault(); target.click(); }
  });
}"""


class Blocks(gr.Blocks):
    """``gr.Blocks`` whose own refusals of a request's inputs reach the visitor as one sentence, not as Gradio's
    bare "Error" with a traceback in the server log: a file payload outside Gradio's upload folder (Gradio checks
    those it recognises as its own before any handler runs) and a payload that fails a component's data model."""

    async def preprocess_data(self, block_fn, inputs, state, explicit_call=False):
        if _names_a_url(inputs):  # Gradio would download it, unbounded, before any check of the app's
            raise _refusal(block_fn.name, UPLOAD_REFUSAL)
        try:
            return await super().preprocess_data(block_fn, inputs, state, explicit_call)
        except InvalidPathError:
            raise _refusal(block_fn.name, UPLOAD_REFUSAL) from None
        except (pydantic.ValidationError, ComponentProcessingError):
            raise _refusal(block_fn.name, "the request does not have the form this app accepts") from None


def _names_a_url(value, depth: int = 0) -> bool:
    """Whether a request's inputs hold a file payload whose path is a web address (its url is only a link)."""
    if depth > 8:
        return True  # no input of this app nests this deep
    if isinstance(value, dict):
        if any(isinstance(value.get(key), str) and value[key].strip().lower().startswith(("http:", "https:", "//"))
               for key in ("path",)):
            return True
        return any(_names_a_url(item, depth + 1) for item in value.values())
    if isinstance(value, (list, tuple)):
        return any(_names_a_url(item, depth + 1) for item in value)
    return False



SKIP = gr.skip()  # an output left as the page shows it


class Page(NamedTuple):
    """The values of every output of the page's events, in the order of ``build_demo``'s ``page`` components; a
    field an event does not change stays :data:`SKIP`."""

    session: Any = SKIP
    shown: Any = SKIP
    status: Any = SKIP
    view: Any = SKIP
    verdict: Any = SKIP
    sam: Any = SKIP
    canonicalized: Any = SKIP
    probabilities: Any = SKIP
    canonical: Any = SKIP
    details: Any = SKIP
    downloads: Any = SKIP
    sweep: Any = SKIP
    sweep_summary: Any = SKIP
    angle: Any = SKIP
    upload: Any = SKIP


class SweepPage(NamedTuple):
    """The outputs of the sweep, which leaves the rest of the page as it is (named as in :class:`Page`)."""

    sweep: Any
    sweep_summary: Any
    shown: Any = SKIP


@dataclass(frozen=True, eq=False)
class Shown:
    """What the result panels show: the outcome and the request (:meth:`Handlers.request_key`) it answers, and the
    prompts (:meth:`Handlers.sweep_key`) of the sweep on the page."""

    outcome: Outcome | None = None
    request: tuple | None = None
    swept: tuple | None = None


def _api_example(component, example):
    """``component`` with ``example`` as its argument in the call that the "Use via API" page generates (Gradio's
    defaults are a web address for the photo, which this app refuses, and "Hello!!" for the prompts)."""
    component.example_payload = component.example_value = lambda: example
    return component


def _gpu(fn):
    """``fn`` run with a GPU attached on ZeroGPU; ``fn`` itself anywhere else."""
    return spaces.GPU(duration=GPU_SECONDS)(fn) if spaces is not None else fn


def _warning(message) -> str:
    """A library's one-sentence message as a warning line for the page, ending in one full stop (its first word may
    be a file name, so its case is kept); the server log gets it as one line."""
    text = str(message).strip().rstrip(".")
    log.info("refused: %s", text)
    return f"⚠ {text}."


class Handlers:
    """The event functions, bound to the models they serve. Each takes the visitor's :class:`Session` (None once
    Gradio has dropped an idle one) and what the panels show, and returns a :class:`Page`; bad input becomes a
    message in the page (``gr.Error`` for the API), never a crash. The model runs go through :func:`_gpu`.

    The heavy step reads the session as it is when the step runs, so clicks made while SAM works are kept and
    answered together; a step overtaken by a newer photo, turn or click of the same visitor (``request``: Gradio's
    request, whose session hash names the visitor) stops and leaves the page to the newer one."""

    def __init__(self, models: Models, exports: ExportFolder | None = None, everything_options: dict | None = None):
        self.models = models
        # A visitor's session starts with the tilt stage as the server is set (a yes or no, so that switching it
        # off and on again gives the same request key).
        self.fresh = Session(tilt_stage=models.canonicalizer.tilt is not None)
        self.uploads = Uploads()
        self.exports = exports or ExportFolder()
        self.everything_options = everything_options or {}
        # The one GPU function: SAM's image encoder. Its arguments and result cross to ZeroGPU's worker process
        # and back pickled; the decoder runs here, so that a click on a prepared photo needs no GPU call.
        self._encode = _gpu(self._encoded)
        self._latest: OrderedDict[str, tuple] = OrderedDict()  # visitor -> the key of their newest session
        self._latest_lock = threading.Lock()

    # ------------------------------------------------------------------------------------ light page events

    def photo(self, session: Session | None, upload, tilt_stage: bool | None = None,
              request: gr.Request = None) -> Page:
        """A new photo, uploaded or pasted: ``upload`` is Gradio's file payload, None when cleared. It starts
        upright (the angle goes back to 0). ``tilt_stage``: the page's box (see :meth:`_starting`)."""
        session = self._starting(session, tilt_stage)
        if upload is None:
            return self._blank(HOW_TO, session, request)
        try:
            photo, size = self.uploads.photo(upload)
        except ImageError as error:  # the box does not keep a refused file
            return self._blank(_warning(error), session, request, upload=None)
        note = _shrink_note(size, photo)
        status = "Photo loaded" + (f" ({note})" if note else "") + ". Turn it, then click on it to prompt SAM."
        return self._shown_photo(session.with_photo(photo), status, request, angle=0)

    def example(self, session: Session | None, evt: gr.SelectData, tilt_stage: bool | None = None,
                request: gr.Request = None) -> Page:
        """An example picked from the gallery: its photo at its angle (``tilt_stage``: as for :meth:`photo`)."""
        index = evt.index if isinstance(evt.index, int) and not isinstance(evt.index, bool) else -1
        if not 0 <= index < len(EXAMPLES):
            return Page(status=_warning("pick one of the examples"))
        name, angle, label, note = EXAMPLES[index]
        photo, _ = prepare_photo(EXAMPLES_DIR / name)
        status = f"Example loaded: {label.rstrip(' ✘')}, turned {angle}°{': ' + note if note else ''}. Click on it."
        return self._shown_photo(self._starting(session, tilt_stage).with_photo(photo, angle), status, request,
                                 angle=angle, upload=photo)

    def rotate(self, session: Session | None, shown: Shown | None, angle: float, request: gr.Request = None) -> Page:
        """The photo turned to ``angle`` degrees counter-clockwise; the prompts turn with it."""
        session = session or self.fresh
        if session.photo is None:
            return Page(status=NO_PHOTO)
        try:
            degrees = _degrees(angle)
            if degrees == session.angle:  # a slider's release after its input events: nothing new
                return Page()
            session = session.rotated_to(degrees)
        except ValueError as error:
            return Page(status=_warning(error))
        working = "⏳ Updating SAM's masks for the new turn…" if session.has_prompts or session.everything else ""
        return self._shown_photo(session, working or CLICK_ON_IT, request, shown=shown, keep_results=True)

    def turn(self, angle: int):
        """The handler of a turn button: the photo turned to ``angle`` and the slider set to it."""
        def turned(session: Session | None, shown: Shown | None, request: gr.Request = None) -> Page:
            return self.rotate(session, shown, angle, request)._replace(angle=angle)
        return turned

    def tilt_stage(self, session: Session | None, shown: Shown | None, on: bool, request: gr.Request = None) -> Page:
        """The tilt stage put in front of the canonicalizer (``on``) or taken away, for this visitor."""
        if not isinstance(on, bool):
            return Page(status=_warning(f"*{TILT_STAGE}* is a yes or a no"))
        session = (session or self.fresh).with_tilt_stage(on)
        if session.photo is None:
            return Page(session=session)
        working = "⏳ Updating SAM's masks for the canonicalizer's new image…" if (
            session.has_prompts or session.everything) else ""
        return self._shown_photo(session, working or CLICK_ON_IT, request, shown=shown, keep_results=True)

    def click(self, session: Session | None, shown: Shown | None, mode: str, evt: gr.SelectData,
              request: gr.Request = None) -> Page:
        """A click on the turned photo: a point or a box corner, as ``mode`` (a key of CLICK_MODES) says."""
        session = session or self.fresh
        if session.photo is None:
            return Page(status=NO_PHOTO)
        try:
            x, y = _pixel(evt.index)  # the integer pixel (column, row) of the displayed image; centre at + 0.5
            if not isinstance(mode, str) or mode not in CLICK_MODES:
                raise ValueError("choose what a click adds")
            session = session.clicked(x + 0.5, y + 0.5, CLICK_MODES[mode])
        except ValueError as error:
            return Page(status=_warning(error))
        waiting = session.pending_corner() is not None
        return self._prompted(session, shown, request, "Now click the opposite corner of the box." if waiting else "")

    def undo(self, session: Session | None, shown: Shown | None, request: gr.Request = None) -> Page:
        return self._prompted((session or self.fresh).undone(), shown, request)

    def clear(self, session: Session | None, shown: Shown | None, request: gr.Request = None) -> Page:
        return self._prompted((session or self.fresh).cleared(), shown, request)

    def everything(self, session: Session | None, shown: Shown | None, request: gr.Request = None) -> Page:
        return self._prompted((session or self.fresh).asking_everything(), shown, request)

    def redraw(self, session: Session | None, shown: Shown | None, show: str, opacity: float) -> Page:
        """The result panels drawn again as the display options say (no model runs)."""
        outcome = shown.outcome if shown else None
        if session is None or outcome is None or outcome.result is None:
            return Page()
        try:
            display = _display(show, opacity)
        except ValueError as error:
            return Page(status=_warning(error))
        sam_panel, canonicalized_panel = self._panels(session, outcome, display)
        return Page(sam=sam_panel, canonicalized=canonicalized_panel, verdict=_verdict(session, outcome, display))

    # --------------------------------------------------------------------------------------- the heavy step

    def sam_step(self, session: Session | None, shown: Shown | None, sam: str, multimask: bool, show: str,
                 opacity: float, request: gr.Request = None):
        """SAM's part of every photo and prompt event, as a generator of :class:`Page` updates: the embeddings the
        turned photo needs (canonical first), each announced in the status line, then the masks for the session's
        prompts, if any. What is cached is not computed again; a newer request of the visitor ends this one.

        It yields at least once: Gradio's page keeps an event that streamed nothing pending, and refuses that
        event's next trigger."""
        updates = self._sam_updates(session, shown, sam, multimask, show, opacity, request)
        first = next(updates, Page())
        yield first
        yield from updates

    def _sam_updates(self, session, shown, sam, multimask, show, opacity, request):
        session = session or self.fresh
        if session.photo is None:
            return
        key = self.request_key(session, sam, multimask)
        if shown is not None and shown.request == key:  # the panels show this very request already (an undo
            yield Page(status=_done(session, shown.outcome))  # made before the newer request's answer came)
            return
        try:
            display = _display(show, opacity)
            if self.models.loaded(sam) is None:
                yield Page(status=f"⏳ Loading SAM {sam} (the first time only)…")
            pending = embeddings_to_prepare(self.models, session, sam)
        except ValueError as error:
            yield Page(status=_warning(error))
            return
        except ModelUnavailableError as error:
            outcome = replace(canonicalized(self.models, session), sam_error=error.public)
            yield Page(status="⚠ Only the canonicalizer could run: see below.", sam=None, canonicalized=None,
                       verdict=_verdict(session, outcome, display), shown=Shown(outcome, key, _swept(shown)))
            return
        wanted = session.has_prompts or session.everything
        for number, (which, image) in enumerate(pending, 1):
            if self._overtaken(request, session):
                return
            yield Page(status=_embedding_status(which, number, len(pending), self.models.loaded(sam), wanted))
            self._prepare(sam, [image])
        if not wanted:
            corner = session.pending_corner() is not None
            yield Page(status="Now click the opposite corner of the box." if corner else READY)
            return
        if session.everything:
            yield Page(status="⏳ Segmenting everything: SAM's decoder on a grid of points, on both images…")
        options = {"everything_options": self.everything_options} if session.everything else {}
        try:
            outcome = run(self.models, session, sam, multimask, **options)
        except ValueError as error:  # prompts the library refuses after the session's own checks; undo helps
            yield Page(status=_warning(error))
            return
        if self._overtaken(request, session):
            return
        yield self._results(session, outcome, key, display, shown, sam)

    def options(self, session: Session | None, shown: Shown | None, sam: str, multimask: bool, show: str,
                opacity: float, request: gr.Request = None):
        """Another SAM or multimask setting: the heavy step again, for the same session."""
        yield from self.sam_step(session, shown, sam, multimask, show, opacity, request)

    def sweep(self, kind: str):
        """The handler of a sweep button: the prompts with the photo turned by each angle of ``SWEEPS[kind]``, both
        paths, turned back upright: the gallery (SAM alone on the first row, SAM + canonicalizer on the second) and
        a summary."""
        if kind not in SWEEPS:  # fails when the page is built, not when a visitor clicks
            raise ValueError(f"unknown sweep {kind!r}")

        def swept(session: Session | None, shown: Shown | None, sam: str, multimask: bool,
                  progress=gr.Progress(track_tqdm=True)) -> SweepPage:
            session = session or self.fresh
            if session.photo is None:
                return SweepPage(gr.Gallery(visible=False), NO_PHOTO)
            try:
                check_sweep(session)  # before the embeddings are prepared for nothing
                self._prepare(sam, [image for _, image in embeddings_to_prepare(self.models, session, sam, kind)])
                entries = sweep(self.models, session, sam, multimask, kind)
            except ValueError as error:
                return SweepPage(gr.Gallery(visible=False), _warning(error))
            except ModelUnavailableError as error:
                return SweepPage(gr.Gallery(visible=False), _warning(error.public))
            image, frame = session.sweep_frame(kind)
            marked = partial(draw_prompts, prompts=session.prompts(frame))
            items = []
            for path, name in (("sam", "SAM"), ("canonicalized", "SAM+canon.")):
                for entry in entries:
                    best_mask = getattr(entry.result, path).masks[:1]
                    iou = entry.sam_iou if path == "sam" else entry.canonicalized_iou
                    unsure = path == "canonicalized" and is_unsure(entry.result.canonicalization)
                    caption = f"{name} {entry.degrees:g}° · IoU {iou:.2f}" + (" ⚠ unsure" if unsure else "")
                    items.append((marked(overlay(image, best_mask)), caption))
            tilt_stage = self.models.canonicalizer_for(session.tilt_stage).tilt is not None
            summary = (_sweep_summary(entries, session.residual_deg) if kind == "quarter turns" else
                       _tilt_sweep_summary(entries, tilt_stage, session.prompts(frame).box is not None))
            return SweepPage(gr.Gallery(items, visible=True), summary,
                             replace(shown or Shown(), swept=self.sweep_key(session, kind)))
        return swept

    # ------------------------------------------------------------------------------------------ API endpoints

    def api_segment(self, image, angle, points, box, sam, multimask):
        """Both paths for explicit prompts on the photo turned by an angle.

        The points (a JSON list of [x, y, label], label 1 for the object and 0 for the background) and the box
        (a JSON [x0, y0, x1, y1], or empty) are in the sent photo's pixels, upright. Returns the two overlays and a
        dict with the canonicalizer's decision, timings, the IoU of the two paths and the masks (COCO RLE, in the
        frame of the turned photo). A photo with a side over 1600 pixels is shrunk to it first, as on the page,
        and the prompts with it; the masks and overlays are then in the shrunk photo's frame, and "scale" in the
        dict says by how much."""
        try:
            photo, size = self.uploads.photo(image)
            prompts = parse_prompts(points, box)
            prompts.validate(size)
            scale = (photo.shape[1] / size[1], photo.shape[0] / size[0])
            session = Session().with_photo(photo, _degrees(angle)).prompted(prompts.scaled(*scale))
            sam, multimask = self._choice(sam), _flag(multimask, "multimask")
        except ValueError as error:  # ImageError, PromptError and the session's own checks
            raise _refusal("segment", error) from None
        try:
            self._prepare(sam, [image for _, image in embeddings_to_prepare(self.models, session, sam)])
        except ModelUnavailableError as error:
            raise _refusal("segment", error.public) from None
        outcome = run(self.models, session, sam, multimask)
        if outcome.sam_error:
            raise _refusal("segment", outcome.sam_error)
        result = outcome.result
        info = schema.segment_record(result, session.angle, outcome.agreement, outcome.residual_deg) | \
            schema.size_record(size, photo.shape)
        return overlay(outcome.view, result.sam.masks), overlay(outcome.view, result.canonicalized.masks), info

    def api_canonicalize(self, image, angle):
        """The image the canonicalizer would hand SAM for the photo turned by an angle, and its decision; needs no
        SAM. A photo over 1600 pixels a side is shrunk first, as for segment."""
        try:
            photo, size = self.uploads.photo(image)
            session = Session().with_photo(photo, _degrees(angle))
        except ValueError as error:
            raise _refusal("canonicalize", error) from None
        view = session.view()
        decision = self.models.canonicalizer.canonicalize(view)
        return decision.canonical_image, schema.decision_record(decision, session.angle, session.residual_deg) | \
            schema.size_record(size, photo.shape)

    def _choice(self, sam) -> str:
        """The SAM an API call names (a text from the choices; empty for the default)."""
        if sam is None or sam == "":
            return self.models.default_sam
        if not isinstance(sam, str) or sam not in self.models.sam_choices:
            raise ValueError(f"unknown SAM; choose one of {', '.join(self.models.sam_choices)}")
        return sam

    # -------------------------------------------------------------------------------------------- page load

    def welcome(self) -> tuple[gr.Dropdown, str]:
        """At page load: the SAM menu with what each choice costs or why it cannot be had, and a status line that
        says so when the default cannot be had (the reasons, with paths and flags, go to the server log)."""
        labels, missing = [], []
        for choice in self.models.sam_choices:
            state = self.models.availability(choice)
            if state == "missing":
                missing.append(choice)
            labels.append((_sam_label(choice, state), choice))
        status = HOW_TO
        if self.models.default_sam in missing:
            log.warning("SAM %s cannot be had here: no checkpoint on this machine and no way to download it "
                        "(see the README: --sam PATH, or unset HF_HUB_OFFLINE)", self.models.default_sam)
            status = (f"⚠ SAM {self.models.default_sam} is not available on this server now, so only the "
                      "canonicalizer's part works: turning a photo shows its guess, clicks get no masks.")
        return gr.Dropdown(choices=labels, value=self.models.default_sam), status

    # -------------------------------------------------------------------------------------------------- helpers

    @staticmethod
    def request_key(session: Session, sam: str, multimask: bool) -> tuple:
        return session.key, sam, bool(multimask)

    @staticmethod
    def sweep_key(session: Session, kind: str) -> tuple:
        """What a sweep of ``kind`` depends on: the photo, the prompts in the upright frame, the choice of tilt
        stage and, for quarter turns, the tilt beyond them (which that sweep keeps)."""
        return (kind, session.photo_id, session.residual_deg if kind == "quarter turns" else 0.0, session.clicks,
                session.tilt_stage)

    def _starting(self, session: Session | None, tilt_stage) -> Session:
        """The session a new photo starts from, its tilt stage as the page's box shows it: Gradio drops an idle
        session, and the box then still shows the visitor's choice (anything but a yes or no leaves the session's)."""
        session = session or self.fresh
        return session.with_tilt_stage(tilt_stage) if isinstance(tilt_stage, bool) else session

    def _note(self, request: gr.Request | None, session: Session) -> None:
        """Record ``session`` as the visitor's newest, for :meth:`_overtaken`."""
        visitor = getattr(request, "session_hash", None)
        if visitor is None:
            return
        with self._latest_lock:
            self._latest[visitor] = session.key
            self._latest.move_to_end(visitor)
            while len(self._latest) > 1000:
                self._latest.popitem(last=False)

    def _overtaken(self, request: gr.Request | None, session: Session) -> bool:
        visitor = getattr(request, "session_hash", None)
        with self._latest_lock:
            latest = self._latest.get(visitor) if visitor is not None else None
        return latest is not None and latest != session.key

    def _encoded(self, sam: str, images: list[np.ndarray]) -> list[Embedding]:
        return encode(self.models, sam, images)

    def _prepare(self, sam: str, images: list[np.ndarray]) -> None:
        """SAM's embeddings of ``images`` computed by the GPU function and kept in this process's cache (SAM is
        loaded here first: ZeroGPU's worker is forked from this process and finds it in memory)."""
        if not images:
            return
        backend = self.models.sam(sam)
        for image, embedding in zip(images, self._encode(sam, images)):
            backend.store(image, embedding)

    def _blank(self, status: str, session: Session | None, request: gr.Request | None, **extra) -> Page:
        """No photo: every panel empty, the slider at 0, no sweep (the visitor's choice of tilt stage kept)."""
        session = (session or self.fresh).without_photo()
        self._note(request, session)
        return Page(session=session, shown=Shown(), status=status, view=None, verdict="", sam=None,
                    canonicalized=None, probabilities=None, canonical=None, details="", downloads=None,
                    sweep=gr.Gallery(visible=False), sweep_summary=SWEEP_INTRO, angle=0, **extra)

    def _shown_photo(self, session: Session, status: str, request: gr.Request | None, shown: Shown | None = None,
                     keep_results: bool = False, **extra) -> Page:
        """The light part of a new photo or turn: the view with its prompts and the canonicalizer's decision. The
        result panels keep what they show while SAM's part follows (``keep_results``), or are emptied."""
        self._note(request, session)
        outcome = canonicalized(self.models, session)
        page = Page(session=session, status=status, view=self._marked(session, outcome.view),
                    verdict=_verdict(session, outcome), probabilities=_probabilities(outcome.canonicalization),
                    canonical=outcome.canonicalization.canonical_image, details=_details(outcome, session.everything),
                    **extra)
        if keep_results:
            return page._replace(sweep_summary=self._sweep_note(session, shown))
        return page._replace(shown=Shown(), sam=None, canonicalized=None, downloads=None,
                             sweep=gr.Gallery(visible=False), sweep_summary=SWEEP_INTRO)

    def _prompted(self, session: Session, shown: Shown | None, request: gr.Request | None, status: str = "") -> Page:
        """The light part of a change of prompts: the view with the new prompts at once, SAM's answer to follow."""
        if session.photo is None:
            return Page(status=NO_PHOTO)
        self._note(request, session)
        asks = session.has_prompts or session.everything
        page = Page(session=session, view=self._marked(session, session.view()),
                    sweep_summary=self._sweep_note(session, shown),
                    status=status or ("⏳ SAM is working on your prompts…" if asks else CLICK_ON_IT))
        if asks:
            return page
        outcome = canonicalized(self.models, session)
        return page._replace(sam=None, canonicalized=None, downloads=None, shown=Shown(swept=_swept(shown)),
                             verdict=_verdict(session, outcome), details=_details(outcome, False))

    def _sweep_note(self, session: Session, shown: Shown | None) -> Any:
        swept = _swept(shown)
        return SWEEP_OUTDATED if swept is not None and swept != self.sweep_key(session, swept[0]) else SKIP

    def _results(self, session: Session, outcome: Outcome, key: tuple, display: Display, shown: Shown | None,
                 sam: str) -> Page:
        """Every panel for an outcome with SAM's results."""
        result = outcome.result
        downloads = [str(path) for path in self.exports.save(
            {schema.MASK_FILE_STEMS[path]: getattr(result, path) for path in schema.MASK_FILE_STEMS},
            rotation_deg=session.angle, sam=sam)]
        sam_panel, canonicalized_panel = self._panels(session, outcome, display)
        return Page(shown=Shown(outcome, key, _swept(shown)), status=_done(session, outcome),
                    view=self._marked(session, outcome.view),
                    verdict=_verdict(session, outcome, display), sam=sam_panel, canonicalized=canonicalized_panel,
                    details=_details(outcome, session.everything), downloads=downloads)

    def _panels(self, session: Session, outcome: Outcome, display: Display) -> tuple[np.ndarray, np.ndarray]:
        marked = partial(self._marked, session)
        return tuple(marked(panel) for panel in draw_panels(outcome.view, outcome.result, display))

    @staticmethod
    def _marked(session: Session, image: np.ndarray) -> np.ndarray:
        return draw_prompts(image, session.prompts(), pending=session.pending_corner())


def _done(session: Session, outcome: Outcome) -> str:
    """The status line over SAM's answer."""
    result = outcome.result
    if session.everything and len(result.sam.masks) == 0 and len(result.canonicalized.masks) == 0:
        return "SAM found no masks on this photo, in either panel."
    return "Done. Click again to refine, or turn the photo: your prompts turn with it."


def _swept(shown: Shown | None) -> tuple | None:
    return shown.swept if shown is not None else None


def _display(show, opacity) -> Display:
    """The display options as the page sends them."""
    if isinstance(opacity, bool) or not isinstance(opacity, (int, float)):
        raise ValueError("the mask opacity is a number from 0 to 1")
    return Display(show if isinstance(show, str) else "", float(opacity))


# ------------------------------------------------------------------------------------------- input and wording


class Uploads:
    """The files this app received from visitors, which are the only ones an event may read: uploads through
    Gradio's upload route (the examples are read from this app's folder by their index, never by a path). Gradio hands
    events a file payload (a dict with a ``path``) that a client can make up, so the path is checked against these
    before anything is opened (see :func:`canon.images.read_upload`). A component's ``temp_files`` is no such
    record: Gradio adds to it any path in its folder that a request names."""

    def __init__(self):
        self.demo: gr.Blocks | None = None

    def bind(self, demo: gr.Blocks) -> None:
        """Accept what ``demo`` receives through its upload route."""
        self.demo = demo

    def __contains__(self, path) -> bool:
        return self.demo is not None and path in self.demo.upload_file_set

    def photo(self, payload) -> tuple[np.ndarray, tuple[int, int]]:
        """The photo a payload names (Gradio's dict, or a path as text), decoded at the page's bound, and its size
        before (see :func:`canon.demo.prepare_photo`); ``ImageError`` (one sentence) otherwise."""
        if payload is None:
            raise ImageError("send a photo")
        path = payload.get("path") if isinstance(payload, dict) else payload
        data = read_upload(path, self, get_upload_folder())
        return prepare_photo(data, name=Path(path).name)  # the visitor's own file name, as Gradio stored it


def _degrees(value) -> float:
    """An angle as the page or a client sends it: a finite number of degrees (None or empty: 0)."""
    if value is None or value == "":
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError("give the angle as a number of degrees")
    try:
        degrees = float(value) if not isinstance(value, str) or len(value) <= 32 else math.nan
    except (ValueError, OverflowError):
        degrees = math.nan
    if not math.isfinite(degrees) or abs(degrees) > 1e6:
        raise ValueError("give the angle as a number of degrees")
    return degrees


def _pixel(index) -> tuple[int, int]:
    """The (column, row) a click event names; anything else is refused."""
    if (not isinstance(index, (list, tuple)) or len(index) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and abs(v) < 10**6 for v in index)):
        raise ValueError("that click did not name a pixel of the photo")
    return index[0], index[1]


def _flag(value, name: str) -> bool:
    """A yes/no a client sends (None: yes, the default)."""
    if value is None:
        return True
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false")
    return value


def _refusal(event: str, message) -> gr.Error:
    """A visitor's request refused with one sentence: logged as one line, shown without a traceback."""
    text = str(message).strip().rstrip(".")
    log.info("refused %s: %s", event, text)
    return gr.Error(text[:1].upper() + text[1:] + ".", print_exception=False)


def _shrink_note(size: tuple[int, int], photo) -> str:
    height, width = size
    if photo.shape[:2] == (height, width):
        return ""
    return f"shrunk from {width}x{height} to {photo.shape[1]}x{photo.shape[0]} pixels for the page"




def _probabilities(decision) -> dict[str, float]:
    return {f"turned {angle}°": float(p) for angle, p in zip(geometry.ANGLES_DEG, decision.probabilities)}


def _duration(ms: float, cached: bool = False) -> str:
    return "cached" if cached else f"{ms / 1000:.2f} s" if ms >= 1000 else f"{ms:.0f} ms"


SAM_SIZES = {"vit_b": "375 MB", "vit_l": "1.2 GB", "vit_h": "2.5 GB"}  # the registry's checkpoints, as downloaded


def _sam_label(choice: str, state: str) -> str:
    """A SAM menu entry: its name, and what choosing it costs or that it cannot be had."""
    if state == "missing":
        return f"{choice} (not available here)"
    if state == "hub":
        size = SAM_SIZES.get(choice)
        return f"{choice} (downloaded on first use{', ' + size if size else ''})"
    return choice


def _embedding_status(which: str, number: int, count: int, backend, wanted: bool) -> str:
    """The status line while SAM embeds one image of a turn."""
    image = {"canonical": "the image the canonicalizer hands SAM", "turned": "the turned photo, for SAM alone"}[which]
    estimate = f"about {max(1, round(backend.encoder_ms / 1000))} s here" if backend and backend.encoder_ms else \
        "the slow part"
    then = "then your masks" if wanted else "your clicks are kept meanwhile"
    return (f"⏳ SAM's image embedding {number} of {count}: {image} ({estimate}, once per photo and turn; {then})…")


def _verdict(session: Session, outcome: Outcome, display: Display | None = None) -> str:
    """The lines beside the panels: what the canonicalizer decided and whether that matches the visitor's turn,
    how far the two panels agree, and when they cannot differ, why and what to try."""
    decision = outcome.canonicalization
    quarter, residual = geometry.split_degrees(session.angle)
    if decision.tilt_deg:
        lines = [f"**Canonicalizer:** looks tilted **{decision.tilt_deg:+.1f}°** and turned **{decision.angle_deg}°** "
                 f"(p {decision.confidence:.2f}), so SAM + canonicalizer sees it untilted and turned back."]
    else:
        lines = [f"**Canonicalizer:** looks turned **{decision.angle_deg}°** (p {decision.confidence:.2f}), so SAM + "
                 f"canonicalizer sees it turned back by {decision.angle_deg}°."]
    turned = 90 * quarter % 360
    if session.angle != 0 or decision.tilt_deg:
        undoes = outcome.tilt_stage
        tilt = f" plus a {residual:+.0f}° tilt{'' if undoes else ' it does not undo'}" if residual else ""
        found = angular_error_deg(decision.rotation_deg, session.angle) <= WITHIN_DEG if undoes else \
            decision.angle_deg == turned
        verdict = ("✔ matches" + (" within 5°" if undoes else "")) if found else "✘ does not match"
        lines.append(f"You turned the photo {turned}°{tilt}: {verdict} (assuming your photo was upright)."
                     + (f" Tick *{TILT_STAGE}* to have the tilt undone as well." if residual and not undoes else ""))
    if is_unsure(decision):
        lines.append(f"⚠ Unsure: its top probability is only {decision.confidence:.2f}.")
    if not decision.changes_image:
        lines.append("Both panels see the same image: the canonicalizer left the photo as it is, so they agree by "
                     "construction. Turn the photo (90°, 180° or 270°) to see them differ.")
    if outcome.sam_error:
        lines.append(_warning(outcome.sam_error))
    elif outcome.result is not None:
        if outcome.agreement is None:
            lines.append("SAM found no masks in either panel: nothing to compare. Try clicks on an object.")
        else:
            measure = "the areas covered" if session.everything else "the best masks"
            lines.append(f"**Agreement of the two panels:** IoU {outcome.agreement:.2f} ({measure}).")
        lines.append(DIFFERENCE_LEGEND if display is not None and display.show == "difference" else LEGEND)
    return "\n\n".join(lines)


def _details(outcome: Outcome, everything: bool) -> str:
    """The canonicalizer's time, then both results' masks and timings, as Markdown."""
    decision = outcome.canonicalization
    tilt = f", tilted {decision.tilt_deg:+.1f}°" if decision.tilt_deg else ""
    text = (f"**Canonicalizer:** turned {decision.angle_deg}°{tilt} (probability {decision.confidence:.2f}), "
            f"{_duration(decision.elapsed_ms, decision.cached)}.")
    result = outcome.result
    if result is None:
        return text
    rows = [("masks", _mask_list(result.sam, everything), _mask_list(result.canonicalized, everything)),
            ("image encoder", _duration(result.sam.encoder_ms, result.sam.cached),
             _duration(result.canonicalized.encoder_ms, result.canonicalized.cached)),
            ("mask decoder", _duration(result.sam.decoder_ms), _duration(result.canonicalized.decoder_ms))]
    table = "| | SAM alone | SAM + canonicalizer |\n|---|---|---|\n" + "\n".join(
        f"| {name} | {a} | {b} |" for name, a, b in rows)
    return text + "\n\n" + table


def _mask_list(result: PathResult, everything: bool) -> str:
    if everything or len(result.masks) > len(PALETTE_NAMES):
        return f"{len(result.masks)} masks"
    areas = result.masks.reshape(len(result.masks), -1).mean(axis=1)
    return "<br>".join(f"{PALETTE_NAMES[i]}: score {score:.2f}, {area:.0%} of the image"
                       for i, (score, area) in enumerate(zip(result.scores, areas)))


def _sweep_ious(entries, path: str) -> str:
    """The IoUs of one path's best masks with its first result, for every later angle of a sweep."""
    return " / ".join(f"{getattr(entry, path + '_iou'):.2f}" for entry in entries[1:])


def _angles(entries) -> str:
    return " / ".join(f"{entry.degrees:g}°" for entry in entries)


def _unsure_note(entries) -> str:
    unsure = [f"{e.degrees:g}°" for e in entries if is_unsure(e.result.canonicalization)]
    return (f"\n\n⚠ The canonicalizer is unsure at {', '.join(unsure)}: its guess may be wrong there." if unsure
            else "")


def _sweep_summary(entries, residual_deg: float) -> str:
    guesses = " · ".join(f"{e.result.canonicalization.angle_deg}° (p {e.result.canonicalization.confidence:.2f})"
                         for e in entries)
    tilt = f", keeping the {residual_deg:+.0f}° tilt" if residual_deg else ""
    return (f"**IoU with the 0° result**, photo turned {_angles(entries[1:])}: SAM alone "
            f"{_sweep_ious(entries, 'sam')}; "
            f"SAM + canonicalizer {_sweep_ious(entries, 'canonicalized')}. Top row: SAM alone; bottom row: SAM + "
            f"canonicalizer; best mask only, every result turned back upright{tilt}. The canonicalizer's guesses, "
            f"photo turned {_angles(entries)}: {guesses}.") + _unsure_note(entries)


def _tilt_sweep_summary(entries, tilt_stage: bool, box: bool) -> str:
    def undone(decision) -> str:  # the whole turn undone, in [-180, 180)
        return f"{(decision.rotation_deg + 180) % 360 - 180:+.1f}°"

    found = " · ".join(undone(e.result.canonicalization) for e in entries)
    stage = ("" if tilt_stage else f" The canonicalizer undoes quarter turns only (tick *{TILT_STAGE}* to put the "
             "tilt stage in front), so neither row can follow a tilt.")
    if box:
        stage += (" A tilted box is no longer upright: SAM is given the box around it, larger at each tilt, so with "
                  "a box neither row can match the 0° result exactly.")
    return (f"**IoU with the 0° result**, photo tilted {_angles(entries[1:])}: SAM alone "
            f"{_sweep_ious(entries, 'sam')}; SAM + canonicalizer {_sweep_ious(entries, 'canonicalized')}. Top row: "
            f"SAM alone; bottom row: SAM + canonicalizer; best mask only, every result turned back upright. The turn "
            f"the canonicalizer undid, photo tilted {_angles(entries)}: {found}.{stage}") + _unsure_note(entries)


def _example_thumbnails() -> list[tuple[np.ndarray, str]]:
    """The examples' gallery: each photo as it will be shown (turned), small."""
    thumbnails = []
    for name, angle, label, _ in EXAMPLES:
        photo, _ = prepare_photo(EXAMPLES_DIR / name, max_side=200)
        thumbnails.append((geometry.rotate_image_free(photo, angle), f"{label} {angle}°"))
    return thumbnails


# -------------------------------------------------------------------------------------------------------- layout


def build_demo(models: Models, *, concurrency_limit: int = 1, everything_options: dict | None = None) -> gr.Blocks:
    """The page, around already built models. ``concurrency_limit``: SAM runs at once, all events and visitors
    together (1 suits a CPU); ``everything_options`` go to segment-anything's automatic mask generator."""
    handlers = Handlers(models, everything_options=everything_options)
    # Light events one at a time (they are quick), so that two clicks of one visitor are recorded in turn.
    light = dict(concurrency_id=LIGHT, concurrency_limit=1, api_visibility="private", show_progress="hidden")
    heavy = dict(concurrency_id=HEAVY, concurrency_limit=concurrency_limit, api_visibility="private",
                 show_progress="hidden")
    with Blocks(title="Canonicalized SAM", delete_cache=(3600, 3600)) as demo:
        session = gr.State(handlers.fresh, time_to_live=4 * 3600)
        shown = gr.State(Shown(), time_to_live=4 * 3600)
        gr.Markdown(INTRO, elem_id="intro")
        with gr.Row(equal_height=False, elem_id="workspace"):
            with gr.Column(scale=1, min_width=250, elem_id="controls"):
                upload = gr.Image(label="Your photo", type="filepath", sources=["upload", "clipboard"], height=150,
                                  elem_id="upload")
                examples = gr.Gallery(_example_thumbnails(), label="Examples: click one", columns=3, rows=2,
                                      height=210, allow_preview=False, object_fit="cover", format="png",
                                      elem_id="examples")
                gr.Markdown(EXAMPLES_NOTE, elem_id="examples-note")
                angle = gr.Slider(0, 360, value=0, step=1, label="Turn (degrees, counter-clockwise)", elem_id="angle")
                with gr.Row():
                    turns = {value: gr.Button(f"{value}°", size="sm", min_width=50) for value in (0, 90, 180, 270)}
                tilt_stage = gr.Checkbox(models.canonicalizer.tilt is not None, label=TILT_STAGE, elem_id="tilt-stage",
                                         info="Read the tilt beyond quarter turns from the photo's edges and undo "
                                              "it as well (quarter turns stay exact). It may also tilt an upright "
                                              "photo.")
            with gr.Column(scale=4, min_width=300):
                status = gr.Markdown(HOW_TO, elem_id="status")
                with gr.Row(equal_height=True, elem_id="panels"):
                    view = gr.Image(label="Turned photo: click to prompt SAM", interactive=False, height=PANEL_HEIGHT,
                                    buttons=["fullscreen"], elem_id="view", min_width=300, scale=1)
                    with gr.Row(elem_id="results", scale=2):
                        sam_image = gr.Image(label="SAM alone", interactive=False, height=PANEL_HEIGHT, format="png",
                                             buttons=["fullscreen"], elem_id="sam-alone", min_width=140)
                        canonicalized_image = gr.Image(label="SAM + canonicalizer", interactive=False,
                                                       height=PANEL_HEIGHT, format="png", buttons=["fullscreen"],
                                                       elem_id="sam-canonicalized", min_width=140)
                verdict = gr.Markdown(elem_id="verdict")
                with gr.Row(equal_height=True, elem_id="prompting"):
                    mode = gr.Radio(list(CLICK_MODES), value=next(iter(CLICK_MODES)), label="A click adds", scale=3,
                                    elem_id="mode", info="keys: 1, 2, 3; U undoes, E segments everything")
                    with gr.Column(scale=2, min_width=220):
                        with gr.Row():
                            undo = gr.Button("Undo", size="sm", min_width=60, elem_id="undo")
                            clear = gr.Button("Clear", size="sm", min_width=60)
                        everything = gr.Button("Segment everything", size="sm", elem_id="everything")
                with gr.Row(equal_height=True, elem_id="display"):
                    show = gr.Radio(list(SHOW), value=SHOW[0], label="The panels show", scale=3, elem_id="show")
                    opacity = gr.Slider(0, 1, value=Display().opacity, step=0.05, label="Mask fill", scale=2,
                                        elem_id="opacity")
                    sam = gr.Dropdown(models.sam_choices, value=models.default_sam, label="SAM size", scale=3,
                                      min_width=240, elem_id="sam-size")
                    multimask = gr.Checkbox(True, label="3 candidates per prompt", scale=2, min_width=160)
        with gr.Row():
            probabilities = gr.Label(label="Canonicalizer's guess", num_top_classes=4, scale=1,
                                     elem_id="probabilities")
            canonical = gr.Image(label="What SAM + canonicalizer is shown", interactive=False, height=260,
                                 scale=1, buttons=["fullscreen"], elem_id="canonical")
            with gr.Column(scale=2):
                details = gr.Markdown(elem_id="details")
                downloads = gr.File(label="Masks of both panels: PNG (labels in the panel colours) and COCO RLE JSON",
                                    file_count="multiple", interactive=False)
        with gr.Accordion("Sweep: the same prompts at " + " or at ".join(
                f"{kind} ({', '.join(f'{a}°' for a in angles)})" for kind, angles in SWEEPS.items()), open=True):
            with gr.Row(elem_id="sweep-controls"):
                with gr.Column(scale=0, min_width=150, elem_id="sweep-buttons"):
                    sweep_buttons = {kind: gr.Button(f"Sweep {kind}", size="sm",
                                                     elem_id=f"sweep-{kind.replace(' ', '-')}") for kind in SWEEPS}
                sweep_summary = gr.Markdown(SWEEP_INTRO, elem_id="sweep-summary")
            sweep_gallery = gr.Gallery(label="Best mask at each rotation, turned back upright", columns=4, height="auto",
                                       object_fit="contain", format="png", visible=False, elem_id="sweep")

        page = [session, shown, status, view, verdict, sam_image, canonicalized_image, probabilities, canonical,
                details, downloads, sweep_gallery, sweep_summary, angle, upload]
        assert len(page) == len(Page._fields)
        options = [sam, multimask, show, opacity]

        def then_sam(event):
            """A light event, then SAM's part for the session it leaves."""
            event.then(handlers.sam_step, [session, shown, *options], page, **heavy)

        # .upload and .clear, not .change: a photo the page puts in the box (an example) is not a second upload.
        then_sam(upload.upload(handlers.photo, [session, upload, tilt_stage], page, preprocess=False, **light))
        upload.clear(handlers.photo, [session, upload, tilt_stage], page, preprocess=False, **light)
        then_sam(examples.select(handlers.example, [session, tilt_stage], page, **light))
        for value, button in turns.items():
            then_sam(button.click(handlers.turn(value), [session, shown], page, **light))
            button.click(None, js=SHOW_VIEW_ON_PHONE)
        then_sam(angle.input(handlers.rotate, [session, shown, angle], page, trigger_mode="always_last", **light))
        then_sam(angle.release(handlers.rotate, [session, shown, angle], page, **light))
        then_sam(tilt_stage.input(handlers.tilt_stage, [session, shown, tilt_stage], page, trigger_mode="always_last",
                                  **light))
        then_sam(view.select(handlers.click, [session, shown, mode], page, trigger_mode="multiple", **light))
        then_sam(undo.click(handlers.undo, [session, shown], page, **light))
        then_sam(clear.click(handlers.clear, [session, shown], page, **light))
        then_sam(everything.click(handlers.everything, [session, shown], page, **light))
        gr.on([show.change, opacity.release], handlers.redraw, [session, shown, show, opacity], page, **light)
        gr.on([sam.input, multimask.input], handlers.options, [session, shown, *options], page, **heavy)
        for kind, button in sweep_buttons.items():
            button.click(handlers.sweep(kind), [session, shown, sam, multimask], [sweep_gallery, sweep_summary, shown],
                         **(heavy | {"show_progress": "full"}))
        demo.load(handlers.welcome, None, [sam, status], api_visibility="private", queue=False)

        # The named API for gradio_client (see README), on components that are never shown.
        with gr.Column(visible=False):
            # The generated call's photo is a file of the caller's (handle_file("photo.jpg")).
            api_image = _api_example(gr.Image(type="filepath", label="photo"),
                                     {"path": "photo.jpg", "meta": {"_type": "gradio.FileData"}})
            api_angle = _api_example(gr.Number(0, label="angle (degrees, counter-clockwise)"), 90)
            api_points = _api_example(
                gr.Textbox("[]", label="points: JSON [[x, y, label], ...] in the photo's pixels"), "[[100, 80, 1]]")
            api_box = _api_example(gr.Textbox("", label="box: [x0, y0, x1, y1] in the photo's pixels, or empty"), "")
            api_sam = _api_example(gr.Textbox(models.default_sam, label="SAM size"), models.default_sam)
            api_multimask = _api_example(gr.Checkbox(True, label="multimask"), True)
            api_sam_overlay = gr.Image(label="sam_alone", format="png")
            api_canonicalized_overlay = gr.Image(label="sam_canonicalized", format="png")
            api_canonical = gr.Image(label="canonical_image", format="png")
            api_info = gr.JSON(label="info")
            api_segment, api_canonicalize = gr.Button(), gr.Button()
        # preprocess=False: the photo arrives as a file payload and is decoded by canon.images, whose messages
        # say what is wrong with it.
        api = dict(concurrency_id=HEAVY, concurrency_limit=concurrency_limit, api_visibility="public",
                   preprocess=False)
        api_segment.click(handlers.api_segment, [api_image, api_angle, api_points, api_box, api_sam, api_multimask],
                          [api_sam_overlay, api_canonicalized_overlay, api_info], api_name="segment", **api)
        api_canonicalize.click(handlers.api_canonicalize, [api_image, api_angle], [api_canonical, api_info],
                               api_name="canonicalize", **(api | {"concurrency_id": LIGHT, "concurrency_limit": 1}))
    handlers.uploads.bind(demo)
    return demo


def launch(demo: gr.Blocks, **options):
    """Serve the page with this app's settings (queue, upload size limit, bounded sessions, style); ``options`` go
    to ``gr.Blocks.launch`` and win."""
    settings = dict(max_file_size=MAX_FILE_BYTES, state_session_capacity=200, css=CSS, js=KEYBOARD,
                    theme=gr.themes.Soft(), footer_links=["api", "gradio"]) | options
    return demo.queue(max_size=64).launch(**settings)


# --------------------------------------------------------------------------------------------------- command line


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, as the library's command line does, instead of usage + message
        self.exit(2, f"error: {message} (see python app.py --help)\n")


def _log_to_stderr() -> None:
    """One line per event of this app's and the library's loggers (refused requests, SAM loads) on stderr."""
    logger = logging.getLogger("canon")
    if logger.handlers:  # main() run again in one process (tests)
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def build_parser() -> argparse.ArgumentParser:
    env = os.environ.get
    parser = _Parser(
        description="Canonicalized SAM demo: SAM alone and SAM + a learned canonicalizer on a turned photo.",
        epilog="Each option can also be set by the environment variable named in its help.")
    parser.add_argument("--sam", default=env("CANON_SAM"), metavar="NAME_OR_PATH",
                        help="the SAM offered first: vit_b, vit_l or vit_h (from the Hugging Face Hub on first use), "
                             "or a local segment-anything sam_vit_*.pth (env CANON_SAM; default vit_b)")
    parser.add_argument("--canonicalizer", default=env("CANON_CANONICALIZER"), metavar="NAME_OR_DIR",
                        help="a canonicalizer name from canon/weights/models.json, or a folder with config.json and "
                             "model.safetensors (env CANON_CANONICALIZER; default: the paper's, shipped here)")
    parser.add_argument("--device", default=env("CANON_DEVICE", "auto"), choices=("auto", "cpu", "cuda"),
                        help="where the networks run (env CANON_DEVICE; default auto: CUDA when there is a GPU)")
    parser.add_argument("--sam-precision", default=env("CANON_SAM_PRECISION", "auto"), choices=SAM_PRECISIONS,
                        help="arithmetic of SAM's image encoder (env CANON_SAM_PRECISION; default auto: bfloat16 "
                             "where the device has it natively, float16 on a GPU without it, else float32)")
    parser.add_argument("--server-name", default=env("GRADIO_SERVER_NAME", "127.0.0.1"),
                        help="the address to listen on, 0.0.0.0 for every interface (env GRADIO_SERVER_NAME; "
                             "default 127.0.0.1)")
    parser.add_argument("--port", type=whole_number(1, 65535), default=env("GRADIO_SERVER_PORT", "7860"),
                        help="the port (env GRADIO_SERVER_PORT; default 7860)")
    parser.add_argument("--share", action="store_true", default=env("GRADIO_SHARE", "").lower() in ("1", "true"),
                        help="also serve through a temporary public gradio.live link (env GRADIO_SHARE=1)")
    parser.add_argument("--auth", default=env("CANON_AUTH"), metavar="USER:PASS",
                        help="ask visitors for this user name and password (env CANON_AUTH)")
    parser.add_argument("--concurrency", type=whole_number(1, 64), default=env("CANON_CONCURRENCY", "1"),
                        help="model runs at once, all visitors together (env CANON_CONCURRENCY; default 1)")
    parser.add_argument("--tilt", action="store_true", default=env("CANON_TILT", "").lower() in ("1", "true"),
                        help="start visitors with the tilt stage on: the tilt beyond quarter turns undone too, "
                             "read from the photo's edges (env CANON_TILT=1; off by default: it also tilts some "
                             "upright photos, see the README; each visitor can switch it on the page)")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    user, colon, password = (args.auth or "").partition(":")
    if args.auth and not (user and colon and password):
        parser.error("--auth takes USER:PASS")
    _log_to_stderr()
    from canon.canonicalizer import Canonicalizer
    from canon.runtime import pick_device

    try:
        device = pick_device("cpu" if ZERO_GPU else args.device)
        canonicalizer = Canonicalizer.load(args.canonicalizer, device=device)
        if args.tilt and canonicalizer.tilt is None:  # a model's config.json may bring its own tilt settings
            canonicalizer = canonicalizer.with_tilt()
    except (ValueError, ModelUnavailableError) as error:
        sys.exit(f"error: {error}")
    sources, first = sam_sources(args.sam)
    models = Models(canonicalizer, sources, default_sam=first, device=str(device), sam_precision=args.sam_precision,
                    sam_encoder_device="cuda" if ZERO_GPU else None)
    launch(build_demo(models, concurrency_limit=args.concurrency), server_name=args.server_name,
           server_port=args.port, share=args.share, auth=(user, password) if args.auth else None)


if __name__ == "__main__":
    main()
