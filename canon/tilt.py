"""The residual tilt of a photo: how far, within [-45, 45) degrees, its dominant edges lean from the image axes.

A photo turned by any angle is a quarter turn (which the C4 canonicalizer undoes) and a tilt of at most 45 degrees
(which it cannot). Man-made scenes, horizons and framed subjects have most of their edges along the vertical and
horizontal, so the orientation of the image gradients, taken modulo 90 degrees, peaks at the tilt. The estimate:
Scharr gradients of the grey image (at most ``size`` pixels a side), a histogram of their orientations modulo 90
degrees weighted by their magnitude and smoothed, its peak refined by a parabola. Where the peak does not clear the
histogram's value at 0 degrees (the photo as it is) by the factor ``gate``, the tilt is 0 and the photo is not
resampled.

The black corners of a photo turned on a larger canvas are not edges of the photo: pixels within ``margin_px + 1``
(at the estimator's scale) of a pure black pixel or of the image border are left out, or the canvas's own border
would report the tilt it was made with.

Exactness for quarter turns: the canonicalizer (:meth:`canon.canonicalizer.Canonicalizer.with_tilt`) estimates and
undoes the tilt on the photo's C4 orbit representative, so the four quarter turns of a photo get the identical tilt
and canonical image, and its decision stays exactly equivariant.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

PERIOD_DEG = 90.0  # a quarter turn: edge orientations are read modulo it
WITHIN_DEG = 5.0  # an estimate this close to the turn applied brings the photo upright


@dataclass(frozen=True)
class Tilt:
    """What :class:`TiltEstimator` found in one image.

    ``degrees``: the tilt to undo, counter-clockwise as displayed, in [-45, 45); 0 where the gate was not passed.
    ``found_deg``: the histogram's peak, whether or not it passed. ``confidence``: the peak over the histogram's
    value at 0 degrees (1 or less: the photo looks upright as it is)."""

    degrees: float
    found_deg: float
    confidence: float


@dataclass(frozen=True)
class TiltEstimator:
    """Dominant edge orientation modulo 90 degrees (see the module's docstring). The defaults were chosen on the
    shared photos, turned by multiples of 15 degrees (``python -m canon evaluate orientation --angle-step 15``)."""

    size: int = 384
    bins: int = 180
    smooth_deg: float = 1.5
    gate: float = 1.1
    margin_px: int = 4

    def __post_init__(self):
        if not (self.size >= 16 and self.bins >= 8 and self.bins % 2 == 0 and self.smooth_deg > 0  # even: a bin
                and self.gate >= 0 and self.margin_px >= 0):  # centred on 0 degrees, for the gate
            raise ValueError(f"tilt settings out of range: {self}")

    def histogram(self, image: np.ndarray) -> np.ndarray:
        """Magnitude-weighted gradient orientations of an ``H x W x 3`` uint8 RGB image modulo 90 degrees, smoothed
        circularly: float64 array of ``bins``, bin ``i`` centred on ``-45 + 90 * i / bins`` degrees
        (counter-clockwise as displayed)."""
        grey, inside = self.prepared(image)
        gx, gy = _scharr(grey.astype(np.float32))
        inside = _eroded(inside, 1)  # the gradient's own reach
        # The gradient's angle counter-clockwise as displayed (y points down), modulo 90 degrees.
        return self.smoothed_histogram(np.degrees(np.arctan2(-gy[inside], gx[inside])),
                                       np.hypot(gx[inside], gy[inside]))

    def prepared(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """An ``H x W x 3`` uint8 RGB image at the estimator's scale (at most ``size`` pixels a side): its grey
        ``h x w`` uint8 image and the ``h x w`` bool mask of the pixels to read, those at least ``margin_px`` from a
        turned canvas's black corners and from the border."""
        grey = Image.fromarray(np.ascontiguousarray(image)).convert("L")
        photo = Image.fromarray(np.any(image > 0, axis=2).astype(np.uint8) * 255)
        height, width = image.shape[:2]
        scale = self.size / max(height, width)
        if scale < 1:
            shape = (max(1, round(width * scale)), max(1, round(height * scale)))
            grey = grey.resize(shape, Image.Resampling.BILINEAR, reducing_gap=2.0)
            photo = photo.resize(shape, Image.Resampling.BOX)
        return np.asarray(grey), _eroded(np.asarray(photo) == 255, self.margin_px)

    def smoothed_histogram(self, angles_deg: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Weighted angles (degrees, counter-clockwise as displayed) binned modulo 90 degrees as :meth:`histogram`
        says, then smoothed by a circular Gaussian of ``smooth_deg``."""
        step = PERIOD_DEG / self.bins
        index = np.floor(np.mod(angles_deg + PERIOD_DEG / 2 + step / 2, PERIOD_DEG) / step).astype(np.int64)
        counts = np.bincount(np.minimum(index, self.bins - 1), weights=weights, minlength=self.bins)
        distance = np.minimum(np.arange(self.bins), self.bins - np.arange(self.bins)) * step
        kernel = np.exp(-0.5 * (distance / self.smooth_deg) ** 2)
        return np.real(np.fft.ifft(np.fft.fft(counts) * np.fft.fft(kernel)))

    def __call__(self, image: np.ndarray) -> Tilt:
        """The tilt of an ``H x W x 3`` uint8 RGB image as given."""
        return self.from_histogram(self.histogram(image))

    def from_histogram(self, histogram: np.ndarray) -> Tilt:
        """The tilt :meth:`histogram` gives away: its refined peak, and whether that passes the gate."""
        step = PERIOD_DEG / self.bins
        peak = int(np.argmax(histogram))
        before, top, after = histogram[peak - 1], histogram[peak], histogram[(peak + 1) % self.bins]
        curvature = before - 2 * top + after
        offset = 0.5 * (before - after) / curvature if curvature < 0 else 0.0
        found = _wrapped(-PERIOD_DEG / 2 + (peak + offset) * step)
        upright = histogram[self.bins // 2]  # the bin centred on 0 degrees
        confidence = float(top / upright) if upright > 0 else (np.inf if top > 0 else 0.0)
        return Tilt(degrees=found if confidence > self.gate else 0.0, found_deg=found, confidence=confidence)


def angular_error_deg(estimate_deg: float, truth_deg: float, period_deg: float = 360.0) -> float:
    """The distance between two angles on a circle of ``period_deg`` degrees, in ``[0, period_deg / 2]``."""
    difference = (estimate_deg - truth_deg) % period_deg
    return float(min(difference, period_deg - difference))


def _wrapped(degrees: float) -> float:
    return float((degrees + PERIOD_DEG / 2) % PERIOD_DEG - PERIOD_DEG / 2)


def _scharr(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scharr's 3 x 3 derivatives (x right, y down) of a 2-d float image, edges replicated: closer to isotropic than
    central differences, whose orientations crowd at the axes and diagonals."""
    p = np.pad(grey, 1, mode="edge")
    gx = 3 * (p[:-2, 2:] - p[:-2, :-2]) + 10 * (p[1:-1, 2:] - p[1:-1, :-2]) + 3 * (p[2:, 2:] - p[2:, :-2])
    gy = 3 * (p[2:, :-2] - p[:-2, :-2]) + 10 * (p[2:, 1:-1] - p[:-2, 1:-1]) + 3 * (p[2:, 2:] - p[:-2, 2:])
    return gx, gy


def _eroded(mask: np.ndarray, radius: int) -> np.ndarray:
    """``mask`` shrunk by ``radius`` pixels (a square neighbourhood); the image's own border counts as outside."""
    inside = np.pad(mask, 1, constant_values=False)
    for _ in range(radius):
        inside[1:-1, 1:-1] &= inside[:-2, 1:-1] & inside[2:, 1:-1]
        inside[1:-1, 1:-1] &= inside[1:-1, :-2] & inside[1:-1, 2:]
    return inside[1:-1, 1:-1]
