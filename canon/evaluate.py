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

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def image_files(folder: str | Path) -> list[Path]:
    """The image files directly in ``folder``, sorted by name (the split and the order never depend on the disk)."""
    files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    return files


def orientation_accuracy(canonicalizer: Canonicalizer, files: Iterable[Path], model_name: str,
                         progress: bool = True) -> dict:
    """Every photo (assumed upright) at its four C4 rotations; a rotated input counts as recovered when the
    canonicalizer's ``k`` equals the rotation applied. Returns the JSON-able summary (``median_ms``: network time
    per photo; the other three rotations of a photo are served from the canonicalizer's orbit cache)."""
    files = list(files)
    hits = np.zeros(geometry.GROUP_ORDER, dtype=np.int64)
    network_ms = []
    for path in tqdm(files, desc="orientation", unit="photo", disable=not progress):
        image = load_image(path)
        for k in range(geometry.GROUP_ORDER):
            decision = canonicalizer.canonicalize(geometry.rotate_image(image, k))
            hits[k] += decision.k == k
            if not decision.cached:
                network_ms.append(decision.elapsed_ms)
    n = len(files)
    return {
        "model": model_name,
        "n_images": n,
        "accuracy": float(hits.sum() / (n * geometry.GROUP_ORDER)),
        "per_rotation": {str(angle): float(h / n) for angle, h in zip(geometry.ANGLES_DEG, hits)},
        "median_ms": float(statistics.median(network_ms)) if network_ms else 0.0,
    }


def orientation_table(summary: dict) -> str:
    """A small Markdown table of :func:`orientation_accuracy`'s summary."""
    rows = ["| rotation | recovered |", "|---:|---:|"]
    rows += [f"| {angle} deg | {100 * acc:.1f} % |" for angle, acc in summary["per_rotation"].items()]
    rows.append(f"| all ({summary['n_images']} photos x 4) | {100 * summary['accuracy']:.1f} % |")
    return "\n".join(rows) + f"\n\nmodel {summary['model']}, median {summary['median_ms']:.0f} ms per photo"
