"""The shared kernels: in-place GEMM accumulation and race-free column sums."""
from __future__ import annotations

import numpy as np
import pytest

from tinyalbert.nn.kernels import _GEMM, column_sum_, matmul_tn_accumulate_
from tinyalbert.nn.linear import SKINNY_ROWS, linear_forward


def test_numpy_blas_gemm_is_found():
    # NumPy's wheels ship OpenBLAS; without it the code falls back to a temporary (slower, same result)
    assert set(_GEMM) == {np.dtype(np.float32), np.dtype(np.float64)}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1, 1), (7, 5, 3), (130, 64, 33)])
def test_matmul_tn_accumulate(dtype, shape):
    K, M, N = shape
    rng = np.random.default_rng(0)
    a = rng.standard_normal((K, M)).astype(dtype)
    b = rng.standard_normal((K, N)).astype(dtype)
    c = rng.standard_normal((M, N)).astype(dtype)
    expected = c.astype(np.float64) + a.astype(np.float64).T @ b.astype(np.float64)
    matmul_tn_accumulate_(c, a, b)
    tol = 1e-5 if dtype == np.float32 else 1e-13
    assert np.abs(c - expected).max() <= tol * np.abs(expected).max()
    # a strided operand takes the NumPy fallback and gives the same sum
    c2 = np.zeros((M, N), dtype)
    matmul_tn_accumulate_(c2, np.asfortranarray(a), b)
    assert np.allclose(c2, a.T @ b, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows", [0, 1, 67, SKINNY_ROWS, SKINNY_ROWS + 1])
@pytest.mark.parametrize("out_features, in_features", [(70, 130), (130, 70)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_forward_both_operand_orders(dtype, rows, out_features, in_features, with_bias):
    """Few rows and a weight no taller than wide take y^T = W x^T plus transpose_add_bias; the rest x W^T."""
    rng = np.random.default_rng(rows)
    x = rng.standard_normal((rows, in_features)).astype(dtype)
    weight = rng.standard_normal((out_features, in_features)).astype(dtype)
    bias = rng.standard_normal(out_features).astype(dtype) if with_bias else None
    y, _ = linear_forward(x.reshape(1, rows, in_features), weight, bias)
    expected = x.astype(np.float64) @ weight.astype(np.float64).T + (0 if bias is None else bias)
    tol = 1e-5 if dtype == np.float32 else 1e-13
    assert y.shape == (1, rows, out_features) and y.dtype == dtype
    assert np.abs(y[0] - expected).max(initial=0) <= tol * max(np.abs(expected).max(initial=0), 1)


@pytest.mark.parametrize("rows", [1, 3, 16, 17, 1000])
def test_column_sum_accumulates_and_is_deterministic(rows):
    rng = np.random.default_rng(rows)
    x = rng.standard_normal((rows, 37))
    out = np.ones(37)
    column_sum_(x, out)
    assert np.allclose(out, 1 + x.sum(axis=0), rtol=1e-13, atol=1e-13)
    again = np.ones(37)
    column_sum_(x, again)
    assert np.array_equal(out, again)


def test_training_alone_switches_malloc_to_keep_freed_memory():
    """Inference leaves malloc alone (peak RSS); the first training step asks it to keep freed buffers."""
    import os
    import subprocess
    import sys

    code = """
import numpy as np
from tinyalbert import AlbertConfig, Albert, init_params, memory
c = AlbertConfig(vocab_size=50, embedding_size=8, hidden_size=16, num_attention_heads=2, intermediate_size=32,
                 num_hidden_layers=2)
m = Albert(c, init_params(c))
ids = np.array([[2, 7, 9, 3]])
m.forward(ids)
after_forward = memory._applied
labels = np.array([[-100, 7, -100, -100]])
m.loss_and_grads(ids, None, None, labels, np.array([0]))
print(after_forward, memory._applied)
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"]
