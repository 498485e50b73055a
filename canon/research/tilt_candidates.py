"""Ways of undoing a tilt, side by side on the same photos: the edge-orientation stage in front of the quarter-turn
network (``Canonicalizer.with_tilt``, one network pass), the same with the network as its gate (a second pass on the
photo as given; the surer of the two wins), and the paper's network itself scored on the photo turned back by each
candidate tilt (one pass per candidate; the candidate and quarter turn with the highest activation win). ``python -m
canon.research tilt-candidates --images ../shared/data/upright --json docs/tilt-candidates.json`` prints the table
and writes the figures.

An experiment, not a serving path: the last two cost one and many more network passes per photo, beyond the fifth
of the canonicalizer's time a tilt stage may add, and are measured only to know what they would give."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .. import geometry
from ..canonicalizer import Canonicalization, Canonicalizer
from ..data import fold_of
from ..images import load_image
from ..tilt import WITHIN_DEG, angular_error_deg

TILTS_DEG = (0.0, 15.0, 30.0, 45.0)  # the page's tilt sweep; negative tilts mirror these
CANDIDATE_STEP_DEG = 5.0  # the network's candidate tilts: a grid fine enough to land within 5 degrees


def network_scored(canonicalizer: Canonicalizer, image: np.ndarray, candidates: list[float]) -> float:
    """The turn (degrees, counter-clockwise) the quarter-turn network finds in ``image`` when it also scores the
    image turned back by each of ``candidates``: ``90 k + c`` for the best activation over every ``(c, k)``."""
    logits = np.array([canonicalizer.logits(geometry.rotate_image_free(image, -c)) for c in candidates])
    best_candidate, k = np.unravel_index(int(np.argmax(logits)), logits.shape)
    return 90.0 * k + candidates[best_candidate]


def network_checked(edges: Canonicalization, untouched_logits: np.ndarray) -> float:
    """The edge stage's turn where the network is more sure of the untilted image than of the image as given
    (its best activation, which quarter turns do not change), else the quarter turn alone: the network as the
    tilt stage's gate, at the cost of a second pass."""
    if edges.tilt_deg == 0 or edges.logits.max() >= untouched_logits.max():
        return edges.rotation_deg
    return 90.0 * int(np.argmax(untouched_logits))


def compare(canonicalizer: Canonicalizer, files: list[Path], model_name: str,
            candidate_step_deg: float = CANDIDATE_STEP_DEG, progress: bool = True) -> dict:
    """The three ways on every photo of ``files`` (assumed upright) tilted by each of :data:`TILTS_DEG`, the
    network's candidates every ``candidate_step_deg`` in [-45, 45): the share brought within 5 degrees of upright
    per tilt and overall, and the median time per photo (the gate's: both passes, always run)."""
    candidates = [float(c) for c in np.arange(-45.0, 45.0, candidate_step_deg)]
    edges = canonicalizer if canonicalizer.tilt is not None else canonicalizer.with_tilt()
    quarter_turns = canonicalizer.with_tilt(None)
    names = ("edges", "checked", "network")
    within = {name: [] for name in names}
    seconds = {name: [] for name in names}
    for path in tqdm(files, desc="tilt candidates", unit="photo", disable=not progress):
        image = load_image(path)
        for tilt in TILTS_DEG:
            turned = geometry.rotate_image_free(image, tilt)
            start = time.perf_counter()
            decision = edges.canonicalize(turned)
            seconds["edges"].append(time.perf_counter() - start)
            start = time.perf_counter()
            checked = network_checked(decision, quarter_turns.logits(turned))
            seconds["checked"].append(seconds["edges"][-1] + time.perf_counter() - start)
            start = time.perf_counter()
            scored = network_scored(quarter_turns, turned, candidates)
            seconds["network"].append(time.perf_counter() - start)
            for name, rotation in zip(names, (decision.rotation_deg, checked, scored)):
                within[name].append(angular_error_deg(rotation, tilt) <= WITHIN_DEG)
    summary = {"model": model_name, "n_images": len(files), "tilts_deg": list(TILTS_DEG),
               "network_candidates_deg": candidates, "folds": sorted({fold_of(path) for path in files})}
    for name, hits in within.items():
        hits = np.array(hits).reshape(len(files), len(TILTS_DEG))
        summary[name] = {"within_5deg": float(hits.mean()),
                         "per_tilt": {f"{t:g}": float(hits[:, i].mean()) for i, t in enumerate(TILTS_DEG)},
                         "median_s": float(np.median(seconds[name]))}
    return summary


def table(summary: dict) -> str:
    """A Markdown table of :func:`compare`'s summary."""
    tilts = list(summary["edges"]["per_tilt"])
    rows = ["| candidate | " + " | ".join(f"{t} deg" for t in tilts) + " | all | time per photo |",
            "|---|" + "---:|" * (len(tilts) + 2)]
    for name, label in (("edges", "edge orientation, then the network (one pass; served)"),
                        ("checked", "the same, kept only where the network is surer of it (two passes)"),
                        ("network", f"the network on {len(summary['network_candidates_deg'])} candidate tilts")):
        figures = summary[name]
        rows.append(f"| {label} | " + " | ".join(f"{100 * figures['per_tilt'][t]:.0f} %" for t in tilts)
                    + f" | {100 * figures['within_5deg']:.0f} % | {figures['median_s']:.1f} s |")
    candidates = {c % 90 for c in summary["network_candidates_deg"]}
    grid = ("; the network's candidates include every tilt applied" if all(t % 90 in candidates
                                                                             for t in summary["tilts_deg"]) else "")
    return "\n".join(rows) + (f"\n\n{summary['model']}, {summary['n_images']} photos spread over the folds, "
                              f"brought within 5 deg of upright{grid}")


def spread_over_folds(files: list[Path], per_fold: int) -> list[Path]:
    """``per_fold`` photos of each fold of :func:`canon.data.split_files`, evenly spaced in name order (the names
    start with their subject, so this spreads them over subjects)."""
    folds: dict[int, list[Path]] = {}
    for path in sorted(files):
        folds.setdefault(fold_of(path), []).append(path)
    return [folds[fold][i * len(folds[fold]) // per_fold] for fold in sorted(folds)
            for i in range(min(per_fold, len(folds[fold])))]
