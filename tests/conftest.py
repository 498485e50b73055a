"""Shared fixtures: the paper canonicalizer from weights/, SAM-architecture stand-ins, the shared photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from canon.canonicalizer import Canonicalizer
from canon.images import load_image
from canon.segmenter import SamArchitecture, SamBackend, build_sam, load_sam

REPO = Path(__file__).resolve().parents[1]
UPRIGHT = REPO.parent / "shared" / "data" / "upright"
PAPER_WEIGHTS = REPO / "canon" / "weights" / "wrn-c4-paper"

# A SAM with SAM's prompt encoder and mask decoder and a 2-block, 32-wide image encoder: same code path, random
# weights, about a second per embedding on a CPU.
STANDIN_ARCHITECTURE = SamArchitecture(embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,))


@pytest.fixture(scope="session")
def paper_canonicalizer() -> Canonicalizer:
    return Canonicalizer.load(str(PAPER_WEIGHTS))


@pytest.fixture(scope="session")
def standin_sam_path(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("sam") / "sam_standin.pth"
    torch.save(build_sam(STANDIN_ARCHITECTURE).state_dict(), path)
    return path


@pytest.fixture(scope="session")
def standin_backend(standin_sam_path) -> SamBackend:
    return SamBackend(load_sam(standin_sam_path), name="standin")


@pytest.fixture(scope="session")
def upright_files() -> list[Path]:
    files = sorted(UPRIGHT.glob("*.jpg"))
    assert len(files) >= 200, f"expected the shared photos in {UPRIGHT}"
    return files


@pytest.fixture(scope="session")
def photo(upright_files) -> np.ndarray:
    """A 480 x 640 x 3 upright photo (a cat)."""
    return load_image(UPRIGHT / "animals_cat.jpg")


def float32_logits(canonicalizer: Canonicalizer, image: np.ndarray) -> np.ndarray:
    """The serving network's activations on ``image`` in float32, whatever the model's own precision."""
    with torch.inference_mode():
        return canonicalizer.network(canonicalizer.preprocess(image))[0].double().numpy()
