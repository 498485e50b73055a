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

import numpy as np
import torch

from .canonicalizer import Canonicalizer
from .networks import EscnnWRN
from .render import overlay
from .segmenter import SAM_ARCHITECTURES, EquivariantSegmenter, Prompts, SamBackend, build_sam, pick_device

BENCH_IMAGE_SIZE = (768, 1024)  # a 4:3 landscape photo at SAM's working resolution


def median_ms(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``repeats`` runs, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def _free_parameters(canonicalizer: Canonicalizer) -> int:
    """Trainable numbers of the canonicalizer: basis coefficients, biases, batch-norm scale and shift."""
    return sum(v.numel() for k, v in canonicalizer.state_dict().items()
               if not k.split(".")[-1].startswith("basis_") and "running_" not in k)


def benchmark(sam_model: str = "vit_b", canonicalizers: tuple[str, ...] = ("wrn-c4-paper",), repeats: int = 3,
              click_repeats: int = 20, device: str = "auto") -> dict:
    """Measure; the first name in ``canonicalizers`` is the one the ratios and the click use."""
    device = pick_device(device)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (*BENCH_IMAGE_SIZE, 3), dtype=np.uint8)
    torch.manual_seed(0)
    sam = SamBackend(build_sam(SAM_ARCHITECTURES[sam_model]), name=sam_model, device=device)

    def encode():
        sam.predictor.cache.clear()
        sam.predictor.set_image(image)
        if device.type == "cuda":
            torch.cuda.synchronize()

    encoder_ms = median_ms(encode, repeats)
    sam_peak_rss_mb = _peak_rss_mb()  # what serving SAM alone needs, before the escnn networks are built
    per_model = {}
    loaded = {}
    for name in canonicalizers:
        model = loaded[name] = Canonicalizer.load(name, device=device)
        escnn_model = EscnnWRN(**model.network.config, initialize=False).to(device).eval()
        x = model.preprocess(image)
        with torch.inference_mode():
            per_model[name] = {
                "serving_ms": median_ms(lambda: model.logits(image), repeats),
                "network_ms": median_ms(lambda: model.network(x), repeats),
                "escnn_ms": median_ms(lambda: escnn_model(x), repeats),
                "parameters": _free_parameters(model),
            }
        del escnn_model
    main = canonicalizers[0]
    segmenter = EquivariantSegmenter(loaded[main], sam)
    prompts = Prompts.make([[BENCH_IMAGE_SIZE[1] * 0.4, BENCH_IMAGE_SIZE[0] * 0.6]])

    def click():
        result = segmenter.segment(image, prompts)
        overlay(image, result.sam.masks), overlay(image, result.canonicalized.masks)

    sam.predictor.cache.clear()
    loaded[main]._cache.clear()
    start = time.perf_counter()
    click()
    first_click_ms = (time.perf_counter() - start) * 1000.0
    click_ms = median_ms(click, click_repeats)
    sam_parameters = sum(p.numel() for p in sam.model.parameters())
    return {
        "machine": f"{machine_description()}, {torch.get_num_threads()} threads"
                   + (f", {torch.cuda.get_device_name()}" if device.type == "cuda" else ""),
        "device": device.type,
        "sam_model": sam_model,
        "sam_encoder_ms": encoder_ms,
        "canonicalizer": main,
        "canonicalizer_ms": per_model[main]["serving_ms"],
        "overhead_ratio": per_model[main]["serving_ms"] / encoder_ms,
        "click_ms": click_ms,
        "first_click_ms": first_click_ms,
        "params_ratio": per_model[main]["parameters"] / sam_parameters,
        "sam_parameters": sam_parameters,
        "peak_rss_mb": _peak_rss_mb(),
        "sam_peak_rss_mb": sam_peak_rss_mb,
        "canonicalizers": per_model,
        "repeats": repeats,
    }


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def machine_description() -> str:
    """``x86_64 AMD EPYC, 2 cores``: what figures are quoted with."""
    name = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            name = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), name)
    except OSError:
        pass
    return f"{platform.machine()} {name}, {os.cpu_count()} cores"


def bench_table(summary: dict) -> str:
    """Markdown table of :func:`benchmark`'s summary."""
    rows = ["| what | median |", "|---|---:|",
            f"| SAM {summary['sam_model']} image encoder | {summary['sam_encoder_ms']:.0f} ms |"]
    for name, figures in summary["canonicalizers"].items():
        rows += [f"| canonicalizer {name}: serving (preprocess + network) | {figures['serving_ms']:.0f} ms |",
                 f"| canonicalizer {name}: network, plain torch | {figures['network_ms']:.0f} ms |",
                 f"| canonicalizer {name}: network, escnn | {figures['escnn_ms']:.0f} ms |"]
    rows += [f"| overhead ({summary['canonicalizer']} / encoder) | {100 * summary['overhead_ratio']:.1f} % |",
             f"| click, embeddings cached (2 decoders + mapping + 2 overlays) | {summary['click_ms']:.0f} ms |",
             f"| first click on a new photo | {summary['first_click_ms']:.0f} ms |",
             f"| parameters ({summary['canonicalizer']} / SAM) | {100 * summary['params_ratio']:.2f} % |",
             f"| peak memory (RSS): SAM encoder, then everything above | {summary['sam_peak_rss_mb']:.0f} MB, "
             f"{summary['peak_rss_mb']:.0f} MB |"]
    return "\n".join(rows) + f"\n\n{summary['machine']}; medians of {summary['repeats']} runs"
