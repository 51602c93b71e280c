"""One ALBERT layer (post-LN), the block that the encoder applies L times with the same weights.

    a   = LayerNorm_attn(x + SelfAttention(x))           attention.py (its dropouts inside)
    out = LayerNorm_full(a + Dropout_h(FeedForward(a)))  feedforward.py; Dropout_h only in training
Backward: d_sum = LayerNorm_full'(d_out); d_a = d_sum + FeedForward'(Dropout_h'(d_sum)); dx = SelfAttention'(d_a).

`p` and `g` hold the layer's params and gradients by their names inside the layer
("attention.query.weight", "ffn.weight", "full_layer_layer_norm.bias", ...).
"""
from __future__ import annotations

import numpy as np

from .attention import attention_cache_tensors, self_attention_backward, self_attention_forward
from .dropout import Dropout, dropout_backward, dropout_forward
from .feedforward import feedforward_backward, feedforward_cache_tensors, feedforward_forward
from .layernorm import layernorm_backward, layernorm_forward
from .params import sub


def albert_layer_forward(x: np.ndarray, key_mask: np.ndarray, p: dict[str, np.ndarray], num_heads: int,
                         eps: float, activation: str = "gelu_new",
                         dropout: Dropout | None = None) -> tuple[np.ndarray, np.ndarray, tuple]:
    """x: (B, T, H)  ->  (out (B, T, H), attention probabilities (B, NH, T, T), cache).

    dropout: training's rates and Generator (None: no dropout, as at inference).
    """
    a, probs, attn_cache = self_attention_forward(x, key_mask, sub(p, "attention."), num_heads, eps, dropout)
    f, ffn_cache = feedforward_forward(a, p, activation)
    ffn_dropout = None
    if dropout is not None:     # in place: f is a fresh array that no cache holds
        f, ffn_dropout = dropout_forward(f, dropout.hidden, dropout.rng, out=f)
    out, ln_cache = layernorm_forward(f, p["full_layer_layer_norm.weight"], p["full_layer_layer_norm.bias"], eps,
                                      residual=a)
    return out, probs, (attn_cache, ffn_cache, ln_cache, ffn_dropout)


def albert_layer_backward(dout: np.ndarray, cache: tuple, g: dict[str, np.ndarray]) -> np.ndarray:
    """dout: (B, T, H)  ->  dx: (B, T, H); accumulates (+=) every layer gradient into g."""
    attn_cache, ffn_cache, ln_cache, ffn_dropout = cache
    dsum = layernorm_backward(dout, ln_cache, g["full_layer_layer_norm.weight"], g["full_layer_layer_norm.bias"])
    da = dsum + feedforward_backward(dropout_backward(dsum, ffn_dropout), ffn_cache, g)
    return self_attention_backward(da, attn_cache, sub(g, "attention."))


def layer_cache_tensors(cache: tuple) -> dict[str, np.ndarray]:
    """One layer run's cached arrays by name (read-only): the attention's (attention.attention_cache_tensors),
    then "attention_output" (the FFN's input) and "ffn_activation" (B, T, I)."""
    attn_cache, ffn_cache, *_ = cache
    ffn = feedforward_cache_tensors(ffn_cache)
    return {**attention_cache_tensors(attn_cache), "attention_output": ffn["input"],
            "ffn_activation": ffn["activation"]}
