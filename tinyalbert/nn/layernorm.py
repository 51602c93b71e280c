"""LayerNorm over the last axis, and its fused form with a residual add in front.

ALBERT has four: embeddings (E), attention (H), full layer (H) and MLM head (E).
All use the biased variance and eps = 1e-12 inside the square root.

Forward, for one row x of length C:
    mu = mean(x)          var = mean((x - mu)^2)          rstd = 1 / sqrt(var + eps)
    xhat = (x - mu) * rstd                                 y = xhat * w + b
Backward, with g = dy * w:
    dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
    dw = sum over rows of dy * xhat                        db = sum over rows of dy
The cache keeps x, mean and rstd; xhat is recomputed rather than stored.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .kernels import N_ROW_BLOCKS, REDUCTION_FASTMATH, _sum_blocks_into_, as_rows


@njit(parallel=True, cache=True, fastmath=REDUCTION_FASTMATH)
def _layernorm_forward_kernel(x, residual, weight, bias, eps, summed, out, mean, rstd):
    """If residual has rows, normalise x + residual (and store that sum in `summed`); else normalise x."""
    N, C = x.shape
    add_residual = residual.shape[0] > 0
    inv_c = x.dtype.type(1.0 / C)
    one = x.dtype.type(1.0)
    for n in prange(N):
        s = x.dtype.type(0.0)
        if add_residual:
            for c in range(C):
                v = x[n, c] + residual[n, c]
                summed[n, c] = v
                s += v
        else:
            for c in range(C):
                s += x[n, c]
        mu = s * inv_c
        src = summed if add_residual else x
        ss = x.dtype.type(0.0)
        for c in range(C):
            d = src[n, c] - mu
            ss += d * d
        r = one / np.sqrt(ss * inv_c + eps)
        mean[n] = mu
        rstd[n] = r
        for c in range(C):
            out[n, c] = (src[n, c] - mu) * r * weight[c] + bias[c]


@njit(parallel=True, cache=True, fastmath=REDUCTION_FASTMATH)
def _layernorm_backward_kernel(dy, x, weight, mean, rstd, dx, dweight_blocks, dbias_blocks):
    N, C = x.shape
    nblocks = dweight_blocks.shape[0]
    inv_c = x.dtype.type(1.0 / C)
    for blk in prange(nblocks):
        for c in range(C):
            dweight_blocks[blk, c] = 0
            dbias_blocks[blk, c] = 0
        for n in range(blk * N // nblocks, (blk + 1) * N // nblocks):
            mu = mean[n]
            r = rstd[n]
            mean_g = x.dtype.type(0.0)
            mean_gx = x.dtype.type(0.0)
            for c in range(C):
                xhat = (x[n, c] - mu) * r
                g = dy[n, c] * weight[c]
                mean_g += g
                mean_gx += g * xhat
                dweight_blocks[blk, c] += dy[n, c] * xhat
                dbias_blocks[blk, c] += dy[n, c]
            mean_g *= inv_c
            mean_gx *= inv_c
            for c in range(C):
                xhat = (x[n, c] - mu) * r
                dx[n, c] = r * (dy[n, c] * weight[c] - mean_g - xhat * mean_gx)


def layernorm_forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float,
                      residual: np.ndarray | None = None) -> tuple[np.ndarray, tuple]:
    """x: (..., C), weight and bias: (C,)  ->  y = LayerNorm(x [+ residual]): (..., C).

    With `residual`, the add and the normalisation are one pass over memory
    (the post-LN residual `LayerNorm(a + b)` of every ALBERT layer); the
    backward of the add is then just dx flowing to both inputs.
    """
    x2 = as_rows(x)
    N, C = x2.shape
    out = np.empty_like(x2)
    mean = np.empty(N, dtype=x2.dtype)
    rstd = np.empty(N, dtype=x2.dtype)
    if residual is None:
        summed = x2
        _layernorm_forward_kernel(x2, x2[:0], weight, bias, x2.dtype.type(eps), x2[:0], out, mean, rstd)
    else:
        summed = np.empty_like(x2)
        _layernorm_forward_kernel(x2, as_rows(residual), weight, bias, x2.dtype.type(eps), summed, out, mean,
                                  rstd)
    return out.reshape(x.shape), (summed, weight, mean, rstd)


def layernorm_backward(dy: np.ndarray, cache: tuple, dweight: np.ndarray, dbias: np.ndarray) -> np.ndarray:
    """dy: (..., C)  ->  dx: (..., C) (also the gradient of the residual, if there was one).

    Accumulates dweight and dbias (+=).
    """
    x2, weight, mean, rstd = cache
    dy2 = as_rows(dy)
    N, C = x2.shape
    dx = np.empty_like(x2)
    nblocks = min(N_ROW_BLOCKS, max(N, 1))
    dweight_blocks = np.empty((nblocks, C), dtype=x2.dtype)
    dbias_blocks = np.empty((nblocks, C), dtype=x2.dtype)
    _layernorm_backward_kernel(dy2, x2, weight, mean, rstd, dx, dweight_blocks, dbias_blocks)
    _sum_blocks_into_(dweight_blocks, dweight)
    _sum_blocks_into_(dbias_blocks, dbias)
    return dx.reshape(dy.shape)
