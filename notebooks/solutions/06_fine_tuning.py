"""Solutions to the exercises of notebook 6.  Run: python notebooks/solutions/06_fine_tuning.py"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))      # notebooks/, for nbsetup
import nbsetup  # noqa: E402
import numpy as np  # noqa: E402

from tinyalbert.classifier import AlbertClassifier  # noqa: E402
from tinyalbert.nn.gradcheck import numerical_gradient_of_output, rel_error  # noqa: E402


def exercise_1() -> None:
    """The head adds K·H + K parameters; the MLM and SOP heads stay behind."""
    model = nbsetup.load_model()
    K, H = 3, model.config.hidden_size
    clf = AlbertClassifier.from_pretrained(model, ["a", "b", "c"])
    added = {n: v.size for n, v in clf.params.items() if n not in model.params}
    left = {n: v.size for n, v in model.params.items() if n not in clf.params}
    print(f"added {sorted(added)}: {sum(added.values()):,} = K·H + K = {K * H + K:,}")
    print(f"left behind {len(left)} tensors ({', '.join(sorted({n.split('.')[0] for n in left}))}): "
          f"{sum(left.values()):,} parameters")
    assert sum(added.values()) == K * H + K
    assert all(n.startswith(("predictions.", "sop_classifier.")) for n in left)


def exercise_2() -> None:
    """The bag of words trained on 20 to 160 sentences per class."""
    nb = nbsetup.notebook_namespace("06_fine_tuning.ipynb", stop_at="from tinyalbert.optim import AdamW")
    train, test, words, softmax = nb["train"], nb["test"], nb["words"], nb["softmax"]
    K = len(train.label_names)
    for per_class in (20, 40, 80, 160):
        keep = np.concatenate([np.nonzero(train.labels == k)[0][:per_class] for k in range(K)])
        texts, labels = [train.texts[i] for i in keep], train.labels[keep]
        counts: dict[str, int] = {}
        for t in texts:
            for w in words(t):
                counts[w] = counts.get(w, 0) + 1
        nb["vocab"] = {w: i for i, w in enumerate(sorted(w for w, c in counts.items() if c >= 2))}  # featurize reads it
        X, X_test = nb["featurize"](texts), nb["featurize"](test.texts)
        Y = np.eye(K)[labels]
        W, b = np.zeros((X.shape[1], K)), np.zeros(K)
        for _ in range(500):                                     # the notebook's settings: lr 2, L2 penalty 1e-3
            P = softmax(X @ W + b)
            W -= 2.0 * (X.T @ (P - Y) / len(Y) + 1e-3 * W)
            b -= 2.0 * (P - Y).mean(axis=0)
        accuracy = ((X_test @ W + b).argmax(1) == test.labels).mean()
        print(f"   {per_class:>3} sentences per class ({len(nb['vocab']):>4} words): test accuracy {accuracy:.3f}")


def smoothed_cross_entropy(z: np.ndarray, y: np.ndarray, alpha: float) -> tuple[float, np.ndarray]:
    """Mean cross-entropy against (1 - alpha) onehot(y) + alpha / K, and its gradient (softmax(z) - target) / N."""
    N, K = z.shape
    target = (1 - alpha) * np.eye(K)[y] + alpha / K
    shifted = z - z.max(1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    # d/dz_j of -sum_k target_k log p_k = p_j sum_k target_k - target_j = p_j - target_j (the target sums to 1)
    return float(-(target * log_p).sum(1).mean()), (np.exp(log_p) - target) / N


def exercise_3() -> None:
    """Label smoothing: the backward is softmax minus the smoothed target, checked by central differences."""
    rng = np.random.default_rng(0)
    z, y = rng.standard_normal((5, 3)), np.array([0, 2, 1, 1, 0])
    _, grad = smoothed_cross_entropy(z, y, 0.1)
    numeric = numerical_gradient_of_output(lambda: np.array(smoothed_cross_entropy(z, y, 0.1)[0]), z, np.array(1.0))
    print(f"relative error against central differences: {rel_error(grad, numeric):.1e}")
    assert rel_error(grad, numeric) < 1e-7


if __name__ == "__main__":
    for exercise in (exercise_1, exercise_2, exercise_3):
        print(f"--- {exercise.__name__}: {exercise.__doc__.splitlines()[0]}")
        exercise()
