"""An equivariant linear probe: a cheap canonicalizer from the frozen trunk of a trained one.

The trunk of a trained canonicalizer (run at any input size, e.g. 64 px for a quarter of the cost) stays frozen, and
an :class:`EquivariantProbe`, a linear score on its pooled block outputs, is fitted to the canonicalization prior on
the features of many crops, computed once (:func:`fit_probe`). The result is a :class:`ProbeCanonicalizer`, saved
and loaded like any canonicalizer folder, with a ``probe`` section in its ``config.json``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..canonicalizer import Canonicalizer, DecisionPolicy, NetworkSpec, Preprocessing, _spec, prior_loss
from ..data import split_files
from ..images import load_image
from ..networks import FLOAT32, Arithmetic, ServingWRN, _resize_buffers, stage_ends
from ..tilt import TiltEstimator
from ..train import TrainConfig, augment, shrink, validation_accuracy


@dataclass(frozen=True)
class ProbeSpec:
    """The probe's blocks (indices into the trunk's blocks, whose outputs are pooled) and its pooling grid."""

    levels: tuple[int, ...] = ()
    grid: int = 3

    def __post_init__(self):
        object.__setattr__(self, "levels", tuple(self.levels))  # a JSON list as read from config.json
        if not self.levels:
            raise ValueError("a probe needs at least one level (a block index)")
        if self.grid < 1:
            raise ValueError(f"probe grid must be at least 1, got {self.grid}")


class EquivariantProbe(nn.Module):
    """A linear score on pooled block outputs of the trunk, evaluated once per rotation: exactly C_n-equivariant.

    Each tapped block output ``B x (F n) x H x W`` (``F`` regular fields of ``n`` components) is pooled into its mean
    over the whole map and over each cell of a ``grid x grid`` partition (adaptive average pooling; its cells are
    symmetric under ``rot90``): :meth:`pooled` gives ``B x F x n x (1 + grid^2)`` per level. A quarter turn of the
    input turns the maps and shifts every field's components by one, so the pooled features of ``rot90(x, k)`` are
    ``turn(p, k)``: components rolled by ``k``, grid cells turned by ``k`` (:meth:`turn`). The score of rotation
    ``g`` is how upright ``rot90(x, -g)`` looks, ``weight . turn(p, -g)`` (a bias would be common to all ``n`` and
    change no decision); so scores roll with the input, ``score(rot90(x, k)) = roll(score(x), k)``, like the head's
    activations.

    ``weight`` (``D``, over the flattened levels) is fitted by :func:`canon.train.fit_probe` with the trunk frozen;
    it is empty until loaded or fitted.
    """

    def __init__(self, levels: tuple[int, ...], fields: tuple[int, ...], grid: int = 3, group_order: int = 4):
        super().__init__()
        if grid < 1:
            raise ValueError(f"probe grid must be at least 1, got {grid}")
        self.levels, self.fields, self.grid, self.group_order = levels, fields, grid, group_order
        self.register_buffer("weight", torch.zeros(0))

    @property
    def num_features(self) -> int:
        return sum(self.fields) * self.group_order * (1 + self.grid ** 2)

    def pooled(self, tapped: list[torch.Tensor]) -> list[torch.Tensor]:
        """Tapped ``B x (F n) x H x W`` maps -> their means ``B x F x n x (1 + grid^2)`` (float32): over the whole
        map first, then over the grid cells in row-major order."""
        out = []
        for h, fields in zip(tapped, self.fields):
            h = h.float()
            means = torch.cat([F.adaptive_avg_pool2d(h, 1).flatten(2), F.adaptive_avg_pool2d(h, self.grid).flatten(2)],
                              dim=2)
            out.append(means.reshape(len(h), fields, self.group_order, -1))
        return out

    def turn(self, pooled: list[torch.Tensor], k: int) -> torch.Tensor:
        """Pooled features of ``x`` -> the flattened ``B x D`` features of ``rot90(x, k)`` (an exact permutation)."""
        flat = []
        for p in pooled:
            p = p.roll(k, dims=2)
            cells = torch.rot90(p[..., 1:].unflatten(-1, (self.grid, self.grid)), k, dims=(-2, -1)).flatten(-2)
            flat.append(torch.cat([p[..., :1], cells], dim=-1).flatten(1))
        return torch.cat(flat, dim=1)

    def orbit(self, tapped: list[torch.Tensor]) -> torch.Tensor:
        """``B x n x D``: row ``g`` holds the features of ``rot90(x, -g)``, the photo with rotation ``g`` undone."""
        pooled = self.pooled(tapped)
        return torch.stack([self.turn(pooled, -g) for g in range(self.group_order)], dim=1)

    def forward(self, tapped: list[torch.Tensor]) -> torch.Tensor:
        """Tapped block outputs (see :meth:`ServingWRN.trunk`) -> ``B x n`` float32 scores."""
        if self.weight.numel() != self.num_features:
            raise ValueError(f"the probe has {self.weight.numel()} weights for {self.num_features} features; "
                             "fit it (canon.train.fit_probe) or load a checkpoint")
        return self.orbit(tapped) @ self.weight

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        _resize_buffers(self, state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class ProbedWRN(ServingWRN):
    """The serving network whose activations come from an :class:`EquivariantProbe` on its trunk instead of its
    head (whose parameters stay in the state dict, under the same keys as the base's, beside ``probe.weight``)."""

    def __init__(self, kernel_size: int, out_channels: int, num_layers: int, group_order: int, probe: ProbeSpec):
        super().__init__(kernel_size, out_channels, num_layers, group_order)
        blocks = len(self.plan.blocks)
        if not all(0 <= i < blocks for i in probe.levels):
            raise ValueError(f"probe levels are block indices in 0..{blocks - 1}, got {list(probe.levels)}")
        fields = tuple(self.plan.blocks[i].out_fields for i in probe.levels)
        self.probe = EquivariantProbe(probe.levels, fields, probe.grid, group_order)

    def forward(self, x: torch.Tensor, arithmetic: Arithmetic = FLOAT32) -> torch.Tensor:
        _, tapped = self.trunk(x, arithmetic, self.probe.levels)
        return self.probe(tapped)


class ProbeCanonicalizer(Canonicalizer):
    """A :class:`Canonicalizer` whose network is a :class:`ProbedWRN`; ``probe`` is a :class:`ProbeSpec` (or its
    fields, as in ``config.json``). Everything else (preprocessing, policy, orbit trick, cache) is the base class's."""

    def __init__(self, network: NetworkSpec | Mapping = NetworkSpec(),
                 preprocessing: Preprocessing | Mapping = Preprocessing(),
                 policy: DecisionPolicy | Mapping = DecisionPolicy(), probe: ProbeSpec | Mapping = ProbeSpec((0,)),
                 cache_size: int = 64, tilt: TiltEstimator | Mapping | None = None):
        super().__init__(network, preprocessing, policy, cache_size, tilt)
        self.probe_spec: ProbeSpec = _spec(ProbeSpec, probe)
        self.network = ProbedWRN(**asdict(self.network_spec), group_order=self.network.group_order,
                                 probe=self.probe_spec)
        self.eval()

    @property
    def config(self) -> dict:
        return {**super().config, "probe": asdict(self.probe_spec)}


@dataclass(frozen=True)
class ProbeConfig:
    crops_per_photo: int = 16
    levels: tuple[int, ...] | None = None  # blocks whose outputs are pooled; None: the ends of the base's stages
    grid: int = 3
    # L2-regularised logistic regression on standardised features, fitted by L-BFGS (convex: no schedule to tune);
    # the regularisation is chosen among these by a grouped cross-validation inside the training photos.
    penalties: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)
    inner_folds: int = 4
    max_iterations: int = 200
    fold: int = 0
    folds: int = 5
    train_fraction: float = 1.0  # share of the training groups kept (split_files)
    seed: int = 0
    crop: TrainConfig = field(default_factory=TrainConfig)  # crop scales and colour jitter of the views


@torch.inference_mode()
def probe_features(canonicalizer: Canonicalizer, views: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
    """``V x 3 x S x S`` views -> ``V x n x D`` probe features of each view with each rotation undone
    (:meth:`EquivariantProbe.orbit`), the trunk in the canonicalizer's first-pass arithmetic."""
    network = canonicalizer.network
    arithmetic = canonicalizer.arithmetic
    out = []
    for start in range(0, len(views), batch_size):
        _, tapped = network.trunk(views[start:start + batch_size].to(canonicalizer.device), arithmetic,
                                  network.probe.levels)
        out.append(network.probe.orbit(tapped).cpu())
    return torch.cat(out)


def fit_probe_weight(features: torch.Tensor, penalty: float, max_iterations: int = 200) -> torch.Tensor:
    """``V x n x D`` features (row ``g``: the view with rotation ``g`` undone) -> the ``D`` weights minimising
    ``CrossEntropy(features @ w, identity) + penalty * |w * std|^2``, i.e. an L2 penalty on standardised features
    (mean and spread over every view and rotation, so standardising commutes with turning). The mean drops out:
    a shift common to the ``n`` scores changes no probability."""
    std = features.std(dim=(0, 1)).clamp_min(1e-6)
    standardised = (features - features.mean(dim=(0, 1))) / std
    weight = torch.zeros(features.shape[-1], requires_grad=True)
    optimizer = torch.optim.LBFGS([weight], max_iter=max_iterations, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = prior_loss(standardised @ weight) + penalty * (weight * weight).sum()
        loss.backward()
        return loss
    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach() / std


def _upright_scores(features: list[torch.Tensor], weight: torch.Tensor) -> tuple[int, float]:
    """Photos whose first view (the whole photo) scores the identity highest, and the summed cross-entropy
    towards the identity of those views."""
    logits = torch.stack([f[0] @ weight for f in features])
    return int(logits.argmax(dim=1).eq(0).sum()), float(prior_loss(logits)) * len(features)


def choose_penalty(files: list[Path], features: list[torch.Tensor], config: ProbeConfig) -> tuple[float, dict]:
    """The penalty of ``config.penalties`` with the most photos recovered over a grouped cross-validation of
    ``files`` (:func:`split_files` with ``config.inner_folds``, salted so that it does not nest in the outer split;
    ``features[i]`` are ``files[i]``'s views), ties broken by the lower cross-entropy of those photos. Returns it and,
    per penalty, the inner fraction recovered and mean cross-entropy (of the photos validated)."""
    index = {f: i for i, f in enumerate(files)}
    splits = [split_files(files, fold, config.inner_folds, salt="inner/") for fold in range(config.inner_folds)]
    splits = [(train, validation) for train, validation in splits if train and validation]
    validated = sum(len(validation) for _, validation in splits)
    if not validated:
        raise ValueError("too few photo groups to choose the probe's penalty; give more photos")
    scores = {}
    for penalty in config.penalties:
        recovered, loss = 0, 0.0
        for inner_train, inner_validation in splits:
            weight = fit_probe_weight(torch.cat([features[index[f]] for f in inner_train]), penalty,
                                      config.max_iterations)
            fold_recovered, fold_loss = _upright_scores([features[index[f]] for f in inner_validation], weight)
            recovered, loss = recovered + fold_recovered, loss + fold_loss
        scores[penalty] = {"accuracy": recovered / validated, "cross_entropy": loss / validated}
    best = max(scores, key=lambda p: (scores[p]["accuracy"], -scores[p]["cross_entropy"]))
    return best, scores


def fit_probe(files: list[Path], out_dir: str | Path, base: str = "wrn-c4-paper", input_size: int = 64,
              config: ProbeConfig | None = None, progress: bool = True) -> dict:
    """Fit an :class:`EquivariantProbe` on the frozen trunk of ``base`` (a model name or folder),
    run at ``input_size``, to the canonicalization prior on the training side of :func:`split_files`: for each
    training photo the whole photo and ``crops_per_photo`` random views (crops, flips, colour jitter), scored at
    every rotation (:func:`fit_probe_weight`, penalty from :func:`choose_penalty`). Saves the canonicalizer (the
    base's trunk and settings, the probe) to ``out_dir`` with ``training.json``; returns what that file holds.

    The features are the base's first pass on this machine (for ``wrn-c4-paper``: int8 on a CPU with VNNI,
    else bfloat16 or float32), so the fitted weights depend on it slightly; the base's ``recheck_margin`` and
    ``mirror_margin`` are kept. ``training_accuracy`` (like the inner cross-validation) is the first pass's
    argmax on the whole photos; ``validation_accuracy`` is the canonicalizer's decision as served.
    """
    config = config or ProbeConfig()
    base_model = Canonicalizer.load(base)
    levels = config.levels if config.levels is not None else stage_ends(base_model.network.plan)
    settings = {**base_model.config, "preprocessing": replace(base_model.preprocessing, input_size=input_size)}
    canonicalizer = ProbeCanonicalizer(**settings, probe=ProbeSpec(tuple(levels), config.grid)).eval()
    # Strict: every trunk tensor comes from the base; the probe's weight, fitted below, starts empty.
    canonicalizer.network.load_state_dict({**base_model.network.state_dict(), "probe.weight": torch.zeros(0)},
                                          strict=True)
    rng = np.random.default_rng(config.seed)
    train_files, validation_files = split_files(files, config.fold, config.folds, train_fraction=config.train_fraction)
    if not train_files:
        raise ValueError("the split left no training photo; give more photos")
    preprocessing = canonicalizer.preprocessing
    features = []
    for f in tqdm(train_files, desc="probe features", unit="photo", disable=not progress):
        image = load_image(f)
        small = shrink(image)
        views = [preprocessing(image)[0]]
        views += [augment(small, rng, config.crop, preprocessing) for _ in range(config.crops_per_photo)]
        features.append(probe_features(canonicalizer, torch.stack(views)))
    penalty, inner = choose_penalty(train_files, features, config)
    weight = fit_probe_weight(torch.cat(features), penalty, config.max_iterations)
    canonicalizer.network.probe.load_state_dict({"weight": weight})
    canonicalizer.eval()
    validation_photos = [load_image(f) for f in validation_files]
    result = {"base": base, "input_size": input_size, "levels": list(levels), "grid": config.grid,
              "fold": config.fold, "folds": config.folds, "train_fraction": config.train_fraction,
              "training_photos": len(train_files),
              "views": sum(len(f) for f in features), "penalty": penalty,
              "inner_validation": {str(k): v for k, v in inner.items()},
              "training_accuracy": _upright_scores(features, weight)[0] / len(features),
              "validation_photos": len(validation_photos),
              "validation_accuracy": validation_accuracy(canonicalizer, validation_photos)}
    out_dir = Path(out_dir)
    canonicalizer.save_pretrained(out_dir)
    (out_dir / "training.json").write_text(json.dumps(result, indent=2) + "\n")
    if progress:
        inner_accuracy = ", ".join(f"{p}: {100 * v['accuracy']:.1f} %" for p, v in inner.items())
        print(f"probe: penalty {penalty} (inner validation {inner_accuracy}), validation "
              f"{100 * result['validation_accuracy']:.1f} % of {len(validation_photos)} photos")
    return result
