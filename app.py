"""Canonicalized SAM: rotate a photo, prompt Segment Anything, and compare SAM alone with SAM behind a learned
canonicalization network (Mondal et al., NeurIPS 2023), side by side.

This file is the page only: layout, events and wording. Every computation is the ``canon`` library's
(:mod:`canon.demo` holds the session and the actions). ``python app.py --help`` lists the options;
``build_demo(models)`` builds the page around models built elsewhere (tests, other launchers), and :func:`launch`
serves it with this app's settings.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from functools import partial
from pathlib import Path
from typing import NamedTuple

import gradio as gr
import numpy as np
import pydantic
from gradio.exceptions import ComponentProcessingError, InvalidPathError
from gradio.utils import get_upload_folder

from canon import geometry, schema
from canon.cli import whole_number
from canon.demo import (ExportFolder, Models, Outcome, Session, draw_prompts, prepare_photo, run, sam_sources,
                        sweep)
from canon.images import MAX_FILE_BYTES, UPLOAD_REFUSAL, ImageError, read_upload
from canon.prompts import parse_prompts
from canon.registry import ModelUnavailableError
from canon.render import PALETTE_NAMES, overlay
from canon.schema import is_unsure
from canon.segmenter import PathResult

try:  # Hugging Face ZeroGPU attaches a GPU only while a function wrapped in spaces.GPU runs
    import spaces
except ImportError:
    spaces = None

log = logging.getLogger("canon.app")

EXAMPLES_DIR = Path(__file__).resolve().parent / "examples"
# (file, caption); the photos' authors and licences are in examples/SOURCES.csv.
EXAMPLES = [("animals_cat.jpg", "cat"), ("animals_horse.jpg", "horses"), ("france_eiffelTower.jpg", "Eiffel Tower"),
            ("animals_owl.jpg", "owl (the paper's canonicalizer gets it wrong)")]
# The click-mode radio's labels -> the kinds of click of canon.demo.Session.
CLICK_MODES = {"object point (green)": "object", "background point (red)": "background", "box: two corners": "corner"}
HEAVY = "models"  # the concurrency group of every event that runs a network
GPU_SECONDS = 120  # ZeroGPU time asked for per call: enough for a first ViT-H embedding, or a sweep's five

INTRO = """
# Canonicalized SAM: Segment Anything that does not mind a turned photo
Turn a photo, click on an object, and compare **SAM alone** with **SAM + canonicalizer**. The canonicalizer, a small
rotation-equivariant network, guesses how far the photo is turned and hands SAM the photo turned back, so SAM sees it
the way it was trained. Method: Mondal et al., *Equivariant Adaptation of Large Pretrained Models*, NeurIPS 2023
([paper](https://openreview.net/forum?id=m6dRQJw280)).
"""
NO_PHOTO = "⚠ Upload a photo first."  # what every event that needs a photo says without one
HOW_TO = "Upload or paste a photo, or pick an example; turn it; then click on it."
NO_RESULTS = "SAM's masks appear here once you click on the photo (or press *Segment everything*)."
LEGEND = ("Same colour = same mask in the ranking of both panels (blue: SAM's best). Dots: green = object, "
          "red = background.")
CSS = """
#status, #panel-note { min-height: 1.6em; }
#status p, #panel-note p { margin: 0; }
"""


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


class Page(NamedTuple):
    """The values of the outputs that every photo and prompt event updates, in the order of ``build_demo``'s
    ``page`` components."""

    session: Session
    status: str
    view: np.ndarray | None
    panel_note: str
    sam: np.ndarray | None
    canonicalized: np.ndarray | None
    probabilities: dict | None
    canonical: np.ndarray | None
    details: str
    downloads: list[str] | None


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
    Gradio has dropped an idle one) and returns the new one with the page; bad input becomes a message in the page
    (``gr.Error`` for the API), never a crash. The model runs go through :func:`_gpu`."""

    def __init__(self, models: Models, exports: ExportFolder | None = None, everything_options: dict | None = None):
        self.models = models
        self.uploads = Uploads()
        self.exports = exports or ExportFolder()
        self.everything_options = everything_options or {}
        self._run = _gpu(run)
        self._sweep = _gpu(sweep)

    # -------------------------------------------------------------------------------------------- page events

    def photo(self, session: Session | None, upload) -> Page:
        """A new photo (upload, paste or example): ``upload`` is Gradio's file payload, None when cleared."""
        session = Session(angle=(session or Session()).angle)
        if upload is None:
            return self._blank(session, HOW_TO)
        try:
            photo, size = self.uploads.photo(upload)
        except ImageError as error:
            return self._blank(session, _warning(error))
        note = _shrink_note(size, photo)
        status = "Photo loaded" + (f" ({note})" if note else "") + ". Turn it, then click on it to prompt SAM."
        return self._refresh(session.with_photo(photo), status)

    def rotate(self, session: Session | None, angle: float, sam: str, multimask: bool,
               progress=gr.Progress(track_tqdm=True)) -> Page:
        """The photo turned to ``angle`` degrees counter-clockwise; the prompts turn with it."""
        session = session or Session()
        if session.photo is None:
            return self._unchanged(session, NO_PHOTO)
        try:
            session = session.rotated_to(_degrees(angle))
        except ValueError as error:
            return self._unchanged(session, _warning(error))
        return self._refresh(session, "", sam, multimask)

    def click(self, session: Session | None, mode: str, sam: str, multimask: bool, evt: gr.SelectData,
              progress=gr.Progress(track_tqdm=True)) -> Page:
        """A click on the turned photo: a point or a box corner, as ``mode`` (a key of CLICK_MODES) says."""
        session = session or Session()
        if session.photo is None:
            return self._unchanged(session, NO_PHOTO)
        try:
            x, y = _pixel(evt.index)  # the integer pixel (column, row) of the displayed image; centre at + 0.5
            if not isinstance(mode, str) or mode not in CLICK_MODES:
                raise ValueError("choose what a click adds")
            session = session.clicked(x + 0.5, y + 0.5, CLICK_MODES[mode])
        except ValueError as error:
            return self._unchanged(session, _warning(error))
        waiting = session.pending_corner() is not None
        return self._refresh(session, "Now click the opposite corner of the box." if waiting else "", sam, multimask)

    def undo(self, session: Session | None, sam: str, multimask: bool, progress=gr.Progress(track_tqdm=True)) -> Page:
        return self._again((session or Session()).undone(), sam, multimask)

    def clear(self, session: Session | None, sam: str, multimask: bool) -> Page:
        return self._again((session or Session()).cleared(), sam, multimask)

    def everything(self, session: Session | None, sam: str, multimask: bool,
                   progress=gr.Progress(track_tqdm=True)) -> Page:
        return self._again((session or Session()).asking_everything(), sam, multimask)

    def options(self, session: Session | None, sam: str, multimask: bool,
                progress=gr.Progress(track_tqdm=True)) -> Page:
        """Another SAM or multimask setting: the same request again."""
        session = session or Session()
        return self._again(session, sam, multimask) if session.photo is not None else self._unchanged(session, HOW_TO)

    def sweep(self, session: Session | None, sam: str, multimask: bool,
              progress=gr.Progress(track_tqdm=True)) -> tuple[gr.Gallery, str]:
        """The prompts with the photo turned by 0, 90, 180 and 270 degrees, both paths, turned back upright: the
        gallery (SAM alone on the first row, SAM + canonicalizer on the second) and a summary."""
        session = session or Session()
        if session.photo is None:
            return gr.Gallery(visible=False), NO_PHOTO
        self._preload(sam)
        try:
            entries = self._sweep(self.models, session, sam, multimask)
        except ValueError as error:
            return gr.Gallery(visible=False), _warning(error)
        except ModelUnavailableError as error:
            return gr.Gallery(visible=False), _warning(error.public)
        reference = session.reference()
        marked = partial(draw_prompts, prompts=session.prompts("reference"))
        items = []
        for path, name in (("sam", "SAM"), ("canonicalized", "SAM+canon.")):
            for entry in entries:
                best_mask = getattr(entry.result, path).masks[:1]
                iou = entry.sam_iou if path == "sam" else entry.canonicalized_iou
                unsure = path == "canonicalized" and is_unsure(entry.result.canonicalization)
                caption = f"{name} {90 * entry.k}° · IoU {iou:.2f}" + (" ⚠ unsure" if unsure else "")
                items.append((marked(overlay(reference, best_mask)), caption))
        return gr.Gallery(items, visible=True), _sweep_summary(entries, session.residual_deg)

    # ------------------------------------------------------------------------------------------ API endpoints

    def api_segment(self, image, angle, points, box, sam, multimask):
        """``/segment``: both paths for explicit prompts (in the sent photo's pixels) on the photo turned by
        ``angle``; the overlays, and a dict with the decision, timings, IoU and masks (COCO RLE, turned frame).

        A photo with a side over the page's bound is shrunk to it first, as on the page, and the prompts with it:
        the masks and overlays are then in the shrunk photo's frame, and ``scale`` in the dict says by how much."""
        try:
            photo, size = self.uploads.photo(image)
            prompts = parse_prompts(points, box)
            prompts.validate(size)
            scale = (photo.shape[1] / size[1], photo.shape[0] / size[0])
            session = Session(photo=photo).rotated_to(_degrees(angle)).prompted(prompts.scaled(*scale))
            sam, multimask = self._choice(sam), _flag(multimask, "multimask")
        except ValueError as error:  # ImageError, PromptError and the session's own checks
            raise _refusal("segment", error) from None
        self._preload(sam)
        outcome = self._run(self.models, session, sam, multimask)
        if outcome.sam_error:
            raise _refusal("segment", outcome.sam_error)
        result = outcome.result
        info = schema.segment_record(result, session.angle, outcome.agreement, outcome.residual_deg) | \
            schema.size_record(size, photo.shape)
        return overlay(outcome.view, result.sam.masks), overlay(outcome.view, result.canonicalized.masks), info

    def api_canonicalize(self, image, angle):
        """``/canonicalize``: the image the canonicalizer would hand SAM, and its decision; needs no SAM. A photo
        over the page's bound is shrunk first, as in ``/segment``."""
        try:
            photo, size = self.uploads.photo(image)
            session = Session(photo=photo).rotated_to(_degrees(angle))
        except ValueError as error:
            raise _refusal("canonicalize", error) from None
        outcome = self._run(self.models, session, self.models.default_sam)
        decision = outcome.canonicalization
        return decision.canonical_image, schema.decision_record(decision, session.angle, outcome.residual_deg) | \
            schema.size_record(size, photo.shape)

    def _choice(self, sam) -> str:
        """The SAM an API call names (a text from the choices; empty for the default)."""
        if sam is None or sam == "":
            return self.models.default_sam
        if not isinstance(sam, str) or sam not in self.models.sam_choices:
            raise ValueError(f"unknown SAM; choose one of {', '.join(self.models.sam_choices)}")
        return sam

    # -------------------------------------------------------------------------------------------------- helpers

    def _again(self, session: Session, sam: str, multimask: bool) -> Page:
        if session.photo is None:
            return self._unchanged(session, NO_PHOTO)
        return self._refresh(session, "", sam, multimask)

    def _preload(self, sam: str) -> None:
        """Load (and the first time download, with a progress bar) SAM in this process: on ZeroGPU the GPU
        function runs in a short-lived one, which would load it again every time."""
        try:
            self.models.sam(sam)
        except ModelUnavailableError:
            pass  # run() and sweep() report it where the visitor looks

    def _refresh(self, session: Session, status: str, sam: str | None = None, multimask: bool = True) -> Page:
        """Run what the session asks for and fill every panel."""
        sam = sam or self.models.default_sam
        if session.has_prompts or session.everything:
            self._preload(sam)
        options = {"everything_options": self.everything_options} if session.everything else {}
        try:
            outcome = self._run(self.models, session, sam, multimask, **options)
        except ValueError as error:  # prompts the library refuses after the session's own checks; undo helps
            return self._unchanged(session, _warning(error))
        result = outcome.result
        if outcome.sam_error:
            status, panel_note = "⚠ Only the canonicalizer could run: see below.", _warning(outcome.sam_error)
        else:
            panel_note = LEGEND if result is not None else NO_RESULTS
            status = status or ("Done. Click again to refine, or turn the photo: your prompts turn with it."
                                if result is not None else "Click on the photo to prompt SAM.")
        marked = partial(draw_prompts, prompts=session.prompts(), pending=session.pending_corner())
        downloads = None
        if result is not None:
            downloads = [str(path) for path in self.exports.save(
                {schema.MASK_FILE_STEMS[path]: getattr(result, path) for path in schema.MASK_FILE_STEMS},
                rotation_deg=session.angle, sam=sam)]
        decision = outcome.canonicalization
        return Page(
            session=session, status=status, view=marked(outcome.view), panel_note=panel_note,
            sam=marked(overlay(outcome.view, result.sam.masks)) if result else None,
            canonicalized=marked(overlay(outcome.view, result.canonicalized.masks)) if result else None,
            probabilities=_probabilities(decision), canonical=decision.canonical_image,
            details=_details(outcome, session.everything), downloads=downloads)

    @staticmethod
    def _blank(session: Session, status: str) -> Page:
        return Page(session, status, None, NO_RESULTS, None, None, None, None, "", None)

    @staticmethod
    def _unchanged(session: Session, status: str) -> Page:
        """Only the session and the status line change; every other panel keeps what it shows."""
        return Page(session, status, *[gr.skip()] * (len(Page._fields) - 2))


# ------------------------------------------------------------------------------------------- input and wording


class Uploads:
    """The files this app received from visitors, which are the only ones an event may read: uploads through
    Gradio's upload route, and the example photos Gradio copied into its cache when the page was built. Gradio hands
    events a file payload (a dict with a ``path``) that a client can make up, so the path is checked against these
    before anything is opened (see :func:`canon.images.read_upload`). A component's ``temp_files`` is no such
    record: Gradio adds to it any path in its folder that a request names."""

    def __init__(self):
        self.demo: gr.Blocks | None = None
        self._examples: frozenset[str] = frozenset()

    def bind(self, demo: gr.Blocks, examples: gr.Examples | None = None) -> None:
        """Accept what ``demo`` receives through its upload route, and the files of ``examples`` as cached now."""
        self.demo = demo
        samples = examples.dataset.samples if examples is not None else []
        self._examples = frozenset(value["path"] for row in samples for value in row
                                   if isinstance(value, dict) and isinstance(value.get("path"), str))

    def __contains__(self, path) -> bool:
        return self.demo is not None and (path in self.demo.upload_file_set or path in self._examples)

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


def _decision_text(outcome: Outcome) -> str:
    decision = outcome.canonicalization
    text = (f"**Canonicalizer:** the photo looks turned **{decision.angle_deg}°** (probability "
            f"{decision.confidence:.2f}), so SAM is shown it turned back by {decision.angle_deg}° "
            f"({_duration(decision.elapsed_ms, decision.cached)}).")
    if outcome.unsure:
        text += (f"\n\n⚠ **Unsure:** its top probability is only {decision.confidence:.2f}; the turn it picked may "
                 "be wrong for this photo.")
    if outcome.residual_deg:
        text += (f"\n\nThe photo is also tilted by {outcome.residual_deg:+.0f}° beyond the nearest quarter turn: a "
                 "canonicalizer of quarter turns cannot undo that, so both paths see the tilt.")
    return text


def _details(outcome: Outcome, everything: bool) -> str:
    """The canonicalizer's decision, then both results' masks, timings and agreement, as Markdown."""
    result = outcome.result
    if result is None:
        return _decision_text(outcome)
    rows = [("masks", _mask_list(result.sam, everything), _mask_list(result.canonicalized, everything)),
            ("image encoder", _duration(result.sam.encoder_ms, result.sam.cached),
             _duration(result.canonicalized.encoder_ms, result.canonicalized.cached)),
            ("mask decoder", _duration(result.sam.decoder_ms), _duration(result.canonicalized.decoder_ms))]
    table = "| | SAM alone | SAM + canonicalizer |\n|---|---|---|\n" + "\n".join(
        f"| {name} | {a} | {b} |" for name, a, b in rows)
    measure = "the areas covered" if everything else "the best masks"
    agreement = f"**Agreement** (IoU of {measure}): **{outcome.agreement:.2f}**"
    return "\n\n".join([_decision_text(outcome), table, agreement])


def _mask_list(result: PathResult, everything: bool) -> str:
    if everything or len(result.masks) > len(PALETTE_NAMES):
        return f"{len(result.masks)} masks"
    areas = result.masks.reshape(len(result.masks), -1).mean(axis=1)
    return "<br>".join(f"{PALETTE_NAMES[i]}: score {score:.2f}, {area:.0%} of the image"
                       for i, (score, area) in enumerate(zip(result.scores, areas)))


def _sweep_summary(entries, residual_deg: float) -> str:
    def ious(path: str) -> str:
        return " / ".join(f"{getattr(entry, path + '_iou'):.2f}" for entry in entries[1:])

    guesses = " · ".join(f"{e.result.canonicalization.angle_deg}° (p {e.result.canonicalization.confidence:.2f})"
                         for e in entries)
    tilt = f", keeping the {residual_deg:+.0f}° tilt" if residual_deg else ""
    text = (f"**IoU with the 0° result**, photo turned 90° / 180° / 270°: SAM alone {ious('sam')}; "
            f"SAM + canonicalizer {ious('canonicalized')}. Top row: SAM alone; bottom row: SAM + canonicalizer; "
            f"best mask only, every result turned back upright{tilt}. The canonicalizer's guesses, photo turned "
            f"0° / 90° / 180° / 270°: {guesses}.")
    unsure = [f"{90 * e.k}°" for e in entries if is_unsure(e.result.canonicalization)]
    if unsure:
        text += f"\n\n⚠ The canonicalizer is unsure at {', '.join(unsure)}: its guess may be wrong there."
    return text


# -------------------------------------------------------------------------------------------------------- layout


def build_demo(models: Models, *, concurrency_limit: int = 1, everything_options: dict | None = None) -> gr.Blocks:
    """The page, around already built models. ``concurrency_limit``: model runs at once, all events and visitors
    together (1 suits a CPU); ``everything_options`` go to segment-anything's automatic mask generator."""
    handlers = Handlers(models, everything_options=everything_options)
    heavy = dict(concurrency_id=HEAVY, concurrency_limit=concurrency_limit, api_visibility="private")
    with Blocks(title="Canonicalized SAM", delete_cache=(3600, 3600)) as demo:
        session = gr.State(Session(), time_to_live=4 * 3600)
        gr.Markdown(INTRO)
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=300):
                upload = gr.Image(label="1 · Photo", type="filepath", sources=["upload", "clipboard"], height=240,
                                  buttons=["fullscreen"], elem_id="upload")
                examples = gr.Examples([[str(EXAMPLES_DIR / name)] for name, _ in EXAMPLES], inputs=upload,
                                       example_labels=[caption for _, caption in EXAMPLES], label="Examples")
                gr.Markdown("**2 · Turn the photo** (counter-clockwise)")
                with gr.Row():
                    turns = {angle: gr.Button(f"{angle}°", size="sm", min_width=60) for angle in (0, 90, 180, 270)}
                angle = gr.Slider(0, 360, value=0, step=1, label="Any angle",
                                  info="Beyond quarter turns, the remaining tilt is not undone by the canonicalizer.")
                mode = gr.Radio(list(CLICK_MODES), value=next(iter(CLICK_MODES)), label="3 · A click on the photo adds")
                with gr.Row():
                    undo = gr.Button("Undo", size="sm")
                    clear = gr.Button("Clear", size="sm")
                everything = gr.Button("Segment everything", size="sm")
                with gr.Row():
                    sam = gr.Dropdown(models.sam_choices, value=models.default_sam, label="SAM size",
                                      info="Downloaded from the Hugging Face Hub on first use (vit_b: 375 MB, "
                                           "vit_h: 2.5 GB).")
                    multimask = gr.Checkbox(True, label="3 candidate masks per prompt",
                                            info="SAM's multimask output, best first")
            with gr.Column(scale=3, min_width=360):
                view = gr.Image(label="Turned photo: click here to prompt SAM", interactive=False, height=480,
                                buttons=["fullscreen"], elem_id="view")
                status = gr.Markdown(HOW_TO, elem_id="status")
        panel_note = gr.Markdown(NO_RESULTS, elem_id="panel-note")
        with gr.Row():
            sam_image = gr.Image(label="SAM alone", interactive=False, height=400, format="png", elem_id="sam-alone")
            canonicalized_image = gr.Image(label="SAM + canonicalizer", interactive=False, height=400, format="png",
                                           elem_id="sam-canonicalized")
        with gr.Row():
            probabilities = gr.Label(label="Canonicalizer's guess", num_top_classes=4, scale=1,
                                     elem_id="probabilities")
            canonical = gr.Image(label="What SAM is shown after canonicalization", interactive=False, height=260,
                                 scale=1, buttons=["fullscreen"])
            with gr.Column(scale=2):
                details = gr.Markdown(elem_id="details")
                downloads = gr.File(label="Masks of both panels: PNG (labels in the panel colours) and COCO RLE JSON",
                                    file_count="multiple", interactive=False)
        with gr.Accordion("Sweep: the same prompts at 0°, 90°, 180° and 270°", open=True):
            with gr.Row():
                sweep_button = gr.Button("Run sweep", size="sm", scale=0, min_width=140)
                sweep_summary = gr.Markdown("The canonicalized row should be identical at every angle; SAM alone "
                                            "drifts. (Costs up to five image embeddings.)", elem_id="sweep-summary")
            sweep_gallery = gr.Gallery(label="Best mask at each rotation, turned back upright", columns=4, height=700,
                                       object_fit="contain", format="png", visible=False, elem_id="sweep")

        page = [session, status, view, panel_note, sam_image, canonicalized_image, probabilities, canonical, details,
                downloads]
        options = [sam, multimask]
        upload.change(handlers.photo, [session, upload], page, preprocess=False, **heavy)
        for value, button in turns.items():
            button.click(lambda value=value: value, None, angle, queue=False, api_visibility="private").then(
                handlers.rotate, [session, angle, *options], page, **heavy)
        angle.release(handlers.rotate, [session, angle, *options], page, **heavy)
        view.select(handlers.click, [session, mode, *options], page, **heavy)
        undo.click(handlers.undo, [session, *options], page, **heavy)
        clear.click(handlers.clear, [session, *options], page, **heavy)
        everything.click(handlers.everything, [session, *options], page, **heavy)
        gr.on([sam.change, multimask.change], handlers.options, [session, *options], page, **heavy)
        sweep_button.click(handlers.sweep, [session, *options], [sweep_gallery, sweep_summary], **heavy)

        # The named API for gradio_client (see README), on components that are never shown.
        with gr.Column(visible=False):
            api_image = gr.Image(type="filepath", label="photo")
            api_angle = gr.Number(0, label="angle (degrees, counter-clockwise)")
            api_points = gr.Textbox("[]", label="points: JSON [[x, y, label], ...] in the photo's pixels")
            api_box = gr.Textbox("", label="box: [x0, y0, x1, y1] in the photo's pixels, or empty")
            api_sam = gr.Textbox(models.default_sam, label="SAM size")
            api_multimask = gr.Checkbox(True, label="multimask")
            api_sam_overlay = gr.Image(label="sam_alone", format="png")
            api_canonicalized_overlay = gr.Image(label="sam_canonicalized", format="png")
            api_canonical = gr.Image(label="canonical_image", format="png")
            api_info = gr.JSON(label="info")
            api_segment, api_canonicalize = gr.Button(), gr.Button()
        # preprocess=False: the photo arrives as a file payload and is decoded by canon.images, whose messages
        # say what is wrong with it.
        api = dict(heavy, api_visibility="public", preprocess=False)
        api_segment.click(handlers.api_segment, [api_image, api_angle, api_points, api_box, api_sam, api_multimask],
                          [api_sam_overlay, api_canonicalized_overlay, api_info], api_name="segment", **api)
        api_canonicalize.click(handlers.api_canonicalize, [api_image, api_angle], [api_canonical, api_info],
                               api_name="canonicalize", **api)
    handlers.uploads.bind(demo, examples)
    return demo


def launch(demo: gr.Blocks, **options):
    """Serve the page with this app's settings (queue, upload size limit, bounded sessions, style); ``options`` go
    to ``gr.Blocks.launch`` and win."""
    settings = dict(max_file_size=MAX_FILE_BYTES, state_session_capacity=200, css=CSS, theme=gr.themes.Soft(),
                    footer_links=["api", "gradio"]) | options
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
        device = pick_device(args.device)
        canonicalizer = Canonicalizer.load(args.canonicalizer, device=device)
    except (ValueError, ModelUnavailableError) as error:
        sys.exit(f"error: {error}")
    sources, first = sam_sources(args.sam)
    models = Models(canonicalizer, sources, default_sam=first, device=str(device))
    launch(build_demo(models, concurrency_limit=args.concurrency), server_name=args.server_name,
           server_port=args.port, share=args.share, auth=(user, password) if args.auth else None)


if __name__ == "__main__":
    main()
