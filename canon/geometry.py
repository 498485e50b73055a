"""The action of the rotation group C4 on images, points, boxes and masks.

Conventions used throughout the library:

* Images are ``H x W`` or ``H x W x C`` arrays, row-major (``image[y, x]``).
* Points are ``N x 2`` float arrays in **x, y order**, in continuous pixel coordinates: pixel ``(col i, row j)``
  covers ``[i, i + 1) x [j, j + 1)`` and its centre is ``(i + 0.5, j + 0.5)``; the image spans ``[0, W] x [0, H]``.
  This is the frame segment-anything's predictor uses for prompts.
* Boxes are ``N x 4`` float arrays ``x0, y0, x1, y1`` in the same frame, ``x0 <= x1`` and ``y0 <= y1``.
* Masks are ``N x H x W`` arrays (any dtype, usually bool).
* Rotation ``k`` (an integer, taken modulo 4) turns the picture by ``k * 90`` degrees **counter-clockwise as
  displayed** (x to the right, y down), which is ``numpy.rot90(image, k)``. Rotating an ``H x W`` image by an odd
  ``k`` gives a ``W x H`` image.

Every function takes the size of the image *before* the rotation, so that ``inverse(act(v, k, size), k, size)``
returns ``v``. Images and masks are permuted, never interpolated, so the round trip is exact to the bit; points and
boxes are mapped by ``x' = y, y' = W - x`` (one step), exact for coordinates on the pixel grid and half-grid.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

GROUP_ORDER = 4
ANGLES_DEG = tuple(90 * k for k in range(GROUP_ORDER))


def normalise_k(k: int) -> int:
    """Return ``k`` modulo 4 as a Python int in ``0..3``."""
    return int(k) % GROUP_ORDER


def k_from_degrees(degrees: float) -> int:
    """Rotation index for an angle that is a multiple of 90 degrees (counter-clockwise); raise otherwise."""
    steps = float(degrees) / 90.0
    if not np.isfinite(steps) or steps != round(steps):
        raise ValueError(f"{degrees} degrees is not a multiple of 90")
    return normalise_k(int(round(steps)))


def rotated_size(size: tuple[int, int], k: int) -> tuple[int, int]:
    """``(height, width)`` of an image of ``size = (height, width)`` after rotation ``k``."""
    height, width = size
    return (width, height) if normalise_k(k) % 2 else (height, width)


def rotate_image(image: np.ndarray, k: int) -> np.ndarray:
    """Rotate an ``H x W [x C]`` image by ``k * 90`` degrees counter-clockwise; exact (a permutation of pixels).

    Returns a contiguous array of the same dtype, ``H x W [x C]`` for even ``k`` and ``W x H [x C]`` for odd ``k``.
    """
    k = normalise_k(k)
    if image.ndim == 3 and image.flags.c_contiguous and image.size:
        # Each pixel moved as one C-byte item: a third of the time of moving its channels one by one.
        pixels = image.view(np.dtype((np.void, image.shape[2] * image.itemsize))).reshape(image.shape[:2])
        turned = np.ascontiguousarray(np.rot90(pixels, k))
        return turned.view(image.dtype).reshape(*turned.shape, image.shape[2])
    return np.ascontiguousarray(np.rot90(image, k, axes=(0, 1)))


def unrotate_image(image: np.ndarray, k: int) -> np.ndarray:
    """Inverse of :func:`rotate_image`: ``unrotate_image(rotate_image(im, k), k)`` equals ``im`` bit for bit."""
    return rotate_image(image, -normalise_k(k))


def rotate_masks(masks: np.ndarray, k: int) -> np.ndarray:
    """Rotate ``N x H x W`` masks by ``k * 90`` degrees counter-clockwise; exact. Returns ``N x H' x W'``."""
    return np.ascontiguousarray(np.rot90(masks, normalise_k(k), axes=(1, 2)))


def unrotate_masks(masks: np.ndarray, k: int) -> np.ndarray:
    """Inverse of :func:`rotate_masks`."""
    return rotate_masks(masks, -normalise_k(k))


def rotate_points(points: np.ndarray, k: int, size: tuple[int, int]) -> np.ndarray:
    """Map ``N x 2`` points (x, y; continuous pixel coordinates) of an image of ``size = (H, W)`` into the frame of
    that image rotated by ``k * 90`` degrees counter-clockwise. Returns a new float64 ``N x 2`` array."""
    out = np.array(points, dtype=np.float64).reshape(-1, 2)
    height, width = size
    for _ in range(normalise_k(k)):
        # One counter-clockwise quarter turn of a (height x width) image: x' = y, y' = width - x.
        out = np.stack([out[:, 1], width - out[:, 0]], axis=1)
        height, width = width, height
    return out


def unrotate_points(points: np.ndarray, k: int, size: tuple[int, int]) -> np.ndarray:
    """Inverse of :func:`rotate_points`; ``size = (H, W)`` is the size *before* the rotation ``k``."""
    k = normalise_k(k)
    return rotate_points(points, -k, rotated_size(size, k))


def rotate_boxes(boxes: np.ndarray, k: int, size: tuple[int, int]) -> np.ndarray:
    """Map ``N x 4`` boxes (x0, y0, x1, y1) of an image of ``size = (H, W)`` into the frame rotated by ``k``.

    Both corners are rotated and the result re-ordered so that ``x0 <= x1`` and ``y0 <= y1``. Returns float64 ``N x 4``.
    """
    boxes = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    first = rotate_points(boxes[:, :2], k, size)
    second = rotate_points(boxes[:, 2:], k, size)
    return np.concatenate([np.minimum(first, second), np.maximum(first, second)], axis=1)


def unrotate_boxes(boxes: np.ndarray, k: int, size: tuple[int, int]) -> np.ndarray:
    """Inverse of :func:`rotate_boxes`; ``size = (H, W)`` is the size *before* the rotation ``k``."""
    k = normalise_k(k)
    return rotate_boxes(boxes, -k, rotated_size(size, k))


# ------------------------------------------------------------------------------------------------------------------
# Free angles. A C4 canonicalizer can only undo quarter turns; a photo turned by any other angle is modelled as a
# residual tilt of at most 45 degrees and exact quarter turns (which commute), the tilt resampled once.


def split_degrees(degrees: float) -> tuple[int, float]:
    """Split a counter-clockwise angle into ``k`` quarter turns (``0..3``) and a residual tilt in ``[-45, 45)``
    degrees, with ``degrees == 90 * k + residual`` modulo 360."""
    degrees = float(degrees)
    if not np.isfinite(degrees):
        raise ValueError(f"{degrees} is not a finite angle")
    turns = int(np.floor(degrees / 90.0 + 0.5))
    return normalise_k(turns), degrees - 90.0 * turns


def free_rotated_size(size: tuple[int, int], degrees: float) -> tuple[int, int]:
    """``(height, width)`` of an image of ``size = (H, W)`` after :func:`rotate_image_free` by ``degrees``."""
    k, residual = split_degrees(degrees)
    return rotated_size(_tilt(size, residual)[1], k)


def rotate_image_free(image: np.ndarray, degrees: float) -> np.ndarray:
    """Rotate a uint8 ``H x W`` or ``H x W x 3`` image by any angle, counter-clockwise as displayed.

    A non-zero residual tilt is applied about the image centre with bilinear interpolation on a canvas enlarged to
    hold the whole tilted picture (size :func:`free_rotated_size`), the uncovered corners black; the quarter turns
    follow, exact (:func:`rotate_image`). A rotation about the centre commutes with a quarter turn, so this is the
    same picture as quarter turns first, and ``rotate_image_free(x, a + 90)`` is ``rotate_image`` of
    ``rotate_image_free(x, a)`` by one, bit for bit wherever the two residuals are the same float (whole degrees,
    multiples of 15 and the like). Returns a new uint8 array.
    """
    k, residual = split_degrees(degrees)
    if residual == 0:
        return rotate_image(image, k)
    forward, (height, width) = _tilt(image.shape[:2], residual)
    inverse = np.linalg.inv(np.vstack([forward, [0.0, 0.0, 1.0]]))[:2]
    # PIL samples the input at inverse @ (x, y, 1) for each output pixel centre (x, y), in the same continuous
    # pixel coordinates as this module (centres at i + 0.5).
    tilted = Image.fromarray(np.ascontiguousarray(image)).transform(
        (width, height), Image.Transform.AFFINE, data=inverse.ravel().tolist(), resample=Image.Resampling.BILINEAR,
        fillcolor=0)
    return rotate_image(np.array(tilted, dtype=np.uint8), k)  # a copy: PIL's buffer is read-only


def rotate_points_free(points: np.ndarray, degrees: float, size: tuple[int, int]) -> np.ndarray:
    """Map ``N x 2`` points (x, y) of an image of ``size = (H, W)`` into the frame of
    ``rotate_image_free(image, degrees)``. Returns a new float64 ``N x 2`` array."""
    k, residual = split_degrees(degrees)
    turned = rotate_points(points, k, size)
    forward, _ = _tilt(rotated_size(size, k), residual)
    return turned @ forward[:, :2].T + forward[:, 2]


def unrotate_points_free(points: np.ndarray, degrees: float, size: tuple[int, int]) -> np.ndarray:
    """Inverse of :func:`rotate_points_free`; ``size = (H, W)`` is the size *before* the rotation. Points outside
    the photo (in the black corners of a tilt) map outside ``[0, W] x [0, H]``."""
    k, residual = split_degrees(degrees)
    turned_size = rotated_size(size, k)
    forward, _ = _tilt(turned_size, residual)
    untilted = (np.asarray(points, dtype=np.float64).reshape(-1, 2) - forward[:, 2]) @ np.linalg.inv(forward[:, :2]).T
    return unrotate_points(untilted, k, size)


def boxes_around(boxes: np.ndarray, point_map) -> np.ndarray:
    """The boxes (x0, y0, x1, y1) around the images of the four corners of ``N x 4`` ``boxes`` under ``point_map``
    (``M x 2`` points -> ``M x 2`` points): a box's frame after a tilt, where it is no longer axis-aligned. Returns
    float64 ``N x 4``; for a quarter turn, :func:`rotate_boxes` exactly."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    turned = point_map(boxes[:, [0, 1, 2, 1, 2, 3, 0, 3]].reshape(-1, 2)).reshape(-1, 4, 2)
    return np.concatenate([turned.min(axis=1), turned.max(axis=1)], axis=1)


def unrotate_masks_free(masks: np.ndarray, degrees: float, size: tuple[int, int]) -> np.ndarray:
    """Masks of ``rotate_image_free(image, degrees)`` (``N x H' x W'``) brought back to the frame of ``image``
    (``size = (H, W)``): each pixel takes the mask pixel under its centre's image by :func:`rotate_points_free`
    (nearest neighbour; False where that falls outside). Returns bool ``N x H x W``; for quarter turns this is
    :func:`unrotate_masks` exactly (pixel centres map onto pixel centres)."""
    masks = np.asarray(masks)
    k, residual = split_degrees(degrees)
    if residual == 0:  # the same pixels, without mapping each one
        return unrotate_masks(masks, k).astype(bool)
    height, width = size
    columns, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    where = rotate_points_free(np.stack([columns.ravel(), rows.ravel()], axis=1), degrees, size)
    x, y = np.floor(where[:, 0]).astype(np.int64), np.floor(where[:, 1]).astype(np.int64)
    inside = (x >= 0) & (x < masks.shape[2]) & (y >= 0) & (y < masks.shape[1])
    out = np.zeros((len(masks), height * width), dtype=bool)
    out[:, inside] = masks[:, y[inside], x[inside]].astype(bool)
    return out.reshape(len(masks), height, width)


def _tilt(size: tuple[int, int], residual_deg: float) -> tuple[np.ndarray, tuple[int, int]]:
    """The ``2 x 3`` affine map (continuous x, y) of a tilt by ``residual_deg`` counter-clockwise about the centre of an
    image of ``size = (H, W)``, and the ``(H', W')`` of the enlarged canvas that holds the result."""
    height, width = size
    theta = np.deg2rad(residual_deg)
    cos, sin = np.cos(theta), np.sin(theta)
    # Rounding off float noise (to a millionth of a pixel) first, so that a canvas that fits exactly does not grow
    # by a pixel.
    new_width = int(np.ceil(round(width * abs(cos) + height * abs(sin), 6)))
    new_height = int(np.ceil(round(width * abs(sin) + height * abs(cos), 6)))
    # Counter-clockwise as displayed, with y pointing down: (dx, dy) -> (dx cos + dy sin, -dx sin + dy cos).
    rotation = np.array([[cos, sin], [-sin, cos]])
    shift = np.array([new_width / 2, new_height / 2]) - rotation @ np.array([width / 2, height / 2])
    return np.column_stack([rotation, shift]), (new_height, new_width)
