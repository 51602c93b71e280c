"""The shared kernels: in-place GEMM accumulation and race-free column sums."""
from __future__ import annotations

import numpy as np
import pytest

from tinyalbert.nn import Albert, AlbertConfig, init_params, kernels
from tinyalbert.nn.kernels import column_sum_, matmul_tn_accumulate_
from tinyalbert.nn.linear import SKINNY_ROWS, linear_forward


def test_numpy_blas_gemm_is_found():
    # NumPy's Linux wheels ship OpenBLAS; without it the code falls back to NumPy in blocks (slower, same sums)
    assert set(kernels._GEMM) == {np.dtype(np.float32), np.dtype(np.float64)}


@pytest.fixture(params=["blas", "numpy"])
def gemm_path(request, monkeypatch):
    """Run a test through the BLAS call and again with the NumPy fallback forced, as on a platform without it.

    The fallback's scratch is shrunk to a few rows so that its block loop runs several times.
    """
    if request.param == "numpy":
        monkeypatch.setattr(kernels, "_GEMM", {})
        monkeypatch.setattr(kernels, "FALLBACK_SCRATCH_BYTES", 3 * 64 * 8)
    return request.param


def _operands(shape, dtype, seed=0):
    K, M, N = shape
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((K, M)).astype(dtype), rng.standard_normal((K, N)).astype(dtype),
            rng.standard_normal((M, N)).astype(dtype))


def _reference(c, a, b):
    return c.astype(np.float64) + a.astype(np.float64).T @ b.astype(np.float64)


TOLERANCE = {np.float32: 1e-5, np.float64: 1e-13}
SHAPES = [(1, 1, 1), (7, 5, 3), (130, 64, 33), (3, 67, 1), (257, 2, 129)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_matmul_tn_accumulate(gemm_path, dtype, shape):
    a, b, c = _operands(shape, dtype)
    expected = _reference(c, a, b)
    matmul_tn_accumulate_(c, a, b)
    assert c.dtype == dtype
    assert np.abs(c - expected).max() <= TOLERANCE[dtype] * np.abs(expected).max()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_blas_and_numpy_fallback_agree(monkeypatch, dtype, shape):
    a, b, c = _operands(shape, dtype, seed=1)
    through_blas = c.copy()
    matmul_tn_accumulate_(through_blas, a, b)
    monkeypatch.setattr(kernels, "_GEMM", {})
    in_one_block = c.copy()
    matmul_tn_accumulate_(in_one_block, a, b)
    # one block: exactly NumPy's c + a^T b, bit for bit
    assert np.array_equal(in_one_block, c + a.T @ b)
    monkeypatch.setattr(kernels, "FALLBACK_SCRATCH_BYTES", 1)       # one row of c at a time
    row_by_row = c.copy()
    matmul_tn_accumulate_(row_by_row, a, b)
    scale = TOLERANCE[dtype] * np.abs(_reference(c, a, b)).max()
    assert np.abs(through_blas - in_one_block).max() <= scale
    assert np.abs(row_by_row - in_one_block).max() <= scale


def _strided_views(a, b, c):
    """The same values in other layouts: Fortran order, every other element of a bigger array, and c as a
    column block of a wider array (whose other columns must not change)."""
    wide = np.full((c.shape[0], c.shape[1] + 5), 7.0, c.dtype)
    wide[:, 2:2 + c.shape[1]] = c
    spaced_b = np.zeros((b.shape[0], 2 * b.shape[1]), b.dtype)
    spaced_b[:, ::2] = b
    return np.asfortranarray(a), spaced_b[:, ::2], wide[:, 2:2 + c.shape[1]], wide


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_strided_operands_give_the_same_sum(gemm_path, dtype, shape):
    a, b, c = _operands(shape, dtype, seed=2)
    expected = _reference(c, a, b)
    a2, b2, c2, wide = _strided_views(a, b, c)
    matmul_tn_accumulate_(c2, a2, b2)
    assert np.abs(c2 - expected).max() <= TOLERANCE[dtype] * np.abs(expected).max()
    assert (wide[:, :2] == 7).all() and (wide[:, 2 + c.shape[1]:] == 7).all()


@pytest.mark.parametrize("shape", [(0, 4, 3), (5, 0, 3), (5, 4, 0)])
def test_empty_products_change_nothing(gemm_path, shape, capfd):
    a, b, c = _operands(shape, np.float32)
    before = c.copy()
    matmul_tn_accumulate_(c, a, b)
    assert np.array_equal(c, before)
    assert capfd.readouterr().err == ""          # OpenBLAS prints its parameter errors to stderr


@pytest.mark.parametrize("a_shape, b_shape, c_shape", [
    ((7, 5), (6, 3), (5, 3)),       # K differs
    ((7, 5), (7, 3), (4, 3)),       # c has too few rows
    ((7, 5), (7, 3), (5, 4)),       # c has too many columns
    ((7, 5), (7, 3), (3, 5)),       # c transposed
    ((7, 5), (7, 3), (15,)),        # c flat, with the right number of elements
    ((7, 5, 1), (7, 3), (5, 3)),    # a 3-D
])
def test_shapes_that_disagree_are_refused_before_any_write(gemm_path, a_shape, b_shape, c_shape):
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal(a_shape), rng.standard_normal(b_shape)
    c = rng.standard_normal(c_shape)
    before = c.copy()
    with pytest.raises(ValueError, match="matmul_tn_accumulate_: .*(shapes do not agree|2-D)"):
        matmul_tn_accumulate_(c, a, b)
    assert np.array_equal(c, before)


@pytest.mark.parametrize("dtypes", [(np.float32, np.float64, np.float32), (np.float64, np.float64, np.float32),
                                    (np.float32, np.float32, np.float64), (np.int64, np.int64, np.int64),
                                    (np.float16, np.float16, np.float16)])
def test_dtypes_must_be_one_float_type(gemm_path, dtypes):
    c = np.zeros((5, 3), dtypes[0])
    a, b = np.ones((7, 5), dtypes[1]), np.ones((7, 3), dtypes[2])
    with pytest.raises(TypeError, match="share one dtype"):
        matmul_tn_accumulate_(c, a, b)
    assert not c.any()


def test_read_only_or_overlapping_output_is_refused(gemm_path):
    a, b, c = _operands((7, 5, 5), np.float64)
    frozen = c.copy()
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        matmul_tn_accumulate_(frozen, a, b)
    square = np.ones((5, 5))
    with pytest.raises(ValueError, match="overlaps"):
        matmul_tn_accumulate_(square, square, b[:5])
    with pytest.raises(ValueError, match="overlaps"):
        matmul_tn_accumulate_(square, a[:5], square)
    assert (square == 1).all()


def test_training_step_is_the_same_through_the_numpy_fallback(monkeypatch):
    """A whole loss_and_grads, every weight gradient accumulated by the fallback, matches the BLAS path."""
    c = AlbertConfig(vocab_size=50, embedding_size=8, hidden_size=16, num_attention_heads=2, intermediate_size=32,
                     num_hidden_layers=2)
    model = Albert(c, init_params(c, dtype=np.float64))
    ids = np.array([[2, 7, 9, 3, 11], [2, 5, 6, 3, 0]])
    labels = np.array([[-100, 7, -100, -100, 4], [-100, -100, 6, -100, -100]])
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    args = (ids, None, mask, labels, np.array([0, 1]))
    loss, grads = model.loss_and_grads(*args)
    monkeypatch.setattr(kernels, "_GEMM", {})
    loss_fallback, grads_fallback = model.loss_and_grads(*args)
    assert loss_fallback == pytest.approx(loss, rel=1e-14)
    for name, g in grads.items():
        assert np.allclose(grads_fallback[name], g, rtol=1e-12, atol=1e-14 * np.abs(g).max()), name


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
