"""What the Gradio demo does, without Gradio: the models it serves, one visitor's session, and its actions.

``app.py`` lays these out on a page. Everything here is plain Python and numpy, so it is tested without a browser.

Frames. A session keeps the photo upright, as uploaded, and every click in the photo's frame (continuous pixel
coordinates, see :mod:`canon.geometry`). The *view* is the photo rotated by the session's angle (any angle: exact
quarter turns, then a residual tilt with interpolation); prompts are mapped into the view when SAM runs, so turning
the photo keeps the clicks on the same object. A sweep's *reference* is the photo with the residual tilt only.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from . import geometry, maskio, schema
from .canonicalizer import Canonicalization, Canonicalizer
from .images import load_photo
from .prompts import MAX_POINTS, Prompts
from .registry import ModelUnavailableError, default_sam, registered_sam, sam_availability, sam_names
from .render import difference, outlined
from .runtime import image_digest
from .segmenter import DualResult, Embedding, EquivariantSegmenter, PathResult, SamBackend, SweepEntry
from .tilt import TiltEstimator

log = logging.getLogger(__name__)

# What a sweep repeats the prompts at: the photo's quarter turns (its own residual tilt kept; exact) or tilts of the
# upright photo (what only a tilt stage can follow).
SWEEPS = {"quarter turns": geometry.ANGLES_DEG, "tilts": (0, 15, 30, 45)}
MAX_SIDE = 1600  # longer photos are shrunk for the page; SAM and the canonicalizer work at 1024 px anyway
CLICK_KINDS = ("object", "background", "corner")  # a point on the object, a point off it, a corner of the box


# ------------------------------------------------------------------------------------------------------- models


class Models:
    """The models one app serves: the canonicalizer, loaded up front (8 MB), and SAM backends loaded on first use.

    ``canonicalizer`` is the one the server is set to serve; :meth:`canonicalizer_for` gives it with or without the
    tilt stage, as a visitor chooses (the same weights, each with its own cache).

    ``sam_sources`` maps the names offered to visitors to a registry name or a local ``.pth`` (loaded on first use
    with :meth:`SamBackend.load`, downloading from the Hub if need be) or to an already built :class:`SamBackend`
    (kept for good). At most ``max_loaded`` SAMs loaded on demand stay in memory, least recently used dropped first
    (ViT-H alone takes 2.5 GB). A failure to get one is remembered for ``retry_after_s``, so that a machine without
    the Hub does not wait for it on every click. SAMs loaded here run their image encoder at ``sam_precision``
    on ``sam_encoder_device`` (default ``device``; see :class:`SamBackend`). Thread-safe.
    """

    def __init__(self, canonicalizer: Canonicalizer, sam_sources: dict[str, str | SamBackend],
                 default_sam: str | None = None, device: str = "auto", max_loaded: int = 1,
                 retry_after_s: float = 60.0, sam_precision: str = "auto", sam_encoder_device: str | None = None):
        if not sam_sources:
            raise ValueError("no SAM to offer")
        self.canonicalizer = canonicalizer
        # The server's own tilt settings where it has some, else TiltEstimator's defaults.
        served_with_tilt = canonicalizer.tilt is not None
        other = canonicalizer.with_tilt(None if served_with_tilt else TiltEstimator())
        self._by_tilt_stage = {served_with_tilt: canonicalizer, not served_with_tilt: other}
        self.sam_sources = dict(sam_sources)
        self.default_sam = default_sam or next(iter(self.sam_sources))
        self.device, self.max_loaded, self.retry_after_s = device, max_loaded, retry_after_s
        self.sam_precision, self.sam_encoder_device = sam_precision, sam_encoder_device
        self._loaded: OrderedDict[str, SamBackend] = OrderedDict()
        self._failures: dict[str, tuple[float, str]] = {}
        self._lock = threading.Lock()

    @property
    def sam_choices(self) -> list[str]:
        return list(self.sam_sources)

    def canonicalizer_for(self, tilt_stage: bool | None) -> Canonicalizer:
        """The canonicalizer with the tilt stage in front (True), without it (False), or as the server is set
        (None)."""
        return self.canonicalizer if tilt_stage is None else self._by_tilt_stage[bool(tilt_stage)]

    def sam(self, choice: str) -> SamBackend:
        """The SAM backend offered as ``choice``, loaded (and downloaded) if need be; raise
        :class:`ModelUnavailableError` with one sentence when it cannot be had."""
        source = self.sam_sources.get(choice) if isinstance(choice, str) else None
        if source is None:
            known = f"choose one of {', '.join(self.sam_sources)}"
            raise ModelUnavailableError(f"unknown SAM {str(choice)[:40]!r}: {known}.", public=f"unknown SAM; {known}")
        if isinstance(source, SamBackend):
            return source
        with self._lock:
            if choice in self._loaded:
                self._loaded.move_to_end(choice)
                return self._loaded[choice]
            failed_at, message = self._failures.get(choice, (-np.inf, ""))
            if time.monotonic() - failed_at < self.retry_after_s:
                raise ModelUnavailableError(message, public=_unavailable(choice))
            try:
                backend = SamBackend.load(source, device=self.device, precision=self.sam_precision,
                                          encoder_device=self.sam_encoder_device)
            except ModelUnavailableError as error:
                log.warning("SAM %s is unavailable: %s", choice, error)  # the operator's message, with the fix
                self._failures[choice] = (time.monotonic(), str(error))
                raise ModelUnavailableError(str(error), public=_unavailable(choice)) from None
            self._failures.pop(choice, None)
            self._loaded[choice] = backend
            while len(self._loaded) > self.max_loaded:
                self._loaded.popitem(last=False)
            return backend

    def segmenter(self, choice: str, tilt_stage: bool | None = None) -> EquivariantSegmenter:
        """SAM ``choice`` behind :meth:`canonicalizer_for` ``tilt_stage``."""
        return EquivariantSegmenter(self.canonicalizer_for(tilt_stage), self.sam(choice))

    def loaded(self, choice: str) -> SamBackend | None:
        """The backend of ``choice`` if it is in memory now (nothing is loaded)."""
        source = self.sam_sources.get(choice)
        return source if isinstance(source, SamBackend) else self._loaded.get(choice)

    def availability(self, choice: str) -> str:
        """Whether ``choice`` can be had, found without loading or downloading anything: ``"here"`` (in memory, a
        local file, or in the Hugging Face cache), ``"hub"`` (downloaded on first use) or ``"missing"`` (a local file
        that is not there, the Hub out of reach, or a failure remembered)."""
        source = self.sam_sources[choice]
        if isinstance(source, SamBackend) or choice in self._loaded:
            return "here"
        if time.monotonic() - self._failures.get(choice, (-np.inf, ""))[0] < self.retry_after_s:
            return "missing"
        if source in sam_names():
            state = sam_availability(source)
            return "missing" if state == "offline" else state
        return "here" if Path(source).is_file() else "missing"


def sam_sources(sam: str | None = None) -> tuple[dict[str, str], str]:
    """The SAMs to offer (label -> registry name or local checkpoint path) and the one selected first: every SAM of
    the weight registry, and ``sam`` (a registry name, or a local ``.pth`` offered first as "<file> (local)").
    A local file that is a registered checkpoint (its sha256 says so) is offered under that name instead, so the
    menu lists it once and an API call naming it (``"vit_b"``) reaches it."""
    sources = {name: name for name in sam_names()}
    if sam is None or sam in sources:
        return sources, sam or default_sam()
    known = registered_sam(sam)
    if known is not None:
        return sources | {known: sam}, known
    label = f"{Path(sam).name} (local)"
    return {label: sam, **sources}, label


def _unavailable(choice: str) -> str:
    return (f"SAM {choice} cannot be loaded on this server now (its weights are not here and could not be "
            "downloaded); the canonicalizer still works")


# ------------------------------------------------------------------------------------------------------ session


def prepare_photo(source, max_side: int = MAX_SIDE, name: str | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode an upload (path, bytes or PIL image, called ``name`` in messages; see :func:`canon.images.load_photo`,
    whose ``ImageError`` it raises) into an ``H x W x 3`` uint8 photo with its longest side at most ``max_side`` (the
    page's bound); also return the size ``(H, W)`` it had before (the photo's own size when it was not shrunk)."""
    return load_photo(source, max_side, name=name)


@dataclass(frozen=True)
class Click:
    """One click, in the upright photo's frame (continuous pixel coordinates); ``kind`` is one of CLICK_KINDS."""

    x: float
    y: float
    kind: str


@dataclass(frozen=True, eq=False)  # eq=False: comparing sessions would compare photos element by element
class Session:
    """One visitor's state: the upright photo (``H x W x 3`` uint8, or None), the angle it is shown at (degrees,
    counter-clockwise), the clicks in order, and whether "segment everything" is what SAM was last asked (the
    clicks are kept meanwhile: undo goes back to them). ``photo_id`` is the photo's digest.

    ``tilt_stage``: whether the visitor has the canonicalizer undo the tilt beyond quarter turns too (None: as the
    server is set; see :meth:`Models.canonicalizer_for`). It outlives the photo.

    Immutable: every change returns a new session. Corner clicks pair up into a box; the last complete pair is the
    box, a last unpaired corner waits for its partner.
    """

    photo: np.ndarray | None = None
    angle: float = 0.0
    clicks: tuple[Click, ...] = ()
    everything: bool = False
    photo_id: str = ""
    tilt_stage: bool | None = None

    def with_photo(self, photo: np.ndarray, angle: float = 0.0) -> "Session":
        """A new photo, shown at ``angle``, without prompts (the choice of tilt stage kept)."""
        return Session(photo=photo, photo_id=image_digest(photo), tilt_stage=self.tilt_stage).rotated_to(angle)

    def without_photo(self) -> "Session":
        """No photo, the choice of tilt stage kept."""
        return Session(tilt_stage=self.tilt_stage)

    def with_tilt_stage(self, tilt_stage: bool) -> "Session":
        """The session with the tilt stage put in front of the canonicalizer (True) or not (False)."""
        return replace(self, tilt_stage=tilt_stage)

    @property
    def key(self) -> tuple:
        """What SAM's answer depends on: equal keys, equal requests."""
        return self.photo_id, self.angle, self.clicks, self.everything, self.tilt_stage

    def rotated_to(self, angle: float) -> "Session":
        geometry.split_degrees(angle)  # raises on a non-finite angle
        return replace(self, angle=float(angle))

    def clicked(self, x: float, y: float, kind: str) -> "Session":
        """Add a click at ``(x, y)`` in the *view*'s continuous pixel coordinates; raise ``ValueError`` (one
        sentence) for a click off the photo or one point too many."""
        if kind not in CLICK_KINDS:
            raise ValueError(f"unknown kind of click {kind!r}")
        if self.photo is None:
            raise ValueError("upload a photo first")
        if kind != "corner" and len(self._points()) >= MAX_POINTS:
            raise ValueError(f"at most {MAX_POINTS} points are accepted; undo or clear some first")
        height, width = self.photo.shape[:2]
        (px, py), = geometry.unrotate_points_free([[x, y]], self.angle, (height, width))
        if not (0 <= px <= width and 0 <= py <= height):
            raise ValueError("that click is in a corner the tilt left black, outside the photo: click on the photo")
        return replace(self, clicks=self.clicks + (Click(float(px), float(py), kind),), everything=False)

    def prompted(self, prompts: Prompts) -> "Session":
        """The session with ``prompts``, given in the upright photo's frame, as its only clicks (a box becomes two
        corners); raise ``ValueError`` (one sentence) for prompts off the photo or none at all."""
        if self.photo is None:
            raise ValueError("upload a photo first")
        prompts.validate(self.photo.shape[:2])
        if prompts.empty:
            raise ValueError("give at least one point or a box")
        clicks = [Click(float(x), float(y), "object" if label == 1 else "background")
                  for (x, y), label in zip(prompts.points, prompts.labels)]
        if prompts.box is not None:
            x0, y0, x1, y1 = prompts.box.tolist()
            clicks += [Click(x0, y0, "corner"), Click(x1, y1, "corner")]
        return replace(self, clicks=tuple(clicks), everything=False)

    def undone(self) -> "Session":
        """The last click taken back; after "segment everything", the prompts from before it."""
        return replace(self, clicks=self.clicks if self.everything else self.clicks[:-1], everything=False)

    def cleared(self) -> "Session":
        return replace(self, clicks=(), everything=False)

    def asking_everything(self) -> "Session":
        return replace(self, everything=True)

    @property
    def has_prompts(self) -> bool:
        """Whether SAM has something to go on: a point or a complete box."""
        return bool(self._points()) or len(self._corners()) >= 2

    def view(self) -> np.ndarray:
        """The photo as shown: rotated by :attr:`angle`."""
        return geometry.rotate_image_free(self.photo, self.angle)

    def reference(self) -> np.ndarray:
        """The photo with the residual tilt only: the upright frame of the quarter-turn sweep."""
        return geometry.rotate_image_free(self.photo, self.residual_deg)

    def sweep_frame(self, kind: str) -> tuple[np.ndarray, str]:
        """The image a sweep of ``kind`` (one of :data:`SWEEPS`) turns, and the name of its frame for
        :meth:`prompts`: the reference for quarter turns, the upright photo for tilts."""
        return (self.reference(), "reference") if kind == "quarter turns" else (self.photo, "photo")

    @property
    def residual_deg(self) -> float:
        return geometry.split_degrees(self.angle)[1]

    def prompts(self, frame: str = "view") -> Prompts:
        """The clicks as SAM prompts in the ``"view"``, ``"reference"`` or ``"photo"`` (upright) frame."""
        to_frame = self._mapper(frame)
        points = self._points()
        corners = self._corners()
        complete = corners[:len(corners) // 2 * 2]
        box = None
        if complete:
            pair = to_frame([(c.x, c.y) for c in complete[-2:]])
            box = np.concatenate([pair.min(axis=0), pair.max(axis=0)])
        return Prompts.make(to_frame([(c.x, c.y) for c in points]), [int(c.kind == "object") for c in points], box)

    def pending_corner(self, frame: str = "view") -> np.ndarray | None:
        """The unpaired last corner, ``(x, y)`` in ``frame``, or None."""
        corners = self._corners()
        return self._mapper(frame)([(corners[-1].x, corners[-1].y)])[0] if len(corners) % 2 else None

    def _mapper(self, frame: str):
        angle = {"view": self.angle, "reference": self.residual_deg, "photo": 0.0}[frame]
        size = self.photo.shape[:2]
        return lambda xy: geometry.rotate_points_free(np.reshape(xy, (-1, 2)), angle, size)

    def _points(self) -> list[Click]:
        return [c for c in self.clicks if c.kind != "corner"]

    def _corners(self) -> list[Click]:
        return [c for c in self.clicks if c.kind == "corner"]


# ------------------------------------------------------------------------------------------------------ actions


@dataclass
class Outcome:
    """What one request produced: the view it ran on, the canonicalizer's decision, and SAM's results.

    ``result`` is None when SAM was not asked (no prompts yet) or could not run; ``sam_error`` then says why, in
    one sentence for a visitor (no server paths or options), in the second case. ``agreement`` is the IoU of the
    two paths' best masks (for "segment everything", of the areas the masks cover), or None without results.
    ``tilt_stage``: whether the canonicalizer undoes tilts too (:meth:`Canonicalizer.with_tilt`).
    """

    view: np.ndarray
    canonicalization: Canonicalization
    residual_deg: float
    result: DualResult | None = None
    sam_error: str | None = None
    agreement: float | None = None
    tilt_stage: bool = False

    @property
    def unsure(self) -> bool:
        return schema.is_unsure(self.canonicalization)


def canonicalized(models: Models, session: Session, view: np.ndarray | None = None) -> Outcome:
    """The canonicalizer's part alone for the session's view (``view``, when the caller has it already)."""
    view = session.view() if view is None else view
    canonicalizer = models.canonicalizer_for(session.tilt_stage)
    return Outcome(view, canonicalizer.canonicalize(view), session.residual_deg,
                   tilt_stage=canonicalizer.tilt is not None)


def run(models: Models, session: Session, sam_choice: str, multimask: bool = True,
        everything_options: dict | None = None) -> Outcome:
    """Canonicalize the session's view and, when it holds prompts or asks for everything, run both SAM paths.

    A SAM that cannot be had leaves the canonicalizer's part intact (``sam_error``); bad prompts raise
    ``ValueError``. ``everything_options`` go to :meth:`EquivariantSegmenter.segment_everything` (e.g.
    ``points_per_side``).
    """
    view = session.view()
    if not (session.has_prompts or session.everything):
        return canonicalized(models, session, view)
    try:
        segmenter = models.segmenter(sam_choice, session.tilt_stage)
    except ModelUnavailableError as error:
        return replace(canonicalized(models, session, view), sam_error=error.public)
    if session.everything:
        result = segmenter.segment_everything(view, **(everything_options or {}))
    else:
        result = segmenter.segment(view, session.prompts(), multimask)
    return Outcome(view, result.canonicalization, session.residual_deg, result,
                   agreement=schema.agreement(result, session.everything),
                   tilt_stage=segmenter.canonicalizer.tilt is not None)


def embeddings_to_prepare(models: Models, session: Session, sam_choice: str,
                          sweep_kind: str | None = None) -> list[tuple[str, np.ndarray]]:
    """The images whose SAM embeddings are not cached yet, in the order to compute them: those of the session's
    view (see :meth:`EquivariantSegmenter.images_needed`), what a click on it would otherwise wait for, or with
    ``sweep_kind`` (one of :data:`SWEEPS`) those of every image that sweep shows SAM. Loads SAM
    (:class:`ModelUnavailableError` when it cannot be had)."""
    segmenter = models.segmenter(sam_choice, session.tilt_stage)
    if sweep_kind is None:
        views = [session.view()]
    else:
        image, _ = session.sweep_frame(sweep_kind)
        views = [geometry.rotate_image_free(image, degrees) for degrees in SWEEPS[sweep_kind]]
    needed = {}
    for view in views:
        for name, image in segmenter.images_needed(view):
            needed.setdefault(image_digest(image), (name, image))
    return [(name, image) for name, image in needed.values() if not segmenter.sam.has_embedding(image)]


def encode(models: Models, sam_choice: str, images: list[np.ndarray]) -> list[Embedding]:
    """SAM's embeddings of ``images`` (each ``H x W x 3`` uint8), computed and returned, not stored: the encoder
    alone, the one part that needs a GPU. On ZeroGPU this runs in the GPU worker, whose memory is gone after the
    call, and :meth:`SamBackend.store` keeps the result in the serving process."""
    backend = models.sam(sam_choice)
    return [backend.encode(image) for image in images]


def check_sweep(session: Session) -> None:
    """Raise ``ValueError`` with the visitor's sentence when the session has nothing for a sweep to repeat."""
    if not session.has_prompts:
        raise ValueError("add a point or a box first: a sweep repeats your prompts at every rotation")


def sweep(models: Models, session: Session, sam_choice: str, multimask: bool = True,
          kind: str = "quarter turns") -> list[SweepEntry]:
    """The session's prompts on the image of its sweep ``kind`` (:meth:`Session.sweep_frame`) turned by each angle
    of :data:`SWEEPS`, both paths, results in that image's frame (see :meth:`EquivariantSegmenter.sweep`). Raises
    ``ValueError`` without prompts and :class:`ModelUnavailableError` without SAM."""
    check_sweep(session)
    image, frame = session.sweep_frame(kind)
    return models.segmenter(sam_choice, session.tilt_stage).sweep(image, session.prompts(frame), multimask,
                                                                  SWEEPS[kind])


# ------------------------------------------------------------------------------------------- drawing, downloads


SHOW = ("best mask", "all candidates", "difference")  # what the result panels draw


@dataclass(frozen=True)
class Display:
    """How the result panels draw masks: ``show`` one of :data:`SHOW` (the best mask; every candidate, best on top;
    or where the two panels' best masks disagree) and the fill's ``opacity`` in [0, 1] (outlines are always drawn)."""

    show: str = SHOW[0]
    opacity: float = 0.35

    def __post_init__(self):
        if self.show not in SHOW:
            raise ValueError(f"show one of: {', '.join(SHOW)}")
        if not (isinstance(self.opacity, (int, float)) and 0.0 <= self.opacity <= 1.0):
            raise ValueError("the mask opacity is a number from 0 to 1")


def draw_panels(view: np.ndarray, result: DualResult, display: Display) -> tuple[np.ndarray, np.ndarray]:
    """The two result panels, SAM alone and SAM + canonicalizer, drawn over ``view`` (``H x W x 3`` uint8, the
    frame of both results' masks) as ``display`` says."""
    sam, canonicalized = result.sam.masks, result.canonicalized.masks
    if display.show == "difference":
        empty = np.zeros(view.shape[:2], bool)
        best_sam = sam[0] if len(sam) else empty
        best_canonicalized = canonicalized[0] if len(canonicalized) else empty
        return (difference(view, best_sam, best_canonicalized, display.opacity),
                difference(view, best_canonicalized, best_sam, display.opacity))
    if display.show == "best mask":
        sam, canonicalized = sam[:1], canonicalized[:1]
    return outlined(view, sam, display.opacity), outlined(view, canonicalized, display.opacity)


def draw_prompts(image: np.ndarray, prompts: Prompts, pending: np.ndarray | None = None) -> np.ndarray:
    """Mark prompts (in ``image``'s frame) on a copy of an ``H x W x 3`` uint8 image: object points as green
    discs, background points as red discs, the box as a white-edged rectangle, an unpaired corner as a cross."""
    canvas = Image.fromarray(image)
    draw = ImageDraw.Draw(canvas)
    radius = max(5, round(max(image.shape[:2]) / 70))
    if prompts.box is not None:
        x0, y0, x1, y1 = prompts.box
        draw.rectangle([x0, y0, x1, y1], outline=(0, 0, 0), width=radius // 2 + 2)
        draw.rectangle([x0, y0, x1, y1], outline=(255, 255, 255), width=max(1, radius // 3))
    if pending is not None:
        x, y = pending
        for dx, dy in ((radius, radius), (radius, -radius)):
            draw.line([x - dx, y - dy, x + dx, y + dy], fill=(255, 255, 255), width=max(2, radius // 3))
    for (x, y), label in zip(prompts.points, prompts.labels):
        colour = (0, 200, 80) if label == 1 else (230, 40, 40)
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour, outline=(255, 255, 255),
                     width=max(1, radius // 4))
    return np.asarray(canvas).copy()


class ExportFolder:
    """A private temporary folder for mask downloads that keeps the ``keep`` most recent exports only.

    Gradio copies a returned file into its own cache at once, so an older export is no longer needed; the folder
    goes when the process ends.
    """

    def __init__(self, keep: int = 32):
        self.keep = keep
        self._root = tempfile.TemporaryDirectory(prefix="canon-masks-")
        self._exports: deque[Path] = deque()
        self._lock = threading.Lock()

    def save(self, results: dict[str, PathResult], **info) -> list[Path]:
        """Write each named result's masks as ``<name>.png`` and ``<name>.json`` (see :mod:`canon.maskio`) into a
        fresh subfolder; ``info`` goes into every JSON. Returns the paths."""
        with self._lock:
            folder = Path(tempfile.mkdtemp(dir=self._root.name))
            self._exports.append(folder)
            while len(self._exports) > self.keep:
                shutil.rmtree(self._exports.popleft(), ignore_errors=True)
        return [path for name, result in results.items()
                for path in maskio.save_masks(folder, name, result.masks, result.scores, path=name, **info)]
