"""SAM's mask decoder for many point prompts on one image, the prompt-independent part once.

segment-anything's ``MaskDecoder.predict_masks`` repeats the image embedding for every prompt
of a batch (``repeat_interleave``) and runs the two-way transformer on B copies. Until the
first block's image-to-token attention, the image side ("keys") is still the embedding
itself, so these are the same for every prompt and are computed here once per image
(:func:`image_prefix`):

- ``src = image_embedding + no_mask_embed``: the keys entering the transformer;
- k and v of block 0's token-to-image attention (from ``src + pe`` and ``src``);
- q of block 0's image-to-token attention (from ``src + pe``).

The rest runs per prompt with the same modules and the same operations in the same order
(:func:`decode_tokens`), so on one device and dtype its outputs are those of the stock
decoder, bit for bit (tests/test_annotate_amg.py checks it).

Masks (:func:`decode_masks`): ``output_upscaling`` is two ConvTranspose2d with kernel =
stride = 2, a per-pixel LayerNorm and GELUs, so each embedding pixel makes its own 4x4
block of low-res logits. The image fills only the top-left ``input_size`` of SAM's padded
1024x1024 input: only the embedding rows/columns that cover it (plus the one the
bilinear upsampling reads past its edge) are upscaled, e.g. 33 of 64 rows for a 2:1 image.

Shapes: B prompts, N sparse tokens per prompt (2 for a point and its padding), C = 256
channels, 64x64 = 4096 image tokens, T = 5 output tokens (IoU + 4 mask tokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

EMBED_SIDE = 64  # SAM's image embedding is 64x64 tokens for its 1024x1024 input
LOW_RES_SCALE = 4  # low-res logits are 256x256: 4 per embedding pixel


@dataclass
class ImagePrefix:
    """The prompt-independent part of the decoder for one image embedding.

    ``keys`` (1, 4096, C): transformer keys before block 0; ``pe`` (1, 4096, C): dense
    positional encoding; ``k0``, ``v0`` (1, heads, 4096, C'/heads): block 0 token-to-image
    key/value heads; ``q_img0`` (1, heads, 4096, C'/heads): block 0 image-to-token query
    heads (C' = C / attention_downsample_rate).
    """

    keys: Tensor
    pe: Tensor
    k0: Tensor
    v0: Tensor
    q_img0: Tensor

    def tensors(self) -> tuple[Tensor, ...]:
        return (self.keys, self.pe, self.k0, self.v0, self.q_img0)


def _heads(attn, x: Tensor) -> Tensor:
    """(B, n, C') -> (B, heads, n, C'/heads), as ``Attention._separate_heads``."""
    b, n, c = x.shape
    return x.reshape(b, n, attn.num_heads, c // attn.num_heads).transpose(1, 2)


def _attend(attn, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """``Attention.forward`` after its three input projections; q/k/v (B, heads, n, c)
    (batch 1 broadcasts). Returns (B, n_q, C) after ``out_proj``."""
    b = max(q.shape[0], k.shape[0], v.shape[0])
    q, k, v = (t.expand(b, *t.shape[1:]) for t in (q, k, v))
    c_per_head = q.shape[-1]
    weights = q @ k.permute(0, 1, 3, 2)
    weights = weights / math.sqrt(c_per_head)
    weights = torch.softmax(weights, dim=-1)
    out = weights @ v
    b, n_heads, n_tokens, c = out.shape
    out = out.transpose(1, 2).reshape(b, n_tokens, n_heads * c)
    return attn.out_proj(out)


def image_prefix(sam, features: Tensor) -> ImagePrefix:
    """The prompt-independent tensors for ``features`` (1, C, 64, 64) from the image encoder."""
    block0 = sam.mask_decoder.transformer.layers[0]
    dense = sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
    src = features + dense
    pe = sam.prompt_encoder.get_dense_pe()
    # (1, C, h, w) -> (1, hw, C), contiguous as the stock path's B-prompt copies end up.
    keys = src.flatten(2).permute(0, 2, 1).contiguous()
    pe = pe.flatten(2).permute(0, 2, 1).contiguous()
    keys_pe = keys + pe
    t2i, i2t = block0.cross_attn_token_to_image, block0.cross_attn_image_to_token
    return ImagePrefix(
        keys=keys,
        pe=pe,
        k0=_heads(t2i, t2i.k_proj(keys_pe)),
        v0=_heads(t2i, t2i.v_proj(keys)),
        q_img0=_heads(i2t, i2t.q_proj(keys_pe)),
    )


def prompt_tokens(sam, sparse: Tensor) -> Tensor:
    """(B, T + N, C) decoder input tokens: IoU token, mask tokens, then the prompt's
    ``sparse`` (B, N, C) embeddings."""
    decoder = sam.mask_decoder
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    output_tokens = output_tokens.unsqueeze(0).expand(sparse.size(0), -1, -1)
    return torch.cat((output_tokens, sparse), dim=1)


def transformer(sam, prefix: ImagePrefix, tokens: Tensor) -> tuple[Tensor, Tensor]:
    """SAM's ``TwoWayTransformer`` on B prompts' ``tokens`` (B, T + N, C) over one image.

    Returns (queries (B, T + N, C), keys (B, 4096, C)), as the stock transformer does.
    """
    t = sam.mask_decoder.transformer
    block0 = t.layers[0]
    point_embedding = tokens
    # Block 0 (skip_first_layer_pe): self-attention, then token -> image with the shared k, v.
    queries = block0.self_attn(q=tokens, k=tokens, v=tokens)
    queries = block0.norm1(queries)
    q = queries + point_embedding
    t2i = block0.cross_attn_token_to_image
    attn_out = _attend(t2i, _heads(t2i, t2i.q_proj(q)), prefix.k0, prefix.v0)
    queries = block0.norm2(queries + attn_out)
    queries = block0.norm3(queries + block0.mlp(queries))
    # image -> token: queries are the (shared) image tokens, keys/values the prompt tokens.
    q = queries + point_embedding
    i2t = block0.cross_attn_image_to_token
    attn_out = _attend(i2t, prefix.q_img0, _heads(i2t, i2t.k_proj(q)), _heads(i2t, i2t.v_proj(queries)))
    keys = block0.norm4(prefix.keys + attn_out)
    key_pe = prefix.pe.expand(keys.shape[0], -1, -1)
    for layer in t.layers[1:]:
        queries, keys = layer(queries=queries, keys=keys, query_pe=point_embedding, key_pe=key_pe)
    q = queries + point_embedding
    k = keys + key_pe
    attn_out = t.final_attn_token_to_image(q=q, k=k, v=keys)
    queries = t.norm_final_attn(queries + attn_out)
    return queries, keys


def heads(sam, queries: Tensor) -> tuple[Tensor, Tensor]:
    """(iou_pred (B, 4), hyper_in (B, 4, C/8)) from the transformer's output ``queries``."""
    decoder = sam.mask_decoder
    iou_token_out = queries[:, 0, :]
    mask_tokens_out = queries[:, 1 : 1 + decoder.num_mask_tokens, :]
    hyper_in = torch.stack(
        [
            decoder.output_hypernetworks_mlps[i](mask_tokens_out[:, i, :])
            for i in range(decoder.num_mask_tokens)
        ],
        dim=1,
    )
    return decoder.iou_prediction_head(iou_token_out), hyper_in


def decode_tokens(
    sam, prefix: ImagePrefix, sparse: Tensor, multimask: bool = True
) -> tuple[Tensor, Tensor, Tensor]:
    """The per-prompt decoder up to the mask upscaling, for ``sparse`` (B, N, C) prompts.

    Returns (iou_pred (B, M), hyper_in (B, M, C/8), keys (B, 4096, C)); M = 3 with
    ``multimask`` (mask tokens 1-3, what the automatic generator asks for), else 4.
    """
    queries, keys = transformer(sam, prefix, prompt_tokens(sam, sparse))
    iou_pred, hyper_in = heads(sam, queries)
    if multimask:
        iou_pred, hyper_in = iou_pred[:, 1:], hyper_in[:, 1:]
    return iou_pred, hyper_in, keys


def embed_region(input_size: tuple[int, int]) -> tuple[int, int]:
    """(rows, cols) of the 64x64 embedding whose upscaled low-res logits cover an image of
    ``input_size`` (h, w) in SAM's 1024 frame, including the one low-res row/column the
    bilinear upsampling to 1024 reads past the image edge."""
    h, w = input_size

    def side(n: int) -> int:
        low_res = min(EMBED_SIDE * LOW_RES_SCALE, low_res_extent(n))
        return min(EMBED_SIDE, -(-low_res // LOW_RES_SCALE))

    return side(h), side(w)


def low_res_extent(n: int, size: int = 1024, low_res: int = EMBED_SIDE * LOW_RES_SCALE) -> int:
    """Low-res rows that ``F.interpolate(..., size)`` reads for output rows [0, n): output row
    y samples (y + 0.5) * low_res / size - 0.5, and the row after its floor."""
    if n <= 0:
        return 0
    src = (n - 1 + 0.5) * low_res / size - 0.5
    return min(low_res, max(0, int(src)) + 2)


def region_src(keys: Tensor, region: tuple[int, int]) -> Tensor:
    """(B, C, rows, cols): the transformer's output ``keys`` (B, 4096, C) back on the 64x64
    grid, top-left ``region`` only (a view)."""
    b, _, c = keys.shape
    rows, cols = region
    return keys.transpose(1, 2).view(b, c, EMBED_SIDE, EMBED_SIDE)[:, :, :rows, :cols]


def masks_from_src(sam, src: Tensor, hyper_in: Tensor) -> Tensor:
    """Low-res logits (B, M, 4 * rows, 4 * cols) from ``src`` (B, C, rows, cols) and
    ``hyper_in`` (B, M, C/8): ``output_upscaling``, then one dot product per pixel."""
    upscaled = sam.mask_decoder.output_upscaling(src)
    b, c, h, w = upscaled.shape
    return (hyper_in @ upscaled.reshape(b, c, h * w)).view(b, -1, h, w)


def decode_masks(sam, keys: Tensor, hyper_in: Tensor, region: tuple[int, int]) -> Tensor:
    """Low-res mask logits (B, M, 4 * rows, 4 * cols) of ``hyper_in`` (B, M, C/8) for the
    embedding ``region`` (rows, cols) from :func:`embed_region`: the top-left part of the
    stock decoder's (B, M, 256, 256)."""
    return masks_from_src(sam, region_src(keys, region), hyper_in)


def stock_reference(sam, features: Tensor, sparse: Tensor) -> tuple[Tensor, Tensor]:
    """segment-anything's own decoder call for the same prompts: (low-res logits (B, 4,
    256, 256), iou_pred (B, 4)), all four mask tokens (for tests and checks)."""
    dense = sam.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
    dense = dense.expand(sparse.shape[0], -1, EMBED_SIDE, EMBED_SIDE)
    return sam.mask_decoder.predict_masks(
        image_embeddings=features,
        image_pe=sam.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
    )


def point_sparse(sam, points: Any) -> Tensor:
    """(B, 2, C) sparse embeddings of B single positive points ``points`` (B, 2) in SAM's
    1024 frame (float64, as the stock generator passes them), via the prompt encoder."""
    coords = torch.as_tensor(points, device=sam.device)
    labels = torch.ones(coords.shape[0], dtype=torch.int, device=coords.device)
    sparse, _ = sam.prompt_encoder(points=(coords[:, None, :], labels[:, None]), boxes=None, masks=None)
    return sparse
