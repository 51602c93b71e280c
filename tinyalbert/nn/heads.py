"""The pretraining heads on top of the encoder: pooler, sentence-order (SOP) and masked-LM (MLM).

Pooler (first token only):  pooled = tanh(h[:, 0] Wp^T + bp)               (B, H)
    backward: d_pre = d_pooled * (1 - pooled^2); the gradient reaches h[:, 0] only.
SOP:  logits = pooled Ws^T + bs                                             (B, 2)
MLM:  t = LayerNorm(gelu_new(h Wd^T + bd))                                  (N, E)
      logits = t Wemb^T + b                                                 (N, V)
    The decoder matrix is the word-embedding table (tied), so its gradient
    d_Wemb += d_logits^T t is added to the lookup gradient of the same array.
"""
from __future__ import annotations

import numpy as np

from .activations import gelu_backward, gelu_forward
from .layernorm import layernorm_backward, layernorm_forward
from .linear import linear_backward, linear_forward


def pooler_forward(hidden: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, tuple]:
    """hidden: (B, T, H)  ->  pooled: (B, H) = tanh(hidden[:, 0] W^T + b)."""
    pre, lin_cache = linear_forward(np.ascontiguousarray(hidden[:, 0]), weight, bias)
    pooled = np.tanh(pre)
    return pooled, (lin_cache, pooled, hidden.shape)


def pooler_backward(dpooled: np.ndarray, cache: tuple, dweight: np.ndarray, dbias: np.ndarray) -> np.ndarray:
    """dpooled: (B, H)  ->  dhidden: (B, T, H), zero except at the first token."""
    lin_cache, pooled, hidden_shape = cache
    dpre = dpooled * (1 - pooled * pooled)
    dhidden = np.zeros(hidden_shape, dtype=dpooled.dtype)
    dhidden[:, 0] = linear_backward(dpre, lin_cache, dweight, dbias)
    return dhidden


def sop_head_forward(pooled: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> tuple[np.ndarray, tuple]:
    """pooled: (B, H)  ->  SOP logits (B, 2).  Label 0: segments in the original order; 1: swapped."""
    return linear_forward(pooled, weight, bias)


def sop_head_backward(dlogits: np.ndarray, cache: tuple, dweight: np.ndarray, dbias: np.ndarray) -> np.ndarray:
    """dlogits: (B, 2)  ->  dpooled: (B, H)."""
    return linear_backward(dlogits, cache, dweight, dbias)


def mlm_head_forward(hidden: np.ndarray, p: dict[str, np.ndarray], word_embeddings: np.ndarray,
                     eps: float, activation: str = "gelu_new") -> tuple[np.ndarray, tuple]:
    """hidden: (..., H)  ->  logits over the vocabulary (..., V).  p is keyed by names inside `predictions.`."""
    a, dense_cache = linear_forward(hidden, p["dense.weight"], None)
    u, gelu_cache = gelu_forward(a, p["dense.bias"], activation)
    t, ln_cache = layernorm_forward(u, p["LayerNorm.weight"], p["LayerNorm.bias"], eps)
    logits, decoder_cache = linear_forward(t, word_embeddings, p["bias"])
    return logits, (dense_cache, gelu_cache, ln_cache, decoder_cache)


def mlm_head_backward(dlogits: np.ndarray, cache: tuple, g: dict[str, np.ndarray],
                      dword_embeddings: np.ndarray) -> np.ndarray:
    """dlogits: (..., V)  ->  dhidden: (..., H); the decoder's weight gradient goes into dword_embeddings."""
    dense_cache, gelu_cache, ln_cache, decoder_cache = cache
    dt = linear_backward(dlogits, decoder_cache, dword_embeddings, g["bias"])
    du = layernorm_backward(dt, ln_cache, g["LayerNorm.weight"], g["LayerNorm.bias"])
    da = gelu_backward(du, gelu_cache, g["dense.bias"])
    return linear_backward(da, dense_cache, g["dense.weight"], None)


def mlm_head_cache_tensors(cache: tuple) -> dict[str, np.ndarray]:
    """The MLM head's cached arrays by name (read-only): transform = LayerNorm(gelu(h Wd^T + bd)), the decoder input."""
    return {"transform": cache[3][0]}
