"""Solutions to the exercises of notebook 0, ALBERT in one page.

Run: python notebooks/solutions/00_albert_in_one_page.py
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))      # notebooks/, for nbsetup
import nbsetup  # noqa: E402
import numpy as np  # noqa: E402

from tinyalbert import AlbertConfig, param_shapes  # noqa: E402

nb = nbsetup.notebook_namespace("00_albert_in_one_page.ipynb")
cfg, P, engine = nb["cfg"], nb["P"], nb["engine"]


def exercise_1() -> None:
    """Parameters as a function of E: every E-dependent tensor is E times something, so the count is a·E + c."""
    def count(E: int) -> int:
        config = AlbertConfig.from_dict({**cfg.to_dict(), "embedding_size": E})
        return sum(int(np.prod(shape)) for shape in param_shapes(config).values())

    V, H, positions, types = cfg.vocab_size, cfg.hidden_size, cfg.max_position_embeddings, cfg.type_vocab_size
    # word V×E, positions, token types, embedding LayerNorm (2E), projection H×E (its bias H does not depend on E),
    # MLM dense E×H + its bias E, MLM LayerNorm 2E
    per_unit_of_E = V + positions + types + 2 + H + H + 1 + 2
    constant = count(cfg.embedding_size) - per_unit_of_E * cfg.embedding_size
    for E in (64, 256):
        predicted = per_unit_of_E * E + constant
        print(f"E = {E:>3}: predicted {predicted:,}, param_shapes {count(E):,}")
        assert predicted == count(E)
    print(f"each unit of E costs {per_unit_of_E:,} parameters, {V / per_unit_of_E:.0%} of them in the word table")


def exercise_2() -> None:
    """The one-page model at depth 2L against the engine, then the MLM loss of the notebook's batch at every depth."""
    L = cfg.num_hidden_layers
    ids, types, mask = nb["ids"], nb["types"], nb["mask"]
    mine, _, _ = nb["albert_forward"](ids, types, mask, P, cfg, depth=2 * L)
    theirs = engine.forward(ids, types, mask, depth=2 * L).mlm_logits
    gap = np.abs(mine - theirs)[mask == 1].max()
    print(f"depth {2 * L}: largest difference from engine.forward(depth={2 * L}) {gap:.1e}")
    assert gap < 1e-6
    picked, labels = nb["picked"], nb["batch_labels"]
    for depth in range(1, 2 * L + 1):
        logits, _, _ = nb["albert_forward"](nb["batch_ids"], nb["batch_types"], nb["batch_mask"], P, cfg, depth=depth)
        loss, _ = nb["cross_entropy"](logits[picked], labels[picked])
        print(f"   {depth} applications: MLM loss {loss:.3f}" + ("   <- trained depth" if depth == L else ""))


def exercise_3() -> None:
    """The backward from dt through the head's LayerNorm and gelu_new to its dense layer."""
    picked, dt, grads = nb["picked"], nb["dt"], nb["engine_grads"]
    h = nb["inside"]["hidden"][picked]                                  # (M, H): the head's input
    pre = h @ P["predictions.dense.weight"].T + P["predictions.dense.bias"]   # (M, E), before gelu_new
    u = nb["gelu_new"](pre)
    mu, var = u.mean(-1, keepdims=True), u.var(-1, keepdims=True)
    r = 1 / np.sqrt(var + cfg.layer_norm_eps)
    uhat = (u - mu) * r
    # LayerNorm: t = uhat * w + b  ->  dw = sum dt * uhat;  du = r (g - mean g - uhat mean(g uhat)), g = dt * w
    d_ln_weight = (dt * uhat).sum(0)
    g = dt * P["predictions.LayerNorm.weight"]
    du = r * (g - g.mean(-1, keepdims=True) - uhat * (g * uhat).mean(-1, keepdims=True))
    # gelu_new(x) = x/2 (1 + tanh k(x)), k = sqrt(2/pi)(x + 0.044715 x^3):
    # derivative (1 + tanh k)/2 + x/2 (1 - tanh^2 k) sqrt(2/pi)(1 + 3 * 0.044715 x^2)
    th = np.tanh(np.sqrt(2 / np.pi) * (pre + 0.044715 * pre ** 3))
    dpre = du * (0.5 * (1 + th) + 0.5 * pre * (1 - th ** 2) * np.sqrt(2 / np.pi) * (1 + 3 * 0.044715 * pre ** 2))
    checks = {"predictions.LayerNorm.weight": d_ln_weight, "predictions.dense.weight": dpre.T @ h,
              "predictions.dense.bias": dpre.sum(0)}
    for name, mine in checks.items():
        error = nb["rel_error"](mine, grads[name])
        print(f"{name:>30}: relative error {error:.1e}")
        assert error < 1e-9


if __name__ == "__main__":
    for exercise in (exercise_1, exercise_2, exercise_3):
        print(f"--- {exercise.__name__}: {exercise.__doc__.splitlines()[0]}")
        exercise()
