"""Dropout, the inverted kind: in training, zero each element with probability p and scale the rest by 1/(1-p).

For x of any shape, with one independent draw per element:
    keep ~ Bernoulli(1 - p)                      (bool, the shape of x)
    y    = x * keep / (1 - p)                    E[y] = x, so inference (no dropout) needs no rescaling
Backward: y is linear in x with a diagonal Jacobian, so
    dx   = dy * keep / (1 - p)                   the same mask and the same scale

ALBERT's places (the reference's modeling_albert.py, and Google's modeling.py), with
p_h = hidden_dropout_prob and p_a = attention_probs_dropout_prob:
    e     = Dropout_h(LayerNorm(word + type + position))              body.py, after the embeddings
    P'    = Dropout_a(softmax(q k^T / sqrt(hs) + mask));  ctx = P' v  attention.py
    a     = LayerNorm(x + Dropout_h(ctx Wd^T + bd))                   attention.py, before residual + LN
    out   = LayerNorm(a + Dropout_h(FFN(a)))                          layer.py, before residual + LN
(transformers' PyTorch AlbertLayer builds the FFN's dropout module but never calls it; Google's
ALBERT and transformers' TF port apply it, and so do we.)  The sequence classifier adds its own
dropout on the pooled vector (classifier.py).

Dropout runs only when training (`Albert.loss_and_grads`, `AlbertClassifier.loss_and_grads`);
`forward` and the forward-only `Albert.loss` never draw a mask.  Masks come from the NumPy
Generator the caller passes, drawn in the order of the forward pass: the embeddings' mask
(B, T, E), then for every layer run the attention probabilities' (B, NH, T, T), the attention
output's (B, T, H) and the FFN output's (B, T, H).  A rate of 0 draws nothing, so a model with
no dropout computes bitwise what it computes without this module, and leaves the Generator alone.

Each element's draw is one float64 u ~ U[0, 1) from the Generator, kept when u >= p, so the
masks do not depend on the dtype: a float32 and a float64 run with the same seed drop the same
elements.  The mask is stored as bool (1 byte an element, a quarter of a float32 copy); applying
it is one fused pass (`_masked_scale_kernel`).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from .kernels import as_rows

# draws per call to Generator.random: bounds the float64 temporary (8 MB) for big masks.  The
# stream of doubles is the same whether drawn in one call or in chunks.
DRAW_CHUNK = 1 << 20

# keeps pretraining's and fine-tuning's dropout streams apart from their data streams
# (data.py seeds with [seed, split, step]; a split is a small integer, never this).
DROPOUT_STREAM = zlib.crc32(b"dropout")


@dataclass(frozen=True)
class Dropout:
    """One training step's dropout: the config's two rates and the Generator the masks come from."""

    hidden: float               # hidden_dropout_prob: embeddings, attention output, FFN output
    attention: float            # attention_probs_dropout_prob: the attention probabilities
    rng: np.random.Generator

    @classmethod
    def for_training(cls, config, rng: np.random.Generator | None) -> "Dropout | None":
        """The dropout a config asks for, or None when both rates are 0 (then nothing is ever drawn).

        rng None: a fresh, unseeded Generator (masks then differ from run to run, as torch's do).
        """
        hidden, attention = float(config.hidden_dropout_prob), float(config.attention_probs_dropout_prob)
        check_rate(hidden, "hidden_dropout_prob")
        check_rate(attention, "attention_probs_dropout_prob")
        if hidden == 0.0 and attention == 0.0:
            return None
        return cls(hidden, attention, np.random.default_rng() if rng is None else rng)


def step_generator(seed: int, step: int) -> np.random.Generator:
    """The Generator of one training step's dropout masks: a function of (seed, step) alone, so that a
    resumed run draws, step for step, the masks an uninterrupted run draws."""
    return np.random.default_rng([int(seed), DROPOUT_STREAM, int(step)])


def check_rate(p: float, name: str = "dropout") -> None:
    """ValueError (one line) unless 0 <= p < 1: at p = 1 the scale 1/(1-p) is infinite."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {p}")


def draw_keep_mask(rng: np.random.Generator, shape: tuple[int, ...], p: float) -> np.ndarray:
    """bool array of `shape`, each element True (kept) with probability 1 - p: u >= p for u ~ U[0, 1)."""
    keep = np.empty(shape, dtype=bool)
    flat = keep.reshape(-1)
    for start in range(0, flat.size, DRAW_CHUNK):
        stop = min(flat.size, start + DRAW_CHUNK)
        np.greater_equal(rng.random(stop - start), p, out=flat[start:stop])
    return keep


@njit(parallel=True, cache=True)
def _masked_scale_kernel(x, keep, scale, out):
    """out = x * scale where keep, 0 elsewhere.  x, out: (N, C) (out may be x); keep: (N, C) bool."""
    N, C = x.shape
    zero = x.dtype.type(0.0)
    for n in prange(N):
        for c in range(C):
            out[n, c] = x[n, c] * scale if keep[n, c] else zero


def apply_dropout_mask(x: np.ndarray, cache: tuple | None, out: np.ndarray | None = None) -> np.ndarray:
    """x * keep / (1 - p) with a mask already drawn (cache from dropout_forward); x itself when cache is None.

    This one map is the forward (on x) and the backward (on dy).  out: where to write (may be x itself,
    which must then be C-contiguous); default a new array.
    """
    if cache is None:
        return x
    keep, scale = cache
    if out is None:
        out = np.empty(x.shape, dtype=x.dtype)
    elif not out.flags.c_contiguous:
        raise ValueError("apply_dropout_mask writes only into a C-contiguous out")
    _masked_scale_kernel(as_rows(x), keep.reshape(-1, keep.shape[-1]), x.dtype.type(scale),
                         out.reshape(-1, out.shape[-1]))
    return out


def dropout_forward(x: np.ndarray, p: float, rng: np.random.Generator | None,
                    out: np.ndarray | None = None) -> tuple[np.ndarray, tuple | None]:
    """x: any shape  ->  (y = x * keep / (1 - p), cache (keep mask, 1 / (1 - p))).

    p = 0 returns x itself and cache None, and draws nothing.  out: as in apply_dropout_mask (out=x
    drops in place, for an x that nothing else holds).
    """
    check_rate(p)
    if p == 0.0:
        return x, None
    cache = (draw_keep_mask(rng, x.shape, p), 1.0 / (1.0 - p))
    return apply_dropout_mask(x, cache, out), cache


def dropout_backward(dy: np.ndarray, cache: tuple | None, out: np.ndarray | None = None) -> np.ndarray:
    """dy: the shape of y  ->  dx = dy * keep / (1 - p); dy itself when there was no dropout (cache None)."""
    return apply_dropout_mask(dy, cache, out)
