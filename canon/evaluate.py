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
from .tilt import PERIOD_DEG, WITHIN_DEG, TiltEstimator, angular_error_deg

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


def residual_tilts(angle_step: float) -> list[float]:
    """The tilts in [-45, 45) degrees, sorted, that the multiples of ``angle_step`` below 360 leave beyond quarter
    turns (a tilt stage sees a photo and its quarter turns alike). Rounded to a millionth of a degree: float noise
    must not split one tilt in two."""
    return sorted({round(geometry.split_degrees(angle)[1], 6) for angle in _angles_below_360(angle_step)})


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


def tilt_estimates(files: Iterable[Path], angle_step: float, gates: Iterable[float],
                   estimator: TiltEstimator = TiltEstimator(), folds: int = 5, progress: bool = True) -> dict:
    """The tilt stage alone, without the network, at each confidence ``gate``: every photo (assumed upright) tilted
    by each residual that the multiples of ``angle_step`` degrees leave beyond quarter turns (the stage sees a photo
    and its quarter turns alike), and the share of estimates within 5 degrees of the tilt applied (modulo 90).
    ``upright_kept``: at residual 0, the share of photos left within 5 degrees of upright, which the stage must not
    lose; ``tilts_found``: the same share at the other residuals. Per gate: ``within_5deg`` over every residual,
    ``per_residual`` and ``folds`` (the validation side of each fold of :func:`canon.data.split_files`). The
    histogram does not depend on the gate, so it is computed once per photo and residual."""
    if not 0 < angle_step <= 360:
        raise ValueError(f"the angle step takes 0 to 360 degrees, not {angle_step}")
    files, gates = list(files), sorted(set(gates))
    residuals = residual_tilts(angle_step)
    gated = [dataclasses.replace(estimator, gate=gate) for gate in gates]
    estimates = np.zeros((len(gates), len(files), len(residuals)))
    peaks = np.zeros((len(files), len(residuals)))
    for row, path in enumerate(tqdm(files, desc="tilt", unit="photo", disable=not progress)):
        image = load_image(path)
        for column, residual in enumerate(residuals):
            histogram = estimator.histogram(geometry.rotate_image_free(image, residual))
            peaks[row, column] = estimator.from_histogram(histogram).found_deg  # the same at every gate
            for g, each in enumerate(gated):
                estimates[g, row, column] = each.from_histogram(histogram).degrees
    errors = np.vectorize(angular_error_deg)(estimates, np.array(residuals), PERIOD_DEG)
    within = errors <= WITHIN_DEG
    fold = np.array([fold_of(path, folds) for path in files])
    upright, tilted = residuals.index(0.0), [i for i, r in enumerate(residuals) if r]  # angle 0 is always there
    summary = {"n_images": len(files), "angle_step_deg": angle_step, "residuals_deg": residuals,
               "reader": type(estimator).__name__, "tilt_estimator": dataclasses.asdict(estimator), "gates": {}}
    for g, gate in enumerate(gates):
        summary["gates"][f"{gate:g}"] = {
            "within_5deg": float(within[g].mean()),
            "upright_kept": float(within[g][:, upright].mean()),
            "tilts_found": float(within[g][:, tilted].mean()) if tilted else None,
            "per_residual": {f"{r:g}": float(within[g][:, i].mean()) for i, r in enumerate(residuals)},
            "folds": [float(within[g][fold == part].mean()) for part in range(folds) if np.any(fold == part)],
        }
    summary["peaks"] = _peak_readings(files, peaks, residuals)
    return summary


def _peak_readings(files: list[Path], peaks: np.ndarray, residuals: list[float]) -> dict:
    """How the histogram's peak (the tilt before any gate; ``photos x residuals`` degrees) reads each photo across
    its residuals. ``right_everywhere``: photos read within 5 degrees at every residual. ``one_offset``: photos read
    wrong at every residual, each time by the same offset (within 5 degrees of its circular mean): the peak turns
    with the photo, so the edges are read right, but the photo's up is not along them; their names and offsets are
    in ``offset_photos``. ``mixed``: the rest. ``perfect_gate_within_5deg``: the share of estimates within 5 degrees
    that a gate could reach if it passed exactly the right peaks and held back the others (leaving those photos as
    they are), the ceiling of any gate on this estimator."""
    offsets = (peaks - np.array(residuals) + PERIOD_DEG / 2) % PERIOD_DEG - PERIOD_DEG / 2
    # The circular mean over the 90-degree period: the mean direction of four times each offset, over four.
    mean = np.degrees(np.angle(np.exp(4j * np.radians(offsets)).mean(axis=1))) / 4
    spread = np.abs((offsets - mean[:, None] + PERIOD_DEG / 2) % PERIOD_DEG - PERIOD_DEG / 2)
    right = np.abs(offsets) <= WITHIN_DEG
    right_everywhere = np.all(right, axis=1)
    one_offset = np.all(spread <= WITHIN_DEG, axis=1) & ~np.any(right, axis=1)
    near_upright = np.array([angular_error_deg(0.0, r, PERIOD_DEG) <= WITHIN_DEG for r in residuals])
    return {"right_everywhere": int(right_everywhere.sum()), "one_offset": int(one_offset.sum()),
            "mixed": int(np.sum(~right_everywhere & ~one_offset)),
            "perfect_gate_within_5deg": float((right | near_upright).mean()),
            "offset_photos": {path.name: round(float(offset), 1) for path, offset, chosen
                              in zip(files, mean, one_offset) if chosen}}


def tilt_peaks_table(summary: dict) -> str:
    """A Markdown table of how :func:`tilt_estimates`'s peak reads the photos (``summary["peaks"]``)."""
    peaks, n = summary["peaks"], summary["n_images"]
    residuals = ", ".join(f"{r:g}" for r in summary["residuals_deg"])
    rows = ["| the peak, before any gate | photos | share |", "|---|---:|---:|"]
    for key, label in (("right_everywhere", "within 5 deg at every tilt"),
                       ("one_offset", "wrong at every tilt, by one offset"),
                       ("mixed", "the rest: right at some tilts, or wrong by varying offsets")):
        rows.append(f"| {label} | {peaks[key]} | {100 * peaks[key] / n:.1f} % |")
    return "\n".join(rows) + (
        f"\n\n{n} photos tilted by {residuals} deg; a perfect gate (the peak kept exactly where it is right) would "
        f"bring {100 * peaks['perfect_gate_within_5deg']:.1f} % of the estimates within 5 deg")


def tilt_estimates_table(summary: dict) -> str:
    """A Markdown table of :func:`tilt_estimates`'s summary: one row per gate."""
    def percent(value) -> str:
        return "-" if value is None else f"{100 * value:.1f} %"

    rows = ["| gate | upright photos kept | tilts found | all | per fold (%) |", "|---:|---:|---:|---:|---|"]
    for gate, figures in summary["gates"].items():
        spread = " / ".join(f"{100 * value:.0f}" for value in figures["folds"])
        rows.append(f"| {gate} | {percent(figures['upright_kept'])} | {percent(figures['tilts_found'])} | "
                    f"{percent(figures['within_5deg'])} | {spread} |")
    residuals = ", ".join(f"{r:g}" for r in summary["residuals_deg"])
    return "\n".join(rows) + (f"\n\nthe tilt stage alone (no network), {summary['n_images']} photos tilted by "
                              f"{residuals} deg; an estimate within 5 deg of the tilt applied counts")


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
