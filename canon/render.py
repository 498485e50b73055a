"""Drawing masks for people: one fixed palette, so that the same mask index has the same colour in every panel.

:func:`overlay` is the plain blend of the API's and the command line's overlay images; :func:`outlined` is what the
page shows (a light fill under each mask's outline), and :func:`difference` marks where two masks disagree. Images
are ``H x W x 3`` uint8 RGB, masks ``N x H x W`` (or ``H x W``) bool in the image's frame.
"""

from __future__ import annotations

import cv2
import numpy as np

# Colour-blind-safe palette (Okabe & Ito), RGB.
PALETTE = np.array([(0, 114, 178), (230, 159, 0), (0, 158, 115), (204, 121, 167), (86, 180, 233), (213, 94, 0),
                    (240, 228, 66), (0, 0, 0)], dtype=np.float32)
PALETTE_NAMES = ("blue", "orange", "green", "pink", "sky blue", "vermilion", "yellow", "black")  # as people say them


_MASKS_PER_PASS = 8  # a pass's look-up table has 2 ** 8 covering patterns x 256 values x 3 channels
_LEVELS = np.arange(256, dtype=np.uint8)[:, None].repeat(3, axis=1)  # every value in every channel


def overlay(image: np.ndarray, masks: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend ``N x H x W`` bool masks over an ``H x W x 3`` uint8 image; mask ``i`` gets ``PALETTE[i % 8]``, drawn
    from last to first so that mask 0 (SAM's best) lies on top. Returns a new ``H x W x 3`` uint8 image.

    Each pixel's result depends only on its value and on which masks cover it, so up to 8 masks are drawn in one
    pass: a look-up table holds, for every covering pattern and value, what blending those masks one after the other
    makes of it (the same float arithmetic and rounding as drawing them one by one), read once per channel.
    """
    out = image.copy()
    for stop in range(len(masks), 0, -_MASKS_PER_PASS):
        indices = range(max(0, stop - _MASKS_PER_PASS), stop)
        pattern = np.zeros(image.shape[:2], np.uint16)  # bit 8 + b set: mask indices[b] covers the pixel
        for bit, index in enumerate(indices):
            pattern |= masks[index].astype(np.uint16) << (8 + bit)
        table = _blend_table(indices, alpha)
        for channel in range(3):  # a 16-bit index per pixel: covering pattern, then the channel's value
            out[..., channel] = table[:, :, channel].reshape(-1)[pattern | out[..., channel]]
    return out


def _blend_table(indices: range, alpha: float) -> np.ndarray:
    """``2**len(indices) x 256 x 3`` uint8: each value after blending the masks of each covering pattern, last
    first, with rounding after each mask as when drawn one by one."""
    table = np.empty((2 ** len(indices), 256, 3), np.uint8)
    for pattern in range(len(table)):
        values = _LEVELS
        for bit in range(len(indices) - 1, -1, -1):
            if pattern >> bit & 1:
                blended = (1 - alpha) * values + alpha * PALETTE[indices[bit] % len(PALETTE)]
                values = np.clip(np.round(blended), 0, 255).astype(np.uint8)
        table[pattern] = values
    return table


def outline_width(shape: tuple[int, ...]) -> int:
    """The outline thickness in pixels for an image of ``shape`` (about 2 px on a 1000 px image shown whole)."""
    return max(1, round(max(shape[:2]) / 450))


def outlined(image: np.ndarray, masks: np.ndarray, opacity: float = 0.35) -> np.ndarray:
    """Masks as the page shows them: a fill at ``opacity`` (see :func:`overlay`), then each mask's outline in its
    palette colour, over a dark edge so that it reads on light and dark photos alike; mask 0 is drawn last, on top.
    Returns a new ``H x W x 3`` uint8 image."""
    out = overlay(image, masks, opacity) if opacity > 0 else image.copy()
    width = outline_width(image.shape)
    for index in range(len(masks) - 1, -1, -1):
        contours, _ = cv2.findContours(masks[index].astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
        colour = tuple(int(c) for c in PALETTE[index % len(PALETTE)])
        cv2.drawContours(out, contours, -1, (20, 20, 20), width + 2, lineType=cv2.LINE_AA)
        cv2.drawContours(out, contours, -1, colour, width, lineType=cv2.LINE_AA)
    return out


DIFFERENCE_COLOUR = (213, 0, 120)  # magenta: in neither the palette nor most photos


def difference(image: np.ndarray, mine: np.ndarray, other: np.ndarray, opacity: float = 0.35) -> np.ndarray:
    """Where two ``H x W`` bool masks disagree, seen from ``mine``: its pixels that ``other`` lacks filled in
    :data:`DIFFERENCE_COLOUR` (opaque enough to find at a glance), the pixels both share lightly in blue, and the
    outline of ``mine`` on top. Returns a new ``H x W x 3`` uint8 image."""
    shared = (mine & other)[None]
    out = overlay(image, shared, opacity) if opacity > 0 else image.copy()
    only = mine & ~other
    out[only] = np.round(0.25 * out[only] + 0.75 * np.array(DIFFERENCE_COLOUR)).astype(np.uint8)
    contours, _ = cv2.findContours(mine.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    width = outline_width(image.shape)
    cv2.drawContours(out, contours, -1, (20, 20, 20), width + 2, lineType=cv2.LINE_AA)
    cv2.drawContours(out, contours, -1, tuple(int(c) for c in PALETTE[0]), width, lineType=cv2.LINE_AA)
    return out


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two ``H x W`` bool masks (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)
