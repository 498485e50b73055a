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

A canonicalizer is three immutable settings, each a frozen dataclass whose defaults are the paper's: the network
(:class:`NetworkSpec`), the preprocessing (:class:`Preprocessing`) and the decision policy (:class:`DecisionPolicy`:
the first pass's precision and when to trust it, the mirror at near-ties). :meth:`Canonicalizer.with_policy` and
:meth:`Canonicalizer.with_preprocessing` give a new canonicalizer (same weights, an empty cache) instead of settings
changed in place, so a cached decision is always one its own settings made.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from . import geometry
from .networks import Arithmetic, ServingWRN
from .registry import default_canonicalizer, resolve_canonicalizer_dir
from .runtime import image_digest
from .tilt import TiltEstimator

PRECISIONS = ("float32", "bfloat16", "int8")
INPUT_SIZES = (32, 512)  # the network trims 24 pixels from each side's length; above 512 nothing is gained


@dataclass(frozen=True)
class NetworkSpec:
    """The C4 wide-ResNet's shape (:func:`canon.networks.layer_plan`); the defaults are the paper's network for SAM
    (equiadapt 0.1.2's ``ESCNNWRNEquivariantNetwork``: kernel 5, 64 output channels, 12 layers)."""

    kernel_size: int = 5
    out_channels: int = 64
    num_layers: int = 12


@dataclass(frozen=True)
class Preprocessing:
    """Image -> network input, the paper's SAM recipe (equiadapt 0.1.2): resize so the longest side is
    ``canvas_size``, zero-pad symmetrically to a square, centre crop ``crop_ratio`` of it, resize to ``input_size``,
    floats in [0, 1], no normalisation."""

    canvas_size: int = 1024
    crop_ratio: float = 0.9
    input_size: int = 128

    def __post_init__(self):
        low, high = INPUT_SIZES
        if not low <= self.input_size <= high:
            raise ValueError(f"the input size takes {low} to {high} pixels (the network trims 24 from each side's "
                             f"length), not {self.input_size}")

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        """``H x W x 3`` uint8 RGB image -> ``1 x 3 x input_size x input_size`` float32 tensor in [0, 1].

        Longest side resized to ``canvas_size`` (bilinear, antialiased), the short side rounded to the parity of
        ``canvas_size`` so that the padding splits evenly; centred zero padding to a square canvas; centre crop of
        ``ceil(canvas_size * crop_ratio)``; resize to ``input_size``. Every step is symmetric under ``rot90``.
        """
        canvas_size = self.canvas_size
        height, width = image.shape[:2]
        scale = canvas_size / max(height, width)
        new_h, new_w = (_same_parity(round(s * scale), canvas_size) for s in (height, width))
        x = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1)[None] / 255.0
        x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
        pad_h, pad_w = (canvas_size - new_h) // 2, (canvas_size - new_w) // 2
        x = F.pad(x, (pad_w, pad_w, pad_h, pad_h))
        crop = math.ceil(canvas_size * self.crop_ratio)
        start = (canvas_size - crop) // 2
        x = x[:, :, start:start + crop, start:start + crop]
        return F.interpolate(x, size=(self.input_size,) * 2, mode="bilinear", align_corners=False, antialias=True)


@dataclass(frozen=True)
class DecisionPolicy:
    """How activations become a decision (see :meth:`Canonicalizer.logits`).

    ``precision``: the first pass's arithmetic, ``float32``, ``bfloat16`` or ``int8`` (each where the device has it
    natively, else the next one down: :meth:`canon.networks.Arithmetic.served`). With a reduced precision, a first
    pass whose best two activations are within ``recheck_margin`` is not trusted and float32 decides. With
    ``mirror_average``, float32 near-ties (best two within ``mirror_margin``) are decided by the photo and its mirror
    together. The defaults are the plain float32 decision.
    """

    precision: str = "float32"
    recheck_margin: float = 1.0
    mirror_average: bool = False
    mirror_margin: float = 1.0

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision takes one of {', '.join(PRECISIONS)}; got {self.precision!r}")
        for name in ("recheck_margin", "mirror_margin"):
            if not getattr(self, name) >= 0:  # also refuses nan
                raise ValueError(f"{name} takes a number from 0 to inf, not {getattr(self, name)}")


def _spec(kind: type, value) -> object:
    """A spec from a spec or from its fields (a ``config.json`` section); an unknown field is a clear error."""
    if isinstance(value, kind):
        return value
    if not isinstance(value, Mapping):
        raise ValueError(f"{kind.__name__} takes a mapping of its fields, not {type(value).__name__}")
    unknown = set(value) - {f.name for f in dataclasses.fields(kind)}
    if unknown:
        raise ValueError(f"{kind.__name__} has no setting {', '.join(sorted(unknown))}")
    return kind(**value)


@dataclass(frozen=True)
class Canonicalization:
    """What the canonicalizer decided for one image.

    ``k``: quarter turns (counter-clockwise) from the canonical orientation to the input; ``angle_deg = 90 * k``.
    ``tilt_deg``: the tilt (counter-clockwise, in [-45, 45)) the tilt stage found and undid first, 0 without one;
    the input is the canonical image turned by :attr:`rotation_deg` ``= 90 * k + tilt_deg``.
    ``probabilities``: softmax of the activations, float64 array of 4, index ``j`` = "the input is turned ``j``".
    ``canonical_image``: ``rot90(image, -k)``, ``H' x W' x 3`` uint8, the image SAM is shown; with a tilt, the
    input untilted (on a larger canvas, black corners) and then turned. ``orbit_turns``: the input is its C4 orbit
    representative turned by this many quarter turns (the frame the tilt is undone in, for exact bookkeeping).
    ``elapsed_ms``: network time (0 when served from the cache); ``cached``: whether it was.

    :meth:`points_to_canonical`, :meth:`boxes_to_canonical` and :meth:`masks_to_input` carry prompts into the
    canonical image's frame and masks back, in the x, y pixel frame of :mod:`canon.geometry`.
    """

    k: int
    probabilities: np.ndarray
    logits: np.ndarray
    canonical_image: np.ndarray
    elapsed_ms: float
    cached: bool
    tilt_deg: float = 0.0
    orbit_turns: int = 0

    @property
    def angle_deg(self) -> int:
        return 90 * self.k

    @property
    def rotation_deg(self) -> float:
        return 90 * self.k + self.tilt_deg

    @property
    def confidence(self) -> float:
        return float(self.probabilities[self.k])

    @property
    def changes_image(self) -> bool:
        """Whether the canonical image differs from the input (a quarter turn or a tilt undone)."""
        return self.k != 0 or self.tilt_deg != 0

    def points_to_canonical(self, points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """``N x 2`` points (x, y) of the input, of ``size = (H, W)``, in the canonical image's frame (float64)."""
        if self.tilt_deg == 0:
            return geometry.rotate_points(points, -self.k, size)
        j, representative = self.orbit_turns, geometry.rotated_size(size, -self.orbit_turns)
        untilted = geometry.rotate_points_free(geometry.rotate_points(points, -j, size), -self.tilt_deg,
                                               representative)
        return geometry.rotate_points(untilted, j - self.k, geometry.free_rotated_size(representative,
                                                                                      -self.tilt_deg))

    def boxes_to_canonical(self, boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """``N x 4`` boxes (x0, y0, x1, y1) of the input in the canonical frame: with a tilt, the box around the
        four turned corners (float64)."""
        if self.tilt_deg == 0:
            return geometry.rotate_boxes(boxes, -self.k, size)
        return geometry.boxes_around(boxes, lambda points: self.points_to_canonical(points, size))

    def masks_to_input(self, masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """``N x H' x W'`` masks of the canonical image back in the frame of the input of ``size = (H, W)``: exact
        quarter turns, and with a tilt nearest neighbour on the input's canvas (:func:`geometry.unrotate_masks_free`),
        done in the orbit representative's frame so that every quarter turn of an input gets the same pixels."""
        if self.tilt_deg == 0:
            return geometry.rotate_masks(masks, self.k)
        j = self.orbit_turns
        untilted = geometry.rotate_masks(masks, self.k - j)
        return geometry.rotate_masks(geometry.unrotate_masks_free(untilted, -self.tilt_deg,
                                                                  geometry.rotated_size(size, -j)), j)


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


def prior_loss(logits: torch.Tensor) -> torch.Tensor:
    """Canonicalization prior: ``CrossEntropy(logits, identity)`` for upright training images (``B x n`` logits)."""
    return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))


def _same_parity(value: int, reference: int) -> int:
    value = min(max(value, 1), reference)
    return value if (reference - value) % 2 == 0 else value + 1 if value < reference else value - 1


_MIRRORED_INDEX = [(-j) % geometry.GROUP_ORDER for j in range(geometry.GROUP_ORDER)]


def _margin(activations: torch.Tensor) -> float:
    """Best minus second-best of a 1-d tensor of activations."""
    top_two = torch.topk(activations, 2).values
    return float(top_two[0] - top_two[1])


class Canonicalizer(nn.Module, PyTorchModelHubMixin,
                    library_name="canon", tags=["equivariance", "canonicalization", "segment-anything"],
                    license="mit"):
    """C4 canonicalizer for SAM: preprocessing + :class:`ServingWRN`, with the Hub's ``from_pretrained`` layout.

    ``Canonicalizer.from_pretrained(dir_or_repo_id)`` reads ``config.json`` (``network``, ``preprocessing`` and
    ``policy``: the fields of :class:`NetworkSpec`, :class:`Preprocessing` and :class:`DecisionPolicy`; a missing
    section or field takes its default; ``tilt``, the fields of :class:`canon.tilt.TiltEstimator`, puts a tilt
    stage in front, none by default) and ``model.safetensors`` (the network's state dict under ``network.``).
    :meth:`canonicalize` is the entry point. Results are cached per C4 orbit (``cache_size`` entries), so rotated
    copies of one photo cost one pass. The settings are immutable: :meth:`with_policy`, :meth:`with_preprocessing`
    and :meth:`with_tilt` return a new canonicalizer that shares the weights and starts with an empty cache.
    """

    def __init__(self, network: NetworkSpec | Mapping = NetworkSpec(),
                 preprocessing: Preprocessing | Mapping = Preprocessing(),
                 policy: DecisionPolicy | Mapping = DecisionPolicy(), cache_size: int = 64,
                 tilt: TiltEstimator | Mapping | None = None):
        super().__init__()
        self._settings = (_spec(NetworkSpec, network), _spec(Preprocessing, preprocessing),
                          _spec(DecisionPolicy, policy), None if tilt is None else _spec(TiltEstimator, tilt))
        self.network = ServingWRN(**dataclasses.asdict(self.network_spec), group_order=geometry.GROUP_ORDER)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, tuple[float, np.ndarray]] = OrderedDict()  # orbit -> (tilt, logits)
        self._lock = threading.Lock()
        self.eval()

    @classmethod
    def load(cls, name_or_path: str | None = None, device: str | torch.device = "cpu",
             repo_id: str | None = None) -> "Canonicalizer":
        """Load by model name from the weight registry (default: its default canonicalizer) or from a local folder;
        resolution order and errors are :func:`canon.registry.resolve_canonicalizer_dir`'s."""
        folder = resolve_canonicalizer_dir(name_or_path or default_canonicalizer(), repo_id=repo_id)
        with contextlib.redirect_stdout(io.StringIO()):  # the mixin prints a line on every local load
            model = cls.from_pretrained(str(folder), strict=True)
        return model.to(device).eval()

    @property
    def network_spec(self) -> NetworkSpec:
        return self._settings[0]

    @property
    def preprocessing(self) -> Preprocessing:
        return self._settings[1]

    @property
    def policy(self) -> DecisionPolicy:
        return self._settings[2]

    @property
    def tilt(self) -> TiltEstimator | None:
        """The tilt stage in front of the network, or None (quarter turns only)."""
        return self._settings[3]

    @property
    def config(self) -> dict:
        """What ``config.json`` holds for this canonicalizer."""
        config = {"network": dataclasses.asdict(self.network_spec),
                  "preprocessing": dataclasses.asdict(self.preprocessing),
                  "policy": dataclasses.asdict(self.policy), "cache_size": self.cache_size}
        return config | ({"tilt": dataclasses.asdict(self.tilt)} if self.tilt is not None else {})

    def save_pretrained(self, save_directory, **kwargs):
        """The Hub mixin's save, with :attr:`config` as ``config.json`` (settings of a derived canonicalizer too)."""
        return super().save_pretrained(save_directory, **{"config": self.config, **kwargs})

    def with_policy(self, **changes) -> "Canonicalizer":
        """A canonicalizer with the same weights and the :class:`DecisionPolicy` fields in ``changes`` replaced."""
        return self._sibling(policy=dataclasses.replace(self.policy, **changes))

    def with_preprocessing(self, **changes) -> "Canonicalizer":
        """A canonicalizer with the same weights and the :class:`Preprocessing` fields in ``changes`` replaced
        (``input_size=64``: the network on smaller inputs, a quarter of the cost)."""
        return self._sibling(preprocessing=dataclasses.replace(self.preprocessing, **changes))

    def with_tilt(self, tilt: TiltEstimator | None = TiltEstimator()) -> "Canonicalizer":
        """A canonicalizer with the same weights and this tilt stage in front (None: quarter turns only)."""
        return self._sibling(tilt=tilt)

    def _sibling(self, **settings) -> "Canonicalizer":
        twin = type(self)(**{"network": self.network_spec, "preprocessing": self.preprocessing,
                             "policy": self.policy, "cache_size": self.cache_size, "tilt": self.tilt, **settings})
        twin.network = self.network  # shared, not copied: the weights and their compiled forms
        return twin.eval()

    @property
    def device(self) -> torch.device:
        return next(self.network.buffers()).device

    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """``H x W x 3`` uint8 -> ``1 x 3 x S x S`` float tensor on :attr:`device` (see :class:`Preprocessing`)."""
        return self.preprocessing(image).to(self.device)

    @property
    def arithmetic(self) -> Arithmetic:
        """The arithmetic of the first pass on this device: :attr:`policy`'s precision where the device has it
        natively, else the next one down (:meth:`canon.networks.Arithmetic.served`)."""
        return Arithmetic.served(self.policy.precision, self.device)

    @torch.inference_mode()
    def logits(self, image: np.ndarray) -> np.ndarray:
        """Group activations (float64 array of 4) of the network on ``image`` as given (no orbit trick).

        The decision is meant to be float32's: the float32 activations, or, with ``mirror_average`` and when their
        best two are within ``mirror_margin`` (a near-tie), the mean of the float32 activations on the image and on
        its left-right mirror. A mirrored photo turned by ``j`` is the mirror of the photo turned by ``-j``, so index
        ``j`` of the first pairs with index ``-j`` of the second, and the result is still exactly C4-equivariant.

        A first pass runs in :attr:`arithmetic`. Reduced precision moves the activations by a few tenths (for
        wrn-c4-paper on the shared photos 0.34 at most in bfloat16, 0.46 with int8 convolutions), so its margin
        between the best two is within ``recheck_margin`` (at least twice that) of float32's. Where the first pass's
        margin clears ``recheck_margin``, plus ``mirror_margin`` with ``mirror_average``, its argmax is float32's and
        float32 would see no near-tie, so it stands; otherwise the network runs again in float32 and the rule above
        decides."""
        policy = self.policy
        x = self.preprocess(image)
        arithmetic = self.arithmetic
        activations = self.network(x, arithmetic)[0]
        if arithmetic != Arithmetic():
            guard = policy.recheck_margin + (policy.mirror_margin if policy.mirror_average else 0.0)
            if _margin(activations) >= guard:
                return activations.double().cpu().numpy()
            activations = self.network(x)[0]
        if policy.mirror_average and _margin(activations) < policy.mirror_margin:
            mirrored = self.network(x.flip(-1))[0]  # the preprocessing commutes with a left-right mirror
            activations = (activations + mirrored[_MIRRORED_INDEX]) / 2
        return activations.double().cpu().numpy()

    def canonicalize(self, image: np.ndarray) -> Canonicalization:
        """Decide the rotation of an ``H x W x 3`` uint8 RGB image; see :class:`Canonicalization`.

        Exactly equivariant: for any ``j``, ``canonicalize(rotate_image(x, j))`` has ``k`` increased by ``j``
        (mod 4), probabilities rolled by ``j``, and the identical ``canonical_image``. With a tilt stage
        (:attr:`tilt`), the tilt is estimated on the orbit representative and undone there before the network
        looks (:mod:`canon.tilt`), so this stays exact.
        """
        j = orbit_representative(image)
        representative = geometry.rotate_image(image, -j)
        key = image_digest(representative)
        start = time.perf_counter()
        with self._lock:
            entry = self._cache.get(key)
            cached = entry is not None
            if cached:
                self._cache.move_to_end(key)
        if cached:
            tilt_deg, logits_r = entry
        else:
            tilt_deg = self.tilt(representative).degrees if self.tilt is not None else 0.0
        if tilt_deg != 0:  # the representative untilted, the one the network sees (redone: a cache of images is big)
            representative = geometry.rotate_image_free(representative, -tilt_deg)
        if not cached:
            logits_r = self.logits(representative)
            with self._lock:
                self._cache[key] = (tilt_deg, logits_r)
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
                                cached=cached, tilt_deg=tilt_deg, orbit_turns=j)
