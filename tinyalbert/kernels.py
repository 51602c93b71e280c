"""Small Numba kernels shared by several ops: bias add, residual add, column sums.

Every kernel here is compiled once per dtype (float32 and float64) and cached on
disk (`cache=True`), so a second process starts without compiling.  Kernels
compute in the dtype of their inputs: `x.dtype.type(c)` makes a constant of that
dtype, so float32 work stays float32 without a copy of the code.

Race-freedom: a `prange` loop may only write to memory that belongs to its own
iteration.  Reductions over rows (bias gradients, LayerNorm weight gradients)
therefore go through `column_sum`, which gives each of a fixed number of row
blocks its own partial sum and adds the partials afterwards.  The number of
blocks does not depend on the thread count, so results are bitwise
reproducible on any machine.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

# Reassociation lets LLVM vectorise reductions; we keep IEEE inf/nan semantics
# (no 'nnan'/'ninf'), because masked attention scores are huge finite numbers.
REDUCTION_FASTMATH = {"reassoc", "contract", "nsz"}

# Row blocks for race-free column reductions (fixed, so results do not depend on the thread count).
N_ROW_BLOCKS = 16


@njit(parallel=True, cache=True)
def add_bias_(y: np.ndarray, bias: np.ndarray) -> None:
    """y[n, :] += bias, in place.  y: (N, C), bias: (C,)."""
    N, C = y.shape
    for n in prange(N):
        for c in range(C):
            y[n, c] += bias[c]


@njit(parallel=True, cache=True, fastmath=REDUCTION_FASTMATH)
def _column_sum_blocks(x: np.ndarray, partial: np.ndarray) -> None:
    N, C = x.shape
    nblocks = partial.shape[0]
    for blk in prange(nblocks):
        start = blk * N // nblocks
        stop = (blk + 1) * N // nblocks
        for c in range(C):
            partial[blk, c] = 0
        for n in range(start, stop):
            for c in range(C):
                partial[blk, c] += x[n, c]


@njit(parallel=True, cache=True, fastmath=REDUCTION_FASTMATH)
def _sum_blocks_into_(partial: np.ndarray, out: np.ndarray) -> None:
    nblocks, C = partial.shape
    for c in prange(C):
        s = partial[0, c]
        for blk in range(1, nblocks):
            s += partial[blk, c]
        out[c] += s


def column_sum_(x: np.ndarray, out: np.ndarray) -> None:
    """out += x.sum(axis=0), race-free and deterministic.  x: (N, C), out: (C,)."""
    partial = np.empty((min(N_ROW_BLOCKS, max(x.shape[0], 1)), x.shape[1]), dtype=x.dtype)
    _column_sum_blocks(x, partial)
    _sum_blocks_into_(partial, out)
