"""SAM's mask decoder with the image's share of a click computed once per image.

segment-anything's ``MaskDecoder`` re-does on every prompt some work that depends on the image alone: the embedding
plus the "no mask" dense prompt, and, in the first two-way block, three linear maps of the 64 x 64 image tokens (the
keys and values of token-to-image attention, the queries of image-to-token attention; 256 -> 128 each). Those are
about 6 of a decoder run's 38 ms on a 2-core EPYC with ViT-B's embedding. :func:`image_state` computes them once;
:func:`decode_masks` is ``MaskDecoder.forward`` for one prompt set that reuses them. It performs the same operations
on the same tensors as segment-anything 1.0 (``mask_decoder.py``, ``transformer.py``), so its outputs are SAM's bit
for bit (``tests/test_decoder.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from segment_anything.modeling import MaskDecoder
from segment_anything.modeling.transformer import Attention, TwoWayAttentionBlock


@dataclass(frozen=True)
class DecoderImageState:
    """What the decoder's first block needs of one image, for a batch of one prompt set.

    ``keys``: ``1 x HW x C`` image tokens (embedding + dense prompt, row-major over the ``h x w`` grid);
    ``key_pe``: their positional encoding, same shape; ``token_to_image_k``, ``token_to_image_v``,
    ``image_to_token_q``: the first block's projections of them, ``1 x HW x C / 2`` each (C = 256 in SAM);
    ``grid``: ``(h, w)``, the token grid (64 x 64 in SAM).
    """

    keys: torch.Tensor
    key_pe: torch.Tensor
    token_to_image_k: torch.Tensor
    token_to_image_v: torch.Tensor
    image_to_token_q: torch.Tensor
    grid: tuple[int, int]


@torch.no_grad()
def image_state(decoder: MaskDecoder, image_embeddings: torch.Tensor, image_pe: torch.Tensor,
                dense_prompt_embeddings: torch.Tensor) -> DecoderImageState:
    """Per-image tensors for :func:`decode_masks`; the three inputs are ``1 x C x h x w`` (SAM's embedding, the
    prompt encoder's dense positional encoding and its dense embedding for "no mask")."""
    keys = (image_embeddings + dense_prompt_embeddings).flatten(2).permute(0, 2, 1)
    key_pe = image_pe.flatten(2).permute(0, 2, 1)
    block = decoder.transformer.layers[0]
    with_pe = keys + key_pe
    return DecoderImageState(keys, key_pe,
                             block.cross_attn_token_to_image.k_proj(with_pe),
                             block.cross_attn_token_to_image.v_proj(keys),
                             block.cross_attn_image_to_token.q_proj(with_pe),
                             tuple(image_embeddings.shape[-2:]))


@torch.no_grad()
def decode_masks(decoder: MaskDecoder, state: DecoderImageState, sparse_prompt_embeddings: torch.Tensor,
                 multimask_output: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``MaskDecoder.forward`` for one prompt set (``sparse_prompt_embeddings`` ``1 x N x C``) on the image of
    ``state``: low-resolution mask logits ``1 x M x 4h x 4w`` and predicted IoUs ``1 x M``, ``M`` = 3 with
    ``multimask_output``, else 1."""
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    output_tokens = output_tokens.unsqueeze(0).expand(sparse_prompt_embeddings.size(0), -1, -1)
    tokens = torch.cat((output_tokens, sparse_prompt_embeddings), dim=1)

    transformer = decoder.transformer
    queries, keys = _first_block(transformer.layers[0], tokens, state)
    for layer in transformer.layers[1:]:
        queries, keys = layer(queries=queries, keys=keys, query_pe=tokens, key_pe=state.key_pe)
    attn_out = transformer.final_attn_token_to_image(q=queries + tokens, k=keys + state.key_pe, v=keys)
    hs = transformer.norm_final_attn(queries + attn_out)

    iou_token_out = hs[:, 0, :]
    mask_tokens_out = hs[:, 1:(1 + decoder.num_mask_tokens), :]
    b, _, c = keys.shape
    upscaled_embedding = decoder.output_upscaling(keys.transpose(1, 2).view(b, c, *state.grid))
    hyper_in = torch.stack([mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)],
                           dim=1)
    b, c, h, w = upscaled_embedding.shape
    masks = (hyper_in @ upscaled_embedding.view(b, c, h * w)).view(b, -1, h, w)
    iou_pred = decoder.iou_prediction_head(iou_token_out)
    mask_slice = slice(1, None) if multimask_output else slice(0, 1)
    return masks[:, mask_slice, :, :], iou_pred[:, mask_slice]


def _first_block(block: TwoWayAttentionBlock, tokens: torch.Tensor,
                 state: DecoderImageState) -> tuple[torch.Tensor, torch.Tensor]:
    """``TwoWayAttentionBlock.forward`` of the first block (no positional encoding in its self-attention), with the
    image tokens' projections taken from ``state``; the prompt tokens are their own positional encoding."""
    if not block.skip_first_layer_pe:
        raise ValueError("the first two-way block of SAM's decoder skips the positional encoding in self-attention")
    queries = block.norm1(block.self_attn(q=tokens, k=tokens, v=tokens))
    to_image = block.cross_attn_token_to_image
    attn_out = _attend(to_image, to_image.q_proj(queries + tokens), state.token_to_image_k, state.token_to_image_v)
    queries = block.norm2(queries + attn_out)
    queries = block.norm3(queries + block.mlp(queries))
    to_tokens = block.cross_attn_image_to_token
    q = queries + tokens
    attn_out = _attend(to_tokens, state.image_to_token_q, to_tokens.k_proj(q), to_tokens.v_proj(queries))
    return queries, block.norm4(state.keys + attn_out)


def _attend(attention: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``Attention.forward`` after its input projections: ``q``, ``k``, ``v`` already projected (``B x N x C'``)."""
    q, k, v = (attention._separate_heads(t, attention.num_heads) for t in (q, k, v))
    attn = q @ k.permute(0, 1, 3, 2)
    attn = attn / math.sqrt(q.shape[-1])
    attn = torch.softmax(attn, dim=-1)
    return attention.out_proj(attention._recombine_heads(attn @ v))
