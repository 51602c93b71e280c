"""gelu_new, ALBERT's activation: the tanh approximation of GELU; and the exact erf GELU.

    gelu(x) = 0.5 x (1 + t),   t = tanh(u),   u = sqrt(2/pi) (x + 0.044715 x^3)
    gelu'(x) = 0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)

The exact form, "gelu" in a config.json, is also here because some published
configs name it (transformers then computes it, so parity needs it too):
    gelu(x) = x Phi(x) = 0.5 x (1 + erf(x / sqrt(2)))      gelu'(x) = Phi(x) + x phi(x)

The derivative uses 1 - tanh^2 rather than 1/cosh^2 (cosh overflows for large
|x|), and the kernels are compiled without fastmath: approximate tanh breaks
the gradient check.  tanh itself is NumPy's vectorised one (a scalar tanh in a
Numba loop is ~20x slower and was half of a small model's training step); t is
kept for the backward, which then needs no transcendental at all.  The forward
adds the bias first, so `ffn` + bias + gelu costs three light passes.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .kernels import as_rows, column_sum_

SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
GELU_COEFF = 0.044715
INV_SQRT_2 = 1.0 / math.sqrt(2.0)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
# every `hidden_act` tinyalbert computes, with what it is (config.py checks a config against this)
ACTIVATIONS = {"gelu_new": "ALBERT's tanh GELU", "gelu": "the erf form"}


@njit(parallel=True, cache=True)
def _bias_gelu_inner_kernel(x, bias, pre, u):
    """pre = x + bias (kept for the backward), u = sqrt(2/pi) (pre + 0.044715 pre^3), the argument of tanh."""
    N, C = x.shape
    k = x.dtype.type(SQRT_2_OVER_PI)
    a = x.dtype.type(GELU_COEFF)
    has_bias = bias.shape[0] > 0
    for n in prange(N):
        for c in range(C):
            v = x[n, c]
            if has_bias:
                v += bias[c]
            pre[n, c] = v
            u[n, c] = k * (v + a * v * v * v)


@njit(parallel=True, cache=True)
def _gelu_from_tanh_kernel(pre, t, out):
    """out = 0.5 pre (1 + t), with t = tanh(u) already computed."""
    N, C = pre.shape
    half = pre.dtype.type(0.5)
    one = pre.dtype.type(1.0)
    for n in prange(N):
        for c in range(C):
            out[n, c] = half * pre[n, c] * (one + t[n, c])


@njit(parallel=True, cache=True)
def _bias_gelu_erf_forward_kernel(x, bias, pre, out):
    N, C = x.shape
    half = x.dtype.type(0.5)
    one = x.dtype.type(1.0)
    inv_sqrt2 = x.dtype.type(INV_SQRT_2)
    has_bias = bias.shape[0] > 0
    for n in prange(N):
        for c in range(C):
            v = x[n, c]
            if has_bias:
                v += bias[c]
            pre[n, c] = v
            out[n, c] = half * v * (one + math.erf(v * inv_sqrt2))


@njit(parallel=True, cache=True)
def _gelu_erf_backward_kernel(dy, pre, dx):
    N, C = pre.shape
    half = pre.dtype.type(0.5)
    one = pre.dtype.type(1.0)
    inv_sqrt2 = pre.dtype.type(INV_SQRT_2)
    inv_sqrt_2pi = pre.dtype.type(INV_SQRT_2PI)
    for n in prange(N):
        for c in range(C):
            v = pre[n, c]
            cdf = half * (one + math.erf(v * inv_sqrt2))
            pdf = inv_sqrt_2pi * np.exp(-half * v * v)
            dx[n, c] = dy[n, c] * (cdf + v * pdf)


@njit(parallel=True, cache=True)
def _gelu_backward_kernel(dy, pre, t, dx):
    """dx = dy * gelu'(pre), reusing t = tanh(u) from the forward."""
    N, C = pre.shape
    half = pre.dtype.type(0.5)
    one = pre.dtype.type(1.0)
    three_a = pre.dtype.type(3.0 * GELU_COEFF)
    k = pre.dtype.type(SQRT_2_OVER_PI)
    for n in prange(N):
        for c in range(C):
            v = pre[n, c]
            tn = t[n, c]
            du_dv = k * (one + three_a * v * v)
            dx[n, c] = dy[n, c] * (half * (one + tn) + half * v * (one - tn * tn) * du_dv)


def gelu_forward(x: np.ndarray, bias: np.ndarray | None = None,
                 kind: str = "gelu_new") -> tuple[np.ndarray, tuple]:
    """x: (..., C), optional bias (C,)  ->  gelu(x + bias): (..., C).  The cache holds x + bias.

    kind: "gelu_new" (tanh form, ALBERT's) or "gelu" (exact erf form).
    """
    if kind not in ACTIVATIONS:
        raise ValueError(f"unknown activation {kind!r}; expected one of {tuple(ACTIVATIONS)}")
    x2 = as_rows(x)
    bias = x2[0, :0] if bias is None else bias
    pre = np.empty_like(x2)
    out = np.empty_like(x2)
    if kind == "gelu":
        _bias_gelu_erf_forward_kernel(x2, bias, pre, out)
        return out.reshape(x.shape), (pre, None, kind)
    t = np.empty_like(x2)
    _bias_gelu_inner_kernel(x2, bias, pre, t)
    np.tanh(t, out=t)       # NumPy's SIMD tanh: ~20x faster than a scalar tanh in a Numba loop
    _gelu_from_tanh_kernel(pre, t, out)
    return out.reshape(x.shape), (pre, t, kind)


def gelu_backward(dy: np.ndarray, cache: tuple, dbias: np.ndarray | None = None) -> np.ndarray:
    """dy: (..., C)  ->  dx: (..., C) = dy * gelu'(x + bias); accumulates dbias += sum(dx) if given."""
    pre, t, kind = cache
    dx = np.empty_like(pre)
    if kind == "gelu":
        _gelu_erf_backward_kernel(as_rows(dy), pre, dx)
    else:
        _gelu_backward_kernel(as_rows(dy), pre, t, dx)
    if dbias is not None:
        column_sum_(dx, dbias)
    return dx.reshape(dy.shape)
