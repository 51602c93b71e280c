"""Optimizers for the flat parameter dict: AdamW and LAMB, plus the LR schedule and gradient clipping.

Both optimizers update `params: dict[str, np.ndarray]` in place from a `grads`
dict with the same keys, shapes and dtypes (float32 or float64; the moments
take the parameter's dtype).  Per tensor w with gradient g, at step t = 1, 2, ...

    m = b1 m + (1 - b1) g            v = b2 v + (1 - b2) g^2
    m_hat = m / (1 - b1^t)           v_hat = v / (1 - b2^t)

AdamW (torch.optim.AdamW, decoupled weight decay):
    w = w - lr wd w
    w = w - lr m_hat / (sqrt(v_hat) + eps)

LAMB (You et al. 2019, "Large Batch Optimization for Deep Learning"; the
optimizer ALBERT was pretrained with):
    r = m_hat / (sqrt(v_hat) + eps) + wd w
    ratio = ||w|| / ||r||   (1 when either norm is 0)
    w = w - lr ratio r

LayerNorm parameters and biases get no weight decay (`exclude_from_weight_decay`);
in LAMB they also skip the trust ratio, as in ALBERT's own LAMB.

`state_dict()` holds only numpy arrays and an int step, so a checkpoint can go
to HDF5 and a resumed run continues bit for bit.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from .nn.params import Params


def exclude_from_weight_decay(name: str) -> bool:
    """True for LayerNorm parameters and biases, which ALBERT and BERT never decay."""
    return "LayerNorm" in name or "layer_norm" in name or name.endswith("bias")


def linear_schedule(step: int, peak_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Learning rate for the update that follows `step` completed updates (step = 0, 1, ...).

    lr = peak * step / warmup                            for step < warmup
    lr = peak * max(0, (total - step) / (total - warmup))  afterwards
    The same convention as transformers' get_linear_schedule_with_warmup
    (so the very first update has lr 0 when warmup > 0).
    """
    if step < warmup_steps:
        return peak_lr * step / max(1, warmup_steps)
    return peak_lr * max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def global_norm(grads: Params) -> float:
    """sqrt(sum over every tensor of sum(g^2)): the L2 norm of all gradients seen as one vector."""
    # per-tensor norms first, then the norm of those: the order torch.nn.utils.clip_grad_norm_ uses
    norms = [math.sqrt(float(np.vdot(g, g))) for g in grads.values()]
    return math.sqrt(sum(n * n for n in norms))


def clip_grad_norm(grads: Params, max_norm: float) -> float:
    """Scale every gradient in place by min(1, max_norm / (norm + 1e-6)); returns the norm before clipping.

    Same rule as torch.nn.utils.clip_grad_norm_.
    """
    norm = global_norm(grads)
    coef = max_norm / (norm + 1e-6)
    if coef < 1.0:
        for g in grads.values():
            g *= g.dtype.type(coef)
    return norm


class _MomentOptimizer:
    """Shared state of AdamW and LAMB: the step counter and the two moments per tensor."""

    def __init__(self, params: Params, lr: float, betas: tuple[float, float], eps: float,
                 weight_decay: float, exclude: Callable[[str], bool]):
        self.params = params
        self.lr = float(lr)
        self.beta1, self.beta2 = float(betas[0]), float(betas[1])
        self.eps = float(eps)
        self.weight_decay = float(weight_decay)
        self.exclude = exclude
        self.step_count = 0
        self.exp_avg = {k: np.zeros_like(w) for k, w in params.items()}
        self.exp_avg_sq = {k: np.zeros_like(w) for k, w in params.items()}

    def decay_for(self, name: str) -> float:
        """The weight decay that applies to tensor `name` (0 for LayerNorm and biases)."""
        return 0.0 if self.exclude(name) else self.weight_decay

    def _begin_step(self, grads: Params, lr: float | None) -> tuple[float, int]:
        """Check that grads match params, count the step; return (this step's lr, the new step number t)."""
        if grads.keys() != self.params.keys():
            missing = sorted(self.params.keys() - grads.keys())
            extra = sorted(grads.keys() - self.params.keys())
            raise KeyError(f"grads do not match params: missing {missing[:3]}, unexpected {extra[:3]}")
        self.step_count += 1
        return (self.lr if lr is None else float(lr)), self.step_count

    def _update_moments(self, name: str, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        m, v = self.exp_avg[name], self.exp_avg_sq[name]
        m *= self.beta1
        m += (1.0 - self.beta1) * g
        v *= self.beta2
        v += (1.0 - self.beta2) * (g * g)
        return m, v

    def state_dict(self) -> dict[str, np.ndarray | int]:
        """{"step": int, "exp_avg.<name>": m, "exp_avg_sq.<name>": v}: copies, safe to store in HDF5."""
        state: dict[str, np.ndarray | int] = {"step": int(self.step_count)}
        for k in self.params:
            state["exp_avg." + k] = self.exp_avg[k].copy()
            state["exp_avg_sq." + k] = self.exp_avg_sq[k].copy()
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore the step counter and moments saved by `state_dict()` (values are copied)."""
        for k, w in self.params.items():
            for prefix, store in (("exp_avg.", self.exp_avg), ("exp_avg_sq.", self.exp_avg_sq)):
                arr = np.asarray(state[prefix + k])
                if arr.shape != w.shape:
                    raise ValueError(f"{prefix + k}: shape {arr.shape} does not match parameter {w.shape}")
                store[k] = np.array(arr, dtype=w.dtype, copy=True)
        self.step_count = int(np.asarray(state["step"]))


class AdamW(_MomentOptimizer):
    """Adam with decoupled weight decay, exactly torch.optim.AdamW's update.

    lr=1e-3, betas=(0.9, 0.999), eps=1e-8 and weight_decay=0.01 are torch's defaults.
    """

    def __init__(self, params: Params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.01,
                 exclude: Callable[[str], bool] = exclude_from_weight_decay):
        super().__init__(params, lr, betas, eps, weight_decay, exclude)

    def step(self, grads: Params, lr: float | None = None) -> None:
        """One update of every parameter in place; `lr` overrides self.lr (e.g. from a schedule)."""
        lr, t = self._begin_step(grads, lr)
        bc1 = 1.0 - self.beta1 ** t
        bc2_sqrt = math.sqrt(1.0 - self.beta2 ** t)
        for name, w in self.params.items():
            wd = self.decay_for(name)
            if wd:
                w *= 1.0 - lr * wd
            m, v = self._update_moments(name, grads[name])
            # torch's arrangement: (sqrt(v) / sqrt(bc2) + eps), step size lr / bc1
            denom = np.sqrt(v) / bc2_sqrt + self.eps
            w -= (lr / bc1) * (m / denom)


class Lamb(_MomentOptimizer):
    """LAMB: Adam's direction plus weight decay, rescaled per tensor by the trust ratio ||w|| / ||r||.

    Defaults are ALBERT's (lr 0.00176 in the paper's pretraining, eps 1e-6, weight decay 0.01).
    `bias_correction=False` gives ALBERT's TensorFlow LAMB, which omits it.
    `exclude_from_layer_adaptation` (default: the weight-decay rule) lists tensors updated with
    ratio 1, as ALBERT does for LayerNorm parameters and biases.
    """

    def __init__(self, params: Params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.01,
                 exclude: Callable[[str], bool] = exclude_from_weight_decay,
                 exclude_from_layer_adaptation: Callable[[str], bool] | None = None,
                 bias_correction: bool = True):
        super().__init__(params, lr, betas, eps, weight_decay, exclude)
        self.exclude_from_layer_adaptation = exclude_from_layer_adaptation or exclude
        self.bias_correction = bias_correction
        self.last_ratios: dict[str, float] = {}  # trust ratio of each tensor at the last step, for logging

    def step(self, grads: Params, lr: float | None = None) -> None:
        """One update of every parameter in place; `lr` overrides self.lr (e.g. from a schedule)."""
        lr, t = self._begin_step(grads, lr)
        bc1 = 1.0 - self.beta1 ** t if self.bias_correction else 1.0
        bc2 = 1.0 - self.beta2 ** t if self.bias_correction else 1.0
        for name, w in self.params.items():
            m, v = self._update_moments(name, grads[name])
            r = (m / bc1) / (np.sqrt(v / bc2) + self.eps)
            wd = self.decay_for(name)
            if wd:
                r += wd * w
            ratio = 1.0
            if not self.exclude_from_layer_adaptation(name):
                w_norm = math.sqrt(float(np.vdot(w, w)))
                r_norm = math.sqrt(float(np.vdot(r, r)))
                if w_norm > 0.0 and r_norm > 0.0:
                    ratio = w_norm / r_norm
            self.last_ratios[name] = ratio
            w -= (lr * ratio) * r
