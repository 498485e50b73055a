"""Banded fused attention: segment-anything's numbers, a fraction of its memory."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from segment_anything.modeling.image_encoder import Attention

from canon.attention import BandedAttention, use_banded_attention
from canon.segmenter import build_sam
from conftest import STANDIN_ARCHITECTURE


def _attention(height: int, width: int, dim: int = 48, heads: int = 3) -> Attention:
    torch.manual_seed(0)
    attention = Attention(dim, heads, use_rel_pos=True, input_size=(height, width))
    for parameter in attention.parameters():
        torch.nn.init.normal_(parameter, std=0.2)
    return attention


@pytest.mark.parametrize("band_rows", [0, 1, 3, 8, 64])
def test_same_output_as_segment_anything(band_rows):
    height, width = 10, 7  # not a multiple of the band, not square: every slice boundary is exercised
    attention = _attention(height, width)
    x = torch.randn(2, height, width, 48)
    with torch.inference_mode():
        expected = attention(x)
        attention.__class__, attention.band_rows = BandedAttention, band_rows
        actual = attention(x)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)


def test_global_blocks_are_banded_windowed_ones_whole_and_the_state_dict_is_kept():
    sam = build_sam(STANDIN_ARCHITECTURE)
    before = {k: v.clone() for k, v in sam.state_dict().items()}
    assert use_banded_attention(sam, band_rows=4) == STANDIN_ARCHITECTURE.depth
    assert all(type(block.attn) is BandedAttention for block in sam.image_encoder.blocks)
    assert [block.attn.band_rows for block in sam.image_encoder.blocks] == [
        4 if i in STANDIN_ARCHITECTURE.global_attn_indexes else 0 for i in range(STANDIN_ARCHITECTURE.depth)]
    after = sam.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert use_banded_attention(sam) == 0  # idempotent


def test_the_encoder_gives_segment_anythings_embedding():
    torch.manual_seed(0)
    sam = build_sam(STANDIN_ARCHITECTURE)
    x = torch.randn(1, 3, 1024, 1024)
    with torch.inference_mode():
        expected = sam.image_encoder(x)
        use_banded_attention(sam)
        actual = sam.image_encoder(x)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


_PEAK_SCRIPT = """
import sys, torch
from segment_anything.modeling.image_encoder import Attention
from canon.attention import BandedAttention

def peak_mb():  # this process's own high-water mark (getrusage's would start at the parent's, forked before exec)
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024

torch.set_num_threads(1)
attention = Attention(768, 12, use_rel_pos=True, input_size=(64, 64))  # one of ViT-B's global blocks
if sys.argv[1] == "bands":
    attention.__class__, attention.band_rows = BandedAttention, 8
x = torch.randn(1, 64, 64, 768)
before = peak_mb()
with torch.inference_mode():
    attention(x)
print(peak_mb() - before)
"""


@pytest.mark.slow  # the memory test: two processes, 2.4 GB
def test_peak_memory_of_a_vit_b_global_block():
    def peak_mb(kind: str) -> float:
        done = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, kind], capture_output=True, text=True, check=True,
                              timeout=300, cwd=Path(__file__).resolve().parents[1])
        return float(done.stdout.split()[-1])

    full, bands = peak_mb("full"), peak_mb("bands")
    print(f"ViT-B global attention, peak memory added: {full:.0f} MB in one piece, {bands:.0f} MB in row bands")
    assert full > 1500  # three 805 MB score matrices, two alive at once at least
    assert bands < 500
