"""A candidate tilt stage that reads straight line segments instead of gradients: LSD, the line segment detector of
Grompone von Gioi et al. (opencv's ``createLineSegmentDetector``), on the same grey image as the edge stage
(:class:`canon.tilt.TiltEstimator`), each segment's orientation modulo 90 degrees weighted by its length, in the
same smoothed histogram, peak and gate. ``python -m canon.research tilt-lines --images ../shared/data/upright --json
docs/tilt-lines.json`` measures it as ``python -m canon evaluate tilt`` measures the edge stage. An experiment, not
a serving path.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..tilt import TiltEstimator

SAMPLES_PER_SEGMENT = 5  # points along a segment that must all lie on the photo


@dataclass(frozen=True)
class LineSegmentTiltEstimator(TiltEstimator):
    """The edge stage's histogram, peak and gate over line segments (see the module's docstring)."""

    def histogram(self, image: np.ndarray) -> np.ndarray:
        """Length-weighted orientations of the line segments of an ``H x W x 3`` uint8 RGB image modulo 90 degrees,
        smoothed: as :meth:`TiltEstimator.histogram` says. A segment counts only if it lies on the photo: a turned
        canvas's border is itself a long segment at the very tilt it was made with."""
        grey, inside = self.prepared(image)
        found = cv2.createLineSegmentDetector(cv2.LSD_REFINE_STD).detect(grey)[0]
        if found is None:
            return np.zeros(self.bins)
        x0, y0, x1, y1 = found[:, 0, :].astype(np.float64).T  # end points, pixel centres at whole numbers
        on_photo = np.ones(len(x0), dtype=bool)
        for share in np.linspace(0.0, 1.0, SAMPLES_PER_SEGMENT):
            columns = np.clip(np.rint(x0 + share * (x1 - x0)).astype(np.int64), 0, grey.shape[1] - 1)
            rows = np.clip(np.rint(y0 + share * (y1 - y0)).astype(np.int64), 0, grey.shape[0] - 1)
            on_photo &= inside[rows, columns]
        # The segment's angle counter-clockwise as displayed (y points down); a line and its normal are a quarter
        # turn apart, the same modulo 90 degrees as the gradients the edge stage reads.
        angles = np.degrees(np.arctan2(-(y1 - y0), x1 - x0))
        return self.smoothed_histogram(angles[on_photo], np.hypot(x1 - x0, y1 - y0)[on_photo])
