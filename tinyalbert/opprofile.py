"""Where the time goes: a per-op profile of the forward and of a training step.

    python -m tinyalbert.opprofile                                  # xxlarge-v2 forward at (1, 128)
    python -m tinyalbert.opprofile --train --batch 1 --seq 128      # a training step (forward + backward)
    python -m tinyalbert.opprofile --config bundled --train --batch 32

Every op function of the engine (the `*_forward` / `*_backward` functions, their helpers and the Numba
kernels) is wrapped, for the duration of the profile, in a timer that records its *exclusive* time: the
time spent in the function minus the time spent in the other wrapped functions it calls.  So
`linear_forward`'s own time is its BLAS product (its bias add is a kernel of its own),
`self_attention_forward`'s is the per-head products q kᵀ and P v (its linears and softmax are ops of
their own), and a Python wrapper such as `masked_softmax_forward` keeps only its allocations and
NumPy's exp, while its kernels get the rest.

The model runs with random weights (the time does not depend on their values) after one untimed warm-up
call that loads every Numba kernel. The table comes from one repeat, the one whose total time is the
median (the lower one for an even count), not from per-op medians, so that the ops add up to no more
than the step; it gives each op's total time in that call of the model, its share of the step, and the
class it belongs to:

    BLAS      matrix products (linear_*, matmul_tn_accumulate_, the per-head products in self_attention_*)
    Numba     the memory-bound kernels (bias, GELU, softmax, LayerNorm, embeddings, column sums)
    NumPy     the Python level: copies (split/merge heads), allocations, gathers, NumPy's tanh, glue
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from types import ModuleType
from typing import Any, Callable

from .nn import (
    activations,
    attention,
    embeddings,
    encoder,
    feedforward,
    heads,
    kernels,
    layer,
    layernorm,
    linear,
    losses,
    model,
    softmax,
)
from .nn.config import AlbertConfig
from .tuning import tune_process

OP_MODULES: tuple[ModuleType, ...] = (kernels, linear, layernorm, activations, softmax, attention, feedforward, layer,
                                      encoder, embeddings, heads, losses, model)
# Python functions whose own time is BLAS: the rest of their body is views and allocations.
BLAS_OPS = {"linear_forward", "linear_backward", "matmul_tn_accumulate_", "self_attention_forward",
            "self_attention_backward"}


def _is_op(obj: Any) -> bool:
    """A function (or Numba dispatcher) defined in one of the engine's modules."""
    module = getattr(obj, "__module__", None) or getattr(getattr(obj, "py_func", None), "__module__", None)
    return callable(obj) and not isinstance(obj, type) and isinstance(module, str) and module.startswith(
        "tinyalbert.") and module != __name__


class OpTimer:
    """Wraps every op of OP_MODULES with an exclusive-time recorder; `restore()` puts the originals back."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.classes: dict[str, str] = {}
        self._stack: list[float] = []        # per active wrapped call: time spent in its wrapped callees
        self._saved: list[tuple[ModuleType, str, Any]] = []
        wrappers: dict[int, Callable] = {}
        for module in OP_MODULES:
            for name, obj in list(vars(module).items()):
                if name.startswith("__") or not _is_op(obj):
                    continue
                if id(obj) not in wrappers:
                    wrappers[id(obj)] = self._wrap(name, obj)
                self._saved.append((module, name, obj))
                setattr(module, name, wrappers[id(obj)])
        # The model's methods are reached through the class, not a module global.
        for name in ("forward", "loss_and_grads"):
            original = getattr(model.Albert, name)
            self._saved.append((model.Albert, name, original))
            setattr(model.Albert, name, self._wrap(name, original))

    def _wrap(self, name: str, fn: Callable) -> Callable:
        self.classes[name] = op_class(name, fn)
        def timed(*args, **kwargs):
            self._stack.append(0.0)
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                inner = self._stack.pop()
                self.seconds[name] += elapsed - inner
                self.calls[name] += 1
                if self._stack:
                    self._stack[-1] += elapsed

        timed.__wrapped__ = fn
        return timed

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()

    def restore(self) -> None:
        for owner, name, obj in reversed(self._saved):
            setattr(owner, name, obj)
        self._saved.clear()


def op_class(name: str, fn: Callable) -> str:
    """BLAS (a product), Numba (a compiled kernel) or NumPy (the Python level: copies, allocations, glue)."""
    if name in BLAS_OPS:
        return "BLAS"
    if hasattr(fn, "py_func"):
        return "Numba"
    return "NumPy"


def profile(config: AlbertConfig, batch: int, seq: int, train: bool, repeats: int = 3,
            seed: int = 0) -> dict[str, Any]:
    """Run the model `repeats` times under OpTimer; per op of the median-time run: seconds, calls, class."""
    from .bench import make_batch, model_flops
    from .nn.model import Albert
    from .nn.params import init_params

    params = init_params(config, seed=seed)
    ids, types, mask, labels, sop = make_batch(batch, seq, config.vocab_size, seed=seed)

    def run() -> None:
        m = Albert(config, params)
        if train:
            m.loss_and_grads(ids, types, mask, labels, sop)
        else:
            m.forward(ids, types, mask)

    run()                                     # warm-up: loads (or compiles) every kernel before wrapping
    timer = OpTimer()
    runs: list[tuple[float, dict[str, float], dict[str, int]]] = []     # (total, seconds per op, calls per op)
    try:
        for _ in range(repeats):
            timer.reset()
            start = time.perf_counter()
            run()
            runs.append((time.perf_counter() - start, dict(timer.seconds), dict(timer.calls)))
    finally:
        timer.restore()
    total, seconds, calls = sorted(runs, key=lambda r: r[0])[(len(runs) - 1) // 2]
    ops = {n: {"seconds": seconds[n], "calls": calls[n], "class": timer.classes[n]} for n in sorted(seconds)}
    mlm_positions = int((labels != -100).sum()) if train else None
    return {"config": config.to_dict(), "batch": batch, "seq": seq,
            "train": train, "repeats": repeats, "total_seconds": total,
            "flops": model_flops(config, batch, seq, mlm_positions, training=train), "ops": ops}


def format_profile(result: dict[str, Any]) -> str:
    total = result["total_seconds"]
    ops = result["ops"]
    kind = "training step" if result["train"] else "forward"
    lines = [f"{kind} at (batch {result['batch']}, seq {result['seq']}): {total:.3f} s median of "
             f"{result['repeats']}, {result['flops'] / total / 1e9:.1f} GFLOP/s over the whole step",
             "", f"{'op':34s} {'class':6s} {'calls':>6s} {'seconds':>9s} {'share':>7s}"]
    for name, op in sorted(ops.items(), key=lambda kv: -kv[1]["seconds"]):
        if op["seconds"] < 0.0005 * total:
            continue
        lines.append(f"{name:34s} {op['class']:6s} {op['calls']:6d} {op['seconds']:9.4f} "
                     f"{100 * op['seconds'] / total:6.1f}%")
    by_class: dict[str, float] = defaultdict(float)
    for op in ops.values():
        by_class[op["class"]] += op["seconds"]
    untracked = total - sum(by_class.values())
    lines.append("")
    for cls in ("BLAS", "Numba", "NumPy"):
        extra = ""
        if cls == "BLAS" and by_class[cls] > 0:
            extra = f"   ({result['flops'] / by_class[cls] / 1e9:.1f} GFLOP/s inside the products)"
        lines.append(f"{cls:6s} {by_class[cls]:9.3f} s  {100 * by_class[cls] / total:5.1f}%{extra}")
    lines.append(f"{'other':6s} {untracked:9.3f} s  {100 * untracked / total:5.1f}%   (outside every op: "
                 f"building the model object)")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m tinyalbert.opprofile", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--config", default="xxlarge", help="a preset name, 'bundled' (the bundled model's shape) "
                    "or a config.json")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--train", action="store_true", help="profile loss_and_grads instead of forward")
    ap.add_argument("--repeats", type=int, default=3)
    return ap.parse_args(argv)


def resolve_config(name: str) -> AlbertConfig:
    """'bundled' (the bundled model's config), a config.json, or a preset name."""
    if name == "bundled":
        from .bench import bundled_config

        return bundled_config()[0]
    return AlbertConfig.from_name_or_file(name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tune_process(training=args.train)
    try:
        config = resolve_config(args.config)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: cannot read config {args.config!r}: {e}", file=sys.stderr)
        return 2
    result = profile(config, args.batch, args.seq, args.train, args.repeats)
    print(format_profile(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
