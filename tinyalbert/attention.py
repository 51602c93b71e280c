"""Multi-head self-attention, ALBERT's post-LN attention block (the reference's `AlbertAttention`).

Shapes: x (B, T, H); NH heads of size hs = H / NH.
    q, k, v = x Wq^T + bq, x Wk^T + bk, x Wv^T + bv          each (B, T, H) -> (B, NH, T, hs)
    P       = masked_softmax(q k^T / sqrt(hs) + mask)         (B, NH, T, T)
    ctx     = P v, heads merged back                          (B, T, H)
    out     = LayerNorm(x + ctx Wd^T + bd)                    (B, T, H)
Backward (from d_out):
    d_sum   = LayerNorm'(d_out)           d_sum flows to the residual x and to `dense`
    d_ctx   = dense'(d_sum)               dP = d_ctx v^T       dv = P^T d_ctx
    d_s     = softmax'(dP)                dq = d_s k           dk = d_s^T q
    dx      = d_sum + query'(dq) + key'(dk) + value'(dv)

Parameter names (inside `attention.`): query, key, value, dense (.weight, .bias), LayerNorm.
"""
from __future__ import annotations

import numpy as np

from .layernorm import layernorm_backward, layernorm_forward
from .linear import linear_backward, linear_forward
from .softmax import masked_softmax_backward, masked_softmax_forward


def split_heads(x: np.ndarray, num_heads: int) -> np.ndarray:
    """(B, T, H) -> (B, NH, T, hs), a contiguous copy.

    Contiguous per-head matrices let NumPy hand every head's product to BLAS
    (on a strided 4-D view it falls back to a loop that is ~100x slower).
    """
    B, T, H = x.shape
    return np.ascontiguousarray(x.reshape(B, T, num_heads, H // num_heads).transpose(0, 2, 1, 3))


def merge_heads(x: np.ndarray) -> np.ndarray:
    """(B, NH, T, hs) -> (B, T, H), a contiguous copy."""
    B, NH, T, hs = x.shape
    return np.ascontiguousarray(x.transpose(0, 2, 1, 3)).reshape(B, T, NH * hs)


def _bmm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Batched matrix product over (B, NH): (B, NH, m, k) @ (B, NH, k, n), as a 3-D matmul that BLAS runs."""
    B, NH = a.shape[:2]
    out = np.matmul(a.reshape(B * NH, *a.shape[2:]), b.reshape(B * NH, *b.shape[2:]))
    return out.reshape(B, NH, *out.shape[1:])


def self_attention_forward(x: np.ndarray, key_mask: np.ndarray, p: dict[str, np.ndarray], num_heads: int,
                           eps: float) -> tuple[np.ndarray, np.ndarray, tuple]:
    """x: (B, T, H), key_mask: (B, T) additive (0 or MIN), p: the attention's params by local name.

    Returns (out (B, T, H), attention probabilities (B, NH, T, T), cache).
    """
    hs = x.shape[-1] // num_heads
    q, q_cache = linear_forward(x, p["query.weight"], p["query.bias"])
    k, k_cache = linear_forward(x, p["key.weight"], p["key.bias"])
    v, v_cache = linear_forward(x, p["value.weight"], p["value.bias"])
    qh, kh, vh = split_heads(q, num_heads), split_heads(k, num_heads), split_heads(v, num_heads)
    scores = _bmm(qh, kh.transpose(0, 1, 3, 2))
    probs, softmax_cache = masked_softmax_forward(scores, key_mask, hs)
    ctx = merge_heads(_bmm(probs, vh))
    projected, dense_cache = linear_forward(ctx, p["dense.weight"], p["dense.bias"])
    out, ln_cache = layernorm_forward(projected, p["LayerNorm.weight"], p["LayerNorm.bias"], eps, residual=x)
    cache = (q_cache, k_cache, v_cache, qh, kh, vh, probs, softmax_cache, dense_cache, ln_cache, num_heads)
    return out, probs, cache


def self_attention_backward(dout: np.ndarray, cache: tuple, g: dict[str, np.ndarray]) -> np.ndarray:
    """dout: (B, T, H)  ->  dx: (B, T, H); accumulates the attention's parameter gradients into g."""
    q_cache, k_cache, v_cache, qh, kh, vh, probs, softmax_cache, dense_cache, ln_cache, num_heads = cache
    dsum = layernorm_backward(dout, ln_cache, g["LayerNorm.weight"], g["LayerNorm.bias"])
    dctx = linear_backward(dsum, dense_cache, g["dense.weight"], g["dense.bias"])
    dctx_h = split_heads(dctx, num_heads)
    dprobs = _bmm(dctx_h, vh.transpose(0, 1, 3, 2))
    dvh = _bmm(probs.transpose(0, 1, 3, 2), dctx_h)
    dscores = masked_softmax_backward(dprobs, softmax_cache)
    dqh = _bmm(dscores, kh)
    dkh = _bmm(dscores.transpose(0, 1, 3, 2), qh)
    dx = dsum.reshape(dout.shape).copy()
    dx += linear_backward(merge_heads(dqh), q_cache, g["query.weight"], g["query.bias"])
    dx += linear_backward(merge_heads(dkh), k_cache, g["key.weight"], g["key.bias"])
    dx += linear_backward(merge_heads(dvh), v_cache, g["value.weight"], g["value.bias"])
    return dx
