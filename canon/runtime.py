"""What the library asks of the machine: which device to use, which arithmetic it has natively, content digests."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import torch


def pick_device(device: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cpu`` / ``cuda`` as asked (``cuda`` without a GPU is an error)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA GPU is available; use --device cpu or auto")
    if device not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {device!r}; use auto, cpu or cuda")
    return torch.device(device)


def bfloat16_is_native(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 convolutions in hardware (GPU, or CPU with AVX512-BF16 / AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported()


SAM_PRECISIONS = ("auto", "float32", "bfloat16", "float16")


def encoder_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The arithmetic of SAM's image encoder for ``precision`` on ``device``: ``auto`` is bfloat16 where the device
    does it natively (a GPU that has it, a CPU with AVX512-BF16 or AMX), float16 on a GPU without bfloat16, and
    float32 elsewhere (a CPU without them emulates bfloat16, 4.5 x slower than float32 on a 2-core EPYC)."""
    if precision != "auto":
        return getattr(torch, precision)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if bfloat16_is_native(device) else torch.float32


def int8_is_native(device: torch.device) -> bool:
    """Whether 8-bit convolutions (:class:`canon.networks.QuantizedConv`) can run on ``device``: a CPU with
    AVX512-VNNI 8-bit dot products (without them oneDNN's 8-bit arithmetic can saturate; torch 2.14 does not report
    AVX-VNNI, so those CPUs keep bfloat16 or float32) and a torch built with oneDNN's quantized convolution."""
    return (device.type == "cpu" and torch.backends.mkldnn.is_available() and torch.cpu._is_vnni_supported()
            and hasattr(torch.ops.onednn, "qconv2d_pointwise"))


def image_digest(image: np.ndarray) -> str:
    """Content key of an ``H x W x C`` array (shape, dtype and bytes)."""
    h = hashlib.sha256()  # 1.7 ms for a 1024 x 768 photo on a 2-core EPYC (blake2b: 3.4 ms)
    h.update(f"{image.shape}{image.dtype}".encode())
    h.update(np.ascontiguousarray(image).data)
    return h.hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()
