"""The paper's COCO protocol: box-prompted SAM, each image at 0/90/180/270 degrees, segm mAP per rotation.

Mondal et al. (NeurIPS 2023), Table on COCO 2017 val with SAM ViT-H: the ground-truth boxes of every (non-crowd)
instance are the prompts, one mask per box; the image and its boxes are rotated by each element of C4, the predicted
masks are mapped back to the upright frame and scored with pycocotools' ``COCOeval(iouType="segm")`` against the
upright ground truth. The score of a mask is SAM's predicted IoU. Reported: mAP (``stats[0]``) per rotation and the
mean over the four, for SAM alone and SAM + canonicalizer.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from tqdm import tqdm

from . import geometry
from .images import load_image
from .maskio import encode_rle
from .segmenter import EquivariantSegmenter

PATHS = ("sam", "canonicalized")


def _quiet(fn, *args):
    """pycocotools prints progress on stdout; keep the command's own output readable."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args)


def evaluate_coco(segmenter: EquivariantSegmenter, annotations: str | Path, images_dir: str | Path,
                  max_images: int | None = None, progress: bool = True) -> dict:
    """Run the protocol on the images of ``annotations`` (COCO instances JSON) found in ``images_dir``.

    Returns ``{"n_images", "n_instances", "sam": {"0", "90", "180", "270", "mean"}, "canonicalized": {...}}``
    with segm mAP values in [0, 1].
    """
    ground_truth = _quiet(COCO, str(annotations))
    image_ids = [i for i in sorted(ground_truth.getImgIds())
                 if (Path(images_dir) / ground_truth.loadImgs(i)[0]["file_name"]).is_file()]
    if not image_ids:
        raise ValueError(f"none of the images listed in {Path(annotations).name} is in {images_dir}")
    image_ids = image_ids[:max_images] if max_images else image_ids
    detections = {(path, k): [] for path in PATHS for k in range(geometry.GROUP_ORDER)}
    n_instances = 0
    for image_id in tqdm(image_ids, desc="coco", unit="image", disable=not progress):
        info = ground_truth.loadImgs(image_id)[0]
        image = load_image(Path(images_dir) / info["file_name"])
        anns = [a for a in ground_truth.loadAnns(ground_truth.getAnnIds(imgIds=image_id, iscrowd=False))
                if a["bbox"][2] > 0 and a["bbox"][3] > 0]
        if not anns:
            continue
        n_instances += len(anns)
        boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], dtype=np.float64)
        for k in range(geometry.GROUP_ORDER):
            result = segmenter.segment_boxes(geometry.rotate_image(image, k),
                                             geometry.rotate_boxes(boxes, k, image.shape[:2]))
            for path in PATHS:
                predicted = getattr(result, path)
                upright = geometry.unrotate_masks(predicted.masks, k)
                detections[path, k] += [
                    {"image_id": image_id, "category_id": ann["category_id"], "segmentation": encode_rle(mask),
                     "score": float(score)}
                    for ann, mask, score in zip(anns, upright, predicted.scores)]
    summary = {"n_images": len(image_ids), "n_instances": n_instances}
    for path in PATHS:
        per_rotation = {str(angle): _segm_map(ground_truth, image_ids, detections[path, k])
                        for k, angle in enumerate(geometry.ANGLES_DEG)}
        per_rotation["mean"] = float(np.mean(list(per_rotation.values())))
        summary[path] = per_rotation
    return summary


def _segm_map(ground_truth: COCO, image_ids: list[int], detections: list[dict]) -> float:
    if not detections:
        return 0.0
    predictions = _quiet(ground_truth.loadRes, detections)
    evaluator = COCOeval(ground_truth, predictions, iouType="segm")
    evaluator.params.imgIds = image_ids
    _quiet(evaluator.evaluate)
    _quiet(evaluator.accumulate)
    _quiet(evaluator.summarize)
    return float(max(evaluator.stats[0], 0.0))  # -1 means "no ground truth": counted as 0


def coco_table(summary: dict) -> str:
    """Markdown table of :func:`evaluate_coco`'s summary (mAP in percent)."""
    columns = [*map(str, geometry.ANGLES_DEG), "mean"]
    rows = ["| path | " + " | ".join(f"{c} deg" if c != "mean" else "mean" for c in columns) + " |",
            "|---|" + "---:|" * len(columns)]
    labels = {"sam": "SAM alone", "canonicalized": "SAM + canonicalizer"}
    rows += [f"| {labels[p]} | " + " | ".join(f"{100 * summary[p][c]:.2f}" for c in columns) + " |" for p in PATHS]
    return "\n".join(rows) + f"\n\nsegm mAP, {summary['n_images']} images, {summary['n_instances']} instances"
