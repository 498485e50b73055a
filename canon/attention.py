"""Global attention of SAM's image encoder, computed a band of query rows at a time to bound its memory.

segment-anything's ``Attention.forward`` builds the whole ``(B * heads) x HW x HW`` score matrix, adds the decomposed
relative positions to a second copy and softmaxes into a third. In ViT-B's four global blocks (HW = 64 x 64 tokens,
12 heads) that is 3 x 805 MB at once, most of the encoder's peak memory on a CPU. Each query row's softmax needs
only its own scores, so :class:`RowBandAttention` evaluates the same formula for ``band_rows`` rows of the token grid
at a time: the same numbers (float rounding aside), with the peak memory divided by ``64 / band_rows``.

:func:`bound_attention_memory` switches the global-attention modules of a built SAM in place; the windowed blocks
(14 x 14 tokens) are left as they are.
"""

from __future__ import annotations

import torch
from segment_anything.modeling.image_encoder import Attention, get_rel_pos

DEFAULT_BAND_ROWS = 8  # ViT-B: 12 heads x 512 queries x 4096 keys x 4 B = 100 MB per score band


class RowBandAttention(Attention):
    """segment-anything's :class:`Attention` (same parameters and state dict), evaluated in bands of query rows.

    ``forward(x)``: ``B x H x W x C`` tokens -> ``B x H x W x C``, as the parent's.
    """

    band_rows: int = DEFAULT_BAND_ROWS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, height, width, _ = x.shape
        qkv = self.qkv(x).reshape(batch, height * width, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, batch * self.num_heads, height * width, -1).unbind(0)
        keys_t = k.transpose(-2, -1)
        if self.use_rel_pos:
            rel_h_table = get_rel_pos(height, height, self.rel_pos_h)  # query row x key row x C
            rel_w_table = get_rel_pos(width, width, self.rel_pos_w)
        out = torch.empty_like(q)
        for top in range(0, height, self.band_rows):
            bottom = min(top + self.band_rows, height)
            rows = slice(top * width, bottom * width)
            q_band = q[:, rows]
            scores = (q_band * self.scale) @ keys_t
            if self.use_rel_pos:
                # add_decomposed_rel_pos, restricted to the band's query rows.
                grid = q_band.reshape(-1, bottom - top, width, q.shape[-1])
                rel_h = torch.einsum("bhwc,hkc->bhwk", grid, rel_h_table[top:bottom])
                rel_w = torch.einsum("bhwc,wkc->bhwk", grid, rel_w_table)
                scores = (scores.view(-1, bottom - top, width, height, width) + rel_h[:, :, :, :, None]
                          + rel_w[:, :, :, None, :]).view(-1, (bottom - top) * width, height * width)
            out[:, rows] = scores.softmax(dim=-1) @ v
        out = out.view(batch, self.num_heads, height, width, -1).permute(0, 2, 3, 1, 4)
        return self.proj(out.reshape(batch, height, width, -1))


def bound_attention_memory(sam: torch.nn.Module, band_rows: int = DEFAULT_BAND_ROWS) -> int:
    """Make every global-attention module of ``sam.image_encoder`` a :class:`RowBandAttention`; returns how many.

    A block is global when its window size is 0 (segment-anything's convention); the change keeps parameters,
    buffers and the state dict as they are.
    """
    switched = 0
    for block in sam.image_encoder.blocks:
        if block.window_size == 0 and type(block.attn) is Attention:
            block.attn.__class__ = RowBandAttention
            block.attn.band_rows = band_rows
            switched += 1
    return switched
