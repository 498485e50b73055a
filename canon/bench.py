"""What canonicalization costs on this machine: SAM's encoder against the canonicalizer, a click, memory.

Everything runs in one process, side by side, so the ratios compare like with like. SAM is built with random weights
(the real checkpoints are not needed: timing does not depend on weight values). Medians over ``repeats`` runs after
one warm-up.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from . import geometry
from .canonicalizer import PRECISIONS, Canonicalizer
from .images import load_image
from .networks import Arithmetic, EscnnWRN
from .prompts import Prompts
from .render import mask_iou, overlay
from .runtime import bfloat16_is_native, int8_is_native, pick_device
from .segmenter import SAM_ARCHITECTURES, EquivariantSegmenter, SamBackend, build_sam

BENCH_IMAGE_SIZE = (768, 1024)  # a 4:3 landscape photo at SAM's working resolution
PHOTO = Path(__file__).resolve().parents[1] / "examples" / "animals_horse.jpg"  # in a checkout


def median_ms(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``repeats`` runs, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def _network_ms(canonicalizer: Canonicalizer, x: torch.Tensor, precision: str, repeats: int) -> float | None:
    """The network alone on the preprocessed ``x`` in ``precision``; None where the device does not have it
    natively (the canonicalizer would compute in the next precision down)."""
    arithmetic = Arithmetic.served(precision, canonicalizer.device)
    if arithmetic.name != precision:
        return None
    return median_ms(lambda: canonicalizer.network(x, arithmetic), repeats)


def _free_parameters(canonicalizer: Canonicalizer) -> int:
    """Trainable numbers of the canonicalizer: basis coefficients, biases, batch-norm scale and shift."""
    return sum(v.numel() for k, v in canonicalizer.state_dict().items()
               if not k.split(".")[-1].startswith("basis_") and "running_" not in k)


def benchmark(sam_models: tuple[str, ...] = ("vit_b",), canonicalizers: tuple[str, ...] = ("wrn-c4-paper",),
              repeats: int = 3, click_repeats: int = 20, device: str = "auto", sam_precision: str = "auto") -> dict:
    """Measure; the first name in ``canonicalizers`` is the one the ratios and the clicks use. Each SAM's figures are
    under ``sams.<name>``; the first SAM's are also at the top level (the keys the docs' tables read)."""
    device = pick_device(device)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (*BENCH_IMAGE_SIZE, 3), dtype=np.uint8)
    sams, sam_peak_rss_mb = {}, None
    for index, sam_model in enumerate(sam_models):
        torch.manual_seed(0)
        model = build_sam(SAM_ARCHITECTURES[sam_model])
        served = SamBackend(model, name=sam_model, device=device, precision=sam_precision)
        sams[sam_model] = _encoder_figures(served, SamBackend(model, name=sam_model, device=device,
                                                              precision="float32"), repeats)
        if index == 0:
            sam_peak_rss_mb = _peak_rss_mb()  # what serving SAM alone needs, before the escnn networks are built
            per_model, loaded = _canonicalizer_figures(canonicalizers, device, repeats)
        sams[sam_model] |= _click_figures(EquivariantSegmenter(loaded[canonicalizers[0]], served), image,
                                          click_repeats)
        sams[sam_model]["sam_parameters"] = sum(p.numel() for p in model.parameters())
        del model, served
    main, first = canonicalizers[0], sams[sam_models[0]]
    return {
        "machine": f"{machine_description()}, {torch.get_num_threads()} threads"
                   + (f", {torch.cuda.get_device_name()}" if device.type == "cuda" else ""),
        "device": device.type,
        "sam_model": sam_models[0],
        **first,
        "canonicalizer": main,
        "canonicalizer_ms": per_model[main]["serving_ms"],
        "overhead_ratio": per_model[main]["serving_ms"] / first["sam_encoder_ms"],
        "params_ratio": per_model[main]["parameters"] / first["sam_parameters"],
        "peak_rss_mb": _peak_rss_mb(),
        "sam_peak_rss_mb": sam_peak_rss_mb,
        "canonicalizers": per_model,
        "sams": sams,
        "repeats": repeats,
    }


def _encoder_figures(served: SamBackend, float32: SamBackend, repeats: int) -> dict:
    """SAM's image encoder as served and in float32 (one model, runs interleaved), and, where they differ, how far
    the served embedding and masks move from float32's on the bench photo (random weights: see the README)."""
    photo = load_image(PHOTO)
    same = served.encoder_dtype == torch.float32
    backends = (served,) if same else (served, float32)
    times = {backend: [] for backend in backends}
    for backend in backends:  # warm-up
        backend.encode(photo)
    for _ in range(repeats):
        for backend in backends:
            times[backend].append(backend.encode(photo).encoder_ms)
    figures = {"sam_precision": str(served.encoder_dtype).removeprefix("torch."),
               "sam_encoder_ms": statistics.median(times[served]),
               "sam_encoder_float32_ms": statistics.median(times[backends[-1]]),
               "embedding_relative_error": 0.0, "mask_iou_vs_float32": 1.0}
    if not same:
        reference, reduced = float32.encode(photo).features, served.encode(photo).features
        prompts = Prompts.make([[photo.shape[1] * 0.4, photo.shape[0] * 0.6]])
        figures |= {"embedding_relative_error": float((reduced - reference).norm() / reference.norm()),
                    "mask_iou_vs_float32": mask_iou(served.predict(photo, prompts).masks[0],
                                                    float32.predict(photo, prompts).masks[0])}
        float32.forget_embeddings()
    served.forget_embeddings()
    return figures


def _canonicalizer_figures(names: tuple[str, ...], device: torch.device, repeats: int) -> tuple[dict, dict]:
    """Each canonicalizer as served, its network in each precision the device has natively, and as escnn."""
    per_model, loaded = {}, {}
    # A real photo: in bfloat16 the canonicalizer's time depends on whether the photo is a near-tie (noise always
    # is, and is rechecked in float32); this one is not, and network_float32_ms is the cost of a recheck.
    photo = load_image(PHOTO)
    for name in names:
        model = loaded[name] = Canonicalizer.load(name, device=device)
        escnn_model = EscnnWRN(**asdict(model.network_spec), initialize=False).to(device).eval()
        x = model.preprocess(photo)
        with torch.inference_mode():
            per_model[name] = {
                "input_size": model.preprocessing.input_size,
                "precision": model.arithmetic.name,
                "serving_ms": median_ms(lambda: model.logits(photo), repeats),
                **{f"network_{precision}_ms": _network_ms(model, x, precision, repeats) for precision in PRECISIONS},
                "escnn_ms": median_ms(lambda: escnn_model(x), repeats),
                "parameters": _free_parameters(model),
            }
        del escnn_model
    return per_model, loaded


def _click_figures(segmenter: EquivariantSegmenter, image: np.ndarray, click_repeats: int) -> dict:
    """What a visitor waits for on ``image`` turned so that the canonicalizer turns it back (two SAM paths): a click
    at once on the newly turned photo, the first click after the page has prepared its embeddings, a click with
    both cached, a click on a photo that is canonical already, and "segment everything"."""
    canonicalizer, sam = segmenter.canonicalizer, segmenter.sam
    k = canonicalizer.canonicalize(image).k
    # A turned input (canonicalized with k = 1: two decoder runs) and its canonical image (k = 0: one run).
    turned, upright = (geometry.rotate_image(image, turns) for turns in (1 - k, -k))
    prompts = Prompts.make([[BENCH_IMAGE_SIZE[1] * 0.4, BENCH_IMAGE_SIZE[0] * 0.6]])
    turned_prompts, upright_prompts = (prompts.rotated(turns, BENCH_IMAGE_SIZE) for turns in (1 - k, -k))

    def click(shown: np.ndarray, shown_prompts: Prompts):
        result = segmenter.segment(shown, shown_prompts)
        overlay(shown, result.sam.masks), overlay(shown, result.canonicalized.masks)

    def timed(fn) -> float:
        start = time.perf_counter()
        fn()
        return (time.perf_counter() - start) * 1000.0

    sam.forget_embeddings()
    canonicalizer._cache.clear()
    first_click_ms = timed(lambda: click(turned, turned_prompts))
    sam.forget_embeddings()
    for _, shown in segmenter.images_needed(turned):  # what the page computes as soon as the photo is turned
        sam.embed(shown)
    ready_click_ms = timed(lambda: click(turned, turned_prompts))
    return {
        "first_click_ms": first_click_ms,
        "ready_click_ms": ready_click_ms,
        "click_ms": median_ms(lambda: click(turned, turned_prompts), click_repeats),
        "click_canonical_ms": median_ms(lambda: click(upright, upright_prompts), click_repeats),
        "everything_ms": timed(lambda: segmenter.segment_everything(turned)),  # once: it takes seconds on a CPU
    }


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def machine_description() -> str:
    """``x86_64 AMD EPYC (family 26 model 2, bfloat16, VNNI), 2 cores``: what figures are quoted with. CPUs of one name
    differ several-fold here (AVX-512, bfloat16, 8-bit dot products), so the family and model numbers are part of it."""
    name, fields = platform.processor() or "unknown CPU", {}
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    name = fields.get("model name", name)
    details = [f"family {fields['cpu family']} model {fields['model']}"] if "cpu family" in fields else []
    if bfloat16_is_native(torch.device("cpu")):
        details.append("bfloat16")
    if int8_is_native(torch.device("cpu")):
        details.append("VNNI")
    suffix = f" ({', '.join(details)})" if details else ""
    return f"{platform.machine()} {name}{suffix}, {os.cpu_count()} cores"


def bench_table(summary: dict) -> str:
    """Markdown table of :func:`benchmark`'s summary."""
    rows = ["| what | median |", "|---|---:|"]
    for name, sam in summary["sams"].items():
        rows += [f"| SAM {name} image encoder, as served ({sam['sam_precision']}) | {sam['sam_encoder_ms']:.0f} ms |"]
        if sam["sam_precision"] != "float32":
            rows += [f"| SAM {name} image encoder, float32 | {sam['sam_encoder_float32_ms']:.0f} ms |",
                     f"| SAM {name} {sam['sam_precision']} against float32: embedding relative error, best-mask "
                     f"IoU | {sam['embedding_relative_error']:.4f}, {sam['mask_iou_vs_float32']:.3f} |"]
    for name, figures in summary["canonicalizers"].items():
        rows += [f"| canonicalizer {name} ({figures['input_size']} px, {figures['precision']}): serving "
                 f"(preprocess + network) | {figures['serving_ms']:.0f} ms |"]
        rows += [f"| canonicalizer {name}: network, plain torch, {precision} | "
                 f"{figures[f'network_{precision}_ms']:.0f} ms |"
                 for precision in PRECISIONS if figures.get(f"network_{precision}_ms") is not None]
        rows += [f"| canonicalizer {name}: network, escnn, float32 | {figures['escnn_ms']:.0f} ms |"]
    rows += [f"| overhead ({summary['canonicalizer']} / encoder) | {100 * summary['overhead_ratio']:.1f} % |",
             f"| click on a turned photo, embeddings cached (2 decoders + mapping + 2 overlays) | "
             f"{summary['click_ms']:.0f} ms |",
             f"| click on a photo that is already canonical (1 decoder + 2 overlays) | "
             f"{summary['click_canonical_ms']:.0f} ms |",
             f"| first click at once on a newly turned photo (two embeddings, then the click) | "
             f"{summary['first_click_ms']:.0f} ms |",
             f"| first click on a newly turned photo once the page has prepared its embeddings | "
             f"{summary['ready_click_ms']:.0f} ms |",
             f"| segment everything on a turned photo, embeddings cached (16 x 16 points, both paths; one run) | "
             f"{summary['everything_ms']:.0f} ms |",
             *[f"| SAM {name}: first click at once, prepared, cached | {sam['first_click_ms']:.0f} ms, "
               f"{sam['ready_click_ms']:.0f} ms, {sam['click_ms']:.0f} ms |"
               for name, sam in list(summary["sams"].items())[1:]],
             f"| parameters ({summary['canonicalizer']} / SAM) | {100 * summary['params_ratio']:.2f} % |",
             f"| peak memory (RSS): SAM encoder, then everything above | {summary['sam_peak_rss_mb']:.0f} MB, "
             f"{summary['peak_rss_mb']:.0f} MB |"]
    return "\n".join(rows) + f"\n\n{summary['machine']}; medians of {summary['repeats']} runs"
