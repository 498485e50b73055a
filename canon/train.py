"""Training the canonicalizer with the canonicalization prior, on a folder of upright photos.

Recipe (Mondal et al., NeurIPS 2023, and equiadapt 0.1.2's defaults): the loss is ``CrossEntropy(c(x), identity)``
on upright photos (:func:`canon.canonicalizer.prior_loss`); SGD with momentum 0.9, weight decay 5e-4, learning rate
1e-3; horizontal flips. No rotation augmentation: the network is C4-equivariant, so a rotated photo teaches nothing an
upright one does not. Added here because the photo set is small: random crops over a range of scales and aspect
ratios, and colour jitter. Every crop goes through the same preprocessing as inference.

Validation never sees a training photo: :func:`split_files` assigns whole groups of files (names that differ only
by trailing digits, such as ``fishes_fish1`` and ``fishes_fish2``, form one group) by a hash of the group name, so the
split is fixed, independent of the order on disk, and keeps near-duplicate series on one side. The hash also cuts
the photos into folds (5 by default; fold 0 is the fixed split), so that a recipe can be judged on every photo once.

Options for fine-tuning (``--init paper``): frozen batch-norm statistics, bfloat16 autocast, and distillation from a
teacher canonicalizer that scores the same crop at its own input size (:func:`matched_views`,
:func:`distillation_loss`), e.g. the paper's network at 128 px teaching the same network at 64 px.

:func:`fit_probe` is the cheap alternative to training a network: the trunk of a trained canonicalizer stays frozen
(run at any input size), and an :class:`~canon.networks.EquivariantProbe`, a linear score on its pooled block
outputs, is fitted to the same prior on the features of many crops, computed once.

Checkpoints are :class:`Canonicalizer` folders (``config.json`` + ``model.safetensors``) with the optimizer state in
``optimizer.safetensors`` and the epoch in ``training.json``; ``--resume`` continues from the latest one.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from .canonicalizer import Canonicalizer, paper_preprocess, prior_loss, trunk_arithmetic
from .images import load_image
from .models import resolve_canonicalizer_dir
from .networks import EscnnWRN, ServingWRN, load_escnn_from_serving, stage_ends

ARCHITECTURES = {
    # The paper's network (equiadapt's ESCNNWRNEquivariantNetwork for SAM).
    "wrn-c4-paper": dict(kernel_size=5, out_channels=64, num_layers=12),
    # Narrower and shallower: about 1/16 of the multiply-adds at the same input size.
    "wrn-c4-small": dict(kernel_size=5, out_channels=16, num_layers=6),
}
TRAIN_PHOTO_SIDE = 512  # photos are kept in memory at this longest side; crops are taken from them


def split_group(path: Path) -> str:
    """Files whose names differ only by trailing digits belong to one group (one side of the split)."""
    return re.sub(r"\d+$", "", path.stem)


def _group_position(path: Path, salt: str) -> float:
    """The hash of ``salt`` and the file's group, read as a number in [0, 1) (53 bits: exact in a float, never 1)."""
    digest = hashlib.sha256((salt + split_group(path)).encode()).digest()
    return (int.from_bytes(digest[:8], "big") >> 11) / 2**53


def split_files(files: list[Path], fold: int = 0, folds: int = 5, salt: str = "",
                train_fraction: float = 1.0) -> tuple[list[Path], list[Path]]:
    """Fixed file-level split into ``(train, validation)``: the hash of a file's group, read as a number in [0, 1),
    falls into one of ``folds`` equal intervals, and the group is validation for that fold and training for the
    others. Fold 0 of 5 is the default split; the 5 folds together put every photo in validation once. A ``salt``
    (hashed before the group) gives another split, independent of the unsalted one: for folds inside a fold.

    ``train_fraction`` keeps about that share of the training groups, chosen by a third hash, so that a smaller
    fraction's photos are a subset of a larger one's and validation does not change: for learning curves."""
    if not 0 <= fold < folds:
        raise ValueError(f"fold must be in 0..{folds - 1}, got {fold}")
    if not 0 < train_fraction <= 1:
        raise ValueError(f"the training fraction must be in (0, 1], got {train_fraction}")
    train, validation = [], []
    for f in files:
        if int(_group_position(f, salt) * folds) == fold:
            validation.append(f)
        elif _group_position(f, salt + "fraction/") < train_fraction:
            train.append(f)
    return train, validation


@dataclass
class TrainConfig:
    epochs: int = 10
    crops_per_photo: int = 4
    batch_size: int = 8
    learning_rate: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    min_crop_scale: float = 0.35
    colour_jitter: float = 0.2
    seed: int = 0
    # Batch norm keeps the statistics it starts with (the paper's, when fine-tuning): batches of 8 views would
    # otherwise replace them (escnn's momentum 0.9 gives the last batch 90 % weight) with noise.
    freeze_batch_norm: bool = False
    bfloat16: bool = False  # forward and backward in bfloat16 (autocast; weights stay float32): ~1.9x on AVX512-BF16
    fold: int = 0
    folds: int = 5
    train_fraction: float = 1.0  # share of the training groups kept (split_files)
    # Distillation: a teacher canonicalizer (a model name or folder) scores the same crop at its own input size, and
    # the loss becomes (1 - w) * prior + w * T^2 * KL(teacher || student) at temperature T (Hinton et al., 2015).
    teacher: str | None = None
    distill_weight: float = 0.5
    temperature: float = 2.0


def _shrink(image: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    scale = TRAIN_PHOTO_SIDE / max(height, width)
    if scale >= 1:
        return image
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    x = torch.nn.functional.interpolate(x, size=(round(height * scale), round(width * scale)), mode="bilinear",
                                        antialias=True, align_corners=False)
    return x[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy()


def augment(image: np.ndarray, rng: np.random.Generator, config: TrainConfig, preprocess: dict) -> torch.Tensor:
    """One training view of an upright ``H x W x 3`` uint8 photo: ``3 x S x S`` float tensor in [0, 1]."""
    height, width = image.shape[:2]
    area = rng.uniform(config.min_crop_scale, 1.0) * height * width
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    crop_h = int(min(height, max(16, round(np.sqrt(area / aspect)))))
    crop_w = int(min(width, max(16, round(np.sqrt(area * aspect)))))
    top, left = rng.integers(0, height - crop_h + 1), rng.integers(0, width - crop_w + 1)
    crop = image[top:top + crop_h, left:left + crop_w]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    x = paper_preprocess(np.ascontiguousarray(crop), **preprocess)[0]
    jitter = config.colour_jitter
    brightness, contrast, saturation = rng.uniform(1 - jitter, 1 + jitter, size=3)
    grey = x.mean(dim=0, keepdim=True)
    x = grey + (x - grey) * saturation
    x = (x - x.mean()) * contrast + x.mean()
    return (x * brightness).clamp(0, 1)


def matched_views(image: np.ndarray, rng: np.random.Generator, config: TrainConfig,
                  preprocesses: list[dict]) -> list[torch.Tensor]:
    """One random crop (flip, colour jitter) of ``image`` rendered once per preprocessing (e.g. the student's 64 px
    and the teacher's 128 px): the same draws of ``rng`` for each, which then stands advanced by one view."""
    state = rng.bit_generator.state
    views = []
    for preprocess in preprocesses:
        rng.bit_generator.state = state
        views.append(augment(image, rng, config, preprocess))
    return views


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over the batch (``B x n`` logits)."""
    return F.kl_div(F.log_softmax(student_logits / temperature, dim=1), F.log_softmax(teacher_logits / temperature,
                    dim=1), reduction="batchmean", log_target=True) * temperature ** 2


def validation_accuracy(canonicalizer: Canonicalizer, photos: list[np.ndarray]) -> float:
    """Fraction of upright photos for which the identity is chosen (by equivariance, the accuracy at every C4
    rotation)."""
    if not photos:
        return float("nan")
    return float(np.mean([canonicalizer.canonicalize(p).k == 0 for p in photos]))


def _save_checkpoint(folder: Path, canonicalizer: Canonicalizer, optimizer: torch.optim.Optimizer, epoch: int,
                     canonicalizer_config: dict, history: list[dict]) -> None:
    canonicalizer.save_pretrained(folder, config=canonicalizer_config)
    buffers = {f"{index}.momentum_buffer": s["momentum_buffer"].contiguous()
               for index, s in optimizer.state_dict()["state"].items() if s.get("momentum_buffer") is not None}
    save_file(buffers, folder / "optimizer.safetensors")
    (folder / "training.json").write_text(json.dumps({"epoch": epoch, "history": history}, indent=2) + "\n")


def to_canonicalizer(model: EscnnWRN, canonicalizer_config: dict) -> Canonicalizer:
    """The serving form of an escnn network being trained (a copy; the escnn model keeps training)."""
    was_training = model.training
    canonicalizer = Canonicalizer(**canonicalizer_config)
    canonicalizer.network.load_state_dict(canonicalizer.network.state_from_escnn(model.eval().state_dict()))
    model.train(was_training)
    return canonicalizer.eval()


def latest_checkpoint(out_dir: Path) -> Path | None:
    checkpoints = sorted(out_dir.glob("epoch-*"), key=lambda p: int(p.name.split("-")[1]))
    return checkpoints[-1] if checkpoints else None


def train(files: list[Path], out_dir: str | Path, arch: str = "wrn-c4-small", init: str = "scratch",
          config: TrainConfig | None = None, resume: bool = False, progress: bool = True,
          input_size: int = 128) -> list[dict]:
    """Train on the training side of :func:`split_files`, validate on the other each epoch, save each epoch.

    ``init``: ``scratch`` (escnn's initialisation) or ``paper`` (start from ``wrn-c4-paper``'s weights; needs
    ``arch == "wrn-c4-paper"``). ``input_size``: the network's input side (the paper's 128; a smaller one costs
    its square less and is saved in the checkpoint's config). Returns the per-epoch history
    ``[{"epoch", "loss", "validation_accuracy"}]``.
    """
    config = config or TrainConfig()
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    if init not in ("scratch", "paper"):
        raise ValueError("--init takes scratch or paper")
    if init == "paper" and arch != "wrn-c4-paper":
        raise ValueError("--init paper needs --arch wrn-c4-paper (the weights have that shape)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    network_config = dict(ARCHITECTURES[arch], group_order=4)
    canonicalizer_config = dict(architecture="wrn", **network_config, canvas_size=1024, crop_ratio=0.9,
                                input_size=input_size)
    model = EscnnWRN(**network_config)
    if init == "paper":
        load_escnn_from_serving(model, Canonicalizer.load("wrn-c4-paper").network)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.learning_rate, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    history, first_epoch = [], 1
    checkpoint = latest_checkpoint(out_dir) if resume else None
    if checkpoint is not None:
        serving = ServingWRN(**network_config)
        serving.load_state_dict(Canonicalizer.load(str(checkpoint)).network.state_dict())
        load_escnn_from_serving(model, serving)
        buffers = load_file(checkpoint / "optimizer.safetensors")
        parameters = list(model.parameters())
        for key, value in buffers.items():
            optimizer.state[parameters[int(key.split(".")[0])]]["momentum_buffer"] = value
        saved = json.loads((checkpoint / "training.json").read_text())
        history, first_epoch = saved["history"], saved["epoch"] + 1
        rng = np.random.default_rng([config.seed, first_epoch])

    train_files, validation_files = split_files(files, config.fold, config.folds, train_fraction=config.train_fraction)
    if not train_files:
        raise ValueError("the split left no training photo; give more photos")
    train_photos = [_shrink(load_image(f)) for f in train_files]
    validation_photos = [load_image(f) for f in validation_files]
    preprocess = {k: canonicalizer_config[k] for k in ("canvas_size", "crop_ratio", "input_size")}
    preprocesses = [preprocess]
    teacher = None
    if config.teacher is not None:
        teacher = Canonicalizer.load(config.teacher)
        teacher.precision = "bfloat16" if config.bfloat16 else "float32"
        preprocesses.append(teacher.preprocess_config)
    for epoch in range(first_epoch, config.epochs + 1):
        model.train()
        if config.freeze_batch_norm:
            for module in model.modules():
                if type(module).__name__ == "InnerBatchNorm":
                    module.eval()
        order = np.repeat(np.arange(len(train_photos)), config.crops_per_photo)
        rng.shuffle(order)
        losses = []
        batches = range(0, len(order), config.batch_size)
        for start in tqdm(batches, desc=f"epoch {epoch}/{config.epochs}", unit="batch", disable=not progress):
            batch = [matched_views(train_photos[i], rng, config, preprocesses)
                     for i in order[start:start + config.batch_size]]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bfloat16):
                logits = model(torch.stack([views[0] for views in batch])).float()
            loss = prior_loss(logits)
            if teacher is not None:
                with torch.no_grad():
                    targets = teacher.network(torch.stack([views[1] for views in batch]),
                                              teacher.compute_dtype)
                loss = ((1 - config.distill_weight) * loss
                        + config.distill_weight * distillation_loss(logits, targets, config.temperature))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        canonicalizer = to_canonicalizer(model, canonicalizer_config)
        history.append({"epoch": epoch, "loss": float(np.mean(losses)),
                        "validation_accuracy": validation_accuracy(canonicalizer, validation_photos)})
        _save_checkpoint(out_dir / f"epoch-{epoch}", canonicalizer, optimizer, epoch, canonicalizer_config, history)
        if progress:
            last = history[-1]
            print(f"epoch {epoch}: loss {last['loss']:.4f}, validation {100 * last['validation_accuracy']:.1f} % "
                  f"of {len(validation_photos)} photos")
    return history


@dataclass
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
    (:meth:`~canon.networks.EquivariantProbe.orbit`), the trunk in the canonicalizer's first-pass arithmetic."""
    network = canonicalizer.network
    dtype, int8 = trunk_arithmetic(canonicalizer.precision, canonicalizer.device)
    out = []
    for start in range(0, len(views), batch_size):
        _, tapped = network.trunk(views[start:start + batch_size].to(canonicalizer.device), dtype, int8,
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
    """Fit an :class:`~canon.networks.EquivariantProbe` on the frozen trunk of ``base`` (a model name or folder),
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
    folder = resolve_canonicalizer_dir(base)
    base_model = Canonicalizer.load(str(folder))
    levels = config.levels if config.levels is not None else stage_ends(base_model.network.plan)
    canonicalizer_config = {**json.loads((folder / "config.json").read_text()),
                            "input_size": input_size, "probe_levels": list(levels), "probe_grid": config.grid}
    canonicalizer = Canonicalizer(**canonicalizer_config).eval()
    trunk = {k: v for k, v in base_model.network.state_dict().items() if not k.startswith("probe.")}
    # Strict: every trunk tensor comes from the base; the probe's weight, fitted below, starts empty.
    canonicalizer.network.load_state_dict({**trunk, "probe.weight": torch.zeros(0)}, strict=True)
    rng = np.random.default_rng(config.seed)
    train_files, validation_files = split_files(files, config.fold, config.folds, train_fraction=config.train_fraction)
    if not train_files:
        raise ValueError("the split left no training photo; give more photos")
    preprocess = canonicalizer.preprocess_config
    features = []
    for f in tqdm(train_files, desc="probe features", unit="photo", disable=not progress):
        image = load_image(f)
        small = _shrink(image)
        views = [paper_preprocess(image, **preprocess)[0]]
        views += [augment(small, rng, config.crop, preprocess) for _ in range(config.crops_per_photo)]
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
    canonicalizer.save_pretrained(out_dir, config=canonicalizer_config)
    (out_dir / "training.json").write_text(json.dumps(result, indent=2) + "\n")
    if progress:
        inner_accuracy = ", ".join(f"{p}: {100 * v['accuracy']:.1f} %" for p, v in inner.items())
        print(f"probe: penalty {penalty} (inner validation {inner_accuracy}), validation "
              f"{100 * result['validation_accuracy']:.1f} % of {len(validation_photos)} photos")
    return result
