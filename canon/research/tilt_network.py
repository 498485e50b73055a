"""The third candidate tilt stage: a network equivariant to C_N (N >= 16 rotations, escnn) that reads the tilt off a
photo, trained with the canonicalization prior on tilted crops, measured beside the edge-orientation stage
(:class:`canon.tilt.TiltEstimator`) on the held-out side of every fold. ``python -m canon.research tilt-network
--images ../shared/data/upright --json docs/tilt-network.json`` trains one network per fold, prints the table and
writes the figures.

The network: regular C_N fields, each stage a convolution, batch norm and ReLU, then an anti-aliased pooling; the
head is one field of C_N's irreducible representation of frequency 4, averaged over space: a 2-vector ``v`` that
turns by ``4 a`` when the photo turns by ``a``. A quarter turn moves it by a whole circle, so the estimate
``angle(v) / 4`` is the tilt modulo 90 degrees, and ``|v|`` is its confidence. The prior: ``v`` is the natural
parameter of a von Mises distribution over ``4 a``, and the loss is its negative log-likelihood of the tilt applied
to an upright photo, ``-v . (cos 4a, sin 4a) + log I0(|v|)``. By equivariance, the upright photos alone would do
(as for the C4 network); tilted crops teach it the turns that C_N only holds approximately on a pixel grid.

What the network sees: the largest square centred on the photo that holds none of a turned canvas's black corners
(:func:`content_square`), so that, as with the edge stage, the canvas's border never reports the tilt it was made
with. An experiment, not a serving path.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from .. import geometry
from ..data import fold_of, split_files
from ..evaluate import residual_tilts
from ..images import load_image
from ..networks import _escnn
from ..tilt import PERIOD_DEG, WITHIN_DEG, TiltEstimator, angular_error_deg
from ..train import shrink

FREQUENCY = 4  # the head's frequency: a quarter turn of the photo turns the head's vector a whole circle
ROWS = {"network": "the C_N network", "network_gated": "the C_N network, gated by its confidence",
        "edges": "edge orientation (served)", "edges_agreed": "edge orientation where the C_N network agrees"}
BORDER_PX = 2  # pixels given up inside a canvas's black corners: the bilinear fringe of a tilted photo


@dataclass(frozen=True)
class TiltNetworkConfig:
    group_order: int = 16
    input_size: int = 97  # 8 m + 1: each stride-2 pooling samples a grid that quarter turns map onto itself
    fields: tuple[int, ...] = (2, 4, 4, 4)  # regular fields per stage; each stage after the first halves the side
    kernel_size: int = 5
    steps: int = 600
    batch_size: int = 16
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    tilts_per_photo: int = 16  # tilted crops drawn per training photo, once, before training
    min_crop_scale: float = 0.5  # each crop a random square of the content square, at least this share of its side
    seed: int = 0

    def __post_init__(self):
        # group_order a multiple of 4: C_N must hold the quarter turns.
        if not (self.group_order >= 16 and self.group_order % 4 == 0 and self.input_size >= 16 and self.fields
                and (self.input_size - 1) % 2 ** (len(self.fields) - 1) == 0 and min(self.fields) >= 1
                and self.steps >= 1 and self.batch_size >= 1 and self.tilts_per_photo >= 1
                and 0 < self.min_crop_scale <= 1):
            raise ValueError(f"tilt network settings out of range: {self}")


def content_box(image: np.ndarray) -> tuple[float, float, float, float]:
    """The largest square centred on an ``H x W x 3`` uint8 RGB image that holds no pixel of its black corners (pure
    black pixels joined to the image border, less :data:`BORDER_PX`): ``(left, top, right, bottom)`` in pixels. A
    photo with no such corners gives its centred square of side ``min(H, W)``."""
    from scipy import ndimage

    height, width = image.shape[:2]
    labels, _ = ndimage.label(~np.any(image > 0, axis=2))
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    rows, columns = np.nonzero(np.isin(labels, border[border > 0]))
    half = min(height, width) / 2
    if len(rows):
        # Chebyshev distance of each corner pixel's centre from the image centre: the square must stop short of it.
        reach = np.maximum(np.abs(rows + 0.5 - height / 2), np.abs(columns + 0.5 - width / 2))
        half = min(half, float(reach.min()) - 0.5 - BORDER_PX)
    half = max(half, 4.0)
    return width / 2 - half, height / 2 - half, width / 2 + half, height / 2 + half


def content_square(image: np.ndarray, size: int, box: tuple[float, float, float, float] | None = None) -> torch.Tensor:
    """``box`` (default :func:`content_box`) of an ``H x W x 3`` uint8 RGB image resized to ``size``: ``3 x size x
    size`` float32 tensor in [0, 1]."""
    square = Image.fromarray(np.ascontiguousarray(image)).resize(
        (size, size), Image.Resampling.BILINEAR, box=content_box(image) if box is None else box, reducing_gap=2.0)
    return torch.from_numpy(np.asarray(square, dtype=np.float32) / 255.0).permute(2, 0, 1)


def _sub_square(box: tuple[float, float, float, float], rng: np.random.Generator,
                min_scale: float) -> tuple[float, float, float, float]:
    """A random square inside ``box``, its side a uniform share in ``[min_scale, 1]`` of the box's."""
    left, top, right, bottom = box
    side = (right - left) * rng.uniform(min_scale, 1.0)
    x, y = left + rng.uniform(0, right - left - side), top + rng.uniform(0, bottom - top - side)
    return x, y, x + side, y + side


class TiltNetwork(torch.nn.Module):
    """C_N-equivariant tilt reader (see the module's docstring). ``forward(x)`` takes ``B x 3 x S x S`` floats in
    [0, 1] and returns ``B x 2``: the von Mises natural parameter ``v`` over four times the tilt."""

    def __init__(self, config: TiltNetworkConfig = TiltNetworkConfig()):
        super().__init__()
        gspaces, enn = _escnn()
        gspace = gspaces.rot2dOnR2(N=config.group_order)
        field = enn.FieldType(gspace, [gspace.trivial_repr] * 3)
        self.in_type = field
        modules = []
        for stage, fields in enumerate(config.fields):
            if stage:
                modules.append(enn.PointwiseAvgPoolAntialiased(field, sigma=0.66, stride=2))
            out = enn.FieldType(gspace, [gspace.regular_repr] * fields)
            modules += [enn.R2Conv(field, out, config.kernel_size, padding=config.kernel_size // 2),
                        enn.InnerBatchNorm(out), enn.ReLU(out, inplace=True)]
            field = out
        head = enn.FieldType(gspace, [gspace.irrep(FREQUENCY)])
        modules.append(enn.R2Conv(field, head, 3, padding=1))
        self.network = enn.SequentialModule(*modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, enn = _escnn()
        return self.network(enn.GeometricTensor(x, self.in_type)).tensor.mean(dim=(2, 3))


def target(tilt_deg: torch.Tensor) -> torch.Tensor:
    """The unit vector at ``FREQUENCY`` times a tilt (degrees, counter-clockwise as displayed): ``B x 2``, in the
    head's frame, whose angle grows as the photo turns counter-clockwise as displayed."""
    angle = torch.deg2rad(FREQUENCY * tilt_deg)
    return torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)


def prior_loss(v: torch.Tensor, tilt_deg: torch.Tensor) -> torch.Tensor:
    """The von Mises negative log-likelihood of ``FREQUENCY`` times each tilt applied, natural parameters ``v``
    (``B x 2``), up to the constant ``log 2 pi``: ``-v . t + log I0(|v|)``, with ``log I0(k) = log i0e(k) + k``."""
    kappa = v.norm(dim=1)
    return (-(v * target(tilt_deg)).sum(dim=1) + torch.log(torch.special.i0e(kappa)) + kappa).mean()


def read_tilt(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Tilts in [-45, 45) degrees (counter-clockwise as displayed) and confidences ``|v|`` from ``B x 2`` outputs."""
    degrees = np.degrees(np.arctan2(v[:, 1], v[:, 0])) / FREQUENCY
    return (degrees + PERIOD_DEG / 2) % PERIOD_DEG - PERIOD_DEG / 2, np.hypot(v[:, 0], v[:, 1])


def tilted_crops(photos: list[np.ndarray], config: TiltNetworkConfig,
                 rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``config.tilts_per_photo`` views of each upright photo, each tilted by a uniform angle in [-45, 45) and a
    random quarter turn, mirrored half of the time, then a random square of its :func:`content_box`:
    ``N x 3 x S x S`` floats and the ``N`` tilts (degrees)."""
    crops, tilts = [], []
    for photo in photos:
        for _ in range(config.tilts_per_photo):
            tilt = float(rng.uniform(-PERIOD_DEG / 2, PERIOD_DEG / 2))
            turned = geometry.rotate_image_free(photo, tilt + 90.0 * int(rng.integers(4)))
            if rng.random() < 0.5:  # a mirrored photo is as upright, with the opposite tilt
                turned, tilt = np.ascontiguousarray(turned[:, ::-1]), -tilt
            box = _sub_square(content_box(turned), rng, config.min_crop_scale)
            crops.append(content_square(turned, config.input_size, box))
            tilts.append(tilt)
    return torch.stack(crops), torch.tensor(tilts, dtype=torch.float32)


def fit(photos: list[np.ndarray], config: TiltNetworkConfig = TiltNetworkConfig(),
        progress: bool = True) -> tuple[TiltNetwork, list[float]]:
    """A :class:`TiltNetwork` trained with :func:`prior_loss` on :func:`tilted_crops` of upright ``photos`` (AdamW,
    cosine learning rate); returns it in eval mode, and the loss of each step."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    crops, tilts = tilted_crops(photos, config, rng)
    network = TiltNetwork(config)
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.steps)
    losses = []
    network.train()
    for _ in tqdm(range(config.steps), desc="tilt network", unit="step", disable=not progress):
        batch = torch.from_numpy(rng.choice(len(crops), size=min(config.batch_size, len(crops)), replace=False))
        loss = prior_loss(network(crops[batch]), tilts[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    return network.eval(), losses


@torch.no_grad()
def estimate(network: TiltNetwork, image: np.ndarray, input_size: int) -> tuple[float, float]:
    """The tilt (degrees in [-45, 45), counter-clockwise as displayed) and its confidence that ``network`` reads off
    an ``H x W x 3`` uint8 RGB image."""
    degrees, confidence = read_tilt(network(content_square(image, input_size)[None]).numpy())
    return float(degrees[0]), float(confidence[0])


def compare(files: list[Path], config: TiltNetworkConfig = TiltNetworkConfig(), angle_step: float = 15.0,
            folds: int = 5, only_folds: tuple[int, ...] | None = None, progress: bool = True) -> dict:
    """For each fold of :func:`canon.data.split_files` (or those in ``only_folds``): a network fitted on the
    training side, then, on every validation photo tilted by each residual the multiples of ``angle_step`` leave
    beyond quarter turns, the share of tilts read within 5 degrees (modulo 90) by the network (ungated, and at the
    gate that its training photos say best) and by the edge stage (:class:`canon.tilt.TiltEstimator`'s defaults).
    ``upright_kept`` is that share at residual 0, ``tilts_found`` at the others, as in ``python -m canon evaluate
    tilt``."""
    residuals = residual_tilts(angle_step)
    edges = TiltEstimator()
    rows = {name: [] for name in ROWS}
    fold_ids, seconds = [], {"train_s": [], "network_ms": [], "edges_ms": []}
    for fold in (range(folds) if only_folds is None else only_folds):
        train_files, validation = split_files(files, fold, folds)
        start = time.perf_counter()
        network, _ = fit([shrink(load_image(path)) for path in train_files], config, progress)
        seconds["train_s"].append(time.perf_counter() - start)
        gate = choose_gate(network, train_files, residuals, config.input_size)
        for path in tqdm(validation, desc=f"fold {fold}", unit="photo", disable=not progress):
            image = load_image(path)
            fold_ids.append(fold)
            found = {name: [] for name in rows}
            for residual in residuals:
                turned = geometry.rotate_image_free(image, residual)
                start = time.perf_counter()
                degrees, confidence = estimate(network, turned, config.input_size)
                seconds["network_ms"].append(1000 * (time.perf_counter() - start))
                start = time.perf_counter()
                edge = edges(turned)
                seconds["edges_ms"].append(1000 * (time.perf_counter() - start))
                agree = angular_error_deg(degrees, edge.found_deg, PERIOD_DEG) <= WITHIN_DEG
                for name, value in (("network", degrees), ("network_gated", degrees if confidence > gate else 0.0),
                                    ("edges", edge.degrees), ("edges_agreed", edge.found_deg if agree else 0.0)):
                    found[name].append(angular_error_deg(value, residual, PERIOD_DEG) <= WITHIN_DEG)
            for name in rows:
                rows[name].append(found[name])
    fold_ids = np.array(fold_ids)
    upright, tilted = residuals.index(0.0), [i for i, r in enumerate(residuals) if r]
    summary = {"n_images": len(fold_ids), "angle_step_deg": angle_step, "residuals_deg": residuals,
               "config": asdict(config), "tilt_estimator": asdict(edges),
               "train_s": float(np.median(seconds["train_s"])),
               "network_ms": float(np.median(seconds["network_ms"])),
               "edges_ms": float(np.median(seconds["edges_ms"]))}
    for name, hits in rows.items():
        hits = np.array(hits, dtype=bool)
        summary[name] = {"within_5deg": float(hits.mean()), "upright_kept": float(hits[:, upright].mean()),
                         "tilts_found": float(hits[:, tilted].mean()),
                         "folds": {str(f): float(hits[fold_ids == f].mean()) for f in sorted(set(fold_ids))}}
    return summary


def choose_gate(network: TiltNetwork, train_files: list[Path], residuals: list[float], input_size: int) -> float:
    """The confidence below which the tilt is left at 0, chosen on the training photos (never the validation side)
    at the same residuals as the validation: the gate that brings the most views within 5 degrees."""
    confidences, correct = [], []
    for path in train_files:
        image = load_image(path)
        for residual in residuals:
            degrees, confidence = estimate(network, geometry.rotate_image_free(image, residual), input_size)
            confidences.append(confidence)
            correct.append((angular_error_deg(degrees, residual, PERIOD_DEG) <= WITHIN_DEG,
                            angular_error_deg(0.0, residual, PERIOD_DEG) <= WITHIN_DEG))
    confidences, correct = np.array(confidences), np.array(correct)
    candidates = np.concatenate([[0.0], np.sort(confidences)])
    hits = [np.where(confidences > gate, correct[:, 0], correct[:, 1]).sum() for gate in candidates]
    return float(candidates[int(np.argmax(hits))])


def table(summary: dict) -> str:
    """A Markdown table of :func:`compare`'s summary: one row per way of reading the tilt."""
    rows = ["| tilt read by | upright photos kept | tilts found | all | per fold (%) |", "|---|---:|---:|---:|---|"]
    for name, label in ROWS.items():
        figures = summary[name]
        spread = " / ".join(f"{100 * value:.0f}" for value in figures["folds"].values())
        rows.append(f"| {label} | {100 * figures['upright_kept']:.1f} % | {100 * figures['tilts_found']:.1f} % | "
                    f"{100 * figures['within_5deg']:.1f} % | {spread} |")
    config = summary["config"]
    residuals = ", ".join(f"{r:g}" for r in summary["residuals_deg"])
    return "\n".join(rows) + (
        f"\n\n{summary['n_images']} photos, each on the validation side of the fold whose network read it, tilted by "
        f"{residuals} deg; a reading within 5 deg of the tilt applied counts. C{config['group_order']} network at "
        f"{config['input_size']} px, {config['steps']} steps ({summary['train_s']:.0f} s per fold), "
        f"{summary['network_ms']:.1f} ms per photo; the edge stage {summary['edges_ms']:.1f} ms")
