"""The feed-forward block of an ALBERT layer: H -> I, gelu_new, I -> H.

Shapes: x (B, T, H), ffn.weight (I, H), ffn_output.weight (H, I).
    a = x W1^T            (B, T, I)        bias + gelu fused: u = gelu_new(a + b1)
    y = u W2^T + b2       (B, T, H)
Backward: du = ffn_output'(dy);  da = du * gelu'(a + b1)  (and db1 = sum da);  dx = ffn'(da).
The residual add and `full_layer_layer_norm` that follow belong to the layer (layer.py).
"""
from __future__ import annotations

import numpy as np

from .activations import gelu_backward, gelu_forward
from .linear import linear_backward, linear_forward


def feedforward_forward(x: np.ndarray, p: dict[str, np.ndarray],
                        activation: str = "gelu_new") -> tuple[np.ndarray, tuple]:
    """x: (B, T, H), p: {ffn.weight, ffn.bias, ffn_output.weight, ffn_output.bias}  ->  y: (B, T, H)."""
    a, ffn_cache = linear_forward(x, p["ffn.weight"], None)
    u, gelu_cache = gelu_forward(a, p["ffn.bias"], activation)
    y, out_cache = linear_forward(u, p["ffn_output.weight"], p["ffn_output.bias"])
    return y, (ffn_cache, gelu_cache, out_cache)


def feedforward_backward(dy: np.ndarray, cache: tuple, g: dict[str, np.ndarray]) -> np.ndarray:
    """dy: (B, T, H)  ->  dx: (B, T, H); accumulates the four gradients into g."""
    ffn_cache, gelu_cache, out_cache = cache
    du = linear_backward(dy, out_cache, g["ffn_output.weight"], g["ffn_output.bias"])
    da = gelu_backward(du, gelu_cache, g["ffn.bias"])
    return linear_backward(da, ffn_cache, g["ffn.weight"], None)


def feedforward_cache_tensors(cache: tuple) -> dict[str, np.ndarray]:
    """The arrays a forward cached, by name (read-only): input (B, T, H); activation = gelu(x W1^T + b1) (B, T, I)."""
    ffn_cache, _, out_cache = cache
    return {"input": ffn_cache[0], "activation": out_cache[0].reshape(*ffn_cache[0].shape[:-1], -1)}
