"""Evaluation: how often the canonicalizer recovers the upright orientation of photos."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Iterable

import numpy as np
from tqdm import tqdm

from . import geometry
from .canonicalizer import Canonicalizer
from .images import load_image
from .prompts import Prompts

def orientation_accuracy(canonicalizer: Canonicalizer, files: Iterable[Path], model_name: str,
                         progress: bool = True) -> dict:
    """Every photo (assumed upright) at its four C4 rotations; a rotated input counts as recovered when the
    canonicalizer's ``k`` equals the rotation applied. Returns the JSON-able summary (``median_ms``: network time
    per photo, the other three rotations of a photo being served from the canonicalizer's orbit cache; ``missed``:
    the names of the photos not recovered)."""
    files = list(files)
    hits = np.zeros(geometry.GROUP_ORDER, dtype=np.int64)
    network_ms, missed = [], []
    for path in tqdm(files, desc="orientation", unit="photo", disable=not progress):
        image = load_image(path)
        for k in range(geometry.GROUP_ORDER):
            decision = canonicalizer.canonicalize(geometry.rotate_image(image, k))
            hits[k] += decision.k == k
            if not decision.cached:
                network_ms.append(decision.elapsed_ms)
            if k == 0 and decision.k != 0:
                missed.append(path.name)
    n = len(files)
    return {
        "model": model_name,
        "n_images": n,
        "accuracy": float(hits.sum() / (n * geometry.GROUP_ORDER)),
        "per_rotation": {str(angle): float(h / n) for angle, h in zip(geometry.ANGLES_DEG, hits)},
        "median_ms": float(statistics.median(network_ms)) if network_ms else 0.0,
        "mean_ms": float(statistics.fmean(network_ms)) if network_ms else 0.0,
        "missed": missed,  # photos whose upright copy was taken for a turned one
    }


def orientation_table(summary: dict) -> str:
    """A small Markdown table of :func:`orientation_accuracy`'s summary."""
    rows = ["| rotation | recovered |", "|---:|---:|"]
    rows += [f"| {angle} deg | {100 * acc:.1f} % |" for angle, acc in summary["per_rotation"].items()]
    rows.append(f"| all ({summary['n_images']} photos x 4) | {100 * summary['accuracy']:.1f} % |")
    return "\n".join(rows) + (f"\n\nmodel {summary['model']}, network time per photo: median "
                             f"{summary['median_ms']:.0f} ms, mean {summary['mean_ms']:.0f} ms")


def centre_prompts(size: tuple[int, int]) -> Prompts:
    """The label-free prompt of the consistency check: one foreground click at the centre of an ``(H, W)`` image."""
    height, width = size
    return Prompts.make([[width / 2, height / 2]], [1])


def mask_consistency(segmenter, files: Iterable[Path], sam_model: str, progress: bool = True) -> dict:
    """Without labels: for every photo, the centre click at 90/180/270 degrees, masks mapped back upright, and each
    path's best-mask IoU against its own result on the upright photo (1.0 = the rotation changed nothing)."""
    files = list(files)
    ious = {"sam": [], "canonicalized": []}
    for path in tqdm(files, desc="consistency", unit="photo", disable=not progress):
        image = load_image(path)
        entries = segmenter.sweep(image, centre_prompts(image.shape[:2]))
        ious["sam"].append([e.sam_iou for e in entries[1:]])
        ious["canonicalized"].append([e.canonicalized_iou for e in entries[1:]])
    summary = {"sam_model": sam_model, "n_images": len(files)}
    for name, values in ious.items():
        values = np.array(values).reshape(-1, geometry.GROUP_ORDER - 1)
        summary[name] = {"mean_iou": float(values.mean()),
                         "per_rotation": {str(a): float(v) for a, v in zip(geometry.ANGLES_DEG[1:], values.mean(0))}}
    return summary


def consistency_table(summary: dict) -> str:
    """Markdown table of :func:`mask_consistency`'s summary."""
    angles = list(summary["sam"]["per_rotation"])
    rows = ["| path | " + " | ".join(f"{a} deg" for a in angles) + " | mean |", "|---|" + "---:|" * (len(angles) + 1)]
    for name, label in (("sam", "SAM alone"), ("canonicalized", "SAM + canonicalizer")):
        values = summary[name]
        rows.append(f"| {label} | " + " | ".join(f"{values['per_rotation'][a]:.3f}" for a in angles)
                    + f" | {values['mean_iou']:.3f} |")
    return "\n".join(rows) + f"\n\nIoU against the upright result, {summary['n_images']} photos, SAM {summary['sam_model']}"
