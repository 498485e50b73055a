"""Evaluation: how often the canonicalizer recovers the upright orientation of photos."""

from __future__ import annotations

import dataclasses
import statistics
import time
from pathlib import Path
from typing import Iterable

import numpy as np
from tqdm import tqdm

from . import geometry
from .canonicalizer import Canonicalizer
from .data import fold_of
from .images import load_image
from .prompts import Prompts
from .render import mask_iou
from .tilt import WITHIN_DEG, TiltEstimator, angular_error_deg

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


def orientation_by_angle(canonicalizer: Canonicalizer, files: Iterable[Path], model_name: str, angle_step: float,
                         estimator: TiltEstimator = TiltEstimator(), folds: int = 5, progress: bool = True) -> dict:
    """Every photo (assumed upright) turned by each multiple of ``angle_step`` degrees below 360
    (:func:`geometry.rotate_image_free`), through two canonicalizers: the quarter-turn stage alone (the photo
    estimated turned by ``90 k``) and the full one, the tilt stage in front of it (``90 k + tilt``:
    :meth:`Canonicalizer.with_tilt`). For each, per angle and overall: ``within_5deg``, the share of photos whose
    estimate is within 5 degrees of the turn applied, and ``median_error_deg``; ``folds``: ``within_5deg`` on the
    validation side of each of the ``folds`` folds of :func:`canon.data.split_files`, the spread to expect on other
    photos. The top-level ``within_5deg`` and ``median_error_deg`` are the full canonicalizer's. ``tilt_ms`` and
    ``network_ms``: median time per photo of the tilt stage (estimate and resampling) and of the network."""
    if not 0 < angle_step <= 360:
        raise ValueError(f"the angle step takes 0 to 360 degrees, not {angle_step}")
    files = list(files)
    angles = _angles_below_360(angle_step)
    stages = {"full": canonicalizer.with_tilt(estimator), "quarter_turns": canonicalizer.with_tilt(None)}
    errors = {stage: np.zeros((len(files), len(angles))) for stage in stages}
    tilt_ms, network_ms = [], []
    for row, path in enumerate(tqdm(files, desc="orientation", unit="photo", disable=not progress)):
        image = load_image(path)
        for column, angle in enumerate(angles):
            turned = geometry.rotate_image_free(image, angle)
            for stage, model in stages.items():
                decision = model.canonicalize(turned)
                errors[stage][row, column] = angular_error_deg(decision.rotation_deg, angle)
                if stage == "quarter_turns" and not decision.cached:
                    network_ms.append(decision.elapsed_ms)
            start = time.perf_counter()  # the tilt stage's share: the estimate and, where it finds one, the resampling
            if (tilt := estimator(turned)).degrees:
                geometry.rotate_image_free(turned, -tilt.degrees)
            tilt_ms.append((time.perf_counter() - start) * 1000)
    fold = np.array([fold_of(path, folds) for path in files])
    summary = {"model": model_name, "n_images": len(files), "angle_step_deg": angle_step, "angles_deg": angles,
               "tilt_estimator": dataclasses.asdict(estimator)}
    for stage in stages:
        within = errors[stage] <= WITHIN_DEG
        summary[stage] = {
            "within_5deg": float(within.mean()),
            "median_error_deg": float(np.median(errors[stage])),
            "per_angle": {f"{angle:g}": {"within_5deg": float(within[:, column].mean()),
                                         "median_error_deg": float(np.median(errors[stage][:, column]))}
                          for column, angle in enumerate(angles)},
            "quarter_turn_angles_within_5deg": float(within[:, [i for i, a in enumerate(angles) if a % 90 == 0]]
                                                     .mean()),
            "folds": [float(within[fold == part].mean()) for part in range(folds) if np.any(fold == part)],
        }
    summary["within_5deg"] = summary["full"]["within_5deg"]
    summary["median_error_deg"] = summary["full"]["median_error_deg"]
    summary["tilt_ms"] = float(statistics.median(tilt_ms)) if tilt_ms else 0.0
    summary["network_ms"] = float(statistics.median(network_ms)) if network_ms else 0.0
    return summary


def _angles_below_360(step: float) -> list[float]:
    """``0, step, 2 step, ...`` below 360 degrees."""
    return [float(i * step) for i in range(int(np.ceil(360 / step - 1e-9)))]


def orientation_by_angle_table(summary: dict) -> str:
    """A Markdown table of :func:`orientation_by_angle`'s summary."""
    full, quarter = summary["full"], summary["quarter_turns"]
    rows = ["| turn | quarter-turn stage: within 5 deg | median error | with the tilt stage: within 5 deg | "
            "median error |", "|---:|---:|---:|---:|---:|"]
    for angle, q in quarter["per_angle"].items():
        f = full["per_angle"][angle]
        rows.append(f"| {angle} deg | {100 * q['within_5deg']:.1f} % | {q['median_error_deg']:.1f} deg | "
                    f"{100 * f['within_5deg']:.1f} % | {f['median_error_deg']:.1f} deg |")
    rows.append(f"| all ({summary['n_images']} photos x {len(quarter['per_angle'])}) | "
                f"{100 * quarter['within_5deg']:.1f} % | {quarter['median_error_deg']:.1f} deg | "
                f"{100 * full['within_5deg']:.1f} % | {full['median_error_deg']:.1f} deg |")
    spread = " / ".join(f"{100 * value:.1f}" for value in full["folds"])
    return "\n".join(rows) + (
        f"\n\nmodel {summary['model']}; with the tilt stage, per fold (%): {spread}; on the quarter turns "
        f"{100 * full['quarter_turn_angles_within_5deg']:.1f} % (stage alone "
        f"{100 * quarter['quarter_turn_angles_within_5deg']:.1f} %); median time per photo: tilt stage "
        f"{summary['tilt_ms']:.1f} ms, network {summary['network_ms']:.0f} ms")


def centre_prompts(size: tuple[int, int]) -> Prompts:
    """The label-free prompt of the consistency check: one foreground click at the centre of an ``(H, W)`` image."""
    height, width = size
    return Prompts.make([[width / 2, height / 2]], [1])


def mask_consistency(segmenter, files: Iterable[Path], sam_model: str, angle_step: float = 90.0,
                     progress: bool = True) -> dict:
    """Without labels: for every photo, the centre click with the photo turned by each multiple of ``angle_step``
    degrees below 360 but 0 (:meth:`EquivariantSegmenter.sweep`: the click turned with the photo, the masks brought
    back upright), and each path's best-mask IoU against its own result on the upright photo (1.0 = the turn changed
    nothing). At quarter turns the canonicalized path is exact; with a tilt stage in the segmenter's canonicalizer
    it can follow tilts too, below 1.0 by the interpolation of a tilt."""
    if not 0 < angle_step < 360:
        raise ValueError(f"the angle step takes 0 to 360 degrees (both excluded), not {angle_step}")
    files = list(files)
    angles = _angles_below_360(angle_step)
    ious = {"sam": [], "canonicalized": []}
    for path in tqdm(files, desc="consistency", unit="photo", disable=not progress):
        image = load_image(path)
        entries = segmenter.sweep(image, centre_prompts(image.shape[:2]), degrees=angles)
        ious["sam"].append([e.sam_iou for e in entries[1:]])
        ious["canonicalized"].append([e.canonicalized_iou for e in entries[1:]])
    summary = {"sam_model": sam_model, "n_images": len(files), "angle_step_deg": angle_step}
    for name, values in ious.items():
        values = np.array(values).reshape(len(files), len(angles) - 1)
        summary[name] = {"mean_iou": float(values.mean()),
                         "per_rotation": {f"{a:g}": float(v) for a, v in zip(angles[1:], values.mean(0))}}
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
