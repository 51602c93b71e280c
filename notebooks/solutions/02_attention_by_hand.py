"""Solutions to the exercises of notebook 2.  Run: python notebooks/solutions/02_attention_by_hand.py"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))      # notebooks/, for nbsetup
import nbsetup  # noqa: E402
import numpy as np  # noqa: E402

from tinyalbert.nn.attention import self_attention_backward, self_attention_forward  # noqa: E402
from tinyalbert.nn.gradcheck import rel_error  # noqa: E402
from tinyalbert.nn.softmax import additive_key_mask  # noqa: E402

# the notebook's set-up, up to (not including) its gradient checks
nb = nbsetup.notebook_namespace("02_attention_by_hand.ipynb", stop_at="steps = 10.0 ** -np.arange(1, 9)")
A, X, hs, NH, config = nb["A"], nb["X"], nb["hs"], nb["NH"], nb["config"]
head_forward, head_backward = nb["head_forward"], nb["head_backward"]


def exercise_1() -> None:
    """One attention block has 4H² + 6H parameters, whatever the number of heads."""
    H = X.shape[1]
    predicted = 4 * (H * H + H) + 2 * H          # q, k, v, dense (weight and bias each), LayerNorm (w, b)
    counted = sum(v.size for v in A.values())
    print(f"H = {H}: 4H² + 6H = {predicted:,}; the tensors in A hold {counted:,}; NH = {NH} only decides how "
          "the H rows of q, k and v are grouped into heads")
    assert predicted == counted


def exercise_2() -> None:
    """Padded keys and values pass no gradient back; padded queries do."""
    batch_mask = nb["batch_mask"]
    short = 1                                    # the padded row of the notebook's batch
    n = int(batch_mask[short].sum())
    x = nb["Xb"][short]                          # (T, H), rows n.. are padding
    key_mask = additive_key_mask(batch_mask, np.float64)[short]
    C, (Q, K, V, P) = head_forward(x, A, 1, key_mask)
    dC = np.random.default_rng(1).standard_normal(C.shape)
    dP = dC @ V.T
    dV = P.T @ dC
    dZ = P * (dP - (dP * P).sum(axis=1, keepdims=True))
    dK = (dZ / np.sqrt(hs)).T @ Q
    dQ = (dZ / np.sqrt(hs)) @ K
    print(f"padded positions {n}..{len(x) - 1}: largest |dK| {np.abs(dK[n:]).max()}, largest |dV| "
          f"{np.abs(dV[n:]).max()}, largest |dQ| {np.abs(dQ[n:]).max():.2e}")
    assert not dK[n:].any() and not dV[n:].any() and dQ[n:].any()
    dX, _ = head_backward(dC, x, A, 1, (Q, K, V, P))
    rows = slice(hs, 2 * hs)
    assert np.allclose(dX[n:], dQ[n:] @ A["query.weight"][rows])   # what reaches padded X comes via Q alone
    print("so the gradient reaching a padded row of X comes through its query only")


def exercise_3() -> None:
    """The whole block's backward: heads, concatenation, dense, residual and post-LN LayerNorm."""
    eps = config.layer_norm_eps
    key_mask = np.zeros(len(X))
    heads = [head_forward(X, A, h, key_mask) for h in range(NH)]
    merged = np.concatenate([c for c, _ in heads], axis=1)                    # (T, H)
    pre = X + merged @ A["dense.weight"].T + A["dense.bias"]                  # the residual sum
    mu = pre.mean(-1, keepdims=True)
    r = 1 / np.sqrt(((pre - mu) ** 2).mean(-1, keepdims=True) + eps)
    xhat = (pre - mu) * r
    dout = np.random.default_rng(2).standard_normal(X.shape)
    g = dout * A["LayerNorm.weight"]
    dpre = r * (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True))
    d_dense = dpre.T @ merged
    dmerged = dpre @ A["dense.weight"]
    dX = dpre.copy()                                                          # the residual path
    for h, (_, cache) in enumerate(heads):
        dX += head_backward(dmerged[:, h * hs:(h + 1) * hs], X, A, h, cache)[0]
    _, _, cache = self_attention_forward(X[None], key_mask[None], A, NH, eps)
    grads = {k: np.zeros_like(v) for k, v in A.items()}
    engine_dX = self_attention_backward(dout[None], cache, grads)[0]
    for name, mine, theirs in [("dX", dX, engine_dX), ("d dense.weight", d_dense, grads["dense.weight"]),
                               ("d LayerNorm.weight", (dout * xhat).sum(0), grads["LayerNorm.weight"])]:
        error = rel_error(mine, theirs)
        print(f"{name:>20}: relative error {error:.1e}")
        assert error < 1e-12


if __name__ == "__main__":
    for exercise in (exercise_1, exercise_2, exercise_3):
        print(f"--- {exercise.__name__}: {exercise.__doc__.splitlines()[0]}")
        exercise()
