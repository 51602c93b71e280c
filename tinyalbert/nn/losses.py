"""Cross-entropy for MLM (labels -100 are ignored) and SOP.

For logits z (N, C) and labels y (N,), over the M rows whose label is not -100:
    loss = (1/M) sum_n [ logsumexp(z_n) - z_n[y_n] ]
    d loss / d z_n = (softmax(z_n) - onehot(y_n)) / M        (zero for ignored rows)
The pretraining loss is MLM cross-entropy + SOP cross-entropy, as in the reference.
When no row is labelled (M = 0) the loss is 0 with zero gradient; PyTorch would give nan.

Labels reach the loss through `check_labels`, which admits exactly what the reference's
CrossEntropyLoss (ignore_index=-100) means by a label: -100, or a class in [0, C).  Anything
else is refused before the forward runs: NumPy would read -1 as the last class, silently.
"""
from __future__ import annotations

import numpy as np

IGNORE_INDEX = -100


def check_labels(labels, name: str, shape: tuple[int, ...], num_classes: int) -> np.ndarray:
    """`labels` as an int64 array of `shape`, each -100 (ignored) or a class in [0, num_classes).

    Anything else is a ValueError whose one line names the tensor, its shape and the first bad value.
    A 1-D array stands for one sequence when shape is (1, T), as input_ids may be 1-D.
    """
    y = np.asarray(labels)
    if len(shape) == 2 and shape[0] == 1 and y.ndim == 1:
        y = y[None, :]
    if y.shape != tuple(shape):
        raise ValueError(f"{name} has shape {y.shape}, expected {tuple(shape)}")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name} must be integers, got dtype {y.dtype} (shape {y.shape})")
    bad = (y != IGNORE_INDEX) & ((y < 0) | (y >= num_classes))
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"{name} (shape {y.shape}) holds {int(y[where])} at {where}: a label is "
                         f"{IGNORE_INDEX} (ignored) or a class in [0, {num_classes})")
    return y.astype(np.int64, copy=False)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable log-softmax over the last axis: z - max(z) - log(sum(exp(z - max(z))))."""
    out = logits - logits.max(axis=-1, keepdims=True)
    out -= np.log(np.exp(out).sum(axis=-1, keepdims=True))
    return out


def cross_entropy_forward(logits: np.ndarray, labels: np.ndarray) -> tuple[float, tuple]:
    """logits: (N, C), labels: (N,) int with -100 = ignore  ->  mean loss over labelled rows."""
    labels = np.asarray(labels).reshape(-1)
    logits = logits.reshape(labels.size, -1)
    keep = labels != IGNORE_INDEX
    count = int(keep.sum())
    logp = log_softmax(logits)
    if count == 0:
        loss = 0.0
    else:
        picked = logp[np.nonzero(keep)[0], labels[keep]]
        loss = float(-picked.sum() / count)
    return loss, (logp, labels, keep, count)


def cross_entropy_backward(cache: tuple, dloss: float = 1.0) -> np.ndarray:
    """ -> dlogits (N, C) = dloss * (softmax - onehot) / M on labelled rows, 0 elsewhere."""
    logp, labels, keep, count = cache
    dlogits = np.exp(logp)
    if count == 0:
        return np.zeros_like(dlogits)
    rows = np.nonzero(keep)[0]
    dlogits[rows, labels[keep]] -= 1
    dlogits[~keep] = 0
    dlogits *= dlogits.dtype.type(dloss / count)
    return dlogits
