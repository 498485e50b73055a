"""The records a result is written as, for the API's ``/segment`` and ``/canonicalize`` and the command line's
``result.json``: one definition, so that a program reads both the same way.

``decision_record``: ``{"rotation_deg", "residual_tilt_deg", "canonicalizer": {"k", "angle_deg", "tilt_deg",
"confidence", "unsure", "probabilities": {"0", "90", "180", "270"}, "ms", "cached"}}`` (``tilt_deg``: the tilt the
canonicalizer's tilt stage undid, 0 without one).
``size_record``: ``{"photo_size": [W, H], "processed_size": [W', H'], "scale": [W'/W, H'/H]}`` (the photo as sent
and as segmented; masks and prompts are in the processed frame).
``path_record``: ``{"scores", "encoder_ms", "decoder_ms", "cached", "masks"}``, ``masks`` being the COCO RLE
document of :func:`canon.maskio.to_coco` (best mask first).
``segment_record``: a decision record with ``"iou"`` (the agreement of the two paths, null when neither found a
mask), ``"sam"`` and
``"canonicalized"`` (path records). Mask files are :func:`canon.maskio.save_masks`' PNG + JSON pair per path.
"""

from __future__ import annotations

from . import geometry, maskio
from .render import mask_iou
from .canonicalizer import Canonicalization
from .segmenter import DualResult, PathResult

UNSURE_BELOW = 0.5  # a canonicalization whose top probability is lower is flagged as unsure
MASK_FILE_STEMS = {"sam": "sam_alone", "canonicalized": "sam_canonicalized"}  # path -> mask file name


def is_unsure(decision: Canonicalization) -> bool:
    """Whether the canonicalizer's top probability is below :data:`UNSURE_BELOW`."""
    return decision.confidence < UNSURE_BELOW


def decision_record(decision: Canonicalization, rotation_deg: float, residual_tilt_deg: float = 0.0) -> dict:
    """What the canonicalizer decided for a photo shown turned by ``rotation_deg`` (counter-clockwise)."""
    probabilities = {str(a): float(p) for a, p in zip(geometry.ANGLES_DEG, decision.probabilities)}
    return {"rotation_deg": rotation_deg, "residual_tilt_deg": residual_tilt_deg,
            "canonicalizer": {"k": decision.k, "angle_deg": decision.angle_deg, "tilt_deg": decision.tilt_deg,
                              "confidence": decision.confidence,
                              "unsure": is_unsure(decision), "probabilities": probabilities,
                              "ms": decision.elapsed_ms, "cached": decision.cached}}


def size_record(size: tuple[int, int], processed_shape: tuple[int, ...]) -> dict:
    """How the photo as sent (``size``: height, width) relates to the one the masks are in (``H' x W' ...``)."""
    height, width = size
    processed_h, processed_w = processed_shape[:2]
    return {"photo_size": [width, height], "processed_size": [processed_w, processed_h],
            "scale": [processed_w / width, processed_h / height]}


def path_record(result: PathResult) -> dict:
    """One path's masks (COCO RLE, best first), scores and timings."""
    return {"scores": result.scores.tolist(), "encoder_ms": result.encoder_ms, "decoder_ms": result.decoder_ms,
            "cached": result.cached, "masks": maskio.to_coco(result.masks, result.scores)}


def segment_record(result: DualResult, rotation_deg: float, agreement: float | None,
                   residual_tilt_deg: float = 0.0) -> dict:
    """Both paths' results on one photo, with the decision and the agreement (IoU) of the two."""
    return decision_record(result.canonicalization, rotation_deg, residual_tilt_deg) | {
        "iou": agreement, "sam": path_record(result.sam), "canonicalized": path_record(result.canonicalized)}


def agreement(result: DualResult, everything: bool = False) -> float | None:
    """IoU of the two paths' best masks; for "segment everything", of the areas their masks cover. None when
    neither path found a mask: two empty answers agree on nothing."""
    if len(result.sam.masks) == 0 and len(result.canonicalized.masks) == 0:
        return None
    if len(result.sam.masks) == 0 or len(result.canonicalized.masks) == 0:
        return 0.0
    if everything:
        return mask_iou(result.sam.masks.any(axis=0), result.canonicalized.masks.any(axis=0))
    return mask_iou(result.sam.masks[0], result.canonicalized.masks[0])
