"""The learned canonicalization function: image -> rotation index k, probabilities, canonical image.

Method (Kaba et al., ICML 2023; Mondal et al., NeurIPS 2023): a C4-equivariant network scores the four rotations,
``act(rot90(x, j)) = roll(act(x), j)``; ``k = argmax act(x)`` is read as "the photo is turned ``k`` quarter turns
counter-clockwise from its canonical orientation", and the canonical image handed to SAM is ``rot90(x, -k)``.

Exactness. The network is equivariant only up to float rounding (about 1e-5 on its activations), so two rotations
whose activations nearly tie could be ranked differently for ``x`` and ``rot90(x, 1)``. To make the whole pipeline
equivariant to the bit, the network is evaluated on one deterministic member of the input's C4 orbit,
:func:`orbit_representative` (chosen by an exact comparison of pixel values), and the result is rolled back. Every
rotation of a photo therefore gets the identical canonical image, and the activations for ``rot90(x, j)`` are exactly
``roll(act(x), j)``. It also means the four rotations of a photo cost one network pass between them (cached).

Preprocessing (the paper's SAM recipe, equiadapt 0.1.2): resize so the longest side is 1024, zero-pad symmetrically
to 1024 x 1024, centre crop 0.9 (922 px), resize to 128 x 128, floats in [0, 1], no normalisation. The short side is
rounded to the parity of 1024 so the padding splits evenly and the preprocessing commutes with ``rot90``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from . import geometry
from .networks import ServingWRN, int8_is_native


@dataclass(frozen=True)
class Canonicalization:
    """What the canonicalizer decided for one image.

    ``k``: quarter turns (counter-clockwise) from the canonical orientation to the input; ``angle_deg = 90 * k``.
    ``probabilities``: softmax of the activations, float64 array of 4, index ``j`` = "the input is turned ``j``".
    ``canonical_image``: ``rot90(image, -k)``, ``H' x W' x 3`` uint8, the image SAM is shown.
    ``elapsed_ms``: network time (0 when served from the cache); ``cached``: whether it was.
    """

    k: int
    probabilities: np.ndarray
    logits: np.ndarray
    canonical_image: np.ndarray
    elapsed_ms: float
    cached: bool

    @property
    def angle_deg(self) -> int:
        return 90 * self.k

    @property
    def confidence(self) -> float:
        return float(self.probabilities[self.k])


def orbit_representative(image: np.ndarray) -> int:
    """Return ``j`` such that ``rotate_image(image, -j)`` is the canonical member of the image's C4 orbit.

    The member chosen is the first, in this order, among the four rotations: landscape or square before portrait,
    then the smallest in row-major lexicographic order of pixel values. The choice is exact (integer comparisons), so
    ``orbit_representative(rotate_image(x, i)) == (orbit_representative(x) + i) % 4`` whenever the four rotations of
    ``x`` differ; when two coincide, either choice yields the same array.
    """
    candidates = [j for j in range(geometry.GROUP_ORDER)
                  if geometry.rotated_size(image.shape[:2], -j)[0] <= geometry.rotated_size(image.shape[:2], -j)[1]]
    views = {j: np.rot90(image, -j, axes=(0, 1)) for j in candidates}
    best = candidates[0]
    for j in candidates[1:]:
        if _lexicographic_less(views[j], views[best]):
            best = j
    return best


def _lexicographic_less(a: np.ndarray, b: np.ndarray) -> bool:
    """Row-major lexicographic ``a < b`` for arrays of one shape, reading row by row so it usually stops early."""
    for row_a, row_b in zip(a, b):
        diff = np.flatnonzero(row_a.ravel() != row_b.ravel())
        if diff.size:
            return bool(row_a.ravel()[diff[0]] < row_b.ravel()[diff[0]])
    return False


def image_digest(image: np.ndarray) -> str:
    """Content key of an ``H x W x C`` array (shape, dtype and bytes)."""
    h = hashlib.sha256()  # 1.7 ms for a 1024 x 768 photo on a 2-core EPYC (blake2b: 3.4 ms)
    h.update(f"{image.shape}{image.dtype}".encode())
    h.update(np.ascontiguousarray(image).data)
    return h.hexdigest()


def prior_loss(logits: torch.Tensor) -> torch.Tensor:
    """Canonicalization prior: ``CrossEntropy(logits, identity)`` for upright training images (``B x n`` logits)."""
    return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))


def paper_preprocess(image: np.ndarray, canvas_size: int = 1024, crop_ratio: float = 0.9,
                     input_size: int = 128) -> torch.Tensor:
    """``H x W x 3`` uint8 RGB image -> ``1 x 3 x input_size x input_size`` float32 tensor in [0, 1].

    Longest side resized to ``canvas_size`` (bilinear, antialiased), the short side rounded to the parity of
    ``canvas_size``; centred zero padding to a square canvas; centre crop of ``ceil(canvas_size * crop_ratio)``;
    resize to ``input_size``. Every step is symmetric under ``rot90``.
    """
    height, width = image.shape[:2]
    scale = canvas_size / max(height, width)
    new_h, new_w = (_same_parity(round(s * scale), canvas_size) for s in (height, width))
    x = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)[None] / 255.0
    x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
    pad_h, pad_w = (canvas_size - new_h) // 2, (canvas_size - new_w) // 2
    x = F.pad(x, (pad_w, pad_w, pad_h, pad_h))
    crop = math.ceil(canvas_size * crop_ratio)
    start = (canvas_size - crop) // 2
    x = x[:, :, start:start + crop, start:start + crop]
    return F.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=False, antialias=True)


def _same_parity(value: int, reference: int) -> int:
    value = min(max(value, 1), reference)
    return value if (reference - value) % 2 == 0 else value + 1 if value < reference else value - 1


PRECISIONS = ("float32", "bfloat16", "int8")
_MIRRORED_INDEX = [(-j) % geometry.GROUP_ORDER for j in range(geometry.GROUP_ORDER)]


def _margin(activations: torch.Tensor) -> float:
    """Best minus second-best of a 1-d tensor of activations."""
    top_two = torch.topk(activations, 2).values
    return float(top_two[0] - top_two[1])


def bfloat16_is_native(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 convolutions in hardware (GPU, or CPU with AVX512-BF16 / AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def trunk_arithmetic(precision: str, device: torch.device) -> tuple[torch.dtype, bool]:
    """``(dtype, int8)`` the network's trunk computes in for ``precision`` on ``device``
    (:meth:`ServingWRN.forward <canon.networks.ServingWRN.forward>`'s arguments): what ``precision`` names where the
    device has it natively, else the next one down (int8 -> bfloat16 -> float32), which is faster there."""
    int8 = precision == "int8" and int8_is_native(device)
    dtype = torch.bfloat16 if precision != "float32" and bfloat16_is_native(device) else torch.float32
    return dtype, int8


class Canonicalizer(nn.Module, PyTorchModelHubMixin,
                    library_name="canon", tags=["equivariance", "canonicalization", "segment-anything"],
                    license="mit"):
    """C4 canonicalizer for SAM: preprocessing + :class:`ServingWRN`, with the Hub's ``from_pretrained`` layout.

    ``Canonicalizer.from_pretrained(dir_or_repo_id)`` reads ``config.json`` (these constructor arguments) and
    ``model.safetensors`` (the network's state dict under ``network.``). :meth:`canonicalize` is the entry point.
    ``precision`` is the trunk's arithmetic: ``float32``; ``bfloat16`` where the device has it natively
    (:attr:`compute_dtype`); or ``int8``, 8-bit convolutions where the device has them (:attr:`served_precision`),
    their sums and the rest in :attr:`compute_dtype`. With either of the last two, a first pass whose top two
    activations are within ``recheck_margin`` is not trusted and the network runs again in float32 (:meth:`logits`).
    With ``mirror_average``, near-ties (float32 top two within ``mirror_margin``) are decided by the activations of
    the image and of its mirror together: a second opinion that costs a pass only on near-ties.
    With ``probe_levels``, an :class:`~canon.networks.EquivariantProbe` on those blocks' pooled outputs (a
    ``probe_grid`` x ``probe_grid`` partition) gives the scores instead of the network's head.
    Results are cached per C4 orbit (``cache_size`` entries), so rotated copies of one photo cost one pass.
    """

    def __init__(self, architecture: str = "wrn", kernel_size: int = 5, out_channels: int = 64, num_layers: int = 12,
                 group_order: int = 4, canvas_size: int = 1024, crop_ratio: float = 0.9, input_size: int = 128,
                 cache_size: int = 64, precision: str = "float32", recheck_margin: float = 1.0,
                 mirror_average: bool = False, mirror_margin: float = 1.0, probe_levels: tuple[int, ...] = (),
                 probe_grid: int = 3):
        super().__init__()
        if architecture != "wrn" or group_order != geometry.GROUP_ORDER:
            raise ValueError(f"unsupported canonicalizer: architecture={architecture!r}, group_order={group_order}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision takes one of {', '.join(PRECISIONS)}; got {precision!r}")
        self.network = ServingWRN(kernel_size, out_channels, num_layers, group_order, tuple(probe_levels), probe_grid)
        self.precision = precision
        self.recheck_margin = recheck_margin
        self.mirror_average = mirror_average
        self.mirror_margin = mirror_margin
        self.preprocess_config = dict(canvas_size=canvas_size, crop_ratio=crop_ratio, input_size=input_size)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self.eval()

    @classmethod
    def load(cls, name_or_path: str | None = None, device: str | torch.device = "cpu",
             repo_id: str | None = None) -> "Canonicalizer":
        """Load by model name from ``weights/models.json`` (default: the registry's default) or from a local folder;
        resolution order and errors are :func:`canon.models.resolve_canonicalizer_dir`'s."""
        from .models import default_canonicalizer, resolve_canonicalizer_dir

        folder = resolve_canonicalizer_dir(name_or_path or default_canonicalizer(), repo_id=repo_id)
        with contextlib.redirect_stdout(io.StringIO()):  # the mixin prints a line on every local load
            model = cls.from_pretrained(str(folder), strict=True)
        return model.to(device).eval()

    @property
    def device(self) -> torch.device:
        return next(self.network.buffers()).device

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """``H x W x 3`` uint8 -> ``1 x 3 x S x S`` float tensor on :attr:`device` (see :func:`paper_preprocess`)."""
        return paper_preprocess(image, **self.preprocess_config).to(self.device)

    @property
    def compute_dtype(self) -> torch.dtype:
        """bfloat16 where :attr:`precision` is ``bfloat16`` or ``int8`` and the device computes it natively (a GPU
        with bfloat16, a CPU with AVX512-BF16 or AMX); float32 elsewhere, where bfloat16 would be emulated and
        slower."""
        return trunk_arithmetic(self.precision, self.device)[0]

    @property
    def served_precision(self) -> str:
        """The arithmetic of the first pass on this device: ``int8`` where :attr:`precision` is ``int8`` and the
        device has 8-bit dot products (a CPU with VNNI; see :func:`canon.networks.int8_is_native`), else
        :attr:`compute_dtype`'s name, ``bfloat16`` or ``float32``."""
        dtype, int8 = trunk_arithmetic(self.precision, self.device)
        return "int8" if int8 else str(dtype).removeprefix("torch.")

    @torch.inference_mode()
    def logits(self, image: np.ndarray) -> np.ndarray:
        """Group activations (float64 array of 4) of the network on ``image`` as given (no orbit trick).

        The decision is meant to be float32's: the float32 activations, or, with ``mirror_average`` and when their
        best two are within ``mirror_margin`` (a near-tie), the mean of the float32 activations on the image and on
        its left-right mirror. A mirrored photo turned by ``j`` is the mirror of the photo turned by ``-j``, so index
        ``j`` of the first pairs with index ``-j`` of the second, and the result is still exactly C4-equivariant.

        A first pass runs in :attr:`served_precision`. Reduced precision moves the activations by a few tenths
        (for wrn-c4-paper on the shared photos 0.34 at most in bfloat16, 0.46 with int8 convolutions), so its
        margin between the best two is within ``recheck_margin`` (at least twice that) of float32's. Where the
        first pass's margin clears ``recheck_margin``, plus ``mirror_margin`` with ``mirror_average``, its argmax is
        float32's and float32 would see no near-tie, so it stands; otherwise the network runs again in float32 and
        the rule above decides."""
        x = self.preprocess(image)
        dtype, int8 = trunk_arithmetic(self.precision, self.device)
        activations = self.network(x, dtype, int8)[0]
        if dtype != torch.float32 or int8:
            guard = self.recheck_margin + (self.mirror_margin if self.mirror_average else 0.0)
            if _margin(activations) >= guard:
                return activations.double().cpu().numpy()
            activations = self.network(x)[0]
        if self.mirror_average and _margin(activations) < self.mirror_margin:
            mirrored = self.network(x.flip(-1))[0]  # the preprocessing commutes with a left-right mirror
            activations = (activations + mirrored[_MIRRORED_INDEX]) / 2
        return activations.double().cpu().numpy()

    def canonicalize(self, image: np.ndarray) -> Canonicalization:
        """Decide the rotation of an ``H x W x 3`` uint8 RGB image; see :class:`Canonicalization`.

        Exactly equivariant: for any ``j``, ``canonicalize(rotate_image(x, j))`` has ``k`` increased by ``j``
        (mod 4), probabilities rolled by ``j``, and the identical ``canonical_image``.
        """
        j = orbit_representative(image)
        representative = geometry.rotate_image(image, -j)
        key = image_digest(representative)
        start = time.perf_counter()
        with self._lock:
            logits_r = self._cache.get(key)
            cached = logits_r is not None
            if cached:
                self._cache.move_to_end(key)
        if not cached:
            logits_r = self.logits(representative)
            with self._lock:
                self._cache[key] = logits_r
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        elapsed_ms = 0.0 if cached else (time.perf_counter() - start) * 1000.0
        # argmax on the representative's activations (first index on an exact tie), then shifted: exact.
        k = geometry.normalise_k(int(np.argmax(logits_r)) + j)
        # Softmax on the representative, then rolled: the sum is taken in one order for every rotation (exact).
        probabilities = np.exp(logits_r - logits_r.max())
        probabilities /= probabilities.sum()
        return Canonicalization(k=k, probabilities=np.roll(probabilities, j), logits=np.roll(logits_r, j),
                                canonical_image=geometry.rotate_image(representative, j - k), elapsed_ms=elapsed_ms,
                                cached=cached)
