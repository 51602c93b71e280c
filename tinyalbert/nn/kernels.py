"""Small kernels shared by several ops: bias add (`add_bias_`, `transpose_add_bias`), column sums
(`column_sum_`) and C += A^T B through BLAS (`matmul_tn_accumulate_`).

Every Numba kernel here is compiled once per dtype (float32 and float64) and cached on
disk (`cache=True`), so a second process starts without compiling.  Kernels
compute in the dtype of their inputs: `x.dtype.type(c)` makes a constant of that
dtype, so float32 work stays float32 without a copy of the code.

Race-freedom: a `prange` loop may only write to memory that belongs to its own
iteration.  Reductions over rows (bias gradients) therefore go through
`column_sum_`, which gives each of a fixed number of row blocks its own partial
sum and adds the partials afterwards (LayerNorm's weight gradients use the same
scheme in layernorm.py).  The number of blocks does not depend on the thread
count, so results are bitwise reproducible on any machine.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

# Reassociation lets LLVM vectorise reductions; we keep IEEE inf/nan semantics
# (no 'nnan'/'ninf'), because masked attention scores are huge finite numbers.
REDUCTION_FASTMATH = {"reassoc", "contract", "nsz"}

# Row blocks for race-free column reductions (fixed, so results do not depend on the thread count).
N_ROW_BLOCKS = 16


def as_rows(a: np.ndarray) -> np.ndarray:
    """(..., C) -> a C-contiguous (N, C) view (a copy only when `a` is not contiguous): the kernels' layout."""
    return np.ascontiguousarray(a).reshape(-1, a.shape[-1])


@njit(parallel=True, cache=True)
def add_bias_(y: np.ndarray, bias: np.ndarray) -> None:
    """y[n, :] += bias, in place.  y: (N, C), bias: (C,)."""
    N, C = y.shape
    for n in prange(N):
        for c in range(C):
            y[n, c] += bias[c]


@njit(parallel=True, cache=True)
def transpose_add_bias(y_t: np.ndarray, bias: np.ndarray, y: np.ndarray) -> None:
    """y = y_t^T + bias.  y_t: (C, N), bias: (C,) or empty (no bias), y: (N, C).

    Columns go in blocks of 64, so that each thread reads whole cache lines of y_t and writes rows of y.
    """
    C, N = y_t.shape
    block = 64
    has_bias = bias.shape[0] > 0
    for cb in prange((C + block - 1) // block):
        c0 = cb * block
        c1 = min(C, c0 + block)
        for n in range(N):
            for c in range(c0, c1):
                v = y_t[c, n]
                if has_bias:
                    v += bias[c]
                y[n, c] = v


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


# ---- C += A^T B through BLAS, without a temporary ------------------------------------------------
# A weight gradient is a sum over uses, dW += dy^T x.  NumPy can only compute dy^T x into a new array
# and then add it: for ALBERT-xxlarge's FFN that is a 268 MB temporary and one more pass over it, 12
# times per step.  BLAS gemm accumulates in place (beta = 1), so we call the OpenBLAS that NumPy
# itself ships (same library, same thread pool) through ctypes when it can be found.
_CBLAS_ROW_MAJOR, _CBLAS_NO_TRANS, _CBLAS_TRANS = 101, 111, 112


def _load_numpy_cblas():
    import ctypes
    import glob
    import os

    libdir = os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs")
    for path in sorted(glob.glob(os.path.join(libdir, "libscipy_openblas*.so*"))):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for suffix, int_t in (("64_", ctypes.c_int64), ("", ctypes.c_int)):
            try:
                fns = {np.dtype(np.float32): getattr(lib, "scipy_cblas_sgemm" + suffix),
                       np.dtype(np.float64): getattr(lib, "scipy_cblas_dgemm" + suffix)}
            except AttributeError:
                continue
            for dtype, fn in fns.items():
                real = ctypes.c_float if dtype == np.float32 else ctypes.c_double
                fn.restype = None
                fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int, int_t, int_t, int_t, real,
                               ctypes.c_void_p, int_t, ctypes.c_void_p, int_t, real, ctypes.c_void_p, int_t]
            return fns
    return {}


_GEMM = _load_numpy_cblas()


def matmul_tn_accumulate_(c: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """c += a^T b, in place.  a: (K, M), b: (K, N), c: (M, N); all C-contiguous and of one dtype."""
    fn = _GEMM.get(c.dtype)
    if (fn is None or a.dtype != c.dtype or b.dtype != c.dtype or not c.flags.c_contiguous
            or not a.flags.c_contiguous or not b.flags.c_contiguous or not c.flags.writeable):
        c += a.T @ b
        return
    K, M = a.shape
    N = b.shape[1]
    if K == 0:
        return
    fn(_CBLAS_ROW_MAJOR, _CBLAS_TRANS, _CBLAS_NO_TRANS, M, N, K, 1.0, a.ctypes.data, M, b.ctypes.data, N,
       1.0, c.ctypes.data, N)
