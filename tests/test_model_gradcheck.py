"""The whole model's gradient against central differences of its loss, and weight sharing.

`Albert.loss_and_grads` returns the pretraining loss (MLM cross-entropy over the labelled
positions + SOP cross-entropy) and the gradient of every parameter.  Here every parameter tensor
is checked against float64 central differences of that same loss,
    dL/dp_i ~= (L(p + h e_i) - L(p - h e_i)) / (2 h),
on a tiny config (E=8, H=16, 2 heads, I=20, V=100, 16 positions, one layer applied 3 times) whose
parameters are randomised (std 0.3, LayerNorm weights 1 + noise) so that every activation is far
from trivial.  The batch has padding in the attention mask, repeated token ids, both token types,
MLM labels with -100 (and a label repeated at two positions) and SOP labels.

Tensors of up to 64 entries are checked entirely; for bigger ones, 30 random entries plus the
entry with the largest analytic gradient (so that the normwise error below is normalised by the
tensor's own gradient scale, as for a full tensor).

Error: rel = max|a - n| / max(max|a|, max|n|) over the checked entries; bound 1e-6.  The loss is
~5, so rounding in L(p +- h) is ~1e-15 and h = 1e-5 gives ~1e-10 absolute noise with ~1e-10
truncation error: correct gradients land near 1e-9..1e-8 relative, a wrong one at 1e-3 or worse.

The padding id 0 appears only at padded positions, which are neither labelled nor position 0
(the pooler's token).  As keys they get probability exactly 0, so nothing flows from them to the
loss and the true lookup gradient of row 0 is exactly zero, consistent with the engine's
padding_idx rule (row 0 gets no lookup gradient; it still gets the tied decoder's).  The rule
itself, with the pad id at a position that does matter, is checked in test_ops_numerical.py.

Attention key bias: its exact gradient is zero (adding bk to every key shifts all of a query's
scores by the same amount, which softmax ignores), so analytic and numerical values are both noise;
they must both be below 1e-6 times the scale of the key weight's gradient.

With dropout (test_full_model_gradients_with_dropout) every call of loss_and_grads gets a new
Generator with the same seed, so it draws the same masks: the loss is then one fixed function of
the parameters, whose gradient the central differences measure.

Run with `pytest -s` for the per-tensor summary.
"""
from __future__ import annotations

import numba
import numpy as np
import pytest

from tinyalbert import Albert, AlbertConfig, init_params
from tinyalbert.nn.gradcheck import rel_error
from tinyalbert.nn.params import SOP_HEAD_KEYS, layer_prefix, layer_shapes

pytestmark = pytest.mark.usefixtures("one_numba_thread")

TOL = 1e-6
H_STEP = 1e-5
N_SUBSET = 30
FULL_CHECK_MAX = 64
L = 3

INPUT_IDS = np.array([[2, 17, 45, 17, 88, 45, 3, 9],
                      [2, 51, 17, 51, 3, 0, 0, 0],
                      [2, 99, 62, 99, 62, 3, 0, 0]])
TOKEN_TYPE_IDS = np.array([[0, 0, 0, 0, 1, 1, 1, 1],
                           [0, 0, 0, 1, 1, 0, 0, 0],
                           [0, 0, 1, 1, 1, 1, 0, 0]])
ATTENTION_MASK = (np.arange(8)[None, :] < np.array([[8], [5], [6]])).astype(np.int64)
MLM_LABELS = np.full((3, 8), -100)
MLM_LABELS[0, 1] = MLM_LABELS[0, 3] = 17        # the same label at two positions
MLM_LABELS[0, 5] = 44
MLM_LABELS[1, 2] = 17
MLM_LABELS[1, 3] = 51
MLM_LABELS[2, 1] = 99
MLM_LABELS[2, 4] = 5
SOP_LABELS = np.array([0, 1, 1])


def tiny_config(**overrides) -> AlbertConfig:
    kw = dict(vocab_size=100, embedding_size=8, hidden_size=16, num_attention_heads=2, intermediate_size=20,
              num_hidden_layers=L, max_position_embeddings=16)
    kw.update(overrides)
    return AlbertConfig(**kw)


def randomised_params(config: AlbertConfig, seed: int = 0, sop_head: bool = True, dtype=np.float64):
    """init_params, then every tensor redrawn: std 0.3 (biases 0.1), LayerNorm weights 1 + 0.3 noise."""
    params = init_params(config, seed, dtype=np.float64, sop_head=sop_head)
    rng = np.random.default_rng(seed + 1000)
    for name, value in params.items():
        if name.endswith("LayerNorm.weight") or name.endswith("layer_norm.weight"):
            value[...] = 1.0 + 0.3 * rng.standard_normal(value.shape)
        elif value.ndim == 1:
            value[...] = 0.1 * rng.standard_normal(value.shape)
        else:
            value[...] = 0.3 * rng.standard_normal(value.shape)
    return {k: v.astype(dtype) for k, v in params.items()}


def key_bias_reference(name: str) -> str | None:
    """For a key bias, the name of the key weight whose gradient sets its scale; else None."""
    return name.removesuffix("bias") + "weight" if name.endswith("attention.key.bias") else None


def check_model_gradients(report, label: str, model: Albert, sop_labels, seed: int = 0,
                          dropout_seed: int | None = None) -> dict:
    """Check every parameter's gradient against central differences of the loss.  Returns the grads.

    dropout_seed: every loss_and_grads call draws its dropout masks from a new Generator with this seed.
    """
    batch = (INPUT_IDS, TOKEN_TYPE_IDS, ATTENTION_MASK, MLM_LABELS, sop_labels)

    def loss_and_grads():
        rng = None if dropout_seed is None else np.random.default_rng(dropout_seed)
        return model.loss_and_grads(*batch, rng=rng)

    loss, grads = loss_and_grads()
    assert set(grads) == set(model.params)
    rng = np.random.default_rng(seed)
    failures = []
    for name, value in model.params.items():
        a = grads[name]
        assert a.shape == value.shape and a.dtype == value.dtype, name
        flat = value.reshape(-1)
        assert np.shares_memory(flat, value)
        if value.size <= FULL_CHECK_MAX:
            idx = np.arange(value.size)
        else:
            idx = np.union1d(rng.choice(value.size, N_SUBSET, replace=False), [np.abs(a).argmax()])
        numerical = np.empty(idx.size)
        for k, i in enumerate(idx):
            old = flat[i]
            flat[i] = old + H_STEP
            plus = loss_and_grads()[0]
            flat[i] = old - H_STEP
            minus = loss_and_grads()[0]
            flat[i] = old
            numerical[k] = (plus - minus) / (2 * H_STEP)
        analytic = a.reshape(-1)[idx]
        ref = key_bias_reference(name)
        if ref is not None:
            err = max(np.abs(analytic).max(), np.abs(numerical).max()) / np.abs(grads[ref]).max()
            name_in_report = name + " [exact 0: max|.|/scale]"
        else:
            err = rel_error(analytic, numerical)
            name_in_report = name
        report.add("model gradcheck", label, name_in_report, err)
        if not err <= TOL:
            failures.append(f"{name}: {err:.3e}")
    assert not failures, f"{label}: gradient check failed for " + ", ".join(failures)
    assert loss_and_grads()[0] == loss        # parameters restored exactly
    return grads


def cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    keep = labels != -100
    z = logits[keep]
    logp = z - z.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    return float(-logp[np.arange(z.shape[0]), labels[keep]].mean())


def test_full_model_gradients(error_report):
    """MLM + SOP loss, every parameter."""
    config = tiny_config()
    model = Albert(config, randomised_params(config))
    check_model_gradients(error_report, "MLM + SOP", model, SOP_LABELS)
    # the loss is the one the forward pass defines (loss_and_grads runs the MLM head on labelled
    # positions only; forward runs it everywhere)
    loss, _ = model.loss_and_grads(INPUT_IDS, TOKEN_TYPE_IDS, ATTENTION_MASK, MLM_LABELS, SOP_LABELS)
    out = model.forward(INPUT_IDS, TOKEN_TYPE_IDS, ATTENTION_MASK)
    expected = cross_entropy(out.mlm_logits, MLM_LABELS) + cross_entropy(out.sop_logits, SOP_LABELS)
    assert abs(loss - expected) <= 1e-12 * expected


def test_full_model_gradients_with_dropout(error_report):
    """MLM + SOP loss with hidden and attention-probability dropout (fixed masks), every parameter."""
    config = tiny_config(hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.3)
    model = Albert(config, randomised_params(config, seed=6))
    check_model_gradients(error_report, "MLM + SOP, dropout (fixed masks)", model, SOP_LABELS, seed=6,
                          dropout_seed=7)
    # the masks matter: another seed gives another loss, and no dropout yet another
    batch = (INPUT_IDS, TOKEN_TYPE_IDS, ATTENTION_MASK, MLM_LABELS, SOP_LABELS)
    losses = {model.loss_and_grads(*batch, rng=np.random.default_rng(seed))[0] for seed in (7, 8)}
    losses.add(model.loss(*batch)[0])
    assert len(losses) == 3


def test_mlm_only_gradients(error_report):
    """sop_labels=None with SOP-head params: the pooler and SOP classifier get exactly zero gradient."""
    config = tiny_config()
    model = Albert(config, randomised_params(config, seed=1))
    grads = check_model_gradients(error_report, "MLM only (sop_labels=None)", model, None, seed=1)
    for name in SOP_HEAD_KEYS:
        assert not grads[name].any(), name


def test_masked_lm_params_without_sop_head(error_report):
    """The AlbertForMaskedLM parameter set: no pooler, no SOP classifier."""
    config = tiny_config()
    params = randomised_params(config, seed=2, sop_head=False)
    assert not any(k in params for k in SOP_HEAD_KEYS)
    model = Albert(config, params)
    check_model_gradients(error_report, "no SOP head (AlbertForMaskedLM params)", model, None, seed=2)


def test_shared_layer_gradient_is_sum_over_applications(error_report):
    """Weight sharing: one layer applied L times == L separate copies holding the same values.

    The unrolled model uses num_hidden_groups = L (one inner layer each), so application i runs
    group i's own copy.  Same values, same arithmetic: the losses agree, and the shared layer's
    gradient equals the sum of the copies' gradients (up to the order of the additions).
    """
    shared_config = tiny_config()
    unrolled_config = tiny_config(num_hidden_groups=L, num_hidden_layers=L, inner_group_num=1)
    assert [unrolled_config.group_of_application(i) for i in range(L)] == list(range(L))
    shared = randomised_params(shared_config, seed=3)
    unrolled = {k: v.copy() for k, v in shared.items() if not k.startswith("albert.encoder.albert_layer_groups.")}
    for g in range(L):
        for name in layer_shapes(shared_config):
            unrolled[layer_prefix(g, 0) + name] = shared[layer_prefix(0, 0) + name].copy()
    batch = (INPUT_IDS, TOKEN_TYPE_IDS, ATTENTION_MASK, MLM_LABELS, SOP_LABELS)
    loss_s, grads_s = Albert(shared_config, shared).loss_and_grads(*batch)
    loss_u, grads_u = Albert(unrolled_config, unrolled).loss_and_grads(*batch)

    assert abs(loss_s - loss_u) <= 1e-12 * abs(loss_s)
    worst = 0.0
    for name in layer_shapes(shared_config):
        summed = sum(grads_u[layer_prefix(g, 0) + name] for g in range(L))
        s = grads_s[layer_prefix(0, 0) + name]
        if name == "attention.key.bias":      # exact value 0: compare on the key weight's scale
            err = np.abs(s - summed).max() / np.abs(grads_s[layer_prefix(0, 0) + "attention.key.weight"]).max()
        else:
            err = rel_error(s, summed)
        worst = max(worst, err)
        assert err <= 1e-12, (name, err)
        # and each copy's gradient really is a different, non-zero part of the sum
        if name != "attention.key.bias":
            parts = [grads_u[layer_prefix(g, 0) + name] for g in range(L)]
            assert all(np.abs(p).max() > 1e-3 * np.abs(s).max() for p in parts)
    for name in grads_s:
        if not name.startswith("albert.encoder.albert_layer_groups."):
            assert rel_error(grads_s[name], grads_u[name]) <= 1e-12, name
    error_report.add("model gradcheck", "weight sharing: shared vs sum of unrolled copies", "layer tensors", worst)
    error_report.add("model gradcheck", "weight sharing: shared vs sum of unrolled copies", "loss",
                     abs(loss_s - loss_u) / abs(loss_s))


def test_gradients_do_not_depend_on_numba_thread_count():
    """The kernels split reductions into a fixed number of blocks: bitwise the same for 1 or N threads.

    (The rest of this file runs single-threaded for speed; this shows that loses nothing.)
    """
    available = numba.config.NUMBA_NUM_THREADS
    if available < 2:
        pytest.skip("only one Numba thread available")
    config = tiny_config()
    model = Albert(config, randomised_params(config, seed=4))
    batch = (INPUT_IDS, TOKEN_TYPE_IDS, ATTENTION_MASK, MLM_LABELS, SOP_LABELS)
    loss1, grads1 = model.loss_and_grads(*batch)
    previous = numba.get_num_threads()
    numba.set_num_threads(available)
    try:
        lossn, gradsn = model.loss_and_grads(*batch)
    finally:
        numba.set_num_threads(previous)
    assert loss1 == lossn
    for name in grads1:
        assert np.array_equal(grads1[name], gradsn[name]), name


def test_float32_model_runs_in_float32():
    """float32 params: float32 outputs and gradients, close to the float64 model on the same values."""
    config = tiny_config()
    p32 = randomised_params(config, seed=5, dtype=np.float32)
    p64 = {k: v.astype(np.float64) for k, v in p32.items()}
    m32, m64 = Albert(config, p32), Albert(config, p64)
    out32 = m32.forward(INPUT_IDS, TOKEN_TYPE_IDS, ATTENTION_MASK, output_attentions=True)
    out64 = m64.forward(INPUT_IDS, TOKEN_TYPE_IDS, ATTENTION_MASK, output_attentions=True)
    for a32, a64 in [(out32.mlm_logits, out64.mlm_logits), (out32.sop_logits, out64.sop_logits),
                     (out32.pooled, out64.pooled), *zip(out32.hidden_states, out64.hidden_states, strict=True),
                     *zip(out32.attentions, out64.attentions, strict=True)]:
        assert a32.dtype == np.float32
        assert rel_error(a32, a64) <= 1e-5
    batch = (INPUT_IDS, TOKEN_TYPE_IDS, ATTENTION_MASK, MLM_LABELS, SOP_LABELS)
    loss32, g32 = m32.loss_and_grads(*batch)
    loss64, g64 = m64.loss_and_grads(*batch)
    assert abs(loss32 - loss64) <= 1e-5 * loss64
    for name in g64:
        assert g32[name].dtype == np.float32, name
        if key_bias_reference(name) is None:
            assert rel_error(g32[name], g64[name]) <= 1e-4, name
