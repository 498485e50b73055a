"""Overlays: one pass per 8 masks gives exactly what drawing the masks one by one gives."""

from __future__ import annotations

import numpy as np
import pytest

from canon.render import PALETTE, mask_iou, overlay


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
