"""SAM's decoder transformer with the image-side projections moved onto the prompt tokens.

In SAM's two-way transformer every prompt carries its own copy of the 4096 image tokens
("keys", (4096, C) per prompt), and the cross attentions project those copies:
token-to-image attention runs ``k_proj``/``v_proj`` over all 4096 of them, image-to-token
attention ``q_proj`` and ``out_proj``. Per prompt that is seven (4096 x 256) @ (256 x 128)
products, most of the decoder's arithmetic. A prompt has only T = 7 tokens (IoU, 4 mask,
2 point), and the projections are linear, so each can be applied to the T tokens instead:

- token-to-image, scores: ``q . (W_k x + b_k) = (W_k^T q) . x + q . b_k``. The last term is
  the same for every image token ``x`` and cancels in the softmax over them, so the scores
  are the image tokens times ``W_k^T q`` (H*T vectors of C).
- token-to-image, values: the softmax weights sum to 1, so ``sum_n w_n (W_v x_n + b_v) =
  W_v (sum_n w_n x_n) + b_v``: weight the raw image tokens, project the H*T results.
- image-to-token, scores: ``(W_q x + b_q) . k = x . (W_q^T k) + b_q . k`` (the second term
  depends on the token, so it stays, as a bias per token).
- image-to-token, output: ``W_o concat_h(sum_t w_t v_t) + b_o = sum_(h,t) w_(h,t) (W_o,h v_t)
  + b_o``: project the H*T value vectors once, then one (4096 x H*T) @ (H*T x C) product.

Per prompt that is about 2.3x less arithmetic in the transformer and no (B, heads, 4096,
C'/heads) intermediates. It is the same function, summed in another order: in fp32 the
outputs differ from segment-anything's by float rounding (about 1e-6 relative), so this is
not the bit-exact mode (:mod:`~sedna_sam.annotate.decoder` is); bench/preannotate.py
compares the masks with the stock generator's.

Shapes as in :mod:`~sedna_sam.annotate.decoder`: B prompts, T = 7 tokens, N = 4096 image
tokens, C = 256 channels, H heads of d = C'/H (C' = 128 in the cross attentions).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from sedna_sam.annotate import decoder as dec


def _head_weights(linear, heads: int) -> tuple[Tensor, Tensor]:
    """(weight (H, d, C), bias (H, d)) of a C -> C' projection split per head."""
    c_out, c_in = linear.weight.shape
    return linear.weight.reshape(heads, c_out // heads, c_in), linear.bias.reshape(heads, -1)


def _split_heads(x: Tensor, heads: int) -> Tensor:
    """(B, T, C') -> (B, H, T, d)."""
    b, t, c = x.shape
    return x.reshape(b, t, heads, c // heads).transpose(1, 2)


def _times_image(a: Tensor, image: Tensor, transpose: bool) -> Tensor:
    """``a`` (B, M, K) times image tokens ``image`` (B or 1, N, C): ``a @ image^T`` (B, M, N)
    when ``transpose`` (K = C), else ``a @ image`` (B, M, C) (K = N). An image shared by the
    batch (block 0) is one matrix product with the batch folded into M, not B copies."""
    rhs = image.transpose(1, 2) if transpose else image
    if image.shape[0] == 1 and a.shape[0] > 1:
        b, m, k = a.shape
        return (a.reshape(b * m, k) @ rhs[0]).view(b, m, -1)
    return torch.bmm(a, rhs)


def token_to_image(attn, tokens_q: Tensor, image_k: Tensor, image_v: Tensor) -> Tensor:
    """``attn(q=tokens_q, k=image_k, v=image_v)`` of segment-anything's ``Attention`` for
    ``tokens_q`` (B, T, C) over image tokens ``image_k``, ``image_v`` (B or 1, N, C);
    (B, T, C)."""
    heads = attn.num_heads
    wk, _ = _head_weights(attn.k_proj, heads)
    wv, bv = _head_weights(attn.v_proj, heads)
    q = _split_heads(attn.q_proj(tokens_q), heads)  # (B, H, T, d)
    b, _, t, d = q.shape
    # (B, H*T, C): each head's query mapped back to the image channels; the q . b_k term
    # is constant over the image tokens and cancels in the softmax.
    q_img = torch.einsum("bhtd,hdc->bhtc", q, wk).reshape(b, heads * t, -1) / math.sqrt(d)
    weights = torch.softmax(_times_image(q_img, image_k, transpose=True), dim=-1)  # (B, H*T, N)
    pooled = _times_image(weights, image_v, transpose=False).view(b, heads, t, -1)  # (B, H, T, C)
    out = torch.einsum("bhtc,hdc->bthd", pooled, wv) + bv  # (B, T, H, d)
    return attn.out_proj(out.reshape(b, t, heads * d))


def image_to_token(attn, image_q: Tensor, tokens_k: Tensor, tokens_v: Tensor) -> Tensor:
    """``attn(q=image_q, k=tokens_k, v=tokens_v)`` for image tokens ``image_q`` (B or 1,
    N, C) attending to prompt tokens ``tokens_k``, ``tokens_v`` (B, T, C); (B, N, C)."""
    heads = attn.num_heads
    wq, bq = _head_weights(attn.q_proj, heads)
    wo = attn.out_proj.weight  # (C, C')
    k = _split_heads(attn.k_proj(tokens_k), heads)  # (B, H, T, d)
    v = _split_heads(attn.v_proj(tokens_v), heads)
    b, _, t, d = k.shape
    scale = 1.0 / math.sqrt(d)
    k_img = torch.einsum("bhtd,hdc->bhtc", k, wq).reshape(b, heads * t, -1) * scale  # (B, H*T, C)
    k_bias = torch.einsum("bhtd,hd->bht", k, bq).reshape(b, heads * t, 1) * scale
    # (B, H*T, N): the softmax over a head's T tokens runs along dim 2 with the N image
    # tokens innermost (vectorised), not over a last dim of size 7.
    scores = _times_image(k_img, image_q, transpose=True) + k_bias
    weights = torch.softmax(scores.view(b, heads, t, -1), dim=2).view(b, heads * t, -1)
    # (B, H*T, C): every value vector through its head's slice of out_proj.
    v_out = torch.einsum("bhtd,chd->bhtc", v, wo.view(wo.shape[0], heads, d)).reshape(b, heads * t, -1)
    return torch.baddbmm(attn.out_proj.bias, weights.transpose(1, 2), v_out)


def _block(layer, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor):
    """``TwoWayAttentionBlock.forward`` with the factored cross attentions; ``keys`` may be
    the image embedding shared by the batch (1, N, C) (block 0)."""
    if layer.skip_first_layer_pe:
        queries = layer.self_attn(q=queries, k=queries, v=queries)
    else:
        q = queries + query_pe
        queries = queries + layer.self_attn(q=q, k=q, v=queries)
    queries = layer.norm1(queries)
    keys_pe = keys + key_pe
    attn_out = token_to_image(layer.cross_attn_token_to_image, queries + query_pe, keys_pe, keys)
    queries = layer.norm2(queries + attn_out)
    queries = layer.norm3(queries + layer.mlp(queries))
    attn_out = image_to_token(layer.cross_attn_image_to_token, keys_pe, queries + query_pe, queries)
    return queries, layer.norm4(keys + attn_out)


def transformer(sam, prefix: dec.ImagePrefix, tokens: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`decoder.transformer`, factored: (queries (B, T, C), keys (B, N, C))."""
    t = sam.mask_decoder.transformer
    queries, keys = tokens, prefix.keys
    for layer in t.layers:
        queries, keys = _block(layer, queries, keys, tokens, prefix.pe)
    attn_out = token_to_image(t.final_attn_token_to_image, queries + tokens, keys + prefix.pe, keys)
    return t.norm_final_attn(queries + attn_out), keys


def decode_tokens(
    sam, prefix: dec.ImagePrefix, sparse: Tensor, multimask: bool = True
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`decoder.decode_tokens` through the factored transformer."""
    queries, keys = transformer(sam, prefix, dec.prompt_tokens(sam, sparse))
    iou_pred, hyper_in = dec.heads(sam, queries)
    if multimask:
        iou_pred, hyper_in = iou_pred[:, 1:], hyper_in[:, 1:]
    return iou_pred, hyper_in, keys


def _upscale_pixels(conv, x: Tensor) -> Tensor:
    """A kernel = stride = 2 ``ConvTranspose2d`` on channels-last pixels ``x`` (P, C_in):
    (P, 2 * 2 * C_out), each pixel's 2x2 output block (rows, columns) with channels last."""
    c_in, c_out = conv.weight.shape[:2]
    weight = conv.weight.permute(0, 2, 3, 1).reshape(c_in, 4 * c_out)
    return torch.addmm(conv.bias.repeat(4), x, weight)


def region_pixels(keys: Tensor, region: tuple[int, int]) -> Tensor:
    """(B, rows, cols, C): the transformer's output ``keys`` (B, 4096, C) on the 64x64 grid,
    channels last, top-left ``region`` only (a view)."""
    b, _, c = keys.shape
    rows, cols = region
    return keys.view(b, dec.EMBED_SIDE, dec.EMBED_SIDE, c)[:, :rows, :cols]


def _is_stock_upscaling(upscaling) -> bool:
    """segment-anything's ``output_upscaling``: ConvTranspose2d(k=s=2), LayerNorm2d, GELU,
    ConvTranspose2d(k=s=2), GELU (what :func:`masks_from_pixels` rewrites)."""
    from segment_anything.modeling.common import LayerNorm2d
    from torch import nn

    kinds = (nn.ConvTranspose2d, LayerNorm2d, nn.GELU, nn.ConvTranspose2d, nn.GELU)
    return (
        isinstance(upscaling, nn.Sequential)
        and len(upscaling) == len(kinds)
        and all(isinstance(m, k) for m, k in zip(upscaling, kinds))
        and all(m.kernel_size == m.stride == (2, 2) for m in (upscaling[0], upscaling[3]))
        and all(m.approximate == "none" for m in (upscaling[2], upscaling[4]))
    )


def masks_from_pixels(sam, pixels: Tensor, hyper_in: Tensor) -> Tensor:
    """:func:`decoder.masks_from_src` on channels-last ``pixels`` (B, rows, cols, C): low-res
    logits (B, M, 4 * rows, 4 * cols). The two transposed convolutions run as matrix
    products with the bias fused, the channel LayerNorm as ``layer_norm`` over the last
    dimension, and pixels are put in image order once at the end (M = 3 channels by then)."""
    upscaling = sam.mask_decoder.output_upscaling
    if not _is_stock_upscaling(upscaling):  # another model's head: run it as it is
        return dec.masks_from_src(sam, pixels.permute(0, 3, 1, 2), hyper_in)
    up1, norm, act1, up2, act2 = upscaling
    b, rows, cols, c = pixels.shape
    x = _upscale_pixels(up1, pixels.reshape(-1, c)).view(-1, up1.weight.shape[1])  # (4P, C/4)
    x = act1(torch.nn.functional.layer_norm(x, norm.weight.shape, norm.weight, norm.bias, norm.eps))
    x = act2(_upscale_pixels(up2, x))  # (4P, 4 * C/8)
    m = hyper_in.shape[1]
    x = x.view(b, rows * cols * 16, -1)  # (B, 16 * rows * cols, C/8), pixels in block order
    logits = torch.bmm(hyper_in, x.transpose(1, 2))  # (B, M, 16 * rows * cols)
    # pixel (4y + 2i + k, 4x + 2j + l) of embedding pixel (y, x): blocks i, j, then k, l
    logits = logits.view(b, m, rows, cols, 2, 2, 2, 2).permute(0, 1, 2, 4, 6, 3, 5, 7)
    return logits.reshape(b, m, 4 * rows, 4 * cols)


def decode_masks(sam, keys: Tensor, hyper_in: Tensor, region: tuple[int, int]) -> Tensor:
    """:func:`decoder.decode_masks` computed channels last (:func:`masks_from_pixels`)."""
    return masks_from_pixels(sam, region_pixels(keys, region), hyper_in)
