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
# itself ships (same library, same thread pool) through ctypes when it can be found: in NumPy's Linux
# wheels (NumPy >= 2).  Elsewhere (conda's MKL, macOS's Accelerate, older NumPy) `_GEMM` is empty and
# `_accumulate_with_numpy` gives the same sums in bounded scratch memory, a little slower.
# scipy.linalg.blas's gemm would do the same portably and as fast alone, but a pip install brings a
# second OpenBLAS with a thread pool of its own, which slowed training steps 2-5x on 2 cores and would be
# a new dependency: measured in docs/performance.md, "In-place weight-gradient accumulation".
_CBLAS_ROW_MAJOR, _CBLAS_NO_TRANS, _CBLAS_TRANS = 101, 111, 112
GEMM_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
# The NumPy fallback computes c in row blocks whose scratch holds at most this many bytes (or one row).
FALLBACK_SCRATCH_BYTES = 16 * 2 ** 20


def _load_numpy_cblas() -> tuple[dict, int]:
    """({dtype: cblas gemm of NumPy's OpenBLAS}, the largest dimension its integers hold); ({}, 0) if not found."""
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
            return fns, 2 ** (8 * ctypes.sizeof(int_t) - 1) - 1
    return {}, 0


_GEMM, _GEMM_MAX_DIM = _load_numpy_cblas()


def _check_accumulate_operands(c: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """Raise unless c += a^T b is well defined and writes nothing but c: shapes, dtypes, writeability, overlap."""
    for name, x in (("c", c), ("a", a), ("b", b)):
        if not isinstance(x, np.ndarray) or x.ndim != 2:
            raise ValueError(f"matmul_tn_accumulate_: {name} must be a 2-D NumPy array, "
                             f"got {getattr(x, 'shape', type(x).__name__)}")
    if c.dtype not in GEMM_DTYPES or a.dtype != c.dtype or b.dtype != c.dtype:
        raise TypeError(f"matmul_tn_accumulate_: c, a and b must share one dtype, float32 or float64; "
                        f"got {c.dtype}, {a.dtype}, {b.dtype}")
    if b.shape[0] != a.shape[0] or c.shape != (a.shape[1], b.shape[1]):
        raise ValueError(f"matmul_tn_accumulate_: shapes do not agree: c {c.shape} += a{a.shape}^T b{b.shape} "
                         "needs a (K, M), b (K, N) and c (M, N)")
    if not c.flags.writeable:
        raise ValueError("matmul_tn_accumulate_: c is read-only")
    if np.may_share_memory(c, a) or np.may_share_memory(c, b):
        raise ValueError("matmul_tn_accumulate_: c overlaps a or b, so the sum would read what it writes")


def _blas_takes(c: np.ndarray, a: np.ndarray, b: np.ndarray) -> bool:
    """Whether the row-major gemm call below reads a and b and writes c exactly where they are.

    It passes lda = M, ldb = N, ldc = N: the strides of C-contiguous (M, N)-shaped memory, and C-contiguity
    is what NumPy guarantees with `flags.c_contiguous` (a dimension of length 1 may carry any stride, which
    the call never uses).  Element alignment, and dimensions that fit BLAS's integers, complete the check.
    """
    return (all(x.flags.c_contiguous and x.flags.aligned for x in (c, a, b))
            and max(*a.shape, b.shape[1]) <= _GEMM_MAX_DIM)


def _accumulate_with_numpy(c: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """c += a^T b with NumPy, a block of c's rows at a time, so the temporary stays small.  Any strides."""
    M, N = c.shape
    rows = max(1, FALLBACK_SCRATCH_BYTES // max(1, N * c.itemsize))
    scratch = np.empty((min(rows, M), N), dtype=c.dtype)
    for m0 in range(0, M, rows):
        m1 = min(M, m0 + rows)
        block = scratch[:m1 - m0]
        np.matmul(a[:, m0:m1].T, b, out=block)
        c[m0:m1] += block


def matmul_tn_accumulate_(c: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """c += a^T b, in place.  a: (K, M), b: (K, N), c: (M, N); one dtype, float32 or float64.

    Shapes, dtypes, c's writeability and overlap are checked first (ValueError / TypeError): the BLAS call
    trusts its arguments and would otherwise write outside c.  C-contiguous aligned operands go to the gemm
    of NumPy's OpenBLAS with beta = 1; anything else, or a NumPy without that library, to
    `_accumulate_with_numpy`.  The two agree to rounding (gemm adds into c block by block of K).
    """
    _check_accumulate_operands(c, a, b)
    K, M = a.shape
    N = b.shape[1]
    if K == 0 or c.size == 0:
        return                      # nothing to add; and BLAS rejects a leading dimension of 0
    gemm = _GEMM.get(c.dtype)
    if gemm is not None and _blas_takes(c, a, b):
        gemm(_CBLAS_ROW_MAJOR, _CBLAS_TRANS, _CBLAS_NO_TRANS, M, N, K, 1.0, a.ctypes.data, M, b.ctypes.data, N,
             1.0, c.ctypes.data, N)
    else:
        _accumulate_with_numpy(c, a, b)
