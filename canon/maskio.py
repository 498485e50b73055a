"""Mask export for people and programs: a PNG label image and a COCO run-length-encoded (RLE) JSON file.

* PNG: one ``H x W`` image whose pixel value is ``i + 1`` where mask ``i`` is the first (best) mask covering the
  pixel, ``0`` elsewhere. It is a palette PNG coloured like the app's overlays (:data:`canon.render.PALETTE`), with
  the background transparent, so it can be laid over the photo as it is; with more than 255 masks it is a 16-bit
  grayscale PNG instead. Overlapping masks lose their overlap here; the JSON keeps every mask whole.
* JSON: ``{"image": {"height", "width"}, "annotations": [{"id", "segmentation": {"size": [H, W], "counts"},
  "area", "bbox": [x, y, w, h], "score"}], ...}``, the RLE and box conventions of pycocotools and of
  segment-anything's automatic mask generator. :func:`masks_from_coco` reads it back.

Masks are ``N x H x W`` bool arrays throughout.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask

from .render import PALETTE


def label_image(masks: np.ndarray) -> np.ndarray:
    """``N x H x W`` bool masks -> ``H x W`` labels: ``i + 1`` for the first mask covering a pixel, ``0`` for none.
    uint8 for up to 255 masks, else uint16."""
    masks = np.asarray(masks, dtype=bool)
    dtype = np.uint8 if len(masks) <= 255 else np.uint16
    labels = np.zeros(masks.shape[1:], dtype=dtype)
    for index in range(len(masks) - 1, -1, -1):  # last to first, so that the first mask wins where they overlap
        labels[masks[index]] = index + 1
    return labels


def png_bytes(masks: np.ndarray) -> bytes:
    """The PNG described in the module docstring, as bytes."""
    labels = label_image(masks)
    buffer = io.BytesIO()
    if labels.dtype == np.uint16:
        Image.fromarray(labels).save(buffer, format="PNG")
        return buffer.getvalue()
    image = Image.fromarray(labels)
    colours = np.zeros((256, 3), dtype=np.uint8)
    colours[1:] = PALETTE[np.arange(255) % len(PALETTE)].astype(np.uint8)
    image.putpalette(colours.ravel().tolist())  # turns the "L" image into a "P" one, values unchanged
    image.save(buffer, format="PNG", transparency=0)
    return buffer.getvalue()


def encode_rle(mask: np.ndarray) -> dict:
    """``H x W`` bool mask -> COCO run-length encoding ``{"size": [H, W], "counts": str}`` (JSON-ready)."""
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _binary_rle(rle: dict) -> dict:
    """pycocotools wants ``counts`` as bytes."""
    return dict(rle, counts=rle["counts"].encode("ascii"))


def to_coco(masks: np.ndarray, scores: np.ndarray, **info) -> dict:
    """A JSON-ready dict with one COCO RLE annotation per mask (ids from 1, in the masks' order), SAM's score for
    each, and ``info`` (JSON-serialisable extras, e.g. the path and the rotation) at the top level."""
    masks = np.asarray(masks, dtype=bool)
    height, width = masks.shape[1:]
    encoded = [encode_rle(mask) for mask in masks]
    annotations = [{
        "id": index + 1,
        "segmentation": rle,
        "area": int(coco_mask.area(_binary_rle(rle))),
        "bbox": [float(v) for v in coco_mask.toBbox(_binary_rle(rle))],
        "score": float(score),
    } for index, (rle, score) in enumerate(zip(encoded, scores))]
    return {"image": {"height": int(height), "width": int(width)}, "annotations": annotations, **info}


def masks_from_coco(document: dict) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of :func:`to_coco`: ``(N x H x W bool masks, N float64 scores)``."""
    height, width = document["image"]["height"], document["image"]["width"]
    annotations = document["annotations"]
    masks = np.zeros((len(annotations), height, width), dtype=bool)
    for index, annotation in enumerate(annotations):
        rle = _binary_rle(annotation["segmentation"])
        masks[index] = coco_mask.decode(rle).astype(bool)
    return masks, np.array([a["score"] for a in annotations], dtype=np.float64)


def save_masks(folder: str | Path, stem: str, masks: np.ndarray, scores: np.ndarray, **info) -> list[Path]:
    """Write ``<stem>.png`` and ``<stem>.json`` into ``folder`` (which must exist); return both paths."""
    png_path, json_path = Path(folder) / f"{stem}.png", Path(folder) / f"{stem}.json"
    png_path.write_bytes(png_bytes(masks))
    json_path.write_text(json.dumps(to_coco(masks, scores, **info)), encoding="utf-8")
    return [png_path, json_path]
