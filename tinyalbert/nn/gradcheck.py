"""Tools to check a hand-written backward: relative error and float64 central differences (cs231n style).

    numerical df/dx_i ~= (f(x + h e_i) - f(x - h e_i)) / (2 h)

Use float64 and a random upstream gradient `dout`: checking f(x) = sum(out * dout)
with dout all ones hides bugs, because the true gradients of softmax and
LayerNorm with respect to their inputs are then exactly zero.
"""
from __future__ import annotations

from typing import Callable

import numpy as np


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max(max|a|, max|b|): one number per tensor, 0 when both are zero."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    scale = max(np.abs(a).max(initial=0.0), np.abs(b).max(initial=0.0))
    return 0.0 if scale == 0 else float(np.abs(a - b).max() / scale)


def numerical_gradient(f: Callable[[], float], x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Central-difference gradient of the scalar f() with respect to the array x, perturbed in place."""
    grad = np.zeros_like(x, dtype=np.float64)
    it = np.nditer(x, flags=["multi_index"], op_flags=[["readwrite"]])
    while not it.finished:
        i = it.multi_index
        old = x[i]
        x[i] = old + h
        fp = f()
        x[i] = old - h
        fm = f()
        x[i] = old
        grad[i] = (fp - fm) / (2 * h)
        it.iternext()
    return grad


def numerical_gradient_of_output(forward: Callable[[], np.ndarray], x: np.ndarray, dout: np.ndarray,
                                 h: float = 1e-6) -> np.ndarray:
    """Gradient of sum(forward() * dout) with respect to x: what a backward given `dout` must return."""
    return numerical_gradient(lambda: float(np.sum(forward() * dout)), x, h)
