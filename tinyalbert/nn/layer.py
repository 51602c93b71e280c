"""One ALBERT layer (post-LN), the block that the encoder applies L times with the same weights.

    a   = LayerNorm_attn(x + SelfAttention(x))           attention.py
    out = LayerNorm_full(a + FeedForward(a))             feedforward.py
Backward: d_sum = LayerNorm_full'(d_out); d_a = d_sum + FeedForward'(d_sum); dx = SelfAttention'(d_a).

`p` and `g` hold the layer's params and gradients by their names inside the layer
("attention.query.weight", "ffn.weight", "full_layer_layer_norm.bias", ...).
"""
from __future__ import annotations

import numpy as np

from .attention import attention_cache_tensors, self_attention_backward, self_attention_forward
from .feedforward import feedforward_backward, feedforward_cache_tensors, feedforward_forward
from .layernorm import layernorm_backward, layernorm_forward
from .params import sub


def albert_layer_forward(x: np.ndarray, key_mask: np.ndarray, p: dict[str, np.ndarray], num_heads: int,
                         eps: float, activation: str = "gelu_new") -> tuple[np.ndarray, np.ndarray, tuple]:
    """x: (B, T, H)  ->  (out (B, T, H), attention probabilities (B, NH, T, T), cache)."""
    a, probs, attn_cache = self_attention_forward(x, key_mask, sub(p, "attention."), num_heads, eps)
    f, ffn_cache = feedforward_forward(a, p, activation)
    out, ln_cache = layernorm_forward(f, p["full_layer_layer_norm.weight"], p["full_layer_layer_norm.bias"], eps,
                                      residual=a)
    return out, probs, (attn_cache, ffn_cache, ln_cache)


def albert_layer_backward(dout: np.ndarray, cache: tuple, g: dict[str, np.ndarray]) -> np.ndarray:
    """dout: (B, T, H)  ->  dx: (B, T, H); accumulates (+=) every layer gradient into g."""
    attn_cache, ffn_cache, ln_cache = cache
    dsum = layernorm_backward(dout, ln_cache, g["full_layer_layer_norm.weight"], g["full_layer_layer_norm.bias"])
    da = dsum + feedforward_backward(dsum, ffn_cache, g)
    return self_attention_backward(da, attn_cache, sub(g, "attention."))


def layer_cache_tensors(cache: tuple) -> dict[str, np.ndarray]:
    """One layer run's cached arrays by name (read-only): the attention's (attention.attention_cache_tensors),
    then "attention_output" (the FFN's input) and "ffn_activation" (B, T, I)."""
    attn_cache, ffn_cache, _ = cache
    ffn = feedforward_cache_tensors(ffn_cache)
    return {**attention_cache_tensors(attn_cache), "attention_output": ffn["input"],
            "ffn_activation": ffn["activation"]}
