"""Drawing masks for people: one fixed palette, so that the same mask index has the same colour in every panel."""

from __future__ import annotations

import numpy as np

# Colour-blind-safe palette (Okabe & Ito), RGB.
PALETTE = np.array([(0, 114, 178), (230, 159, 0), (0, 158, 115), (204, 121, 167), (86, 180, 233), (213, 94, 0),
                    (240, 228, 66), (0, 0, 0)], dtype=np.float32)


def overlay(image: np.ndarray, masks: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend ``N x H x W`` bool masks over an ``H x W x 3`` uint8 image; mask ``i`` gets ``PALETTE[i % 8]``, drawn
    from last to first so that mask 0 (SAM's best) lies on top. Returns a new ``H x W x 3`` uint8 image."""
    out = image.copy()
    for index in range(len(masks) - 1, -1, -1):
        region = masks[index].astype(bool, copy=False)
        # Blend only the masked pixels: a click redraws two panels, so whole-image float passes add up.
        blended = (1 - alpha) * out[region] + alpha * PALETTE[index % len(PALETTE)]
        out[region] = np.clip(np.round(blended), 0, 255).astype(np.uint8)
    return out


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two ``H x W`` bool masks (1.0 when both are empty)."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)
