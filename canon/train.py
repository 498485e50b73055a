"""Training the canonicalizer with the canonicalization prior, on upright photos.

Recipe (Mondal et al., NeurIPS 2023, and equiadapt 0.1.2's defaults): the loss is ``CrossEntropy(c(x), identity)``
on upright photos (:func:`canon.canonicalizer.prior_loss`); SGD with momentum 0.9, weight decay 5e-4, learning rate
1e-3; horizontal flips. No rotation augmentation: the network is C4-equivariant, so a rotated photo teaches nothing an
upright one does not. Added here because the photo set is small: random crops over a range of scales and aspect
ratios, and colour jitter. Every crop goes through the same preprocessing as inference. The training and validation
photos come from :func:`canon.data.split_files`, which never puts one group of photos on both sides.

Options for fine-tuning (``--init paper``): frozen batch-norm statistics and bfloat16 autocast. An
:class:`Objective` adds a term to the prior (the research package's distillation is one).

Checkpoints are :class:`Canonicalizer` folders (``config.json`` + ``model.safetensors``) with the optimizer state in
``optimizer.safetensors`` and the epoch in ``training.json``; ``--resume`` continues from the latest one, and
refuses one whose network or input size differs from what is asked.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from .canonicalizer import Canonicalizer, NetworkSpec, Preprocessing, prior_loss
from .images import load_image
from .networks import EscnnWRN, load_escnn_from_serving

ARCHITECTURES = {
    # The paper's network (equiadapt's ESCNNWRNEquivariantNetwork for SAM).
    "wrn-c4-paper": NetworkSpec(),
    # Narrower and shallower: about 1/16 of the multiply-adds at the same input size.
    "wrn-c4-small": NetworkSpec(out_channels=16, num_layers=6),
}
TRAIN_PHOTO_SIDE = 512  # photos are kept in memory at this longest side; crops are taken from them


@dataclass(frozen=True)
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


class Objective(Protocol):
    """A term added to the prior. ``preprocessings``: further renderings of each training crop it needs (the same
    random crop, flip and jitter, see :func:`views`); ``loss(prior, logits, extra)`` combines the prior's loss, the
    student's ``B x 4`` logits and those renderings (one ``B x 3 x S x S`` batch per preprocessing) into the loss."""

    preprocessings: tuple[Preprocessing, ...]

    def loss(self, prior: torch.Tensor, logits: torch.Tensor, extra: list[torch.Tensor]) -> torch.Tensor: ...


def shrink(image: np.ndarray) -> np.ndarray:
    """An ``H x W x 3`` uint8 photo with its longest side at most :data:`TRAIN_PHOTO_SIDE` (crops come from it)."""
    height, width = image.shape[:2]
    scale = TRAIN_PHOTO_SIDE / max(height, width)
    if scale >= 1:
        return image
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    x = torch.nn.functional.interpolate(x, size=(round(height * scale), round(width * scale)), mode="bilinear",
                                        antialias=True, align_corners=False)
    return x[0].permute(1, 2, 0).round().clamp(0, 255).byte().numpy()


def augment(image: np.ndarray, rng: np.random.Generator, config: TrainConfig,
            preprocessing: Preprocessing) -> torch.Tensor:
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
    x = preprocessing(np.ascontiguousarray(crop))[0]
    jitter = config.colour_jitter
    brightness, contrast, saturation = rng.uniform(1 - jitter, 1 + jitter, size=3)
    grey = x.mean(dim=0, keepdim=True)
    x = grey + (x - grey) * saturation
    x = (x - x.mean()) * contrast + x.mean()
    return (x * brightness).clamp(0, 1)


def views(image: np.ndarray, rng: np.random.Generator, config: TrainConfig,
          preprocessings: list[Preprocessing]) -> list[torch.Tensor]:
    """One random crop (flip, colour jitter) of ``image`` rendered once per preprocessing (e.g. the student's 64 px
    and a teacher's 128 px): the same draws of ``rng`` for each, which then stands advanced by one view."""
    state = rng.bit_generator.state
    out = []
    for preprocessing in preprocessings:
        rng.bit_generator.state = state
        out.append(augment(image, rng, config, preprocessing))
    return out


def validation_accuracy(canonicalizer: Canonicalizer, photos: list[np.ndarray]) -> float:
    """Fraction of upright photos for which the identity is chosen (by equivariance, the accuracy at every C4
    rotation)."""
    if not photos:
        return float("nan")
    return float(np.mean([canonicalizer.canonicalize(p).k == 0 for p in photos]))


def _save_checkpoint(folder: Path, canonicalizer: Canonicalizer, optimizer: torch.optim.Optimizer, epoch: int,
                     history: list[dict]) -> None:
    canonicalizer.save_pretrained(folder)
    buffers = {f"{index}.momentum_buffer": s["momentum_buffer"].contiguous()
               for index, s in optimizer.state_dict()["state"].items() if s.get("momentum_buffer") is not None}
    save_file(buffers, folder / "optimizer.safetensors")
    (folder / "training.json").write_text(json.dumps({"epoch": epoch, "history": history}, indent=2) + "\n")


def to_canonicalizer(model: EscnnWRN, template: Canonicalizer) -> Canonicalizer:
    """The serving form of an escnn network being trained, with ``template``'s settings (a copy; the escnn model
    keeps training)."""
    was_training = model.training
    canonicalizer = Canonicalizer(**template.config)
    canonicalizer.network.load_state_dict(canonicalizer.network.state_from_escnn(model.eval().state_dict()))
    model.train(was_training)
    return canonicalizer.eval()


def latest_checkpoint(out_dir: Path) -> Path | None:
    checkpoints = sorted(out_dir.glob("epoch-*"), key=lambda p: int(p.name.split("-")[1]))
    return checkpoints[-1] if checkpoints else None


def _resumable(checkpoint: Path, template: Canonicalizer) -> Canonicalizer:
    """The checkpoint to resume from, refused (ValueError, one sentence) if its network or preprocessing is not the
    one asked for: resuming it would silently train another model than the arguments say."""
    saved = Canonicalizer.load(str(checkpoint))
    for what, mine, theirs in (("network", template.network_spec, saved.network_spec),
                               ("preprocessing", template.preprocessing, saved.preprocessing)):
        if mine != theirs:
            differ = ", ".join(f"{k} {getattr(theirs, k)} (asked: {getattr(mine, k)})"
                               for k in mine.__dataclass_fields__ if getattr(mine, k) != getattr(theirs, k))
            raise ValueError(f"cannot resume from {checkpoint}: its {what} differs ({differ}); give the same "
                             f"--arch and --input-size, or another --out")
    return saved


def train(train_files: list[Path], validation_files: list[Path], out_dir: str | Path, arch: str = "wrn-c4-small",
          init: str = "scratch", config: TrainConfig | None = None, resume: bool = False, progress: bool = True,
          input_size: int = 128, objective: Objective | None = None) -> list[dict]:
    """Train on ``train_files`` (upright photos), validate on ``validation_files`` each epoch, save each epoch.

    ``init``: ``scratch`` (escnn's initialisation) or ``paper`` (start from ``wrn-c4-paper``'s weights; needs
    ``arch == "wrn-c4-paper"``). ``input_size``: the network's input side (the paper's 128; a smaller one costs
    its square less and is saved in the checkpoint's config). ``objective``: a term added to the prior. Returns the
    per-epoch history ``[{"epoch", "loss", "validation_accuracy"}]``.
    """
    config = config or TrainConfig()
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    if init not in ("scratch", "paper"):
        raise ValueError("--init takes scratch or paper")
    if init == "paper" and arch != "wrn-c4-paper":
        raise ValueError("--init paper needs --arch wrn-c4-paper (the weights have that shape)")
    if not train_files:
        raise ValueError("the split left no training photo; give more photos")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    template = Canonicalizer(network=ARCHITECTURES[arch], preprocessing=Preprocessing(input_size=input_size))
    checkpoint = latest_checkpoint(out_dir) if resume else None
    resumed = _resumable(checkpoint, template) if checkpoint is not None else None
    model = EscnnWRN(**asdict(template.network_spec))
    history, first_epoch = [], 1
    if resumed is not None:
        load_escnn_from_serving(model, resumed.network)
    elif init == "paper":
        load_escnn_from_serving(model, Canonicalizer.load("wrn-c4-paper").network)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.learning_rate, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    if checkpoint is not None:
        buffers = load_file(checkpoint / "optimizer.safetensors")
        parameters = list(model.parameters())
        for key, value in buffers.items():
            optimizer.state[parameters[int(key.split(".")[0])]]["momentum_buffer"] = value
        saved = json.loads((checkpoint / "training.json").read_text())
        history, first_epoch = saved["history"], saved["epoch"] + 1
        rng = np.random.default_rng([config.seed, first_epoch])

    train_photos = [shrink(load_image(f)) for f in train_files]
    validation_photos = [load_image(f) for f in validation_files]
    preprocessings = [template.preprocessing, *(objective.preprocessings if objective else ())]
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
            batch = [views(train_photos[i], rng, config, preprocessings)
                     for i in order[start:start + config.batch_size]]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bfloat16):
                logits = model(torch.stack([v[0] for v in batch])).float()
            loss = prior_loss(logits)
            if objective is not None:
                extra = [torch.stack([v[i] for v in batch]) for i in range(1, len(preprocessings))]
                loss = objective.loss(loss, logits, extra)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        canonicalizer = to_canonicalizer(model, template)
        history.append({"epoch": epoch, "loss": float(np.mean(losses)),
                        "validation_accuracy": validation_accuracy(canonicalizer, validation_photos)})
        _save_checkpoint(out_dir / f"epoch-{epoch}", canonicalizer, optimizer, epoch, history)
        if progress:
            last = history[-1]
            print(f"epoch {epoch}: loss {last['loss']:.4f}, validation {100 * last['validation_accuracy']:.1f} % "
                  f"of {len(validation_photos)} photos")
    return history
