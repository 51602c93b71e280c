"""Tier 1 of the correctness suite: every op's backward against float64 central differences.

For an op out = f(x, W, ...), we draw a random upstream gradient `dout`, run the hand-written
backward with it, and compare every gradient it returns (or accumulates) with the central
difference of the scalar sum(f(...) * dout) (tinyalbert.nn.gradcheck).

Why `dout` is random and never all ones: with dout = 1 the check differentiates sum(out).  The
rows of a softmax always sum to 1 and a LayerNorm output (before its affine part) always sums to
0, so d sum(out) / d input is exactly zero for both: a backward that returned zeros, or garbage
that happens to sum to zero per row, would pass.  A random dout weights the outputs differently
and exercises the full Jacobian.

Error measure: tinyalbert.nn.gradcheck.rel_error, max|a - n| / max(max|a|, max|n|) per tensor (a
normwise relative error).  Central differences with h = 1e-6 in float64 have truncation error
~h^2 = 1e-12 and rounding error ~1e-16 |f| / h = 1e-10 |f|; with outputs of order one and
gradients of order one every correct backward lands near 1e-9..1e-11, a wrong formula at 1e-3 or
worse.  The bound is 1e-7 for every op and every tensor.

Inputs are small (B=2, T=5, H=8, 2 heads, I=12, E=6, V=11) and non-degenerate: random weights of
std 0.2-0.4 so activations are O(1), LayerNorm weights 1 + noise, no constant rows (eps = 1e-12),
padding in the attention mask, repeated token ids.

Dropout is checked with fixed masks: every forward draws them from a new Generator with the same
seed, so the function being differentiated is the same one each time (a mask is a constant
factor, not a variable).

Run with `pytest -s` for a per-op summary of the measured errors.
"""
from __future__ import annotations

import numpy as np
import pytest
from op_inputs import ATTENTION_MASK, EPS, HS, NH, PAD, TOKEN_TYPES, B, E, H, I, T, V, randomised, small_config  # noqa: E402

from tinyalbert.nn.activations import gelu_backward, gelu_forward
from tinyalbert.nn.attention import self_attention_backward, self_attention_forward
from tinyalbert.nn.dropout import Dropout, dropout_backward, dropout_forward
from tinyalbert.nn.embeddings import embedding_backward, embedding_forward, embeddings_backward, embeddings_forward
from tinyalbert.nn.encoder import encoder_backward, encoder_forward
from tinyalbert.nn.feedforward import feedforward_backward, feedforward_forward
from tinyalbert.nn.gradcheck import numerical_gradient, numerical_gradient_of_output, rel_error
from tinyalbert.nn.heads import (
    mlm_head_backward,
    mlm_head_forward,
    pooler_backward,
    pooler_forward,
    sop_head_backward,
    sop_head_forward,
)
from tinyalbert.nn.layer import albert_layer_backward, albert_layer_forward
from tinyalbert.nn.layernorm import layernorm_backward, layernorm_forward
from tinyalbert.nn.linear import linear_backward, linear_forward
from tinyalbert.nn.losses import cross_entropy_backward, cross_entropy_forward
from tinyalbert.nn.params import MAPPING, layer_prefix, layer_shapes, param_shapes
from tinyalbert.nn.softmax import additive_key_mask, masked_softmax_backward, masked_softmax_forward

pytestmark = pytest.mark.usefixtures("one_numba_thread")

TOL = 1e-7
H_STEP = 1e-6
MIN_GRAD_SCALE = 1e-2
F64 = np.float64

# Repeated ids (3 three times, 5 twice) and the padding id 0, which sits at the two padded positions.
IDS = np.array([[3, 7, 3, 0, 0],
                [5, 3, 9, 5, 10]])


def key_mask() -> np.ndarray:
    return additive_key_mask(ATTENTION_MASK, F64)


def gradcheck(report, op, forward, backward, tensors, rng, *, zero_grad=None, adjust_numerical=None):
    """Check `backward` against central differences for every array in `tensors`.

    forward() -> (out, cache) reads the arrays of `tensors` (which are perturbed in place);
    backward(dout, cache) -> {name: analytic gradient} for every name in `tensors`.
    zero_grad: {name: reference name} for tensors whose exact gradient is zero (see KEY_BIAS_ZERO):
    both the analytic and the numerical gradient must be below TOL times the scale of the reference
    tensor's gradient.
    adjust_numerical: {name: function} applied to a numerical gradient before the comparison.
    Returns (analytic, numerical).
    """
    zero_grad = zero_grad or {}
    adjust_numerical = adjust_numerical or {}
    out, cache = forward()
    dout = rng.standard_normal(np.shape(out))          # random, never all ones (module docstring)
    analytic = backward(dout, cache)
    assert set(analytic) == set(tensors)
    numerical = {name: numerical_gradient_of_output(lambda: forward()[0], x, dout, H_STEP)
                 for name, x in tensors.items()}
    failures = []
    for name in tensors:
        a, n = analytic[name], adjust_numerical.get(name, lambda g: g)(numerical[name])
        assert a.shape == tensors[name].shape, name
        # Central differences here resolve a gradient to ~1e-9 absolute (rounding of f / h), so a
        # tensor whose gradient is much smaller than MIN_GRAD_SCALE cannot be checked to TOL
        # relative.  The inputs are chosen so that none is (deep random encoders, for one, can make
        # all tokens nearly equal, attention uniform and query/key gradients tiny: test_encoder).
        if name in zero_grad:
            scale = np.abs(analytic[zero_grad[name]]).max()
            assert scale >= MIN_GRAD_SCALE, f"{op}: {zero_grad[name]} gradient too small to set a scale"
            err = max(np.abs(a).max(), np.abs(n).max()) / scale
        else:
            assert np.abs(a).max() >= MIN_GRAD_SCALE, f"{op}: {name} gradient too small to check"
            err = rel_error(a, n)
        report.add("tier1", op, name + (" [exact 0: max|.|/scale]" if name in zero_grad else ""), err)
        if not err <= TOL:
            failures.append(f"{name}: {err:.3e}")
    assert not failures, f"{op}: gradient check failed for " + ", ".join(failures)
    return analytic, numerical


# ---- embeddings ---------------------------------------------------------------------------------------

def test_embedding_lookup_repeated_ids(error_report):
    rng = np.random.default_rng(1)
    table = rng.standard_normal((V, E))

    def backward(dout, cache):
        dtable = np.zeros_like(table)
        embedding_backward(dout, cache, dtable)
        return {"table": dtable}

    analytic, _ = gradcheck(error_report, "embedding lookup (repeated ids)",
                            lambda: embedding_forward(IDS, table), backward, {"table": table}, rng)
    # rows that were never looked up get exactly nothing
    unused = np.setdiff1d(np.arange(V), IDS)
    assert not analytic["table"][unused].any()


def test_embedding_lookup_padding_idx(error_report):
    """padding_idx (PyTorch's nn.Embedding convention): the pad row gets no lookup gradient.

    The pad id occurs in IDS, so the true derivative of the output w.r.t. the pad row is NOT zero;
    the convention deliberately drops it.  So: the pad row of the analytic gradient must be exactly
    zero, and every other row must match central differences.
    """
    rng = np.random.default_rng(2)
    table = rng.standard_normal((V, E))

    def backward(dout, cache):
        dtable = np.zeros_like(table)
        embedding_backward(dout, cache, dtable, padding_idx=PAD)
        return {"table": dtable}

    def drop_pad_row(g):
        g = g.copy()
        g[PAD] = 0
        return g

    analytic, numerical = gradcheck(error_report, "embedding lookup (padding_idx)",
                                    lambda: embedding_forward(IDS, table), backward, {"table": table}, rng,
                                    adjust_numerical={"table": drop_pad_row})
    assert np.abs(numerical["table"][PAD]).max() > 1e-3      # the pad row really is used
    assert not analytic["table"][PAD].any()


@pytest.mark.parametrize("padding_idx", [None, PAD])
def test_embeddings_block(error_report, padding_idx):
    """word + token type + position lookups, summed, then LayerNorm (all in E)."""
    rng = np.random.default_rng(3)
    p = randomised({k.removeprefix("albert.embeddings."): s for k, s in param_shapes(small_config()).items()
                    if k.startswith("albert.embeddings.")}, rng)

    def backward(dout, cache):
        g = {k: np.zeros_like(v) for k, v in p.items()}
        embeddings_backward(dout, cache, g, padding_idx)
        return g

    adjust = {}
    if padding_idx is not None:
        def drop_pad_row(g):
            g = g.copy()
            g[padding_idx] = 0
            return g
        adjust["word_embeddings.weight"] = drop_pad_row
    analytic, numerical = gradcheck(
        error_report, f"embeddings block (padding_idx={padding_idx})",
        lambda: embeddings_forward(IDS, TOKEN_TYPES, p, EPS), backward, p, rng, adjust_numerical=adjust)
    if padding_idx is not None:
        assert not analytic["word_embeddings.weight"][padding_idx].any()
        assert np.abs(numerical["word_embeddings.weight"][padding_idx]).max() > 1e-3
    # positions T..P-1 are not used
    assert not analytic["position_embeddings.weight"][T:].any()


# ---- LayerNorm, linear, GELU, softmax -------------------------------------------------------------------

@pytest.mark.parametrize("with_residual", [False, True])
def test_layernorm(error_report, with_residual):
    rng = np.random.default_rng(4)
    tensors = {"x": 1.5 * rng.standard_normal((B, T, H)) + 0.5,
               "weight": 1.0 + 0.3 * rng.standard_normal(H), "bias": 0.3 * rng.standard_normal(H)}
    if with_residual:
        tensors["residual"] = rng.standard_normal((B, T, H))

    def forward():
        return layernorm_forward(tensors["x"], tensors["weight"], tensors["bias"], EPS,
                                 residual=tensors.get("residual"))

    def backward(dout, cache):
        dw, db = np.zeros(H), np.zeros(H)
        dx = layernorm_backward(dout, cache, dw, db)
        g = {"x": dx, "weight": dw, "bias": db}
        if with_residual:
            g["residual"] = dx          # d(x + residual)/d residual = identity
        return g

    gradcheck(error_report, "LayerNorm" + (" + residual" if with_residual else ""), forward, backward, tensors,
              rng)


@pytest.mark.parametrize("shape, bias", [((H, I), True), ((I, H), False), ((E, H), True)],
                         ids=["H->I", "I->H no bias", "E->H projection"])
def test_linear(error_report, shape, bias):
    n_in, n_out = shape
    rng = np.random.default_rng(5)
    tensors = {"x": rng.standard_normal((B, T, n_in)), "weight": 0.4 * rng.standard_normal((n_out, n_in))}
    if bias:
        tensors["bias"] = 0.2 * rng.standard_normal(n_out)

    def forward():
        return linear_forward(tensors["x"], tensors["weight"], tensors.get("bias"))

    def backward(dout, cache):
        assert dout.shape == (B, T, n_out)
        dw = np.zeros((n_out, n_in))
        db = np.zeros(n_out) if bias else None
        g = {"x": linear_backward(dout, cache, dw, db), "weight": dw}
        if bias:
            g["bias"] = db
        return g

    gradcheck(error_report, f"linear {n_in}->{n_out}" + ("" if bias else " (no bias)"), forward, backward,
              tensors, rng)


@pytest.mark.parametrize("kind", ["gelu_new", "gelu"])
@pytest.mark.parametrize("with_bias", [False, True])
def test_gelu(error_report, with_bias, kind):
    """gelu_new (ALBERT's tanh form) and the exact erf form ("gelu"), optionally with a fused bias."""
    rng = np.random.default_rng(6)
    x = 2.0 * rng.standard_normal((B, T, I))
    x[0, 0, :4] = [-7.0, -3.0, 3.0, 7.0]        # both tails
    tensors = {"x": x}
    if with_bias:
        tensors["bias"] = 0.5 * rng.standard_normal(I)

    def backward(dout, cache):
        db = np.zeros(I) if with_bias else None
        g = {"x": gelu_backward(dout, cache, db)}
        if with_bias:
            g["bias"] = db
        return g

    label = "gelu_new" if kind == "gelu_new" else "gelu (erf form)"
    gradcheck(error_report, label + (" + bias" if with_bias else ""),
              lambda: gelu_forward(tensors["x"], tensors.get("bias"), kind=kind), backward, tensors, rng)


def test_masked_softmax(error_report):
    """Gradient w.r.t. the raw scores q k^T, with padded keys (additive finfo.min mask)."""
    rng = np.random.default_rng(7)
    scores = 3.0 * rng.standard_normal((B, NH, T, T))
    mask = key_mask()

    def backward(dout, cache):
        return {"scores": masked_softmax_backward(dout, cache)}

    analytic, _ = gradcheck(error_report, "masked softmax (padded keys)",
                            lambda: masked_softmax_forward(scores, mask, HS), backward, {"scores": scores}, rng)
    probs, _ = masked_softmax_forward(scores, mask, HS)
    padded = ATTENTION_MASK == 0
    assert not probs[0][..., padded[0]].any(), "padded keys must get probability exactly 0"
    assert not analytic["scores"][0][..., padded[0]].any()
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=0, atol=1e-15)


# ---- attention, feed-forward, layer, encoder ----------------------------------------------------------------

# The key bias's exact gradient is ZERO: adding bk to every key adds q_i . bk to all of query i's
# scores, a constant shift per row that softmax ignores (masked keys included: finfo.min plus a
# finite shift still has probability 0).  Both the analytic and the numerical values are rounding
# noise, so their relative error is meaningless; instead both must be below TOL times the scale of
# the key *weight*'s gradient.
KEY_BIAS_ZERO = {"attention.key.bias": "attention.key.weight"}


def layer_params(rng) -> dict[str, np.ndarray]:
    return randomised(layer_shapes(small_config()), rng)


# Dropout in the block checks: both rates well away from 0 so that the masks matter, and each
# forward draws the same masks (a new Generator with one seed).
RATES = {"no dropout": None, "dropout": (0.3, 0.4)}


def fixed_dropout(rates: tuple[float, float] | None, seed: int = 21) -> Dropout | None:
    """(hidden, attention) rates -> a Dropout whose masks are the same on every call; None -> None."""
    return None if rates is None else Dropout(rates[0], rates[1], np.random.default_rng(seed))


def test_dropout(error_report):
    """y = x * keep / (1 - p) with a fixed mask; dropped elements get exactly zero gradient."""
    rng = np.random.default_rng(20)
    tensors = {"x": rng.standard_normal((B, NH, T, T))}

    def forward():
        return dropout_forward(tensors["x"], 0.4, np.random.default_rng(22))

    analytic, _ = gradcheck(error_report, "dropout (p = 0.4, fixed mask)", forward,
                            lambda dout, cache: {"x": dropout_backward(dout, cache)}, tensors, rng)
    keep, scale = forward()[1]
    assert 0 < keep.sum() < keep.size
    assert not analytic["x"][~keep].any()
    assert scale == 1 / 0.6


@pytest.mark.parametrize("rates", list(RATES.values()), ids=list(RATES))
def test_self_attention(error_report, rates):
    rng = np.random.default_rng(8)
    p = {k.removeprefix("attention."): v for k, v in layer_params(rng).items() if k.startswith("attention.")}
    tensors = {"x": rng.standard_normal((B, T, H)), **p}
    mask = key_mask()

    def forward():
        out, _, cache = self_attention_forward(tensors["x"], mask, p, NH, EPS, fixed_dropout(rates))
        return out, cache

    def backward(dout, cache):
        g = {k: np.zeros_like(v) for k, v in p.items()}
        dx = self_attention_backward(dout, cache, g)
        return {"x": dx, **g}

    gradcheck(error_report, "multi-head self-attention" + (" (dropout)" if rates else ""), forward, backward,
              tensors, rng, zero_grad={"key.bias": "key.weight"})          # see KEY_BIAS_ZERO


def test_feedforward(error_report):
    rng = np.random.default_rng(9)
    p = {k: v for k, v in layer_params(rng).items() if k.startswith("ffn")}
    tensors = {"x": rng.standard_normal((B, T, H)), **p}

    def backward(dout, cache):
        g = {k: np.zeros_like(v) for k, v in p.items()}
        dx = feedforward_backward(dout, cache, g)
        return {"x": dx, **g}

    gradcheck(error_report, "feed-forward block", lambda: feedforward_forward(tensors["x"], p), backward, tensors,
              rng)


@pytest.mark.parametrize("rates", list(RATES.values()), ids=list(RATES))
def test_albert_layer(error_report, rates):
    rng = np.random.default_rng(10)
    p = layer_params(rng)
    tensors = {"x": rng.standard_normal((B, T, H)), **p}
    mask = key_mask()

    def forward():
        out, _, cache = albert_layer_forward(tensors["x"], mask, p, NH, EPS, dropout=fixed_dropout(rates))
        return out, cache

    def backward(dout, cache):
        g = {k: np.zeros_like(v) for k, v in p.items()}
        dx = albert_layer_backward(dout, cache, g)
        return {"x": dx, **g}

    gradcheck(error_report, "ALBERT layer" + (" (dropout)" if rates else ""), forward, backward, tensors, rng,
              zero_grad=KEY_BIAS_ZERO)


@pytest.mark.parametrize("rates", list(RATES.values()), ids=list(RATES))
@pytest.mark.parametrize("groups, inner, layers", [(1, 1, 3), (2, 2, 4)],
                         ids=["shared layer x3", "G=2 inner=2 L=4"])
def test_encoder(error_report, groups, inner, layers, rates):
    """E->H projection, then the layer applications (one shared layer applied 3 times; or groups).

    Inputs: with random weights, repeated post-LN layers can drive all tokens of a sequence towards
    the same vector within a few applications (attention becomes uniform, the query and key
    gradients of the last applications shrink to ~1e-3 and central differences then measure their
    own rounding noise).  The halved residual-branch projections (RESIDUAL_BRANCH_OUTPUTS) and seed
    13 keep the tokens distinct through all applications (smallest query/key gradient ~0.6);
    MIN_GRAD_SCALE in gradcheck() fails loudly if a change of inputs loses that.
    """
    config = small_config(num_hidden_groups=groups, inner_group_num=inner, num_hidden_layers=layers)
    rng = np.random.default_rng(13)
    params = randomised({k: s for k, s in param_shapes(config).items()
                         if k.startswith(MAPPING) or k.startswith("albert.encoder.albert_layer_groups.")}, rng)
    tensors = {"embedded": rng.standard_normal((B, T, E)), **params}
    mask = key_mask()

    def forward():
        hidden_states, _, cache = encoder_forward(tensors["embedded"], mask, params, config,
                                                  dropout=fixed_dropout(rates))
        assert len(hidden_states) == layers + 1
        return hidden_states[-1], cache

    def backward(dout, cache):
        g = {k: np.zeros_like(v) for k, v in params.items()}
        d_embedded = encoder_backward(dout, cache, g)
        return {"embedded": d_embedded, **g}

    zero = {}
    for g in range(groups):
        for j in range(inner):
            zero[layer_prefix(g, j) + "attention.key.bias"] = layer_prefix(g, j) + "attention.key.weight"
    gradcheck(error_report, f"encoder ({groups} group(s), {inner} inner, {layers} applications)"
              + (" (dropout)" if rates else ""), forward, backward, tensors, rng, zero_grad=zero)


# ---- heads and losses ---------------------------------------------------------------------------------------

def test_pooler(error_report):
    rng = np.random.default_rng(12)
    tensors = {"hidden": rng.standard_normal((B, T, H)), "weight": 0.4 * rng.standard_normal((H, H)),
               "bias": 0.2 * rng.standard_normal(H)}

    def backward(dout, cache):
        dw, db = np.zeros((H, H)), np.zeros(H)
        return {"hidden": pooler_backward(dout, cache, dw, db), "weight": dw, "bias": db}

    analytic, _ = gradcheck(error_report, "pooler",
                            lambda: pooler_forward(tensors["hidden"], tensors["weight"], tensors["bias"]),
                            backward, tensors, rng)
    assert not analytic["hidden"][:, 1:].any()      # only the first token feeds the pooler


def test_sop_head(error_report):
    rng = np.random.default_rng(13)
    tensors = {"pooled": np.tanh(rng.standard_normal((B, H))), "weight": 0.4 * rng.standard_normal((2, H)),
               "bias": 0.2 * rng.standard_normal(2)}

    def backward(dout, cache):
        dw, db = np.zeros((2, H)), np.zeros(2)
        return {"pooled": sop_head_backward(dout, cache, dw, db), "weight": dw, "bias": db}

    gradcheck(error_report, "SOP head",
              lambda: sop_head_forward(tensors["pooled"], tensors["weight"], tensors["bias"]), backward, tensors,
              rng)


def test_mlm_head_tied_decoder(error_report):
    """dense -> gelu_new -> LayerNorm -> decoder = word-embedding table (tied) + bias.

    The decoder's weight gradient must be ADDED to whatever the word-embedding gradient already
    holds (in the model, the lookup gradient comes later into the same array), so it is
    accumulated here onto a non-zero array and the prior content subtracted afterwards.
    """
    rng = np.random.default_rng(14)
    p = randomised({k.removeprefix("predictions."): s for k, s in param_shapes(small_config()).items()
                    if k.startswith("predictions.")}, rng)
    word = 0.4 * rng.standard_normal((V, E))
    tensors = {"hidden": rng.standard_normal((B, T, H)), "word_embeddings (tied decoder)": word, **p}
    prior = rng.standard_normal((V, E))

    def backward(dout, cache):
        g = {k: np.zeros_like(v) for k, v in p.items()}
        dword = prior.copy()
        dhidden = mlm_head_backward(dout, cache, g, dword)
        return {"hidden": dhidden, "word_embeddings (tied decoder)": dword - prior, **g}

    gradcheck(error_report, "MLM head (tied decoder)",
              lambda: mlm_head_forward(tensors["hidden"], p, word, EPS), backward, tensors, rng)


def _cross_entropy_check(report, op, logits, labels, rng):
    def forward():
        loss, cache = cross_entropy_forward(logits, labels)
        return np.float64(loss), cache

    def backward(dout, cache):
        return {"logits": cross_entropy_backward(cache, float(dout))}

    analytic, _ = gradcheck(report, op, forward, backward, {"logits": logits}, rng)
    return analytic


def test_cross_entropy_mlm(error_report):
    """Rows labelled -100 are ignored: no loss, exactly zero gradient; the mean is over labelled rows."""
    rng = np.random.default_rng(15)
    logits = 2.0 * rng.standard_normal((6, V))
    labels = np.array([3, -100, 0, 10, -100, 3])
    analytic = _cross_entropy_check(error_report, "cross-entropy MLM (-100 ignored)", logits, labels, rng)
    assert not analytic["logits"][labels == -100].any()
    # mean over the 4 labelled rows
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    keep = labels != -100
    expected = -logp[keep, labels[keep]].mean()
    assert abs(cross_entropy_forward(logits, labels)[0] - expected) <= 1e-14 * expected


def test_cross_entropy_sop(error_report):
    rng = np.random.default_rng(16)
    _cross_entropy_check(error_report, "cross-entropy SOP", 2.0 * rng.standard_normal((3, 2)), np.array([0, 1, 1]),
                         rng)


def test_cross_entropy_no_labelled_row():
    """Documented: no labelled row gives loss 0 and a zero gradient (PyTorch would give nan)."""
    logits = np.random.default_rng(17).standard_normal((3, V))
    loss, cache = cross_entropy_forward(logits, np.full(3, -100))
    assert loss == 0.0
    assert not cross_entropy_backward(cache, 0.7).any()


# ---- accumulation ------------------------------------------------------------------------------------------

def test_weight_gradients_accumulate():
    """Weight gradients are added (+=) into the arrays passed in: two backwards give twice one backward.

    The shared layer's gradient (sum over its applications) and the tied word embedding (lookup +
    decoder) rely on this.
    """
    rng = np.random.default_rng(18)
    x, w, b = rng.standard_normal((B, T, H)), rng.standard_normal((I, H)), rng.standard_normal(I)
    dy = rng.standard_normal((B, T, I))
    _, cache = linear_forward(x, w, b)
    once = [np.zeros_like(w), np.zeros_like(b)]
    linear_backward(dy, cache, *once)
    twice = [np.zeros_like(w), np.zeros_like(b)]
    linear_backward(dy, cache, *twice)
    linear_backward(dy, cache, *twice)
    for a1, a2 in zip(once, twice, strict=True):
        np.testing.assert_allclose(a2, 2 * a1, rtol=1e-14, atol=0)

    lw, lb = 1 + rng.standard_normal(I), rng.standard_normal(I)
    _, cache = layernorm_forward(dy, lw, lb, EPS)
    once = [np.zeros(I), np.zeros(I)]
    layernorm_backward(dy, cache, *once)
    twice = [np.zeros(I), np.zeros(I)]
    layernorm_backward(dy, cache, *twice)
    layernorm_backward(dy, cache, *twice)
    for a1, a2 in zip(once, twice, strict=True):
        np.testing.assert_allclose(a2, 2 * a1, rtol=1e-14, atol=0)

    table = rng.standard_normal((V, E))
    dout = rng.standard_normal((B, T, E))
    _, cache = embedding_forward(IDS, table)
    once, twice = np.zeros_like(table), np.zeros_like(table)
    embedding_backward(dout, cache, once)
    embedding_backward(dout, cache, twice)
    embedding_backward(dout, cache, twice)
    np.testing.assert_allclose(twice, 2 * once, rtol=1e-14, atol=0)


def test_numerical_gradient_helper():
    """The reference itself: central differences of a function with a known gradient."""
    x = np.random.default_rng(19).standard_normal((3, 4))
    num = numerical_gradient(lambda: float(np.sum(np.sin(x) * x)), x)
    assert rel_error(num, np.cos(x) * x + np.sin(x)) < 1e-9
