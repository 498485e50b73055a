"""SAM prompts (points and a box) in one image's frame, and the one parser of prompts given as text.

Frames as in :mod:`canon.geometry`: points ``(x, y)`` and boxes ``x0, y0, x1, y1`` in continuous pixel coordinates
(x right, y down, pixel centres at ``i + 0.5``). Prompts typed by a person or sent by a client (the app's API, the
command line) go through :func:`parse_prompts`, :func:`parse_point` or :func:`parse_box`, which accept only finite
numbers of sane magnitude in shallow JSON of the documented shape and otherwise raise :class:`PromptError` with one
sentence.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace

import numpy as np

from . import geometry

MAX_POINTS = 64  # more clicks than anyone makes by hand; bounds the decoder's work per request
# Coordinates beyond this are refused before any image size is known: no photo the app decodes is this large.
MAX_COORDINATE = 1_000_000.0
# Text longer than this is refused before parsing: MAX_POINTS points with long decimals fit several times over.
MAX_PROMPT_CHARS = 8192
POINTS_FORMAT = "points as JSON [[x, y, label], ...] with label 1 (object) or 0 (background)"
BOX_FORMAT = "a box as JSON [x0, y0, x1, y1] or x0,y0,x1,y1"


class PromptError(ValueError):
    """Prompts that do not parse or do not fit the image; ``str(error)`` is one sentence for the user."""


@dataclass(frozen=True)
class Prompts:
    """SAM prompts in one image's frame: ``points`` ``N x 2`` float (x, y), ``labels`` ``N`` int (1 = foreground,
    0 = background), ``box`` ``4`` float (x0, y0, x1, y1) or None."""

    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    box: np.ndarray | None = None

    @classmethod
    def make(cls, points=(), labels=None, box=None) -> "Prompts":
        points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        labels = np.ones(len(points), dtype=np.int64) if labels is None else np.asarray(labels, dtype=np.int64)
        return cls(points, labels.reshape(-1), None if box is None else np.asarray(box, dtype=np.float64).reshape(4))

    @property
    def empty(self) -> bool:
        return len(self.points) == 0 and self.box is None

    def validate(self, size: tuple[int, int]) -> None:
        """Raise :class:`PromptError` (one sentence) unless every prompt is a finite coordinate inside an image of
        ``size = (H, W)``, labels are 0/1, there are at most :data:`MAX_POINTS` points and the box has an area."""
        height, width = size
        if len(self.points) != len(self.labels):
            raise PromptError(f"{len(self.points)} points but {len(self.labels)} labels")
        if len(self.points) > MAX_POINTS:
            raise PromptError(f"{len(self.points)} points is too many; at most {MAX_POINTS} are accepted")
        if not set(np.unique(self.labels).tolist()) <= {0, 1}:
            raise PromptError("point labels must be 1 (foreground) or 0 (background)")
        coords = [self.points] + ([self.box.reshape(2, 2)] if self.box is not None else [])
        for xy in coords:
            if not np.all(np.isfinite(xy)):
                raise PromptError("prompt coordinates must be finite numbers")
            if np.any(xy[:, 0] < 0) or np.any(xy[:, 0] > width) or np.any(xy[:, 1] < 0) or np.any(xy[:, 1] > height):
                raise PromptError(f"a prompt lies outside the {width}x{height} image")
        if self.box is not None and (self.box[2] <= self.box[0] or self.box[3] <= self.box[1]):
            raise PromptError("the box must have x0 < x1 and y0 < y1 (a zero-area box selects nothing)")

    def rotated(self, k: int, size: tuple[int, int]) -> "Prompts":
        """The same prompts in the frame of the image of ``size = (H, W)`` rotated by ``k`` quarter turns."""
        box = None if self.box is None else geometry.rotate_boxes(self.box, k, size)[0]
        return replace(self, points=geometry.rotate_points(self.points, k, size), box=box)

    def turned(self, degrees: float, size: tuple[int, int]) -> "Prompts":
        """The same prompts in the frame of ``geometry.rotate_image_free(image, degrees)`` of an image of
        ``size = (H, W)``: points exactly, the box as the box around its turned corners (:func:`geometry.boxes_around`;
        a tilted box is no longer axis-aligned, so a tilt widens it). For quarter turns, :meth:`rotated` exactly."""
        def point_map(points):
            return geometry.rotate_points_free(points, degrees, size)
        box = None if self.box is None else geometry.boxes_around(self.box, point_map)[0]
        return replace(self, points=point_map(self.points), box=box)

    def scaled(self, sx: float, sy: float) -> "Prompts":
        """The same prompts on the image resized by ``sx`` across and ``sy`` down (continuous coordinates scale
        as they are: the image's edges map to the resized image's edges)."""
        factors = np.array([sx, sy])
        box = None if self.box is None else (self.box.reshape(2, 2) * factors).reshape(4)
        return replace(self, points=self.points * factors, box=box)


# ------------------------------------------------------------------------------------------------------ parsing


def parse_prompts(points: str | None, box: str | None) -> Prompts:
    """Prompts from text: ``points`` JSON ``[[x, y, label], ...]`` (label 1 = object, the default when left out;
    0 = background), ``box`` JSON ``[x0, y0, x1, y1]``, ``"x0,y0,x1,y1"``, or empty; None or blank = none. Raise
    :class:`PromptError` (one sentence) for anything else."""
    rows = []
    if points is not None and str(points).strip():
        value = _load_json(points, POINTS_FORMAT, depth=2)
        if not isinstance(value, list) or len(value) > MAX_POINTS:
            raise PromptError(f"give {POINTS_FORMAT}, at most {MAX_POINTS} of them")
        rows = [_point(row, POINTS_FORMAT) for row in value]
    corners = parse_box(box) if box is not None and str(box).strip() else None
    return Prompts.make([row[:2] for row in rows], [row[2] for row in rows], corners)


def parse_point(text: str) -> tuple[float, float, int]:
    """``"X,Y"`` or ``"X,Y,LABEL"`` (LABEL 1 = object, the default; 0 = background) -> ``(x, y, label)``."""
    parts = _bounded(text, "a point as X,Y or X,Y,LABEL").split(",")
    if len(parts) not in (2, 3):
        raise PromptError("give a point as X,Y or X,Y,LABEL with LABEL 1 (object) or 0 (background)")
    return _point([_number_text(part) for part in parts], "a point as X,Y or X,Y,LABEL with LABEL 1 or 0")


def parse_box(text: str) -> tuple[float, float, float, float]:
    """``"[x0, y0, x1, y1]"`` (JSON) or ``"x0,y0,x1,y1"`` -> the four numbers."""
    text = _bounded(text, BOX_FORMAT).strip()
    values = _load_json(text, BOX_FORMAT, depth=1) if text.startswith("[") else [
        _number_text(part) for part in text.split(",")]
    if not isinstance(values, list) or len(values) != 4:
        raise PromptError(f"give {BOX_FORMAT}")
    return tuple(_coordinate(value, BOX_FORMAT) for value in values)


def _bounded(text, what: str) -> str:
    if not isinstance(text, str):
        raise PromptError(f"give {what} as text")
    if len(text) > MAX_PROMPT_CHARS:
        raise PromptError(f"the prompts are longer than {MAX_PROMPT_CHARS} characters; give {what}")
    return text


def _load_json(text: str, what: str, depth: int):
    """JSON of at most ``depth`` nested lists; the nesting is checked before parsing, so deep input costs nothing."""
    text = _bounded(text, what)
    level = 0
    for char in text:
        level += (char == "[") - (char == "]")
        if level > depth or char in "{\"":
            raise PromptError(f"give {what}")
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_int=_number_text, parse_float=_number_text)
    except PromptError:
        raise
    except (ValueError, RecursionError):
        raise PromptError(f"give {what}") from None


def _refuse_constant(name: str):
    raise PromptError(f"prompt coordinates must be finite numbers, not {name}")


def _number_text(text: str) -> float:
    """A number as written (JSON or a CLI part): finite, and short enough that no 400-digit integer is converted."""
    text = text.strip()
    if len(text) > 32:
        raise PromptError(f"a prompt number has more than 32 characters; give at most {MAX_COORDINATE:.0e}")
    try:
        value = float(text)
    except ValueError:
        raise PromptError(f"{text[:32]!r} is not a number") from None
    if not math.isfinite(value):
        raise PromptError("prompt coordinates must be finite numbers")
    return value


def _coordinate(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, float):
        raise PromptError(f"give {what}")
    if abs(value) > MAX_COORDINATE:
        raise PromptError(f"a prompt coordinate of {value:.3g} is beyond any photo (at most {MAX_COORDINATE:.0e})")
    return value


def _point(row, what: str) -> tuple[float, float, int]:
    if not isinstance(row, list) or len(row) not in (2, 3):
        raise PromptError(f"give {what}")
    label = row[2] if len(row) == 3 else 1.0
    if isinstance(label, bool) or label not in (0.0, 1.0):
        raise PromptError("point labels must be 1 (object) or 0 (background)")
    return _coordinate(row[0], what), _coordinate(row[1], what), int(label)
