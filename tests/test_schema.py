"""The records of a result, shared by the API and the command line."""

import json

import numpy as np

from canon import maskio, schema
from canon.canonicalizer import Canonicalization
from canon.segmenter import DualResult, PathResult


def result(k: int = 1) -> DualResult:
    masks = np.zeros((2, 6, 8), bool)
    masks[0, 1:4, 2:6], masks[1, :, :3] = True, True
    decision = Canonicalization(k=k, probabilities=np.array([0.1, 0.6, 0.2, 0.1]), logits=np.zeros(4),
                                canonical_image=np.zeros((8, 6, 3), np.uint8), elapsed_ms=12.0, cached=False)
    sam = PathResult(masks, np.array([0.9, 0.4]), 100.0, 5.0, False)
    return DualResult(sam, PathResult(masks[::-1].copy(), np.array([0.8, 0.7]), 0.0, 4.0, True), decision)


def test_the_segment_record_holds_the_decision_both_paths_and_their_agreement():
    record = schema.segment_record(result(), 90, schema.agreement(result()), residual_tilt_deg=0.0)
    assert json.loads(json.dumps(record)) == record  # JSON as it is
    assert record["canonicalizer"] == {"k": 1, "angle_deg": 90, "tilt_deg": 0.0, "confidence": 0.6, "unsure": False,
                                       "probabilities": {"0": 0.1, "90": 0.6, "180": 0.2, "270": 0.1},
                                       "ms": 12.0, "cached": False}
    assert record["rotation_deg"] == 90 and record["iou"] == schema.agreement(result())
    masks, scores = maskio.masks_from_coco(record["sam"]["masks"])
    assert np.array_equal(masks, result().sam.masks) and scores.tolist() == [0.9, 0.4]
    assert record["canonicalized"]["cached"] is True and record["canonicalized"]["encoder_ms"] == 0.0


def test_agreement_compares_best_masks_or_covered_areas():
    dual = result()
    a, b = dual.sam.masks[0], dual.canonicalized.masks[0]
    best = (a & b).sum() / (a | b).sum()
    assert schema.agreement(dual) == best
    assert schema.agreement(dual, everything=True) == 1.0  # the same two masks, in another order


def test_two_empty_answers_have_no_agreement():
    dual = result()
    none = np.zeros((0, 6, 8), bool)
    empty = DualResult(PathResult(none, np.zeros(0), 1.0, 1.0, False), PathResult(none, np.zeros(0), 0, 1, True),
                       dual.canonicalization)
    assert schema.agreement(empty, everything=True) is None and schema.agreement(empty) is None
    one_sided = DualResult(dual.sam, empty.canonicalized, dual.canonicalization)
    assert schema.agreement(one_sided, everything=True) == 0.0


def test_an_unsure_decision_is_flagged_below_the_threshold():
    unsure = Canonicalization(k=0, probabilities=np.array([0.4, 0.3, 0.2, 0.1]), logits=np.zeros(4),
                              canonical_image=np.zeros((2, 2, 3), np.uint8), elapsed_ms=0.0, cached=True)
    assert schema.is_unsure(unsure) and schema.decision_record(unsure, 0)["canonicalizer"]["unsure"]


def test_the_size_record_relates_the_sent_photo_to_the_processed_one():
    assert schema.size_record((3000, 4000), (1200, 1600, 3)) == {
        "photo_size": [4000, 3000], "processed_size": [1600, 1200], "scale": [0.4, 0.4]}
