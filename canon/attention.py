"""Attention of SAM's image encoder through ``scaled_dot_product_attention``, the global blocks a band at a time.

segment-anything's ``Attention.forward`` builds the whole ``(B * heads) x HW x HW`` score matrix, adds the decomposed
relative positions to a second copy and softmaxes into a third. In ViT-B's four global blocks (HW = 64 x 64 tokens,
12 heads) that is 3 x 805 MB at once, most of the encoder's peak memory on a CPU. :class:`BandedAttention` computes
the same formula with PyTorch's fused ``scaled_dot_product_attention``, SAM's relative position terms passed as its
additive mask (the technique of PyTorch's "Segment Anything, Fast"), and in global blocks for ``band_rows`` rows of
the token grid at a time: each query row's softmax needs only its own scores, so the peak memory is divided by
``64 / band_rows``. The fused kernel is what makes bfloat16 and float16 fast on a GPU; in float32 on a CPU it is as
fast as segment-anything's own (``docs/performance.md``).

:func:`use_banded_attention` switches the attention modules of a built SAM in place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Attention, get_rel_pos

DEFAULT_BAND_ROWS = 8  # ViT-B: 12 heads x 512 queries x 4096 keys x 4 B = 100 MB per band of the additive mask


class BandedAttention(Attention):
    """segment-anything's :class:`Attention` (same parameters and state dict), evaluated by fused attention in bands
    of ``band_rows`` query rows (0: all rows at once).

    ``forward(x)``: ``B x H x W x C`` tokens -> ``B x H x W x C``, as the parent's.
    """

    band_rows: int = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = x.shape
        qkv = self.qkv(x).reshape(batch, height * width, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, batch * self.num_heads, height * width, -1).unbind(0)
        if self.use_rel_pos:
            rel_h_table = get_rel_pos(height, height, self.rel_pos_h)  # query row x key row x C
            rel_w_table = get_rel_pos(width, width, self.rel_pos_w)
        band = self.band_rows or height
        out = torch.empty_like(q)
        for top in range(0, height, band):
            bottom = min(top + band, height)
            rows = slice(top * width, bottom * width)
            q_band, mask = q[:, rows], None
            if self.use_rel_pos:
                # add_decomposed_rel_pos, restricted to the band's query rows, as an additive mask.
                grid = q_band.reshape(-1, bottom - top, width, q.shape[-1])
                rel_h = torch.einsum("bhwc,hkc->bhwk", grid, rel_h_table[top:bottom])
                rel_w = torch.einsum("bhwc,wkc->bhwk", grid, rel_w_table)
                mask = (rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]).reshape(-1, (bottom - top) * width,
                                                                                   height * width)
            out[:, rows] = F.scaled_dot_product_attention(q_band, k, v, attn_mask=mask, scale=self.scale)
        out = out.view(batch, self.num_heads, height, width, -1).permute(0, 2, 3, 1, 4)
        return self.proj(out.reshape(batch, height, width, -1))


def use_banded_attention(sam: torch.nn.Module, band_rows: int = DEFAULT_BAND_ROWS) -> int:
    """Make every attention module of ``sam.image_encoder`` a :class:`BandedAttention`, global blocks (window size
    0, segment-anything's convention) in bands of ``band_rows`` rows, windowed ones (14 x 14 tokens) whole; returns
    how many were switched. Parameters, buffers and the state dict stay as they are."""
    switched = 0
    for block in sam.image_encoder.blocks:
        if type(block.attn) is Attention:
            block.attn.__class__ = BandedAttention
            block.attn.band_rows = band_rows if block.window_size == 0 else 0
            switched += 1
    return switched
