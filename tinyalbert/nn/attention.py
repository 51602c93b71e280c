"""Multi-head self-attention, ALBERT's post-LN attention block (the reference's `AlbertAttention`).

Shapes: x (B, T, H); NH heads of size hs = H / NH.
    q, k, v = x Wq^T + bq, x Wk^T + bk, x Wv^T + bv          each (B, T, H) -> (B, NH, T, hs)
    P       = masked_softmax(q k^T / sqrt(hs) + mask)         (B, NH, T, T)
    P'      = Dropout_a(P)                                    (B, NH, T, T)   training only, else P' = P
    ctx     = P' v, heads merged back                         (B, T, H)
    out     = LayerNorm(x + Dropout_h(ctx Wd^T + bd))         (B, T, H)
Backward (from d_out):
    d_sum   = LayerNorm'(d_out)           d_sum flows to the residual x and, through Dropout_h', to `dense`
    d_ctx   = dense'(Dropout_h'(d_sum))   dP' = d_ctx v^T      dv = P'^T d_ctx
    dP      = Dropout_a'(dP')             d_s = softmax'(dP)   dq = d_s k           dk = d_s^T q
    dx      = d_sum + query'(dq) + key'(dk) + value'(dv)
Dropout (dropout.py) is the reference's two: attention_probs_dropout_prob on the probabilities,
hidden_dropout_prob on the projected output.  The cache keeps P and the mask, not P': the backward
rebuilds P' for dv with one pass rather than keeping a second (B, NH, T, T) array per layer run.

Parameter names (inside `attention.`): query, key, value, dense (.weight, .bias), LayerNorm.
"""
from __future__ import annotations

import numpy as np

from .dropout import Dropout, apply_dropout_mask, dropout_backward, dropout_forward
from .layernorm import layernorm_backward, layernorm_forward
from .linear import linear_backward, linear_forward
from .softmax import masked_softmax_backward, masked_softmax_forward


def heads(x: np.ndarray, num_heads: int) -> np.ndarray:
    """(B, T, H) -> (B, NH, T, hs): a view, no copy.  x must be C-contiguous.

    Head h of sequence b is the (T, hs) matrix x[b, :, h*hs:(h+1)*hs]: its rows are H apart in memory,
    which BLAS takes as the matrix's leading dimension, so np.matmul hands every head to BLAS as it is
    (measured: as fast as on contiguous per-head copies, without making them).
    Writing a product into heads(out) likewise lays the heads out merged, as (B, T, H).
    """
    B, T, H = x.shape
    return x.reshape(B, T, num_heads, H // num_heads).transpose(0, 2, 1, 3)


def _transposed(a: np.ndarray) -> np.ndarray:
    """Swap the last two axes (a view)."""
    return a.swapaxes(-1, -2)


def self_attention_forward(x: np.ndarray, key_mask: np.ndarray, p: dict[str, np.ndarray], num_heads: int,
                           eps: float, dropout: Dropout | None = None) -> tuple[np.ndarray, np.ndarray, tuple]:
    """x: (B, T, H), key_mask: (B, T) additive (0 or MIN), p: the attention's params by local name.

    dropout: training's rates and Generator (None: no dropout, as at inference).
    Returns (out (B, T, H), attention probabilities P (B, NH, T, T), before their dropout, cache).
    """
    hs = x.shape[-1] // num_heads
    q, q_cache = linear_forward(x, p["query.weight"], p["query.bias"])
    k, k_cache = linear_forward(x, p["key.weight"], p["key.bias"])
    v, v_cache = linear_forward(x, p["value.weight"], p["value.bias"])
    qh, kh, vh = heads(q, num_heads), heads(k, num_heads), heads(v, num_heads)
    scores = np.matmul(qh, _transposed(kh))                                 # (B, NH, T, T)
    probs, softmax_cache = masked_softmax_forward(scores, key_mask, hs)
    probs_dropout = output_dropout = None
    attended = probs
    if dropout is not None:
        attended, probs_dropout = dropout_forward(probs, dropout.attention, dropout.rng)
    ctx = np.empty_like(q)
    np.matmul(attended, vh, out=heads(ctx, num_heads))                      # heads merged: (B, T, H)
    del attended
    projected, dense_cache = linear_forward(ctx, p["dense.weight"], p["dense.bias"])
    if dropout is not None:     # in place: projected is a fresh array that no cache holds
        projected, output_dropout = dropout_forward(projected, dropout.hidden, dropout.rng, out=projected)
    out, ln_cache = layernorm_forward(projected, p["LayerNorm.weight"], p["LayerNorm.bias"], eps, residual=x)
    cache = (q_cache, k_cache, v_cache, qh, kh, vh, probs, softmax_cache, dense_cache, ln_cache, num_heads,
             probs_dropout, output_dropout)
    return out, probs, cache


def self_attention_backward(dout: np.ndarray, cache: tuple, g: dict[str, np.ndarray]) -> np.ndarray:
    """dout: (B, T, H)  ->  dx: (B, T, H); accumulates the attention's parameter gradients into g."""
    (q_cache, k_cache, v_cache, qh, kh, vh, probs, softmax_cache, dense_cache, ln_cache, num_heads,
     probs_dropout, output_dropout) = cache
    dsum = layernorm_backward(dout, ln_cache, g["LayerNorm.weight"], g["LayerNorm.bias"])
    dctx = linear_backward(dropout_backward(dsum, output_dropout), dense_cache, g["dense.weight"], g["dense.bias"])
    dctx_h = heads(np.ascontiguousarray(dctx), num_heads)
    dprobs = np.matmul(dctx_h, _transposed(vh))                 # the gradient of P' (of P without dropout)
    dv = np.empty(dout.shape, dtype=dout.dtype)
    np.matmul(_transposed(apply_dropout_mask(probs, probs_dropout)), dctx_h, out=heads(dv, num_heads))
    dprobs = dropout_backward(dprobs, probs_dropout, out=dprobs)
    dscores = masked_softmax_backward(dprobs, softmax_cache)
    dq, dk = np.empty_like(dv), np.empty_like(dv)
    np.matmul(dscores, kh, out=heads(dq, num_heads))
    np.matmul(_transposed(dscores), qh, out=heads(dk, num_heads))
    dx = linear_backward(dq, q_cache, g["query.weight"], g["query.bias"])
    dx += linear_backward(dk, k_cache, g["key.weight"], g["key.bias"])
    dx += linear_backward(dv, v_cache, g["value.weight"], g["value.bias"])
    dx += dsum.reshape(dout.shape)
    return dx


def attention_cache_tensors(cache: tuple) -> dict[str, np.ndarray]:
    """The arrays a forward cached, by name, for tools that look inside (tinyalbert.diff); read-only views.

    input, query, key, value, context, residual_sum (= input + dense(context), after its dropout): (B, T, H);
    probabilities: (B, NH, T, T), before their dropout.
    """
    q_cache, _, _, qh, kh, vh, probs, _, dense_cache, ln_cache, *_ = cache
    B, T, H = dense_cache[0].shape
    merged = {name: h.transpose(0, 2, 1, 3).reshape(B, T, H) for name, h in (("query", qh), ("key", kh),
                                                                              ("value", vh))}
    return {"input": q_cache[0], **merged, "probabilities": probs, "context": dense_cache[0],
            "residual_sum": ln_cache[0].reshape(B, T, H)}
