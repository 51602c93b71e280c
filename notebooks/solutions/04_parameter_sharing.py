"""Solutions to the exercises of notebook 4.  Run: python notebooks/solutions/04_parameter_sharing.py"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))      # notebooks/, for nbsetup
import nbsetup  # noqa: E402
import numpy as np  # noqa: E402

from tinyalbert import AlbertConfig  # noqa: E402
from tinyalbert.nn.gradcheck import rel_error  # noqa: E402
from tinyalbert.nn.heads import mlm_head_backward, mlm_head_forward  # noqa: E402
from tinyalbert.nn.layer import albert_layer_backward, albert_layer_forward  # noqa: E402
from tinyalbert.nn.losses import cross_entropy_backward, cross_entropy_forward  # noqa: E402
from tinyalbert.nn.params import EMB, MLM, layer_prefix, sub, zero_grads  # noqa: E402
from tinyalbert.nn.softmax import additive_key_mask  # noqa: E402

# the notebook up to (not including) the logit lens on one sentence
nb = nbsetup.notebook_namespace("04_parameter_sharing.ipynb", stop_at="probe = ")
L = nb["L"]


def exercise_1() -> None:
    """Sharing saves (L - 1) layers of 4H² + 2HI + 9H + I parameters."""
    H, I, depth = 512, 2048, 8
    predicted = (depth - 1) * (4 * H * H + 2 * H * I + 9 * H + I)
    cfg = AlbertConfig(vocab_size=30000, embedding_size=128, hidden_size=H, num_attention_heads=8, intermediate_size=I,
                       num_hidden_layers=depth)
    counted = nb["count"](nb["with_changes"](cfg, num_hidden_groups=depth)) - nb["count"](cfg)
    print(f"H = {H}, I = {I}, L = {depth}: predicted saving {predicted:,}, counted {counted:,}")
    assert predicted == counted


def exercise_2() -> None:
    """The transitions of every application up to 2L."""
    long_model, texts = nb["long_model"], nb["texts"]
    dist, cosine = nb["transitions"](long_model, texts)
    for i, (d, c) in enumerate(zip(dist, cosine, strict=True), start=1):
        print(f"   application {i}: L2 distance {d:6.2f}  cosine {c:.3f}" + ("   <- trained depth" if i == L else ""))
    before, after = dist[:L].mean(), dist[L:].mean()
    print(f"mean L2 distance of applications 1..{L}: {before:.2f}; of {L + 1}..{2 * L}: {after:.2f}")


def exercise_3() -> None:
    """Each depth's share of the shared gradient, from one backward per application."""
    model64, config = nb["model64"], nb["config"]
    ids, mask, labels = nb["batch_ids"], nb["batch_mask"], nb["batch_labels"]
    p, eps, heads = model64.params, config.layer_norm_eps, config.num_attention_heads
    layer = sub(p, layer_prefix(0, 0))
    key_mask = additive_key_mask(mask, np.float64)
    h = model64.forward(ids, attention_mask=mask).hidden_states[0]
    caches = []
    for _ in range(L):
        h, _, cache = albert_layer_forward(h, key_mask, layer, heads, eps)
        caches.append(cache)
    b_idx, t_idx = np.nonzero(labels != -100)
    logits, mlm_cache = mlm_head_forward(h[b_idx, t_idx], sub(p, MLM), p[EMB + "word_embeddings.weight"], eps)
    _, ce_cache = cross_entropy_forward(logits, labels[b_idx, t_idx])
    head_grads = zero_grads(sub(p, MLM))
    dh = np.zeros_like(h)
    dh[b_idx, t_idx] = mlm_head_backward(cross_entropy_backward(ce_cache), mlm_cache, head_grads,
                                         np.zeros_like(p[EMB + "word_embeddings.weight"]))
    for i in reversed(range(L)):
        g_i = zero_grads(layer)                                     # a fresh dict: this application's share only
        dh = albert_layer_backward(dh, caches[i], g_i)
        worst = max(rel_error(g_i[n], nb["per_depth"][i][n]) for n in layer)
        print(f"   g_{i + 1}: worst relative error against the unrolled model's layer {i + 1}: {worst:.1e}")
        assert worst < 1e-10


if __name__ == "__main__":
    for exercise in (exercise_1, exercise_2, exercise_3):
        print(f"--- {exercise.__name__}: {exercise.__doc__.splitlines()[0]}")
        exercise()
