"""Scaled, masked softmax over the keys: the heart of attention.

For one query row of raw scores s (length T), key mask m (1 = attend, 0 = padding):
    z_j = s_j / sqrt(hs) + (1 - m_j) * MIN          MIN = most negative finite value of the dtype
    p_j = exp(z_j - max(z)) / sum_k exp(z_k - max(z))
Backward (the softmax Jacobian applied to dp, then the scale):
    dz_j = p_j (dp_j - sum_k dp_k p_k)               ds_j = dz_j / sqrt(hs)

As in the reference, masked keys get MIN added (not -10000), so their
probability is exactly zero; the maximum is the row's true maximum (never a
fixed constant), so a row of huge negative numbers still normalises.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .kernels import REDUCTION_FASTMATH


def additive_key_mask(attention_mask: np.ndarray, dtype: type) -> np.ndarray:
    """(B, T) of 1/0  ->  (B, T) of 0 / finfo(dtype).min, as the reference builds it: (1 - m) * MIN."""
    m = attention_mask.astype(dtype)
    return (dtype(1.0) - m) * np.finfo(dtype).min


@njit(parallel=True, cache=True)
def _shifted_scores_kernel(scores, key_mask, sqrt_hs, z):
    """z = scores / sqrt(hs) + key_mask - (row maximum of that), so every exp(z) is at most 1.

    scores, z: (B, NH, Tq, Tk); key_mask: (B, Tk) additive.
    """
    B, NH, Tq, Tk = scores.shape
    for bh in prange(B * NH):
        b = bh // NH
        h = bh % NH
        for i in range(Tq):
            zmax = scores.dtype.type(-np.inf)
            for j in range(Tk):
                v = scores[b, h, i, j] / sqrt_hs + key_mask[b, j]
                z[b, h, i, j] = v
                if v > zmax:
                    zmax = v
            for j in range(Tk):
                z[b, h, i, j] -= zmax


@njit(parallel=True, cache=True, fastmath=REDUCTION_FASTMATH)
def _normalize_rows_kernel(e):
    """e[..., j] /= sum_j e[..., j], in place, for every row of the last axis.  e: (N, Tk)."""
    N, Tk = e.shape
    one = e.dtype.type(1.0)
    for n in prange(N):
        total = e.dtype.type(0.0)
        for j in range(Tk):
            total += e[n, j]
        inv = one / total
        for j in range(Tk):
            e[n, j] *= inv


@njit(parallel=True, cache=True, fastmath=REDUCTION_FASTMATH)
def _masked_softmax_backward_kernel(dprobs, probs, sqrt_hs, dscores):
    B, NH, Tq, Tk = probs.shape
    for bh in prange(B * NH):
        b = bh // NH
        h = bh % NH
        for i in range(Tq):
            dot = probs.dtype.type(0.0)
            for j in range(Tk):
                dot += dprobs[b, h, i, j] * probs[b, h, i, j]
            for j in range(Tk):
                dscores[b, h, i, j] = probs[b, h, i, j] * (dprobs[b, h, i, j] - dot) / sqrt_hs


def masked_softmax_forward(scores: np.ndarray, key_mask: np.ndarray, head_size: int) -> tuple[np.ndarray, tuple]:
    """scores: (B, NH, T, T) = q k^T, key_mask: (B, T) additive  ->  probs: (B, NH, T, T)."""
    scores = np.ascontiguousarray(scores)
    probs = np.empty_like(scores)
    sqrt_hs = scores.dtype.type(np.sqrt(head_size))
    _shifted_scores_kernel(scores, key_mask.astype(scores.dtype, copy=False), sqrt_hs, probs)
    np.exp(probs, out=probs)        # NumPy's SIMD exp: a scalar exp in the Numba loop cost ~10x more
    _normalize_rows_kernel(probs.reshape(-1, probs.shape[-1]))
    return probs, (probs, sqrt_hs)


def masked_softmax_backward(dprobs: np.ndarray, cache: tuple) -> np.ndarray:
    """dprobs: (B, NH, T, T)  ->  dscores: (B, NH, T, T), the gradient of the raw q k^T."""
    probs, sqrt_hs = cache
    dscores = np.empty_like(probs)
    _masked_softmax_backward_kernel(np.ascontiguousarray(dprobs), probs, sqrt_hs, dscores)
    return dscores
