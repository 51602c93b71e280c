"""Tier 2 of the correctness suite: every op's output and gradients against torch autograd.

The torch side is built from torch primitives only (F.embedding with padding_idx, F.layer_norm,
F.linear, F.gelu(approximate="tanh"), softmax after dividing by sqrt(hs) and adding the
(1 - mask) * finfo.min key mask, F.cross_entropy with ignore_index=-100), run in float64, and
differentiated by autograd with the same random upstream gradient `dout` as the engine's
backward (never all ones: the input gradients of softmax and LayerNorm would then be exactly zero
and hide errors).

Error: rel = max|a - b| / max(max|a|, max|b|) per tensor (tinyalbert.nn.gradcheck.rel_error).  Two
float64 implementations of the same formulas differ by rounding only: ~1e-16 per operation, at
most ~1e-14 through the deepest op here (3 layer applications and back), so the bound is 1e-10.

The float32 tests run the same ops on float32 inputs: outputs and gradients must stay float32 and
agree with the float64 torch result on the same values to 1e-4.  float32 rounds at 6e-8; single
ops land at 1e-7..4e-7, the 3-application encoder at ~5e-7, and the 4-application grouped
encoder at ~1e-5 on its last layer's key weight, whose gradient (~0.06) is an order of magnitude
smaller than the O(1) terms it is accumulated from (the error is normwise, per tensor).

Dropout: the engine draws its masks from a Generator in a fixed order (nn/dropout.py); the torch
side redraws them with the same seed in that order (`ReplayedMasks`) and multiplies by
keep / (1 - p) at the reference's places.  So the masks are the same, and this checks both the
dropout's arithmetic and its places, up to the whole pretraining loss (`test_whole_model`).

Run with `pytest -s` for a per-op summary.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from op_inputs import ATTENTION_MASK, EPS, HS, NH, PAD, TOKEN_TYPES, B, E, H, I, T, V, randomised  # noqa: E402
from op_inputs import small_config as config  # noqa: E402

from tinyalbert.nn.activations import gelu_backward, gelu_forward
from tinyalbert.nn.attention import self_attention_backward, self_attention_forward
from tinyalbert.nn.config import AlbertConfig
from tinyalbert.nn.dropout import Dropout, draw_keep_mask, dropout_backward, dropout_forward
from tinyalbert.nn.embeddings import embedding_backward, embedding_forward, embeddings_backward, embeddings_forward
from tinyalbert.nn.encoder import encoder_backward, encoder_forward
from tinyalbert.nn.feedforward import feedforward_backward, feedforward_forward
from tinyalbert.nn.gradcheck import rel_error
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
from tinyalbert.nn.model import Albert
from tinyalbert.nn.params import EMB, MAPPING, MLM, POOLER, SOP, layer_prefix, layer_shapes, param_shapes, sub
from tinyalbert.nn.softmax import additive_key_mask, masked_softmax_backward, masked_softmax_forward

pytestmark = pytest.mark.usefixtures("one_numba_thread")

TOL64 = 1e-10
TOL32 = 1e-4
# Repeated ids, and the pad id 0 both at the padded positions and at one real, attended position.
IDS = np.array([[3, 7, 3, 0, 0],
                [5, 0, 9, 5, 10]])
# ---- the torch reference, from primitives ----------------------------------------------------------------

def t_key_mask(attention_mask: np.ndarray) -> torch.Tensor:
    m = torch.tensor(attention_mask, dtype=torch.float64)
    return (1.0 - m) * torch.finfo(torch.float64).min


def t_gelu(x):
    return F.gelu(x, approximate="tanh")


class ReplayedMasks:
    """The engine's dropout masks as torch factors keep / (1 - p), redrawn in the engine's order from a
    Generator with the same seed (rates as in nn/dropout.Dropout: hidden, attention)."""

    def __init__(self, hidden: float, attention: float, seed: int):
        self.hidden, self.attention = hidden, attention
        self.rng = np.random.default_rng(seed)

    def drop(self, x: torch.Tensor, p: float) -> torch.Tensor:
        if p == 0:
            return x
        keep = draw_keep_mask(self.rng, tuple(x.shape), p)
        return x * (torch.tensor(keep, dtype=torch.float64) / (1 - p))


def engine_dropout(rates: tuple[float, float] | None, seed: int) -> Dropout | None:
    return None if rates is None else Dropout(*rates, np.random.default_rng(seed))


def torch_masks(rates: tuple[float, float] | None, seed: int) -> ReplayedMasks | None:
    return None if rates is None else ReplayedMasks(*rates, seed)


def t_attention(x, mask, p, num_heads, masks: ReplayedMasks | None = None):
    b, t, h = x.shape
    hs = h // num_heads

    def heads(y):
        return y.view(b, t, num_heads, hs).transpose(1, 2)

    q = heads(F.linear(x, p["query.weight"], p["query.bias"]))
    k = heads(F.linear(x, p["key.weight"], p["key.bias"]))
    v = heads(F.linear(x, p["value.weight"], p["value.bias"]))
    scores = q @ k.transpose(-1, -2) / math.sqrt(hs) + mask[:, None, None, :]
    probs = torch.softmax(scores, dim=-1)
    if masks is not None:
        probs = masks.drop(probs, masks.attention)
    ctx = (probs @ v).transpose(1, 2).reshape(b, t, h)
    projected = F.linear(ctx, p["dense.weight"], p["dense.bias"])
    if masks is not None:
        projected = masks.drop(projected, masks.hidden)
    return F.layer_norm(x + projected, (h,), p["LayerNorm.weight"], p["LayerNorm.bias"], EPS)


def t_ffn(x, p):
    return F.linear(t_gelu(F.linear(x, p["ffn.weight"], p["ffn.bias"])), p["ffn_output.weight"],
                    p["ffn_output.bias"])


def t_layer(x, mask, p, num_heads, masks: ReplayedMasks | None = None):
    a = t_attention(x, mask, sub(p, "attention."), num_heads, masks)
    f = t_ffn(a, p)
    if masks is not None:
        f = masks.drop(f, masks.hidden)
    return F.layer_norm(a + f, (x.shape[-1],), p["full_layer_layer_norm.weight"],
                        p["full_layer_layer_norm.bias"], EPS)


def t_encoder(e, mask, p, c: AlbertConfig, masks: ReplayedMasks | None = None):
    h = F.linear(e, p[MAPPING + "weight"], p[MAPPING + "bias"])
    for i in range(c.num_hidden_layers):
        for j in range(c.inner_group_num):
            h = t_layer(h, mask, sub(p, layer_prefix(c.group_of_application(i), j)), c.num_attention_heads, masks)
    return h


def t_mlm_head(h, p, word):
    u = t_gelu(F.linear(h, p["dense.weight"], p["dense.bias"]))
    t = F.layer_norm(u, (u.shape[-1],), p["LayerNorm.weight"], p["LayerNorm.bias"], EPS)
    return F.linear(t, word, p["bias"])


# ---- the driver ---------------------------------------------------------------------------------------------

def compare(report, op, case, dtype, rng, zero_grad=None):
    """Run one op in the engine (in `dtype`) and in torch (float64, same values); compare.

    case(dtype) -> (arrays, engine, reference):
      arrays: {name: float array}, the differentiable inputs;
      engine(arrays, dout) -> (out, {name: gradient}) with the engine's forward and backward;
      reference(tensors) -> out, in torch, from leaf tensors with the same names.
    zero_grad: {name: reference name} for tensors whose exact gradient is zero (attention key bias):
      both sides must be below the tolerance times the scale of the reference tensor's gradient.
    """
    zero_grad = zero_grad or {}
    arrays, engine, reference = case(dtype)
    tensors = {k: torch.tensor(np.asarray(v, dtype=np.float64), requires_grad=True) for k, v in arrays.items()}
    t_out = reference(tensors)
    dout = rng.standard_normal(tuple(t_out.shape)).astype(dtype)     # random upstream gradient, never all ones
    (t_out * torch.tensor(dout.astype(np.float64))).sum().backward()
    out, grads = engine(arrays, dout)
    assert set(grads) == set(arrays)

    tol = TOL64 if dtype == np.float64 else TOL32
    tier = "tier2 (torch, float64)" if dtype == np.float64 else "tier2 float32 (vs torch float64)"
    errors = {"output": rel_error(out, t_out.detach().numpy())}
    for name in arrays:
        g_ref = tensors[name].grad.numpy()
        if name in zero_grad:
            scale = np.abs(tensors[zero_grad[name]].grad.numpy()).max()
            errors[name + " [exact 0: max|.|/scale]"] = max(np.abs(grads[name]).max(), np.abs(g_ref).max()) / scale
        else:
            errors[name] = rel_error(grads[name], g_ref)
    for name, err in errors.items():
        report.add(tier, op, name, err)
    failures = [f"{name}: {err:.3e}" for name, err in errors.items() if not err <= tol]
    assert not failures, f"{op} ({np.dtype(dtype).name}): " + ", ".join(failures)

    # dtype preserved: float32 in -> float32 out and float32 gradients
    if isinstance(out, np.ndarray):
        assert out.dtype == dtype, (op, out.dtype)
    for name, g in grads.items():
        assert g.dtype == dtype, (op, name, g.dtype)


# ---- the cases: each returns (arrays, engine, reference) for a dtype -------------------------------------

def case_embedding(dtype):
    table = np.random.default_rng(1).standard_normal((V, E)).astype(dtype)

    def engine(a, dout):
        out, cache = embedding_forward(IDS, a["table"])
        dtable = np.zeros_like(a["table"])
        embedding_backward(dout, cache, dtable)
        return out, {"table": dtable}

    return {"table": table}, engine, lambda t: F.embedding(torch.tensor(IDS), t["table"])


def case_embedding_padding_idx(dtype):
    table = np.random.default_rng(2).standard_normal((V, E)).astype(dtype)

    def engine(a, dout):
        out, cache = embedding_forward(IDS, a["table"])
        dtable = np.zeros_like(a["table"])
        embedding_backward(dout, cache, dtable, padding_idx=PAD)
        return out, {"table": dtable}

    return {"table": table}, engine, lambda t: F.embedding(torch.tensor(IDS), t["table"], padding_idx=PAD)


def case_embeddings_block(dtype):
    rng = np.random.default_rng(3)
    p = {k.removeprefix("albert.embeddings."): v.astype(dtype)
         for k, v in randomised(param_shapes(config()), rng).items() if k.startswith("albert.embeddings.")}

    def engine(a, dout):
        out, cache = embeddings_forward(IDS, TOKEN_TYPES, a, EPS)
        g = {k: np.zeros_like(v) for k, v in a.items()}
        embeddings_backward(dout, cache, g, padding_idx=PAD)
        return out, g

    def reference(t):
        x = (F.embedding(torch.tensor(IDS), t["word_embeddings.weight"], padding_idx=PAD)
             + F.embedding(torch.tensor(TOKEN_TYPES), t["token_type_embeddings.weight"])
             + F.embedding(torch.arange(T), t["position_embeddings.weight"]))
        return F.layer_norm(x, (E,), t["LayerNorm.weight"], t["LayerNorm.bias"], EPS)

    return p, engine, reference


def case_layernorm(with_residual):
    def case(dtype):
        rng = np.random.default_rng(4)
        a = {"x": 1.5 * rng.standard_normal((B, T, H)) + 0.5, "weight": 1 + 0.3 * rng.standard_normal(H),
             "bias": 0.3 * rng.standard_normal(H)}
        if with_residual:
            a["residual"] = rng.standard_normal((B, T, H))
        a = {k: v.astype(dtype) for k, v in a.items()}

        def engine(a, dout):
            out, cache = layernorm_forward(a["x"], a["weight"], a["bias"], EPS, residual=a.get("residual"))
            dw, db = np.zeros_like(a["weight"]), np.zeros_like(a["bias"])
            dx = layernorm_backward(dout, cache, dw, db)
            g = {"x": dx, "weight": dw, "bias": db}
            if with_residual:
                g["residual"] = dx
            return out, g

        def reference(t):
            x = t["x"] + t["residual"] if with_residual else t["x"]
            return F.layer_norm(x, (H,), t["weight"], t["bias"], EPS)

        return a, engine, reference
    return case


def case_linear(n_in, n_out, bias):
    def case(dtype):
        rng = np.random.default_rng(5)
        a = {"x": rng.standard_normal((B, T, n_in)), "weight": 0.4 * rng.standard_normal((n_out, n_in))}
        if bias:
            a["bias"] = 0.2 * rng.standard_normal(n_out)
        a = {k: v.astype(dtype) for k, v in a.items()}

        def engine(a, dout):
            out, cache = linear_forward(a["x"], a["weight"], a.get("bias"))
            dw = np.zeros_like(a["weight"])
            db = np.zeros_like(a["bias"]) if bias else None
            g = {"x": linear_backward(dout, cache, dw, db), "weight": dw}
            if bias:
                g["bias"] = db
            return out, g

        return a, engine, lambda t: F.linear(t["x"], t["weight"], t.get("bias"))
    return case


def case_gelu(with_bias, kind="gelu_new"):
    def case(dtype):
        rng = np.random.default_rng(6)
        x = 2.0 * rng.standard_normal((B, T, I))
        x[0, 0, :4] = [-7.0, -3.0, 3.0, 7.0]
        a = {"x": x.astype(dtype)}
        if with_bias:
            a["bias"] = (0.5 * rng.standard_normal(I)).astype(dtype)

        def engine(a, dout):
            out, cache = gelu_forward(a["x"], a.get("bias"), kind=kind)
            db = np.zeros_like(a["bias"]) if with_bias else None
            g = {"x": gelu_backward(dout, cache, db)}
            if with_bias:
                g["bias"] = db
            return out, g

        def reference(t):
            x = t["x"] + t["bias"] if with_bias else t["x"]
            return t_gelu(x) if kind == "gelu_new" else F.gelu(x)          # F.gelu: the exact erf form

        return a, engine, reference
    return case


def case_softmax(dtype):
    scores = (3.0 * np.random.default_rng(7).standard_normal((B, NH, T, T))).astype(dtype)

    def engine(a, dout):
        probs, cache = masked_softmax_forward(a["scores"], additive_key_mask(ATTENTION_MASK, dtype), HS)
        return probs, {"scores": masked_softmax_backward(dout, cache)}

    def reference(t):
        return torch.softmax(t["scores"] / math.sqrt(HS) + t_key_mask(ATTENTION_MASK)[:, None, None, :], dim=-1)

    return {"scores": scores}, engine, reference


def layer_params(rng, dtype):
    return {k: v.astype(dtype) for k, v in randomised(layer_shapes(config()), rng).items()}


# (hidden, attention) dropout rates of the "(dropout)" cases: well away from 0, so the masks matter
RATES = (0.3, 0.4)
MASK_SEED = 23


def case_dropout(dtype):
    x = np.random.default_rng(24).standard_normal((B, NH, T, T)).astype(dtype)

    def engine(a, dout):
        out, cache = dropout_forward(a["x"], 0.4, np.random.default_rng(MASK_SEED))
        return out, {"x": dropout_backward(dout, cache)}

    return {"x": x}, engine, lambda t: ReplayedMasks(0.4, 0.4, MASK_SEED).drop(t["x"], 0.4)


def case_attention(rates=None):
    def case(dtype):
        rng = np.random.default_rng(8)
        p = {k.removeprefix("attention."): v for k, v in layer_params(rng, dtype).items()
             if k.startswith("attention.")}
        a = {"x": rng.standard_normal((B, T, H)).astype(dtype), **p}

        def engine(a, dout):
            params = {k: v for k, v in a.items() if k != "x"}
            out, _, cache = self_attention_forward(a["x"], additive_key_mask(ATTENTION_MASK, dtype), params, NH, EPS,
                                                   engine_dropout(rates, MASK_SEED))
            g = {k: np.zeros_like(v) for k, v in params.items()}
            dx = self_attention_backward(dout, cache, g)
            return out, {"x": dx, **g}

        return a, engine, lambda t: t_attention(t["x"], t_key_mask(ATTENTION_MASK), t, NH,
                                                torch_masks(rates, MASK_SEED))
    return case


def case_ffn(dtype):
    rng = np.random.default_rng(9)
    p = {k: v for k, v in layer_params(rng, dtype).items() if k.startswith("ffn")}
    a = {"x": rng.standard_normal((B, T, H)).astype(dtype), **p}

    def engine(a, dout):
        params = {k: v for k, v in a.items() if k != "x"}
        out, cache = feedforward_forward(a["x"], params)
        g = {k: np.zeros_like(v) for k, v in params.items()}
        dx = feedforward_backward(dout, cache, g)
        return out, {"x": dx, **g}

    return a, engine, lambda t: t_ffn(t["x"], t)


def case_layer(rates=None):
    def case(dtype):
        rng = np.random.default_rng(10)
        a = {"x": rng.standard_normal((B, T, H)).astype(dtype), **layer_params(rng, dtype)}

        def engine(a, dout):
            params = {k: v for k, v in a.items() if k != "x"}
            out, _, cache = albert_layer_forward(a["x"], additive_key_mask(ATTENTION_MASK, dtype), params, NH, EPS,
                                                 dropout=engine_dropout(rates, MASK_SEED))
            g = {k: np.zeros_like(v) for k, v in params.items()}
            dx = albert_layer_backward(dout, cache, g)
            return out, {"x": dx, **g}

        return a, engine, lambda t: t_layer(t["x"], t_key_mask(ATTENTION_MASK), t, NH, torch_masks(rates, MASK_SEED))
    return case


def case_encoder(c: AlbertConfig, rates=None):
    def case(dtype):
        rng = np.random.default_rng(13)
        p = {k: v.astype(dtype) for k, v in randomised(param_shapes(c), rng).items()
             if k.startswith(MAPPING) or k.startswith("albert.encoder.albert_layer_groups.")}
        a = {"embedded": rng.standard_normal((B, T, E)).astype(dtype), **p}

        def engine(a, dout):
            params = {k: v for k, v in a.items() if k != "embedded"}
            hidden_states, _, cache = encoder_forward(a["embedded"], additive_key_mask(ATTENTION_MASK, dtype),
                                                      params, c, dropout=engine_dropout(rates, MASK_SEED))
            g = {k: np.zeros_like(v) for k, v in params.items()}
            d_embedded = encoder_backward(dout, cache, g)
            return hidden_states[-1], {"embedded": d_embedded, **g}

        return a, engine, lambda t: t_encoder(t["embedded"], t_key_mask(ATTENTION_MASK), t, c,
                                              torch_masks(rates, MASK_SEED))
    return case


def case_pooler(dtype):
    rng = np.random.default_rng(12)
    a = {"hidden": rng.standard_normal((B, T, H)), "weight": 0.4 * rng.standard_normal((H, H)),
         "bias": 0.2 * rng.standard_normal(H)}
    a = {k: v.astype(dtype) for k, v in a.items()}

    def engine(a, dout):
        out, cache = pooler_forward(a["hidden"], a["weight"], a["bias"])
        dw, db = np.zeros_like(a["weight"]), np.zeros_like(a["bias"])
        return out, {"hidden": pooler_backward(dout, cache, dw, db), "weight": dw, "bias": db}

    return a, engine, lambda t: torch.tanh(F.linear(t["hidden"][:, 0], t["weight"], t["bias"]))


def case_sop_head(dtype):
    rng = np.random.default_rng(14)
    a = {"pooled": np.tanh(rng.standard_normal((B, H))), "weight": 0.4 * rng.standard_normal((2, H)),
         "bias": 0.2 * rng.standard_normal(2)}
    a = {k: v.astype(dtype) for k, v in a.items()}

    def engine(a, dout):
        out, cache = sop_head_forward(a["pooled"], a["weight"], a["bias"])
        dw, db = np.zeros_like(a["weight"]), np.zeros_like(a["bias"])
        return out, {"pooled": sop_head_backward(dout, cache, dw, db), "weight": dw, "bias": db}

    return a, engine, lambda t: F.linear(t["pooled"], t["weight"], t["bias"])


def case_mlm_head(dtype):
    rng = np.random.default_rng(15)
    p = {k.removeprefix("predictions."): v.astype(dtype)
         for k, v in randomised(param_shapes(config()), rng).items() if k.startswith("predictions.")}
    a = {"hidden": rng.standard_normal((B, T, H)).astype(dtype),
         "word_embeddings": (0.4 * rng.standard_normal((V, E))).astype(dtype), **p}

    def engine(a, dout):
        params = {k: v for k, v in a.items() if k not in ("hidden", "word_embeddings")}
        out, cache = mlm_head_forward(a["hidden"], params, a["word_embeddings"], EPS)
        g = {k: np.zeros_like(v) for k, v in params.items()}
        dword = np.zeros_like(a["word_embeddings"])
        dhidden = mlm_head_backward(dout, cache, g, dword)
        return out, {"hidden": dhidden, "word_embeddings": dword, **g}

    return a, engine, lambda t: t_mlm_head(t["hidden"], t, t["word_embeddings"])


def case_cross_entropy(n_classes, labels):
    labels = np.asarray(labels)

    def case(dtype):
        logits = (2.0 * np.random.default_rng(16).standard_normal((labels.size, n_classes))).astype(dtype)

        def engine(a, dout):
            loss, cache = cross_entropy_forward(a["logits"], labels)
            return np.asarray(loss, dtype=dtype), {"logits": cross_entropy_backward(cache, float(dout))}

        return ({"logits": logits}, engine,
                lambda t: F.cross_entropy(t["logits"], torch.tensor(labels), ignore_index=-100))
    return case


KEY_BIAS = {"key.bias": "key.weight"}
LAYER_KEY_BIAS = {"attention.key.bias": "attention.key.weight"}
SHARED = config()
GROUPED = config(num_hidden_groups=2, inner_group_num=2, num_hidden_layers=4)


def encoder_key_bias(c):
    return {layer_prefix(g, j) + "attention.key.bias": layer_prefix(g, j) + "attention.key.weight"
            for g in range(c.num_hidden_groups) for j in range(c.inner_group_num)}


CASES = {
    "embedding lookup (repeated ids)": (case_embedding, None),
    "embedding lookup (padding_idx)": (case_embedding_padding_idx, None),
    "embeddings block (word+type+pos+LN)": (case_embeddings_block, None),
    "LayerNorm": (case_layernorm(False), None),
    "LayerNorm + residual": (case_layernorm(True), None),
    "linear H->I": (case_linear(H, I, True), None),
    "linear I->H (no bias)": (case_linear(I, H, False), None),
    "linear E->H projection": (case_linear(E, H, True), None),
    "gelu_new": (case_gelu(False), None),
    "gelu_new + bias": (case_gelu(True), None),
    "gelu (erf form) + bias": (case_gelu(True, "gelu"), None),
    "masked softmax (padded keys)": (case_softmax, None),
    "dropout (p = 0.4)": (case_dropout, None),
    "multi-head self-attention": (case_attention(), KEY_BIAS),
    "multi-head self-attention (dropout)": (case_attention(RATES), KEY_BIAS),
    "feed-forward block": (case_ffn, None),
    "ALBERT layer": (case_layer(), LAYER_KEY_BIAS),
    "ALBERT layer (dropout)": (case_layer(RATES), LAYER_KEY_BIAS),
    "encoder (shared layer x3)": (case_encoder(SHARED), encoder_key_bias(SHARED)),
    "encoder (shared layer x3, dropout)": (case_encoder(SHARED, RATES), encoder_key_bias(SHARED)),
    "encoder (G=2, inner=2, L=4)": (case_encoder(GROUPED), encoder_key_bias(GROUPED)),
    "pooler": (case_pooler, None),
    "SOP head": (case_sop_head, None),
    "MLM head (tied decoder)": (case_mlm_head, None),
    "cross-entropy MLM (-100 ignored)": (case_cross_entropy(V, [3, -100, 0, 10, -100, 3]), None),
    "cross-entropy SOP": (case_cross_entropy(2, [0, 1, 1]), None),
}


@pytest.mark.parametrize("op", list(CASES))
def test_op_matches_torch_float64(error_report, op):
    case, zero_grad = CASES[op]
    compare(error_report, op, case, np.float64, np.random.default_rng(100), zero_grad)


@pytest.mark.parametrize("op", list(CASES))
def test_op_float32_path(error_report, op):
    """float32 in -> float32 out and float32 gradients, close to float64 torch on the same values."""
    case, zero_grad = CASES[op]
    compare(error_report, op, case, np.float32, np.random.default_rng(100), zero_grad)


# ---- the whole pretraining loss -----------------------------------------------------------------------------

MLM_LABELS = np.array([[3, -100, 7, -100, -100],
                       [-100, 5, -100, 10, 0]])


def t_pretraining_loss(t, c: AlbertConfig, sop_labels, masks: ReplayedMasks | None) -> torch.Tensor:
    """The reference's AlbertForPreTraining loss from torch primitives, dropout at its places with `masks`."""
    x = (F.embedding(torch.tensor(IDS), t[EMB + "word_embeddings.weight"], padding_idx=c.pad_token_id)
         + F.embedding(torch.tensor(TOKEN_TYPES), t[EMB + "token_type_embeddings.weight"])
         + F.embedding(torch.arange(T), t[EMB + "position_embeddings.weight"]))
    e = F.layer_norm(x, (E,), t[EMB + "LayerNorm.weight"], t[EMB + "LayerNorm.bias"], EPS)
    if masks is not None:
        e = masks.drop(e, masks.hidden)
    h = t_encoder(e, t_key_mask(ATTENTION_MASK), t, c, masks)
    mlm = t_mlm_head(h, sub(t, MLM), t[EMB + "word_embeddings.weight"])
    sop = F.linear(torch.tanh(F.linear(h[:, 0], t[POOLER + "weight"], t[POOLER + "bias"])), t[SOP + "weight"],
                   t[SOP + "bias"])
    return (F.cross_entropy(mlm.reshape(-1, c.vocab_size), torch.tensor(MLM_LABELS).reshape(-1), ignore_index=-100)
            + F.cross_entropy(sop, torch.tensor(sop_labels), ignore_index=-100))


WHOLE_MODEL = {"dropout": (RATES, [1, 0]), "no dropout, one SOP label -100": ((0.0, 0.0), [-100, 1])}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", list(WHOLE_MODEL))
def test_whole_model(error_report, case, dtype):
    """Albert.loss_and_grads (MLM + SOP) against autograd of the same loss built from torch primitives:
    the loss and every parameter's gradient, with the same dropout masks at the same places."""
    (hidden, attention), sop_labels = WHOLE_MODEL[case]
    c = config(hidden_dropout_prob=hidden, attention_probs_dropout_prob=attention)
    params = {k: v.astype(dtype) for k, v in randomised(param_shapes(c), np.random.default_rng(25)).items()}
    loss, grads = Albert(c, params).loss_and_grads(IDS, TOKEN_TYPES, ATTENTION_MASK, MLM_LABELS, sop_labels,
                                                   rng=np.random.default_rng(MASK_SEED))
    tensors = {k: torch.tensor(v.astype(np.float64), requires_grad=True) for k, v in params.items()}
    t_loss = t_pretraining_loss(tensors, c, sop_labels, ReplayedMasks(hidden, attention, MASK_SEED))
    t_loss.backward()

    tol = TOL64 if dtype == np.float64 else TOL32
    tier = "tier2 (torch, float64)" if dtype == np.float64 else "tier2 float32 (vs torch float64)"
    op = f"whole pretraining loss ({case})"
    errors = {"loss": abs(loss - t_loss.item()) / abs(t_loss.item())}
    key_bias = encoder_key_bias(c)
    for name, g in grads.items():
        assert g.dtype == dtype, name
        ref = tensors[name].grad.numpy()
        if name in key_bias:            # exact value 0: both sides below tol on the key weight's scale
            scale = np.abs(tensors[key_bias[name]].grad.numpy()).max()
            errors[name + " [exact 0: max|.|/scale]"] = max(np.abs(g).max(), np.abs(ref).max()) / scale
        else:
            assert np.abs(ref).max() > 0, name
            errors[name] = rel_error(g, ref)
    for name, err in errors.items():
        error_report.add(tier, op, name, err)
    failures = [f"{name}: {err:.3e}" for name, err in errors.items() if not err <= tol]
    assert not failures, f"{op} ({np.dtype(dtype).name}): " + ", ".join(failures)
