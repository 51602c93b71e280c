"""Inputs shared by the per-op checks (test_ops_numerical.py, tier 1; test_ops_torch.py, tier 2).

Small but non-degenerate: B=2, T=5, H=8, 2 heads, I=12, E=6, V=11, 7 positions; padding in the
attention mask; random weights of std 0.2-0.4 so activations are O(1); LayerNorm weights 1 + noise.
"""
from __future__ import annotations

import numpy as np

from tinyalbert.nn.config import AlbertConfig

B, T, H, NH, I, E, V, P = 2, 5, 8, 2, 12, 6, 11, 7
HS = H // NH
EPS = 1e-12
PAD = 0

TOKEN_TYPES = np.array([[0, 0, 1, 1, 1],
                        [0, 0, 0, 1, 1]])
ATTENTION_MASK = np.array([[1, 1, 1, 0, 0],
                           [1, 1, 1, 1, 1]])

# The value and output projections of each layer's two residual branches get half the std, so
# that x stays the larger part of x + branch(x): with equal weights, a stack of random post-LN
# layers quickly makes all tokens of a sequence almost equal (see test_ops_numerical.test_encoder).
RESIDUAL_BRANCH_OUTPUTS = ("attention.value.weight", "attention.dense.weight", "ffn_output.weight")


def randomised(shapes: dict[str, tuple[int, ...]], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Non-degenerate float64 values: matrices std 0.4 (0.2 for RESIDUAL_BRANCH_OUTPUTS), LayerNorm
    weights 1 + noise, biases ~0.2."""
    out = {}
    for name, shape in shapes.items():
        if name.endswith("LayerNorm.weight") or name.endswith("layer_norm.weight"):
            out[name] = 1.0 + 0.2 * rng.standard_normal(shape)
        elif len(shape) == 1:
            out[name] = 0.2 * rng.standard_normal(shape)
        elif name.endswith(RESIDUAL_BRANCH_OUTPUTS):
            out[name] = 0.2 * rng.standard_normal(shape)
        else:
            out[name] = 0.4 * rng.standard_normal(shape)
    return out


def small_config(**overrides) -> AlbertConfig:
    """The per-op checks' config: 3 applications of one shared layer unless overridden."""
    kw = dict(vocab_size=V, embedding_size=E, hidden_size=H, num_attention_heads=NH, intermediate_size=I,
              num_hidden_layers=3, max_position_embeddings=P)
    kw.update(overrides)
    return AlbertConfig(**kw)
