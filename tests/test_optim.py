"""tinyalbert.optim: AdamW against torch.optim.AdamW, LAMB against the paper's formula, schedule, clipping, resume."""
import math

import h5py
import numpy as np
import pytest
import torch

from tinyalbert.optim import AdamW, Lamb, clip_grad_norm, exclude_from_weight_decay, global_norm, linear_schedule

SHAPES = {
    "albert.encoder.embedding_hidden_mapping_in.weight": (6, 4),
    "albert.encoder.embedding_hidden_mapping_in.bias": (6,),
    "albert.embeddings.LayerNorm.weight": (4,),
    "predictions.bias": (9,),
    "predictions.dense.weight": (4, 6),
    "some.layer_norm.gamma": (3,),
}


def make_params(dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal(s).astype(dtype) for k, s in SHAPES.items()}


def make_grads(step, dtype=np.float64):
    rng = np.random.default_rng(1000 + step)
    return {k: rng.standard_normal(s).astype(dtype) for k, s in SHAPES.items()}


def test_exclusion_rule():
    decayed = [k for k in SHAPES if not exclude_from_weight_decay(k)]
    assert decayed == ["albert.encoder.embedding_hidden_mapping_in.weight", "predictions.dense.weight"]


def test_adamw_matches_torch():
    params = make_params()
    tparams = {k: torch.tensor(v, requires_grad=True) for k, v in params.items()}
    groups = [
        {"params": [tparams[k] for k in SHAPES if not exclude_from_weight_decay(k)], "weight_decay": 0.1},
        {"params": [tparams[k] for k in SHAPES if exclude_from_weight_decay(k)], "weight_decay": 0.0},
    ]
    topt = torch.optim.AdamW(groups, lr=0.01, betas=(0.8, 0.95), eps=1e-7, foreach=False)
    opt = AdamW(params, lr=0.01, betas=(0.8, 0.95), eps=1e-7, weight_decay=0.1)
    for step in range(10):
        lr = linear_schedule(step, 0.01, 3, 10) + 1e-3  # a changing lr, never 0
        grads = make_grads(step)
        for k, p in tparams.items():
            p.grad = torch.tensor(grads[k])
        for group in topt.param_groups:
            group["lr"] = lr
        topt.step()
        opt.step(grads, lr=lr)
    for k in SHAPES:
        np.testing.assert_allclose(params[k], tparams[k].detach().numpy(), rtol=1e-12, atol=1e-14, err_msg=k)
    assert opt.decay_for("predictions.bias") == 0.0 and opt.decay_for("predictions.dense.weight") == 0.1


def lamb_reference(params, grads_per_step, lr, b1, b2, eps, wd, bias_correction=True, adapt_excluded=False):
    """LAMB written straight from the paper's update rule (no shared code with optim.py)."""
    w = {k: v.copy() for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(x) for k, x in params.items()}
    for t, grads in enumerate(grads_per_step, start=1):
        for k in w:
            g = grads[k]
            m[k] = b1 * m[k] + (1 - b1) * g
            v[k] = b2 * v[k] + (1 - b2) * g ** 2
            m_hat = m[k] / (1 - b1 ** t) if bias_correction else m[k]
            v_hat = v[k] / (1 - b2 ** t) if bias_correction else v[k]
            excluded = "LayerNorm" in k or "layer_norm" in k or k.endswith("bias")
            r = m_hat / (np.sqrt(v_hat) + eps) + (0.0 if excluded else wd) * w[k]
            w_norm = np.sqrt(np.sum(w[k] ** 2))
            r_norm = np.sqrt(np.sum(r ** 2))
            adapt = adapt_excluded or not excluded
            ratio = w_norm / r_norm if (w_norm > 0 and r_norm > 0 and adapt) else 1.0
            w[k] = w[k] - lr * ratio * r
    return w


def test_lamb_matches_paper_formula():
    params = make_params()
    params["predictions.dense.weight"][:] = 0.0  # ||w|| = 0 -> ratio 1
    grads = [make_grads(s) for s in range(6)]
    expected = lamb_reference(params, grads, lr=0.02, b1=0.9, b2=0.99, eps=1e-6, wd=0.05)
    opt = Lamb(params, lr=0.02, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.05)
    for g in grads:
        opt.step(g)
    for k in SHAPES:
        np.testing.assert_allclose(params[k], expected[k], rtol=1e-12, atol=1e-14, err_msg=k)
    assert opt.last_ratios["predictions.bias"] == 1.0


def test_lamb_variants():
    """ALBERT's TF LAMB (no bias correction), and the paper's trust ratio on every tensor."""
    grads = [make_grads(s) for s in range(4)]
    for bias_correction, adapt_excluded in ((False, False), (True, True)):
        params = make_params()
        expected = lamb_reference(params, grads, 0.01, 0.9, 0.999, 1e-6, 0.01, bias_correction, adapt_excluded)
        opt = Lamb(params, lr=0.01, bias_correction=bias_correction,
                   exclude_from_layer_adaptation=(lambda name: False) if adapt_excluded else None)
        for g in grads:
            opt.step(g)
        for k in SHAPES:
            np.testing.assert_allclose(params[k], expected[k], rtol=1e-12, atol=1e-14, err_msg=k)


def test_lamb_trust_ratio_one_step():
    # at t = 1 with bias correction, m_hat/sqrt(v_hat) = sign(g): r = sign(g) + wd w
    w = np.array([3.0, -4.0])
    params = {"x.weight": w.copy()}
    Lamb(params, lr=0.1, eps=0.0, weight_decay=0.0).step({"x.weight": np.array([0.5, 2.0])})
    r = np.array([1.0, 1.0])
    expected = w - 0.1 * (5.0 / math.sqrt(2.0)) * r
    np.testing.assert_allclose(params["x.weight"], expected, rtol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_preserved(dtype):
    for cls in (AdamW, Lamb):
        params = make_params(dtype)
        opt = cls(params)
        opt.step(make_grads(0, dtype))
        assert all(p.dtype == dtype for p in params.values())
        assert all(m.dtype == dtype for m in opt.exp_avg.values())


def test_schedule_values():
    assert linear_schedule(0, 1.0, 4, 12) == 0.0
    assert linear_schedule(2, 1.0, 4, 12) == 0.5
    assert linear_schedule(4, 1.0, 4, 12) == 1.0
    assert linear_schedule(8, 1.0, 4, 12) == 0.5
    assert linear_schedule(12, 1.0, 4, 12) == 0.0
    assert linear_schedule(20, 1.0, 4, 12) == 0.0
    assert linear_schedule(0, 2.0, 0, 10) == 2.0


def test_clipping_matches_torch():
    grads = make_grads(3)
    total = math.sqrt(sum(float(np.sum(g ** 2)) for g in grads.values()))
    tgrads = [torch.tensor(g) for g in grads.values()]
    tparams = [torch.zeros_like(g, requires_grad=True) for g in tgrads]
    for p, g in zip(tparams, tgrads, strict=True):
        p.grad = g.clone()
    tnorm = torch.nn.utils.clip_grad_norm_(tparams, max_norm=1.5)
    norm = clip_grad_norm(grads, 1.5)
    assert norm == pytest.approx(total, rel=1e-14) and norm == pytest.approx(float(tnorm), rel=1e-14)
    for g, p in zip(grads.values(), tparams, strict=True):
        np.testing.assert_allclose(g, p.grad.numpy(), rtol=1e-14)
    assert global_norm(grads) == pytest.approx(1.5, rel=1e-6)
    before = {k: v.copy() for k, v in grads.items()}
    clip_grad_norm(grads, 100.0)  # below the limit: untouched
    assert all(np.array_equal(before[k], grads[k]) for k in grads)


@pytest.mark.parametrize("cls", [AdamW, Lamb])
def test_state_round_trip_resumes_bitwise(cls, tmp_path):
    params = make_params(np.float32)
    opt = cls(params, lr=0.01)
    for s in range(4):
        opt.step(make_grads(s, np.float32), lr=0.01 / (s + 1))
    path = tmp_path / "ckpt.h5"
    with h5py.File(path, "w") as f:
        for k, v in params.items():
            f["params/" + k] = v
        for k, v in opt.state_dict().items():
            f["optim/" + k] = v
    for s in range(4, 8):
        opt.step(make_grads(s, np.float32), lr=0.01 / (s + 1))

    with h5py.File(path, "r") as f:
        params2 = {k: f["params/" + k][()] for k in SHAPES}
        state = {k: f["optim/" + k][()] for k in f["optim"].keys()}
    opt2 = cls(params2, lr=0.01)
    opt2.load_state_dict(state)
    assert opt2.step_count == 4
    for s in range(4, 8):
        opt2.step(make_grads(s, np.float32), lr=0.01 / (s + 1))
    for k in SHAPES:
        assert np.array_equal(params[k], params2[k]), k
        assert np.array_equal(opt.exp_avg_sq[k], opt2.exp_avg_sq[k]), k
