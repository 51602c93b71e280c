"""gelu_new, ALBERT's activation: the tanh approximation of GELU (not the erf form).

    gelu(x) = 0.5 x (1 + t),   t = tanh(u),   u = sqrt(2/pi) (x + 0.044715 x^3)
    gelu'(x) = 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)

The derivative uses 1 - tanh^2 rather than 1/cosh^2 (cosh overflows for large
|x|), and the kernels are compiled without fastmath: approximate tanh breaks
the gradient check.  The forward optionally adds a bias first, so that
`ffn` + bias + gelu is one pass over the (B*T, I) activations.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .kernels import column_sum_

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
GELU_COEFF = 0.044715


@njit(parallel=True, cache=True)
def _bias_gelu_forward_kernel(x, bias, pre, out):
    """pre = x + bias (stored for the backward; may alias x), out = gelu(pre)."""
    N, C = x.shape
    half = x.dtype.type(0.5)
    one = x.dtype.type(1.0)
    k = x.dtype.type(SQRT_2_OVER_PI)
    a = x.dtype.type(GELU_COEFF)
    has_bias = bias.shape[0] > 0
    for n in prange(N):
        for c in range(C):
            v = x[n, c]
            if has_bias:
                v += bias[c]
            pre[n, c] = v
            out[n, c] = half * v * (one + np.tanh(k * (v + a * v * v * v)))


@njit(parallel=True, cache=True)
def _gelu_backward_kernel(dy, pre, dx):
    N, C = pre.shape
    half = pre.dtype.type(0.5)
    one = pre.dtype.type(1.0)
    three_a = pre.dtype.type(3.0 * GELU_COEFF)
    k = pre.dtype.type(SQRT_2_OVER_PI)
    a = pre.dtype.type(GELU_COEFF)
    for n in prange(N):
        for c in range(C):
            v = pre[n, c]
            t = np.tanh(k * (v + a * v * v * v))
            du_dv = k * (one + three_a * v * v)
            dx[n, c] = dy[n, c] * (half * (one + t) + half * v * (one - t * t) * du_dv)


def _rows(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).reshape(-1, a.shape[-1])


def gelu_forward(x: np.ndarray, bias: np.ndarray | None = None) -> tuple[np.ndarray, tuple]:
    """x: (..., C), optional bias (C,)  ->  gelu_new(x + bias): (..., C).  The cache holds x + bias."""
    x2 = _rows(x)
    pre = np.empty_like(x2)
    out = np.empty_like(x2)
    _bias_gelu_forward_kernel(x2, x2[0, :0] if bias is None else bias, pre, out)
    return out.reshape(x.shape), (pre,)


def gelu_backward(dy: np.ndarray, cache: tuple, dbias: np.ndarray | None = None) -> np.ndarray:
    """dy: (..., C)  ->  dx: (..., C) = dy * gelu'(x + bias); accumulates dbias += sum(dx) if given."""
    (pre,) = cache
    dx = np.empty_like(pre)
    _gelu_backward_kernel(_rows(dy), pre, dx)
    if dbias is not None:
        column_sum_(dx, dbias)
    return dx.reshape(dy.shape)
