"""Solutions to the exercises of notebook 3.  Run: python notebooks/solutions/03_layernorm_and_the_shared_layer.py"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))      # notebooks/, for nbsetup
import nbsetup  # noqa: E402
import numpy as np  # noqa: E402

from tinyalbert import AlbertConfig  # noqa: E402
from tinyalbert.nn.gradcheck import numerical_gradient_of_output, rel_error  # noqa: E402

# the notebook's set-up and its LayerNorm, up to (not including) the layer-by-layer measurements
nb = nbsetup.notebook_namespace("03_layernorm_and_the_shared_layer.ipynb", stop_at="attn_ratio, ffn_ratio, norms")
layer, x, layernorm, eps = nb["layer"], nb["x"], nb["layernorm"], nb["eps"]


def layer_count(H: int, I: int) -> int:
    # attention q, k, v, dense (4H² + 4H), its LayerNorm (2H), ffn H->I (HI + I), ffn_output I->H (IH + H),
    # and the last LayerNorm (2H)
    return 4 * H * H + 2 * H * I + 9 * H + I


def exercise_1() -> None:
    """One layer holds 4H² + 2HI + 9H + I parameters."""
    H, I = nb["config"].hidden_size, nb["config"].intermediate_size
    counted = sum(v.size for v in layer.values())
    print(f"H = {H}, I = {I}: formula {layer_count(H, I):,}, the layer's tensors {counted:,}")
    assert layer_count(H, I) == counted
    xx = AlbertConfig.preset("xxlarge")
    print(f"albert-xxlarge-v2 (H = {xx.hidden_size}, I = {xx.intermediate_size}): "
          f"{layer_count(xx.hidden_size, xx.intermediate_size):,} parameters in its one layer")


def exercise_2() -> None:
    """LayerNorm ignores a shift of a row exactly, and a scaling about its mean almost exactly."""
    w, b = layer["attention.LayerNorm.weight"], layer["attention.LayerNorm.bias"]
    y = layernorm(x, w, b)[0]
    shifted = x + 3.7
    mu = x.mean(-1, keepdims=True)
    scaled = mu + 5.0 * (x - mu)
    print(f"shift by 3.7: largest change {np.abs(layernorm(shifted, w, b)[0] - y).max():.1e}")
    print(f"scale by 5 about the mean: largest change {np.abs(layernorm(scaled, w, b)[0] - y).max():.1e}")
    assert np.allclose(layernorm(shifted, w, b)[0], y, atol=1e-12)
    assert np.allclose(layernorm(scaled, w, b)[0], y, atol=1e-12)
    # scaling by s turns var/(var+eps) into s²var/(s²var+eps): equal only when eps is 0
    var = x.var(-1)
    print(f"the exact change of x̂ under scaling is a factor sqrt(s²var/(s²var+eps) · (var+eps)/var) - 1, "
          f"at most {np.abs(np.sqrt(25 * var / (25 * var + eps) * (var + eps) / var) - 1).max():.1e} here")


def rmsnorm(x: np.ndarray, w: np.ndarray, eps: float = 1e-12) -> tuple[np.ndarray, tuple]:
    r = 1 / np.sqrt((x ** 2).mean(-1, keepdims=True) + eps)
    return x * r * w, (x * r, r)


def rmsnorm_backward(dy: np.ndarray, cache: tuple, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """y = x̂ w with x̂ = x r, r = (mean(x²) + eps)^(-1/2).

    ∂r/∂x_i = -r³ x_i / C, so ∂x̂_j/∂x_i = r (δ_ij - x̂_j x̂_i / C), and with g = dy w:
    dx = r (g - x̂ mean(g x̂)),   dw = Σ_rows dy x̂.   No mean(g) term: RMSNorm does not centre.
    """
    xhat, r = cache
    g = dy * w
    return r * (g - xhat * (g * xhat).mean(-1, keepdims=True)), (dy * xhat).sum(0)


def exercise_3() -> None:
    """RMSNorm's backward, checked against central differences; it keeps the orthogonality, not the zero row sums."""
    w = np.array(layer["attention.LayerNorm.weight"])
    dy = np.random.default_rng(3).standard_normal(x.shape)
    _, cache = rmsnorm(x, w)
    dx, dw = rmsnorm_backward(dy, cache, w)
    with nbsetup.one_thread():
        numeric_x = numerical_gradient_of_output(lambda: rmsnorm(x, w)[0], x, dy)
        numeric_w = numerical_gradient_of_output(lambda: rmsnorm(x, w)[0], w, dy)
    print(f"dx: relative error {rel_error(dx, numeric_x):.1e}   dw: relative error {rel_error(dw, numeric_w):.1e}")
    assert rel_error(dx, numeric_x) < 1e-7 and rel_error(dw, numeric_w) < 1e-7
    print(f"largest |row of dx · x̂| {np.abs((dx * cache[0]).sum(-1)).max():.1e} (kept: scaling a row changes nothing)")
    print(f"largest |row sum of dx| {np.abs(dx.sum(-1)).max():.1e} (not zero: RMSNorm does see a shift)")
    assert np.abs((dx * cache[0]).sum(-1)).max() < 1e-8 < np.abs(dx.sum(-1)).max()


if __name__ == "__main__":
    for exercise in (exercise_1, exercise_2, exercise_3):
        print(f"--- {exercise.__name__}: {exercise.__doc__.splitlines()[0]}")
        exercise()
