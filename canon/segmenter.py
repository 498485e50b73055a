"""Segment Anything behind the canonicalizer: SAM loading, a cached predictor, and the equivariant wrapper.

Frames: images are ``H x W x 3`` uint8 RGB; points ``N x 2`` (x, y) and boxes ``x0, y0, x1, y1`` in continuous pixel
coordinates of the image they are given with (pixel centres at ``i + 0.5``; see :mod:`canon.geometry`); masks are
``N x H x W`` bool in the frame of the input image.

:class:`EquivariantSegmenter` runs every request twice: SAM alone on the image as given, and SAM on the canonical
image (prompts mapped by ``R_{-k}``, masks mapped back by ``R_{+k}``). The second path is exactly equivariant: SAM
sees the identical canonical image whatever the input's rotation, so its masks rotate with the input bit for bit.
"""

from __future__ import annotations

import pickle
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
from segment_anything import SamAutomaticMaskGenerator, SamPredictor
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

from . import geometry
from .attention import use_banded_attention
from .canonicalizer import Canonicalization, Canonicalizer
from .decoder import DecoderImageState, decode_masks, image_state
from .prompts import Prompts
from .registry import ModelUnavailableError, resolve_sam_checkpoint
from .render import mask_iou
from .runtime import SAM_PRECISIONS, encoder_dtype, image_digest, pick_device


# ------------------------------------------------------------------------------------------------ SAM loading


@dataclass(frozen=True)
class SamArchitecture:
    """Image-encoder hyper-parameters of a SAM checkpoint (the prompt encoder and mask decoder are fixed)."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]


# From segment-anything's build_sam.py.
SAM_ARCHITECTURES = {
    "vit_b": SamArchitecture(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamArchitecture(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamArchitecture(1280, 32, 16, (7, 15, 23, 31)),
}
SAM_IMAGE_SIZE, SAM_PATCH_SIZE, SAM_WINDOW_SIZE, SAM_PROMPT_DIM = 1024, 16, 14, 256


def build_sam(arch: SamArchitecture) -> Sam:
    """A SAM model with the given image encoder and SAM's prompt encoder and mask decoder, random weights, eval mode."""
    grid = SAM_IMAGE_SIZE // SAM_PATCH_SIZE
    sam = Sam(
        image_encoder=ImageEncoderViT(
            depth=arch.depth, embed_dim=arch.embed_dim, img_size=SAM_IMAGE_SIZE, mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=arch.num_heads, patch_size=SAM_PATCH_SIZE,
            qkv_bias=True, use_rel_pos=True, global_attn_indexes=arch.global_attn_indexes,
            window_size=SAM_WINDOW_SIZE, out_chans=SAM_PROMPT_DIM),
        prompt_encoder=PromptEncoder(
            embed_dim=SAM_PROMPT_DIM, image_embedding_size=(grid, grid),
            input_image_size=(SAM_IMAGE_SIZE, SAM_IMAGE_SIZE), mask_in_chans=16),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=SAM_PROMPT_DIM, mlp_dim=2048, num_heads=8),
            transformer_dim=SAM_PROMPT_DIM, iou_head_depth=3, iou_head_hidden_dim=256),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    return sam.eval()


def infer_architecture(state_dict: dict[str, torch.Tensor]) -> SamArchitecture:
    """Read the image-encoder hyper-parameters off a SAM state dict (works for stand-ins of any size).

    Width from the patch embedding, depth from the block count, head size from the relative position tables (whose
    length tells windowed blocks, ``2 * 14 - 1``, from global ones, ``2 * 64 - 1``).
    """
    try:
        embed_dim = state_dict["image_encoder.patch_embed.proj.weight"].shape[0]
        depth = 1 + max(int(k.split(".")[2]) for k in state_dict if k.startswith("image_encoder.blocks."))
        rel_pos = [state_dict[f"image_encoder.blocks.{i}.attn.rel_pos_h"] for i in range(depth)]
    except (KeyError, ValueError) as error:
        raise ValueError(f"not a SAM checkpoint (missing {error})") from None
    head_dim = rel_pos[0].shape[1]
    global_blocks = tuple(i for i, table in enumerate(rel_pos) if table.shape[0] != 2 * SAM_WINDOW_SIZE - 1)
    return SamArchitecture(embed_dim, depth, embed_dim // head_dim, global_blocks)


def load_sam(path: str | Path) -> Sam:
    """Load a SAM checkpoint (``.pth`` state dict) without unpickling arbitrary objects; raise
    :class:`ModelUnavailableError` with one sentence if it is not a SAM checkpoint."""
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
        sam = build_sam(infer_architecture(state_dict))
        sam.load_state_dict(state_dict, strict=True)
    except pickle.UnpicklingError:
        raise ModelUnavailableError(
            f"{Path(path).name} holds Python objects besides tensors, which are never unpickled here: pass a "
            f"segment-anything sam_vit_*.pth state dict with --sam.") from None
    except Exception as error:  # noqa: BLE001 -- the file is input: whatever it makes fail is the file's fault
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelUnavailableError(
            f"{Path(path).name} is not a usable SAM checkpoint ({first_line[:160]}): pass a segment-anything "
            f"sam_vit_*.pth file with --sam.") from None
    return sam


# -------------------------------------------------------------------------------------------------- results


@dataclass
class PathResult:
    """One path's answer: ``masks`` ``N x H x W`` bool in the input frame, ``scores`` ``N`` float (SAM's predicted
    IoU), and where the time went. ``cached`` is True when the image embedding came from the cache."""

    masks: np.ndarray
    scores: np.ndarray
    encoder_ms: float
    decoder_ms: float
    cached: bool


@dataclass
class DualResult:
    """Both answers for one input: SAM alone and SAM behind the canonicalizer, with the canonicalizer's decision."""

    sam: PathResult
    canonicalized: PathResult
    canonicalization: Canonicalization


@dataclass
class SweepEntry:
    """One rotation of a sweep: the input turned by ``degrees`` (counter-clockwise), both results mapped back to the
    upright frame, and each path's best-mask IoU against its own result on the upright input."""

    degrees: float
    result: DualResult
    sam_iou: float
    canonicalized_iou: float


# ------------------------------------------------------------------------------------------------- SAM backend


@dataclass
class Embedding:
    """SAM's embedding of one image, as the cache keeps it: ``features`` ``1 x 256 x 64 x 64`` float32 (4 MiB) on the
    decoder's device, the two sizes SAM's post-processing needs (rows, columns), the encoder's time, and the
    decoder's per-image tensors (:func:`canon.decoder.image_state`, 10 MiB more), made when the embedding is stored,
    so that the first click costs what any other does. Picklable: on ZeroGPU it is what comes back from the GPU
    worker (without the decoder's tensors, made on this side)."""

    features: torch.Tensor
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    encoder_ms: float
    decoder_state: DecoderImageState | None = None


class _CachingPredictor(SamPredictor):
    """A SamPredictor whose ``set_image`` looks the embedding up in a bounded LRU cache first (computing it with
    ``encode`` when it is not there), and whose clicks reuse the image's share of the decoder's work.

    The key is the image's content (shape and bytes) and the model name, so the same picture shown twice, or the
    canonical image of any rotation of a photo, is encoded once.
    """

    def __init__(self, model: Sam, name: str, cache_size: int, encode):
        super().__init__(model)
        self.name, self.cache_size, self.encode = name, cache_size, encode
        self.cache: OrderedDict[str, Embedding] = OrderedDict()
        self.current: Embedding | None = None
        self.last_hit, self.last_encoder_ms = False, 0.0
        self.measured_encoder_ms: float | None = None  # the latest embedding computed (not from the cache)

    def key(self, image: np.ndarray) -> str:
        return f"{self.name}:{image_digest(image)}"

    def store(self, image: np.ndarray, entry: Embedding) -> None:
        """Keep ``entry`` as the embedding of ``image``, with its decoder state (dropping the least recently used
        beyond the bound)."""
        if entry.decoder_state is None:
            encoder = self.model.prompt_encoder
            with torch.inference_mode():
                _, no_mask = encoder(points=None, boxes=None, masks=None)
                entry.decoder_state = image_state(self.model.mask_decoder, entry.features, encoder.get_dense_pe(),
                                                  no_mask)
        self.cache[self.key(image)] = entry
        self.cache.move_to_end(self.key(image))
        self.measured_encoder_ms = entry.encoder_ms
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)

    def set_image(self, image: np.ndarray, image_format: str = "RGB") -> None:
        if image_format != "RGB":
            raise ValueError("images are RGB here")
        entry = self.cache.get(self.key(image))
        self.last_hit = entry is not None
        if entry is None:
            entry = self.encode(image)
            self.store(image, entry)
        else:
            self.cache.move_to_end(self.key(image))
        self.features, self.original_size, self.input_size = entry.features, entry.original_size, entry.input_size
        self.is_image_set = True
        self.last_encoder_ms = 0.0 if self.last_hit else entry.encoder_ms
        self.current = entry

    @torch.no_grad()
    def predict_torch(self, point_coords, point_labels, boxes=None, mask_input=None, multimask_output=True,
                      return_logits=False):
        """SamPredictor's ``predict_torch`` (same arguments, same outputs bit for bit); one prompt set without a mask
        input is decoded with the image's cached decoder state (:func:`canon.decoder.decode_masks`)."""
        prompts = point_coords if point_coords is not None else boxes
        if (mask_input is not None or prompts is None or len(prompts) != 1 or self.current is None
                or self.current.features is not self.features):
            return super().predict_torch(point_coords, point_labels, boxes, mask_input, multimask_output,
                                         return_logits)
        encoder = self.model.prompt_encoder
        points = (point_coords, point_labels) if point_coords is not None else None
        sparse, _ = encoder(points=points, boxes=boxes, masks=None)
        low_res_masks, iou_predictions = decode_masks(self.model.mask_decoder, self.current.decoder_state, sparse,
                                                      multimask_output)
        masks = self.model.postprocess_masks(low_res_masks, self.input_size, self.original_size)
        if not return_logits:
            masks = masks > self.model.mask_threshold
        return masks, iou_predictions, low_res_masks


class SamBackend:
    """SAM with an embedding cache: point/box prompts (:meth:`predict`) and automatic masks (:meth:`everything`).

    The image encoder runs on ``encoder_device`` (default: ``device``) at ``precision`` (see
    :func:`encoder_dtype`); the prompt encoder, the mask decoder and the cached embeddings stay on ``device``, in
    float32. On ZeroGPU the encoder's device is the GPU that a ``spaces.GPU`` call attaches and the rest the CPU, so
    that a click needs no GPU call. Thread-safe: one lock serialises the use of the shared predictor.
    """

    def __init__(self, model: Sam, name: str = "sam", device: str | torch.device = "cpu", cache_size: int = 16,
                 precision: str = "auto", encoder_device: str | torch.device | None = None):
        if precision not in SAM_PRECISIONS:
            raise ValueError(f"unknown SAM precision {precision!r}; use one of {', '.join(SAM_PRECISIONS)}")
        self.name, self.precision = name, precision
        self.device = torch.device(device)
        self.encoder_device = torch.device(encoder_device) if encoder_device is not None else self.device
        self.model = model.to(self.device).eval()
        self.model.image_encoder.to(self.encoder_device)
        use_banded_attention(self.model)  # fused attention, a fraction of the encoder's peak memory
        with torch.inference_mode():
            dense_pe = self.model.prompt_encoder.get_dense_pe()
        # The decoder's positional encoding depends on fixed buffers only; SAM recomputes it on every click.
        self.model.prompt_encoder.get_dense_pe = lambda: dense_pe
        self.predictor = _CachingPredictor(self.model, name, cache_size, self.encode)
        self._lock = threading.Lock()

    @classmethod
    def load(cls, name_or_path: str, device: str = "auto", cache_size: int = 16, precision: str = "auto",
             encoder_device: str | None = None) -> "SamBackend":
        """Resolve a model name from the weight registry or a local ``.pth`` (see :mod:`canon.registry`), load it."""
        path = resolve_sam_checkpoint(name_or_path)
        return cls(load_sam(path), name=name_or_path, device=pick_device(device), cache_size=cache_size,
                   precision=precision, encoder_device=encoder_device and pick_device(encoder_device))

    @property
    def encoder_dtype(self) -> torch.dtype:
        """The arithmetic the image encoder runs in (``precision`` resolved on its device)."""
        return encoder_dtype(self.precision, self.encoder_device)

    def encode(self, image: np.ndarray) -> Embedding:
        """SAM's embedding of an ``H x W x 3`` uint8 RGB image, computed whether cached or not and not stored: it
        touches no state, so on ZeroGPU it runs in the GPU worker and its result comes back to this process.

        segment-anything's ``SamPredictor.set_image``: longest side resized to 1024, normalised and padded (on
        ``device``), then the encoder on ``encoder_device`` under autocast to :attr:`encoder_dtype`.
        """
        start = time.perf_counter()
        resized = self.predictor.transform.apply_image(image)
        pixels = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()[None]
        dtype = self.encoder_dtype
        with torch.inference_mode(), torch.autocast(self.encoder_device.type, dtype,
                                                    enabled=dtype != torch.float32):
            features = self.model.image_encoder(self.model.preprocess(pixels).to(self.encoder_device))
        features = features.to(self.device, torch.float32)  # waits for the GPU, if any
        return Embedding(features, tuple(image.shape[:2]), tuple(pixels.shape[-2:]),
                         (time.perf_counter() - start) * 1000.0)

    def store(self, image: np.ndarray, embedding: Embedding) -> None:
        """Keep an embedding made by :meth:`encode` (here or in another process) as the one of ``image``."""
        with self._lock:
            self.predictor.store(image, replace(embedding, features=embedding.features.to(self.device),
                                                decoder_state=None))

    def embed(self, image: np.ndarray) -> float:
        """Compute SAM's embedding of an ``H x W x 3`` uint8 image into the cache (a later request on the same image
        runs the decoder only); return the encoder's time in ms, 0.0 when it was cached already."""
        with self._lock, torch.inference_mode():
            self.predictor.set_image(image)
            return self.predictor.last_encoder_ms

    def has_embedding(self, image: np.ndarray) -> bool:
        """Whether the embedding of ``image`` is in the cache."""
        return self.predictor.key(image) in self.predictor.cache

    def forget_embeddings(self) -> None:
        """Empty the embedding cache (the bench measures the encoder this way)."""
        with self._lock:
            self.predictor.cache.clear()
            self.predictor.current = None

    @property
    def encoder_ms(self) -> float | None:
        """How long this backend's latest embedding took (ms), None before the first: the page's estimate."""
        return self.predictor.measured_encoder_ms

    def predict(self, image: np.ndarray, prompts: Prompts, multimask: bool = True) -> PathResult:
        """Masks for ``prompts`` on an ``H x W x 3`` uint8 image: ``3`` masks when ``multimask`` (best first), else 1."""
        prompts.validate(image.shape[:2])
        if prompts.empty:
            raise ValueError("add a point or a box first")
        with self._lock, torch.inference_mode():
            self.predictor.set_image(image)
            start = time.perf_counter()
            masks, scores, _ = self.predictor.predict(
                point_coords=prompts.points.astype(np.float32) if len(prompts.points) else None,
                point_labels=prompts.labels if len(prompts.points) else None,
                box=None if prompts.box is None else prompts.box.astype(np.float32),
                multimask_output=multimask,
            )
            decoder_ms = (time.perf_counter() - start) * 1000.0
            encoder_ms, cached = self.predictor.last_encoder_ms, self.predictor.last_hit
        order = np.argsort(-scores, kind="stable")
        return PathResult(masks[order].astype(bool), scores[order].astype(np.float64), encoder_ms, decoder_ms, cached)

    def predict_boxes(self, image: np.ndarray, boxes: np.ndarray) -> PathResult:
        """One mask per box, in one decoder batch: ``boxes`` ``N x 4`` (x0, y0, x1, y1) -> ``N x H x W`` masks in box
        order (not sorted), ``scores`` ``N``. The protocol of box-prompted evaluation (one mask, no multimask)."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        for box in boxes:
            Prompts.make(box=box).validate(image.shape[:2])
        height, width = image.shape[:2]
        if len(boxes) == 0:
            return PathResult(np.zeros((0, height, width), bool), np.zeros(0), 0.0, 0.0, False)
        with self._lock, torch.inference_mode():
            self.predictor.set_image(image)
            start = time.perf_counter()
            transformed = self.predictor.transform.apply_boxes(boxes, self.predictor.original_size)
            masks, scores, _ = self.predictor.predict_torch(
                None, None, boxes=torch.as_tensor(transformed, dtype=torch.float32, device=self.device),
                multimask_output=False)
            decoder_ms = (time.perf_counter() - start) * 1000.0
            encoder_ms, cached = self.predictor.last_encoder_ms, self.predictor.last_hit
        return PathResult(masks[:, 0].cpu().numpy(), scores[:, 0].double().cpu().numpy(), encoder_ms, decoder_ms,
                          cached)

    def everything(self, image: np.ndarray, points_per_side: int = 16, **generator_options) -> PathResult:
        """Automatic masks from a grid of ``points_per_side`` squared point prompts, best first (SAM's predicted
        IoU, the larger mask first on a tie), like the prompted masks.

        ``generator_options`` go to segment-anything's ``SamAutomaticMaskGenerator`` (thresholds and the like).
        On a CPU the points are decoded one at a time unless ``points_per_batch`` says otherwise: alone, each reuses
        the image's decoder state, while a batch copies the image tokens once per point (16 x 16 points on a 2-core
        EPYC: 7.9 s instead of 21.3 s with SAM's default batch of 64).
        """
        options = {"points_per_batch": 1 if self.device.type == "cpu" else 64, **generator_options}
        with self._lock, torch.inference_mode():
            generator = SamAutomaticMaskGenerator(self.model, points_per_side=points_per_side, **options)
            generator.predictor = self.predictor
            start = time.perf_counter()
            records = generator.generate(image)
            total_ms = (time.perf_counter() - start) * 1000.0
            encoder_ms, cached = self.predictor.last_encoder_ms, self.predictor.last_hit
        records.sort(key=lambda r: (-r["predicted_iou"], -r["area"]))
        height, width = image.shape[:2]
        masks = np.stack([r["segmentation"] for r in records]) if records else np.zeros((0, height, width), bool)
        scores = np.array([r["predicted_iou"] for r in records], dtype=np.float64)
        return PathResult(masks, scores, encoder_ms, total_ms - encoder_ms, cached)


# --------------------------------------------------------------------------------------------- the equivariant pair


class EquivariantSegmenter:
    """SAM alone and SAM behind the canonicalizer, on one input, with one shared SAM backend and embedding cache."""

    def __init__(self, canonicalizer: Canonicalizer, sam: SamBackend):
        self.canonicalizer = canonicalizer
        self.sam = sam

    def segment(self, image: np.ndarray, prompts: Prompts, multimask: bool = True) -> DualResult:
        """Both paths for point/box ``prompts`` given in the frame of ``image`` (``H x W x 3`` uint8)."""
        prompts.validate(image.shape[:2])
        return self._both_paths(image, lambda shown, decision: self.sam.predict(
            shown, _prompts_for(prompts, decision, image.shape[:2]), multimask))

    def segment_boxes(self, image: np.ndarray, boxes: np.ndarray) -> DualResult:
        """Both paths, one mask per box (``N x 4``, in the frame of ``image``); see :meth:`SamBackend.predict_boxes`."""
        return self._both_paths(image, lambda shown, decision: self.sam.predict_boxes(
            shown, boxes if decision is None else decision.boxes_to_canonical(boxes, image.shape[:2])))

    def segment_everything(self, image: np.ndarray, points_per_side: int = 16, **generator_options) -> DualResult:
        """Both paths in "segment everything" mode (see :meth:`SamBackend.everything`)."""
        return self._both_paths(image, lambda shown, decision: self.sam.everything(shown, points_per_side,
                                                                                    **generator_options))

    def images_needed(self, image: np.ndarray) -> list[tuple[str, np.ndarray]]:
        """The images whose SAM embeddings a request on ``image`` needs, canonical first (it serves the path that
        any later turn of the photo shares): ``("canonical", image turned back)`` and, when the canonicalizer turns
        or untilts the photo, ``("turned", image)``; when it leaves the photo as it is, one image serves both."""
        decision = self.canonicalizer.canonicalize(image)
        needed = [("canonical", decision.canonical_image)]
        return needed + [("turned", image)] if decision.changes_image else needed

    def _both_paths(self, image: np.ndarray, run) -> DualResult:
        """``run(shown, decision)`` answers the request on ``shown`` (prompts are mapped inside ``run``): once on
        ``image`` itself (``decision`` None), once on the canonical image, whose masks come back through the
        decision's own transform (:meth:`Canonicalization.masks_to_input`)."""
        plain = run(image, None)
        decision = self.canonicalizer.canonicalize(image)
        if not decision.changes_image:  # the canonical image is the input itself: SAM's answer on it is the one above
            return DualResult(plain, replace(plain, encoder_ms=0.0, decoder_ms=0.0, cached=True), decision)
        canonical = run(decision.canonical_image, decision)
        return DualResult(plain, replace(canonical, masks=decision.masks_to_input(canonical.masks, image.shape[:2])),
                          decision)

    def sweep(self, image: np.ndarray, prompts: Prompts, multimask: bool = True,
              degrees: tuple[float, ...] = geometry.ANGLES_DEG) -> list[SweepEntry]:
        """The same prompts on ``image`` (``H x W x 3`` uint8, the upright reference) turned by each of ``degrees``
        (the first, normally 0, gives the result every IoU is measured against), both paths, masks mapped back to
        the frame of ``image`` (:func:`geometry.unrotate_masks_free`: exact for quarter turns, nearest neighbour
        for tilts). For quarter turns the canonicalized IoUs are 1.0 exactly; for tilts, with a tilt stage and
        point prompts, as close as the tilts found. A box is widened at a tilt (:meth:`Prompts.turned`), and again
        on the way into an untilted canonical frame, so with a box neither path can match its upright result."""
        prompts.validate(image.shape[:2])
        size = image.shape[:2]
        entries = []
        for turn in degrees:
            turned = self.segment(geometry.rotate_image_free(image, turn), prompts.turned(turn, size), multimask)
            upright = DualResult(_turned_back(turned.sam, turn, size), _turned_back(turned.canonicalized, turn, size),
                                 turned.canonicalization)
            reference = entries[0].result if entries else upright
            entries.append(SweepEntry(float(turn), upright, _best_iou(upright.sam, reference.sam),
                                      _best_iou(upright.canonicalized, reference.canonicalized)))
        return entries


def _prompts_for(prompts: Prompts, decision: Canonicalization | None, size: tuple[int, int]) -> Prompts:
    """``prompts`` of an input of ``size = (H, W)`` in the frame of the image a path sees: the input's own
    (``decision`` None, SAM alone) or the canonical image's."""
    if decision is None:
        return prompts
    box = None if prompts.box is None else decision.boxes_to_canonical(prompts.box, size)[0]
    return replace(prompts, points=decision.points_to_canonical(prompts.points, size), box=box)


def _turned_back(result: PathResult, degrees: float, size: tuple[int, int]) -> PathResult:
    """``result`` on an image of ``size`` turned by ``degrees``, its masks brought back to the image's frame."""
    return replace(result, masks=geometry.unrotate_masks_free(result.masks, degrees, size))


def _best_iou(result: PathResult, reference: PathResult) -> float:
    """IoU of the best (first) masks of two results in one frame."""
    return mask_iou(result.masks[0], reference.masks[0])
