"""Embeddings: lookup tables for word, position and token type, summed, then LayerNorm (all in E).

Shapes: input_ids, token_type_ids (B, T); tables (V, E), (P, E), (2, E).
    x = word[input_ids] + type[token_type_ids] + position[0..T-1]        (B, T, E)
    e = LayerNorm_emb(x)                                                  (B, T, E)
The projection E -> H that follows (`embedding_hidden_mapping_in`) belongs to the encoder.

Backward of a lookup out = table[ids] is a scatter-add: d_table[ids[n]] += d_out[n].
Repeated ids add up.  The scatter runs in parallel over blocks of columns, so no
two threads ever write the same element (a `+=` into shared rows inside
`prange` over tokens would race when an id repeats).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from .layernorm import layernorm_backward, layernorm_forward

COLUMN_BLOCK = 16


@njit(parallel=True, cache=True)
def _scatter_add_rows_kernel(ids, dout, dtable, skip_id):
    """dtable[ids[n], :] += dout[n, :] for every n with ids[n] != skip_id."""
    N, C = dout.shape
    nblocks = (C + COLUMN_BLOCK - 1) // COLUMN_BLOCK
    for blk in prange(nblocks):
        c0 = blk * COLUMN_BLOCK
        c1 = min(C, c0 + COLUMN_BLOCK)
        for n in range(N):
            row = ids[n]
            if row == skip_id:
                continue
            for c in range(c0, c1):
                dtable[row, c] += dout[n, c]


def embedding_forward(ids: np.ndarray, table: np.ndarray) -> tuple[np.ndarray, tuple]:
    """ids: (...) int, table: (V, E)  ->  out = table[ids]: (..., E)."""
    return table[ids], (ids,)


def embedding_backward(dout: np.ndarray, cache: tuple, dtable: np.ndarray, padding_idx: int | None = None) -> None:
    """Scatter-add dout (..., E) into dtable (V, E) at the looked-up rows.

    padding_idx mirrors PyTorch's nn.Embedding(padding_idx=...): that row receives no lookup gradient.
    """
    (ids,) = cache
    flat_ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
    skip = -1 if padding_idx is None else padding_idx
    _scatter_add_rows_kernel(flat_ids, np.ascontiguousarray(dout).reshape(flat_ids.size, -1), dtable, skip)


def embeddings_forward(input_ids: np.ndarray, token_type_ids: np.ndarray, p: dict[str, np.ndarray],
                       eps: float) -> tuple[np.ndarray, tuple]:
    """(B, T) ids  ->  LayerNorm(word + token type + position): (B, T, E).  p is keyed by names inside `embeddings.`."""
    T = input_ids.shape[1]
    positions = np.arange(T)
    word, word_cache = embedding_forward(input_ids, p["word_embeddings.weight"])
    ttype, type_cache = embedding_forward(token_type_ids, p["token_type_embeddings.weight"])
    pos, pos_cache = embedding_forward(positions, p["position_embeddings.weight"])
    x = word + ttype      # the reference's order of the sums
    x += pos
    out, ln_cache = layernorm_forward(x, p["LayerNorm.weight"], p["LayerNorm.bias"], eps)
    batch = input_ids.shape[0]
    return out, (word_cache, type_cache, pos_cache, ln_cache, batch)


def embeddings_backward(dout: np.ndarray, cache: tuple, g: dict[str, np.ndarray], padding_idx: int | None) -> None:
    """dout: (B, T, E); accumulates into the three tables' gradients and the LayerNorm's."""
    word_cache, type_cache, pos_cache, ln_cache, batch = cache
    dx = layernorm_backward(dout, ln_cache, g["LayerNorm.weight"], g["LayerNorm.bias"])
    embedding_backward(dx, word_cache, g["word_embeddings.weight"], padding_idx)
    embedding_backward(dx, type_cache, g["token_type_embeddings.weight"])
    # every sequence in the batch looks up the same positions 0..T-1
    embedding_backward(dx.sum(axis=0), pos_cache, g["position_embeddings.weight"])
