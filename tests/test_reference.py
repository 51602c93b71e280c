"""Tier 3 of the correctness suite: the whole model against the reference implementation.

The fixtures in tests/fixtures/ were written by tests/make_reference.py from transformers 4.57.6's
`AlbertForPreTraining` (eager attention, eval mode, every dropout 0) with every parameter
randomised; see that script for what they hold.  This file needs neither torch nor transformers.

For every fixture we rebuild `tinyalbert.Albert` from the stored config and parameters, run the
stored padded batch, and compare every hidden state, every attention map, the MLM and SOP logits,
the losses and the gradient of every parameter.

Relative error, per tensor:  rel(a, b) = max|a - b| / max(max|b|, tiny)   (b = reference, tiny =
the smallest normal float64), computed in float64.  It is a normwise (max-norm) error: an element
that is small compared with the tensor's largest one is judged on the tensor's scale.

All positions are compared, padded ones included: the engine mirrors the reference's additive
mask (1 - mask) * finfo(dtype).min, so padded *query* rows attend to the real tokens exactly as in
the reference, and the probability of a padded *key* underflows to exactly 0 in both.

Mirrored quirk: the word-embedding gradient.  PyTorch's nn.Embedding(padding_idx=0) sends no lookup
gradient to row 0, even where id 0 is a real, attended token (the batch has one, at row 0,
position 5, so this is exercised); the tied MLM decoder still adds its gradient to row 0.  The
engine reproduces this, so row 0 must match too.

One gradient is compared differently: attention.key.bias.  Adding a vector to every key shifts all
of a query's scores by the same amount, which softmax ignores, so its exact gradient is zero and
the reference holds only rounding noise (~1e-16 in float64); a relative error against noise is
meaningless.  For it the error is measured against the scale of the same layer's key.weight
gradient: max|a - b| / max|grad key.weight|.
"""
from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest

import tinyalbert
from tinyalbert.nn.config import AlbertConfig

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
REFERENCE_TRANSFORMERS_VERSION = "4.57.6"
TINY = np.finfo(np.float64).tiny

# float64: both implementations round at 1.1e-16 (half an ulp); through ~3-8 layer applications
# of matmuls of length <= 37, softmax, LayerNorm and tanh-GELU, and then back again, errors of
# 1e-14..1e-13 are expected.  1e-10 (outputs) and 1e-8 (gradients) leave ample room while still
# catching any real difference (a wrong formula shows up at 1e-3 or worse).
F64_OUT_TOL = 1e-10
F64_GRAD_TOL = 1e-8

# float32: machine epsilon is 1.19e-7.  The float32 fixture also stores the float64 ("exact")
# results for the same float32 parameters; against them torch's own float32 computation is off by
# at most 3e-6 on the outputs (sop_logits; ~25 eps: three layer applications, each a chain of
# ~10 operations with condition numbers of order 1-10, e.g. attention scores of magnitude ~5 in
# softmax, LayerNorm dividing by a standard deviation < 1) and by at most 8.3e-6 (~70 eps) on any
# gradient (the backward is twice as deep and sums over B*T = 36 positions and L = 3 uses of the
# shared layer).  The engine makes independent rounding errors of the same order, so engine vs
# torch can differ by about the sum of the two: ~6e-6 on outputs, ~2e-5 on gradients.
# Tolerances: outputs 1e-5 (84 eps), gradients 1e-4 (840 eps).  The same tolerances are applied
# against the exact float64 values.  A genuine bug (wrong formula, wrong constant, missing term)
# gives errors of 1e-3 or more, far above these.
F32_OUT_TOL = 1e-5
F32_GRAD_TOL = 1e-4

FILES = {
    "small": "reference_small.h5",
    "small_fp32": "reference_small_fp32.h5",
    "groups": "reference_groups.h5",
}
TOLERANCES = {  # (outputs, gradients)
    "small": (F64_OUT_TOL, F64_GRAD_TOL),
    "small_fp32": (F32_OUT_TOL, F32_GRAD_TOL),
    "groups": (F64_OUT_TOL, F64_GRAD_TOL),
}
OUTPUT_NAMES = ("hidden_states", "attentions", "mlm_logits", "sop_logits")


def rel_err(a, b, scale=None) -> float:
    """max|a - b| / max(max|scale|, tiny), scale defaulting to the reference b; in float64."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return float("inf")
    s = np.abs(np.asarray(b if scale is None else scale, dtype=np.float64)).max(initial=0.0)
    return float(np.abs(a - b).max(initial=0.0) / max(s, TINY))


def read_fixture(path: str) -> dict:
    with h5py.File(path, "r") as f:
        data = {"attrs": {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}}
        for group in f:
            data[group] = {k: f[group][k][()] for k in f[group]}
    return data


def grad_scale(name: str, ref_grads: dict) -> np.ndarray | None:
    """The scale a gradient's error is measured against (None: the reference gradient itself)."""
    if name.endswith("attention.key.bias"):
        return ref_grads[name[: -len("key.bias")] + "key.weight"]
    return None


class Run:
    """One fixture, and what the engine computes for it (computed once per fixture)."""

    def __init__(self, key: str):
        self.key = key
        self.path = os.path.join(FIXTURES, FILES[key])
        self.data = read_fixture(self.path)
        self.config = AlbertConfig.from_json_string(self.data["attrs"]["config"])
        self.params = {k: np.array(v) for k, v in self.data["params"].items()}
        self.model = tinyalbert.Albert(self.config, self.params)
        inp = self.data["inputs"]
        self.out = self.model.forward(inp["input_ids"], inp["token_type_ids"], inp["attention_mask"],
                                      output_attentions=True)
        self.loss, self.grads = self.model.loss_and_grads(inp["input_ids"], inp["token_type_ids"],
                                                          inp["attention_mask"], inp["mlm_labels"],
                                                          inp["sop_labels"])
        self.stats = dict(self.model.last_stats)

    def engine_outputs(self) -> dict:
        o = self.out
        return {
            "hidden_states": np.stack(o.hidden_states) if o.hidden_states is not None else None,
            "attentions": np.stack(o.attentions) if o.attentions is not None else None,
            "mlm_logits": o.mlm_logits,
            "sop_logits": o.sop_logits,
            "loss": self.loss,
            "mlm_loss": self.stats.get("mlm_loss"),
            "sop_loss": self.stats.get("sop_loss"),
        }


_RUNS: dict[str, Run] = {}


def get_run(key: str) -> Run:
    if key not in _RUNS:
        _RUNS[key] = Run(key)
    return _RUNS[key]


def compare(engine: dict, reference: dict, names, tol: float, scales: dict | None = None) -> list:
    rows = []
    for name in names:
        a, b = engine.get(name), reference[name]
        if a is None:
            rows.append((name, float("inf"), tol, "missing in engine output"))
            continue
        a = np.asarray(a)
        if a.shape != np.shape(b):
            rows.append((name, float("inf"), tol, f"shape {a.shape} != reference {np.shape(b)}"))
            continue
        scale = (scales or {}).get(name)
        rows.append((name, rel_err(a, b, scale), tol, "vs key.weight grad scale" if scale is not None else ""))
    return rows


def report(title: str, rows: list) -> str:
    lines = [title]
    for name, err, tol, note in rows:
        flag = "FAIL" if not err <= tol else "ok  "
        lines.append(f"  {flag} {name:78s} {err:9.2e}  (tol {tol:.0e}) {note}")
    return "\n".join(lines)


def check(title: str, rows: list) -> None:
    text = report(title, rows)
    print(text)
    bad = [r for r in rows if not r[1] <= r[2]]
    assert not bad, f"{len(bad)} tensor(s) out of tolerance\n{text}"


# ---- the fixtures themselves ------------------------------------------------------------------------

@pytest.mark.parametrize("key", sorted(FILES))
def test_fixture_provenance(key):
    """The fixtures come from the pinned reference version, with the layout the tests assume."""
    data = read_fixture(os.path.join(FIXTURES, FILES[key]))
    attrs = data["attrs"]
    assert attrs["transformers_version"] == REFERENCE_TRANSFORMERS_VERSION
    dtype = np.float32 if key.endswith("fp32") else np.float64
    assert attrs["dtype"] == np.dtype(dtype).name
    assert {v.dtype for v in data["params"].values()} == {np.dtype(dtype)}
    assert set(data["grads"]) == set(data["params"])
    cfg = json.loads(attrs["config"])
    assert cfg["hidden_act"] == "gelu_new" and cfg["layer_norm_eps"] == 1e-12
    assert cfg["hidden_dropout_prob"] == 0 and cfg["attention_probs_dropout_prob"] == 0
    config = AlbertConfig.from_json_string(attrs["config"])
    shapes = tinyalbert.param_shapes(config)
    assert set(shapes) == set(data["params"])
    assert all(tuple(data["params"][k].shape) == s for k, s in shapes.items())
    inp = data["inputs"]
    assert np.any(inp["attention_mask"] == 0), "the batch must contain padding"
    # the padding id also occurs as a real token, so the padding_idx quirk is exercised
    assert np.any((inp["input_ids"] == config.pad_token_id) & (inp["attention_mask"] == 1))
    # the reference loss is the sum of its two parts
    out = data["outputs"]
    assert abs(out["loss"] - out["mlm_loss"] - out["sop_loss"]) <= 1e-6 * abs(out["loss"])
    L, inner = config.num_hidden_layers, config.inner_group_num
    assert out["hidden_states"].shape[0] == L + 1
    assert out["attentions"].shape[0] == L * inner


# ---- the engine against the reference -------------------------------------------------------------

@pytest.mark.parametrize("key", sorted(FILES))
def test_forward_matches_reference(key):
    run = get_run(key)
    tol = TOLERANCES[key][0]
    rows = compare(run.engine_outputs(), run.data["outputs"], OUTPUT_NAMES + ("loss", "mlm_loss", "sop_loss"), tol)
    check(f"[{key}] outputs: rel err = max|a-b| / max|ref|", rows)


@pytest.mark.parametrize("key", sorted(FILES))
def test_hidden_states_per_application(key):
    """Each hidden state (and each attention map) on its own, so a failure points at a layer."""
    run = get_run(key)
    tol = TOLERANCES[key][0]
    ref = run.data["outputs"]
    hs, att = run.out.hidden_states, run.out.attentions
    assert len(hs) == ref["hidden_states"].shape[0], \
        f"engine gives {len(hs)} hidden states, reference {ref['hidden_states'].shape[0]}"
    assert att is not None and len(att) == ref["attentions"].shape[0], \
        f"engine gives {None if att is None else len(att)} attention maps, reference {ref['attentions'].shape[0]}"
    rows = [(f"hidden_states[{i}]", rel_err(h, ref["hidden_states"][i]), tol, "") for i, h in enumerate(hs)]
    rows += [(f"attentions[{i}]", rel_err(a, ref["attentions"][i]), tol, "") for i, a in enumerate(att)]
    check(f"[{key}] per application", rows)


@pytest.mark.parametrize("key", sorted(FILES))
def test_gradients_match_reference(key):
    run = get_run(key)
    tol = TOLERANCES[key][1]
    ref = run.data["grads"]
    assert set(run.grads) == set(run.params), "grads must have exactly the params' keys"
    wrong_dtype = [k for k, g in run.grads.items() if np.asarray(g).dtype != run.params[k].dtype]
    assert not wrong_dtype, f"grads not in the params' dtype: {wrong_dtype}"
    scales = {k: grad_scale(k, ref) for k in ref if grad_scale(k, ref) is not None}
    rows = compare(run.grads, ref, list(ref), tol, scales)
    check(f"[{key}] gradients: rel err = max|a-b| / max|ref|", rows)


@pytest.mark.parametrize("key", sorted(FILES))
def test_padding_row_gradient(key):
    """Row 0 of the word-embedding gradient holds only the tied decoder's part (see the module doc)."""
    run = get_run(key)
    tol = TOLERANCES[key][1]
    name = "albert.embeddings.word_embeddings.weight"
    pad = run.config.pad_token_id
    ref, got = run.data["grads"][name], np.asarray(run.grads[name])
    check(f"[{key}] word-embedding gradient rows (scale: the whole tensor)",
          [(f"{name}[{pad}] (padding row)", rel_err(got[pad], ref[pad], ref), tol, ""),
           (f"{name}[other rows]", rel_err(np.delete(got, pad, 0), np.delete(ref, pad, 0), ref), tol, "")])


@pytest.mark.parametrize("key", sorted(FILES))
def test_last_stats(key):
    """Counts and accuracies of loss_and_grads, from the reference logits."""
    run = get_run(key)
    inp, out = run.data["inputs"], run.data["outputs"]
    labelled = inp["mlm_labels"] != -100
    pred = out["mlm_logits"].argmax(-1)
    assert run.stats["mlm_count"] == int(labelled.sum())
    assert run.stats["mlm_correct"] == int((pred[labelled] == inp["mlm_labels"][labelled]).sum())
    assert run.stats["sop_count"] == len(inp["sop_labels"])
    assert run.stats["sop_correct"] == int((out["sop_logits"].argmax(-1) == inp["sop_labels"]).sum())


def test_fp32_against_exact():
    """The float32 engine against the float64 results for the same float32 parameters.

    Stronger than the comparison with torch's float32 (which has rounding errors of its own): the
    engine's float32 must be within the float32 tolerances of the truth.  Torch's own float32 errors
    against the same truth are printed alongside, for comparison.
    """
    run = get_run("small_fp32")
    out_tol, grad_tol = TOLERANCES["small_fp32"]
    exact, exact_grads = run.data["exact_fp64"], run.data["exact_fp64_grads"]
    names = [n for n in OUTPUT_NAMES + ("loss", "mlm_loss", "sop_loss") if n in exact]
    rows = compare(run.engine_outputs(), exact, names, out_tol)
    torch_rows = compare(run.data["outputs"], exact, names, out_tol)
    scales = {k: grad_scale(k, exact_grads) for k in exact_grads if grad_scale(k, exact_grads) is not None}
    rows += compare(run.grads, exact_grads, list(exact_grads), grad_tol, scales)
    torch_rows += compare(run.data["grads"], exact_grads, list(exact_grads), grad_tol, scales)
    print(report("[small_fp32] torch float32 vs exact float64 (for comparison only)", torch_rows))
    check("[small_fp32] engine float32 vs exact float64", rows)
