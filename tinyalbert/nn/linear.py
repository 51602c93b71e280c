"""Linear layer: y = x W^T + b, with W stored [out, in] as in the reference checkpoints.

This one op is every projection in ALBERT: the E->H embedding projection
(`embedding_hidden_mapping_in`), q, k, v and the attention output (`dense`),
the feed-forward pair (`ffn`, `ffn_output`), the pooler, the SOP classifier
and the MLM head's `dense`.  The products go to BLAS through NumPy.
"""
from __future__ import annotations

import numpy as np

from .kernels import add_bias_, column_sum_, matmul_tn_accumulate_, transpose_add_bias

# Up to this many rows, OpenBLAS computes y^T = W x^T faster than y = x W^T: measured here 15 % at 128
# rows (a sequence of 128 tokens through xxlarge's weights), 5 % at 512, and slower at 1024.  The
# transpose back costs nothing extra: it is fused into the bias add.  Only weights with no more outputs
# than inputs are swapped: for the tall ones (xxlarge's `ffn`, 16384 x 4096, and the 30000-word decoder)
# OpenBLAS's packing buffers and the transposed temporary cost 57 MiB more peak memory in a forward,
# which would break predict's 1.2 GB budget, for 3 % of its time.
SKINNY_ROWS = 512


def linear_forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None) -> tuple[np.ndarray, tuple]:
    """x: (..., IN), weight: (OUT, IN), bias: (OUT,) or None  ->  y: (..., OUT).

    y = x W^T + b
    """
    x2 = x.reshape(-1, x.shape[-1])
    if x2.shape[0] <= SKINNY_ROWS and weight.shape[0] <= weight.shape[1]:
        y = np.empty((x2.shape[0], weight.shape[0]), dtype=np.result_type(x2, weight))
        transpose_add_bias(weight @ x2.T, np.empty(0, y.dtype) if bias is None else bias, y)
    else:
        y = x2 @ weight.T
        if bias is not None:
            add_bias_(y, bias)
    return y.reshape(*x.shape[:-1], weight.shape[0]), (x, weight)


def linear_backward(dy: np.ndarray, cache: tuple, dweight: np.ndarray,
                    dbias: np.ndarray | None) -> np.ndarray:
    """dy: (..., OUT)  ->  dx: (..., IN); accumulates dweight += dy^T x and dbias += sum(dy).

    dL/dx = dy W          dL/dW = dy^T x          dL/db = sum over rows of dy
    Weight gradients are accumulated (+=), never overwritten, so a weight used
    several times (ALBERT's shared layer) collects the sum of its uses.
    """
    x, weight = cache
    x2 = x.reshape(-1, x.shape[-1])
    dy2 = dy.reshape(-1, dy.shape[-1])
    matmul_tn_accumulate_(dweight, np.ascontiguousarray(dy2), np.ascontiguousarray(x2))     # dW += dy^T x
    if dbias is not None:
        column_sum_(dy2, dbias)
    dx = dy2 @ weight
    return dx.reshape(x.shape)
