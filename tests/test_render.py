"""Overlays: one pass per 8 masks gives exactly what drawing the masks one by one gives."""

from __future__ import annotations

import numpy as np
import pytest

from canon.render import DIFFERENCE_COLOUR, PALETTE, difference, mask_iou, outlined, overlay


def _one_by_one(image: np.ndarray, masks: np.ndarray, alpha: float) -> np.ndarray:
    """The definition: blend each mask's colour over its pixels, last mask first, rounding after each."""
    out = image.copy()
    for index in range(len(masks) - 1, -1, -1):
        region = masks[index]
        blended = (1 - alpha) * out[region] + alpha * PALETTE[index % len(PALETTE)]
        out[region] = np.clip(np.round(blended), 0, 255).astype(np.uint8)
    return out


@pytest.mark.parametrize("count", [0, 1, 3, 8, 9, 17])
@pytest.mark.parametrize("alpha", [0.5, 0.3, 1.0])
def test_overlay_equals_drawing_one_mask_at_a_time(count, alpha):
    rng = np.random.default_rng(count)
    image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    image[0, :4] = [[0, 0, 0], [255, 255, 255], [127, 128, 129], [1, 254, 2]]  # the ends of the value range
    masks = rng.random((count, 37, 53)) < 0.4
    masks[:, 0, :4] = True  # every mask covers the extreme values
    out = overlay(image, masks, alpha)
    assert out.dtype == np.uint8 and out.shape == image.shape
    np.testing.assert_array_equal(out, _one_by_one(image, masks, alpha))
    np.testing.assert_array_equal(out[~masks.any(axis=0)], image[~masks.any(axis=0)])


def test_overlay_leaves_the_input_alone():
    image = np.full((4, 5, 3), 200, np.uint8)
    overlay(image, np.ones((2, 4, 5), bool))
    assert (image == 200).all()


def test_mask_iou():
    a = np.zeros((4, 4), bool)
    b = a.copy()
    assert mask_iou(a, b) == 1.0  # both empty
    a[:2], b[1:3] = True, True
    assert mask_iou(a, b) == pytest.approx(4 / 12)


def test_outlines_are_drawn_in_the_palette_colours_over_a_light_fill():
    image = np.full((40, 40, 3), 200, np.uint8)
    masks = np.zeros((2, 40, 40), bool)
    masks[0, 5:20, 5:20], masks[1, 20:35, 20:35] = True, True
    out = outlined(image, masks, opacity=0.2)
    assert out.shape == image.shape and out.dtype == np.uint8 and (image == 200).all()
    assert np.array_equal(out[12, 12], overlay(image, masks, 0.2)[12, 12])  # inside: the fill only
    edge = out[5:20, 5]
    assert (np.abs(edge.astype(int) - PALETTE[0]).sum(axis=1) < 60).any()  # the outline, in mask 0's blue
    assert np.array_equal(out[0, 39], image[0, 39])


def test_the_difference_marks_what_one_mask_has_and_the_other_lacks():
    image = np.full((60, 60, 3), 100, np.uint8)
    mine, other = np.zeros((60, 60), bool), np.zeros((60, 60), bool)
    mine[10:40, 10:40], other[20:50, 20:50] = True, True
    out = difference(image, mine, other, opacity=0.3)
    assert np.array_equal(out[15, 15], [round(0.25 * 100 + 0.75 * c) for c in DIFFERENCE_COLOUR])  # mine only
    assert np.array_equal(out[30, 30], overlay(image, (mine & other)[None], 0.3)[30, 30])  # shared: a light fill
    assert np.array_equal(out[45, 45], image[45, 45])  # the other's only: not this panel's to mark
