"""Benchmark tinyalbert against PyTorch + transformers (`AlbertForPreTraining`) on the same cores.

    python -m tinyalbert.bench                        # every section; about an hour on a quiet 2-core machine
    python -m tinyalbert.bench --smoke                # every line on tiny configs, well under a minute
    python -m tinyalbert.bench --only matmul forward --repeats 7 --out results.json

Sections (pick with --only; the default runs them all, in this order):

    matmul    the machine's fp32 GEMM rate, numpy and torch, for the shapes the model runs at seq 128
              (x·Wᵀ in Linear layout, the K=128 weight gradients dyᵀ·x, and H³), plus the bundled
              model's shapes; these rates are the "% of numpy" reference of the later lines
    forward   xxlarge-v2 forward (random weights) at (B, S) = (1, 128), (1, 512), (8, 128)
    train     xxlarge-v2 training step (forward + backward of MLM + SOP, no optimizer) at (1, 128), (4, 128),
              then each side's peak RSS, each in a fresh process of its own
    bundled   the bundled model's config, training step at B=32, S=128, in tokens/s; each side in a
              process of its own that lives for the whole line (see section_bundled for why)
    load      open a converted xxlarge file and run a forward at seq 128, in fresh processes:
              tinyalbert.weights.load against transformers' from_pretrained (safetensors)
    predict   `python -m tinyalbert.predict` on the bundled model, with an empty and a warm Numba cache

Method (docs/performance.md has it in full): both sides run with the same thread count, interleaved
within every repeat (ABBA order: A B in even repeats, B A in odd ones) so that a slow stretch of a shared
machine hits both; each line reports the median, min and max of its repeats, GFLOP/s from an analytic
FLOP count, % of the numpy GEMM rate for the same shapes, and the ratio tinyalbert / torch.  The xxlarge
lines run both sides in ONE process, and the torch model's parameters are rebound to the NumPy arrays
(torch.from_numpy, no copy); the bundled line runs each side in a process of its own, both loading the
same weights from files.  Either way both sides compute with the SAME weights, and the first (warm-up)
outputs of the two sides are compared.

torch and transformers are imported lazily, only here; without them the tinyalbert side still runs.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import inspect
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .nn.config import AlbertConfig

SCHEMA = "tinyalbert-bench/1"
SECTIONS = ("matmul", "forward", "train", "bundled", "load", "predict")
ATTN_CHOICES = ("eager", "sdpa")
THREAD_ENV = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
REEXEC_MARKER = "TINYALBERT_BENCH_REEXEC"
RESULT_PREFIX = "BENCH_RESULT "
PREDICT_TEXT = "The man went to the [MASK] to buy some milk."
GB = 1e9                      # the "1.2 GB" is read as 1.2e9 bytes (1144 MiB)
MIB = 2 ** 20

# The bundled model's recipe (weights/train_mini.sh), used when tinyalbert/data/tinyalbert-mini.h5 is absent.
FALLBACK_BUNDLED = dict(vocab_size=8000, embedding_size=128, hidden_size=256, num_attention_heads=4,
                        intermediate_size=1024, num_hidden_layers=6)
# --smoke: a tiny stand-in for xxlarge, so that every line runs in seconds.
SMOKE_XXL = dict(vocab_size=2000, embedding_size=32, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=512, max_position_embeddings=128)
# The AlbertConfig fields handed to transformers.AlbertConfig (dropout 0: both sides compute the same function).
HF_FIELDS = ("vocab_size", "embedding_size", "hidden_size", "num_hidden_layers", "num_hidden_groups",
             "inner_group_num", "num_attention_heads", "intermediate_size", "hidden_act", "max_position_embeddings",
             "type_vocab_size", "initializer_range", "layer_norm_eps", "position_embedding_type", "pad_token_id",
             "bos_token_id", "eos_token_id")


# ==================================================================================================
# helpers that also run inside the worker processes (their source is shipped with inspect.getsource,
# so they must be self-contained: no module globals, imports inside)
# ==================================================================================================
def make_batch(batch, seq, vocab_size, seed=0, mlm_fraction=0.15):
    """Random inputs as (ids, token types, attention mask, MLM labels, SOP labels), all int64.

    Ids avoid the first 5 (special) ids; token types are 0 for the first half of each sequence and 1 for
    the second (two segments); the mask is all ones; round(15 %) of each sequence's positions (at least 1)
    get an MLM label, the rest -100; SOP labels are 0 or 1.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    low = min(5, vocab_size - 1)
    ids = rng.integers(low, vocab_size, size=(batch, seq), dtype=np.int64)
    types = np.zeros((batch, seq), dtype=np.int64)
    types[:, seq // 2:] = 1
    mask = np.ones((batch, seq), dtype=np.int64)
    labels = np.full((batch, seq), -100, dtype=np.int64)
    n = max(1, int(round(mlm_fraction * seq)))
    for b in range(batch):
        positions = rng.choice(seq, size=n, replace=False)
        labels[b, positions] = rng.integers(low, vocab_size, size=n)
    sop = rng.integers(0, 2, size=batch, dtype=np.int64)
    return ids, types, mask, labels, sop


def proc_status_mib(field):
    """A memory field of /proc/self/status (VmRSS, VmHWM, ...) in MiB, or None where there is no /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def maxrss_mib():
    """resource.getrusage(RUSAGE_SELF).ru_maxrss in MiB (Linux reports KiB)."""
    import resource
    import sys

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024.0 * 1024.0) if sys.platform == "darwin" else r / 1024.0


def limit_threads(n):
    """n threads for every pool this process has loaded: BLAS/OpenMP (threadpoolctl), Numba and torch."""
    import sys

    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=n)       # applies at once and stays (the returned object only restores)
    except ImportError:                   # then OPENBLAS_NUM_THREADS, set before numpy loaded, decides
        pass
    if sys.modules.get("numba") is not None:
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    if sys.modules.get("torch") is not None:
        import torch

        torch.set_num_threads(n)


_WORKER_HELPERS = (make_batch, proc_status_mib, maxrss_mib, limit_threads)

# Each worker is `python -c HELPERS + BODY SPEC_JSON` and prints one line RESULT_PREFIX + JSON.
# The torch workers never import tinyalbert (nor Numba), so their RSS is torch's alone.
_TRAIN_WORKER_TINYALBERT = """
spec = json.loads(sys.argv[1])
import tinyalbert
limit_threads(spec["threads"])
config = tinyalbert.AlbertConfig.from_dict(spec["config"])
model = tinyalbert.Albert(config, tinyalbert.init_params(config, dtype=np.float32))
ids, types, mask, labels, sop = make_batch(spec["batch"], spec["seq"], config.vocab_size)
rss_setup = proc_status_mib("VmRSS")
t = time.perf_counter()
loss, grads = model.loss_and_grads(ids, types, mask, labels, sop)
step = time.perf_counter() - t
del grads
"""
_TRAIN_WORKER_TORCH = """
spec = json.loads(sys.argv[1])
import torch
import transformers
from transformers import AlbertConfig, AlbertForPreTraining
transformers.logging.set_verbosity_error()
limit_threads(spec["threads"])
torch.manual_seed(0)
model = AlbertForPreTraining(AlbertConfig(**spec["hf_config"], attn_implementation=spec["attn"])).eval()
ids, types, mask, labels, sop = (torch.from_numpy(a) for a in make_batch(spec["batch"], spec["seq"],
                                                                          spec["hf_config"]["vocab_size"]))
rss_setup = proc_status_mib("VmRSS")
t = time.perf_counter()
out = model(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels, sentence_order_label=sop)
out.loss.backward()
step = time.perf_counter() - t
loss = float(out.loss)
"""
_TRAIN_WORKER_TAIL = """
print(RESULT_PREFIX + json.dumps({"maxrss_mib": maxrss_mib(), "vmhwm_mib": proc_status_mib("VmHWM"),
                                  "rss_setup_mib": rss_setup, "step_s": step, "loss": float(loss)}))
"""
_LOAD_WORKER_TINYALBERT = """
spec = json.loads(sys.argv[1])
import tinyalbert
from tinyalbert import weights
t_imported = time.perf_counter()
limit_threads(spec["threads"])
t0 = time.perf_counter()
model = weights.load(spec["path"])
t_open = time.perf_counter()
rss_open = proc_status_mib("VmRSS")
ids, types, mask, _, _ = make_batch(1, spec["seq"], model.config.vocab_size)
logits = model.forward(ids, types, mask).mlm_logits
t_forward = time.perf_counter()
"""
_LOAD_WORKER_TORCH = """
spec = json.loads(sys.argv[1])
import torch
import transformers
model_class = getattr(transformers, spec["model_class"])
t_imported = time.perf_counter()
transformers.logging.set_verbosity_error()
limit_threads(spec["threads"])
t0 = time.perf_counter()
model = model_class.from_pretrained(spec["path"]).eval()
t_open = time.perf_counter()
rss_open = proc_status_mib("VmRSS")
ids, types, mask, _, _ = (torch.from_numpy(a) for a in make_batch(1, spec["seq"], model.config.vocab_size))
with torch.inference_mode():
    logits = model(input_ids=ids, attention_mask=mask, token_type_ids=types)[0]
t_forward = time.perf_counter()
"""
_LOAD_WORKER_TAIL = """
print(RESULT_PREFIX + json.dumps({"import_s": t_imported - T_START, "open_s": t_open - t0,
                                  "forward_s": t_forward - t_open, "open_forward_s": t_forward - t0,
                                  "rss_open_mib": rss_open, "maxrss_mib": maxrss_mib(),
                                  "vmhwm_mib": proc_status_mib("VmHWM")}))
"""

# The bundled line's workers stay alive for the whole line and take one command per line on stdin:
# "prepare" (untimed: drop the last step's gradients, collect garbage), "step" (one training step).
_STEP_WORKER_TINYALBERT = """
spec = json.loads(sys.argv[1])
from tinyalbert import weights
limit_threads(spec["threads"])
model = weights.load(spec["path"], mmap=False)
batch = make_batch(spec["batch"], spec["seq"], model.config.vocab_size)

def step():
    loss, grads = model.loss_and_grads(*batch)
    return float(loss), grads

def drop_grads():
    pass
"""
_STEP_WORKER_TORCH = """
spec = json.loads(sys.argv[1])
import torch
import transformers
transformers.logging.set_verbosity_error()
limit_threads(spec["threads"])
model = transformers.AlbertForPreTraining.from_pretrained(spec["path"], attn_implementation=spec["attn"]).eval()
ids, types, mask, labels, sop = (torch.from_numpy(a) for a in make_batch(spec["batch"], spec["seq"],
                                                                          model.config.vocab_size))

def step():
    out = model(input_ids=ids, token_type_ids=types, attention_mask=mask, labels=labels, sentence_order_label=sop)
    out.loss.backward()
    return float(out.loss.detach()), None

def drop_grads():
    model.zero_grad(set_to_none=True)
"""
_STEP_WORKER_TAIL = """
import gc
gc.collect()
gc.freeze()
print(RESULT_PREFIX + json.dumps({"ready": True}), flush=True)
kept = None
for command in sys.stdin:
    command = command.strip()
    if command == "prepare":
        kept = None
        drop_grads()
        gc.collect()
        print(RESULT_PREFIX + json.dumps({}), flush=True)
    elif command == "step":
        gc.disable()
        try:
            loss, kept = step()
        finally:
            gc.enable()
        print(RESULT_PREFIX + json.dumps({"loss": loss}), flush=True)
    else:
        break
"""


def _worker_code(body: str, tail: str) -> str:
    head = ("import time\nT_START = time.perf_counter()\nimport json, sys\nimport numpy as np\n"
            f"RESULT_PREFIX = {RESULT_PREFIX!r}\n")
    return head + "\n".join(inspect.getsource(f) for f in _WORKER_HELPERS) + body + tail


# ==================================================================================================
# FLOP counts (the formulas are written out in docs/performance.md)
# ==================================================================================================
def model_flops(c: AlbertConfig, batch: int, seq: int, mlm_positions: int | None = None,
                training: bool = False) -> float:
    """Matmul FLOPs of one forward (training=False) or one training step (3x the forward) at (batch, seq).

    Per token and layer application: 2(4H² + 2HI) for q, k, v, dense, ffn and ffn_output, plus
    2·2·S·H for q·kᵀ and P·v.  Once per token: 2EH (embedding projection).  MLM head 2HE + 2EV at
    `mlm_positions` positions (every position in a forward; the labelled ones in training).  Once per
    sequence: 2H² (pooler) + 2·2H (SOP classifier).  The backward is counted as 2x the forward.
    """
    H, E, I, V = c.hidden_size, c.embedding_size, c.intermediate_size, c.vocab_size
    N = batch * seq
    applications = c.num_hidden_layers * c.inner_group_num
    per_application = N * 2 * (4 * H * H + 2 * H * I) + 2 * 2 * N * seq * H
    M = N if mlm_positions is None else mlm_positions
    forward = N * 2 * E * H + applications * per_application + M * (2 * H * E + 2 * E * V) + batch * (
        2 * H * H + 2 * 2 * H)
    return float(3 * forward if training else forward)


def numpy_mix_rate(rates: dict[str, float] | None, c: AlbertConfig, training: bool) -> float | None:
    """The numpy GEMM rate (GFLOP/s) of the model's mix of layer GEMMs: Σ flops / Σ (flops / rate).

    Forward: q, k, v, dense at the "qkvo" rate (8H² per token), ffn and ffn_output at theirs (2HI each).
    Training adds the input gradients (the same FLOPs, counted at the forward shapes' rates) and the
    weight gradients dyᵀ·x at the measured K = rows rates.
    """
    if not rates:
        return None
    H, I = c.hidden_size, c.intermediate_size
    forward = {"qkvo": 8 * H * H, "ffn_in": 2 * H * I, "ffn_out": 2 * H * I}
    weights = dict(forward)
    if training:
        weights = {k: 2 * v for k, v in forward.items()}
        weights.update({"dw_" + k: v for k, v in forward.items()})
    if any(not rates.get(k) for k in weights):
        return None
    return sum(weights.values()) / sum(w / rates[k] for k, w in weights.items())


# ==================================================================================================
# timing
# ==================================================================================================
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _busy_cpu_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy (user, nice, system, irq, softirq), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return (v[0] + v[1] + v[2] + v[5] + v[6]) / _CLK_TCK
    except (OSError, ValueError, IndexError):
        return None


def _own_cpu_seconds(pids: tuple[int, ...] = ()) -> float:
    """CPU seconds of this process, its finished children, and the running processes `pids`."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime + sum(_process_cpu_seconds(p) for p in pids)


def _process_cpu_seconds(pid: int) -> float:
    """utime + stime of a running process, from /proc/PID/stat (0 where there is no /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()     # the command name may hold spaces
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK
    except (OSError, ValueError, IndexError):
        return 0.0


class Probe:
    """Wall time of a block, and the share of the machine's CPUs that OTHER processes used meanwhile.

    foreign = (busy CPU seconds of the whole machine - this process's, its children's and the running
    helper processes `pids`') / (wall x CPUs), None for blocks shorter than 0.2 s (the counters tick
    every 10 ms).
    """

    min_seconds = 0.2

    def __init__(self, pids: tuple[int, ...] = ()):
        self.pids = tuple(pids)

    def __enter__(self):
        self.busy0, self.own0 = _busy_cpu_seconds(), _own_cpu_seconds(self.pids)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        busy1, own1 = _busy_cpu_seconds(), _own_cpu_seconds(self.pids)
        self.foreign = None
        # /proc/stat counts in clock ticks (10 ms): shorter blocks cannot be attributed
        if self.busy0 is not None and busy1 is not None and self.seconds >= self.min_seconds:
            other = (busy1 - self.busy0) - (own1 - self.own0)
            self.foreign = min(1.0, max(0.0, other) / (self.seconds * (os.cpu_count() or 1)))
        return False


def summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"median": None, "min": None, "max": None, "n": 0, "samples": []}
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values),
            "samples": list(values)}


def interleave(sides: dict[str, Callable[[], Any]], repeats: int, warmup: int, inner: int = 1,
               before: dict[str, Callable[[], None]] | None = None,
               on_first: Callable[[dict[str, Any]], None] | None = None,
               pids: tuple[int, ...] = ()) -> dict[str, dict[str, list]]:
    """Time every side `repeats` times, alternating within each repeat (ABBA order); returns per-side lists.

    warmup: untimed calls of each side first (Numba loads its kernels, torch its first-call state).
    inner: calls per sample (per-call time = sample / inner).  before[side] runs before each sample, untimed.
    on_first: called with {side: first warm-up result} once the warm-up is done (a correctness check);
    the results are dropped before the timed repeats start.
    pids: helper processes that do a side's work (StepWorker); their CPU time is not "foreign".
    """
    before = before or {}
    names = list(sides)
    first: dict[str, Any] = {}
    for w in range(warmup):
        for name in names:
            if name in before:
                before[name]()
            out = sides[name]()
            if w == 0 and on_first is not None:
                first[name] = out
            del out
    if on_first is not None and first:
        on_first(first)
    first.clear()
    result: dict[str, dict[str, list]] = {name: {"seconds": [], "foreign": []} for name in names}
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            if name in before:
                before[name]()
            gc.collect()
            gc.disable()                       # as timeit does: no collector pauses inside a sample
            try:
                with Probe(pids) as p:
                    for _ in range(inner):
                        out = sides[name]()
            finally:
                gc.enable()
            del out
            result[name]["seconds"].append(p.seconds / inner)
            result[name]["foreign"].append(p.foreign)
    gc.collect()
    return result


def run_child(cmd: list[str], env: dict[str, str] | None = None, timeout: float | None = None):
    """Run a command in a fresh process; returns (CompletedProcess, wall seconds, foreign share).

    The command is started through `sh -c '"$@"; exit $?'`, which forks it instead of exec'ing it, so
    that its ru_maxrss starts from the small shell: a process exec'd directly from this one inherits
    this (large) process's peak RSS in ru_maxrss (Linux folds the old address space's high-water mark
    into the new one at exec).
    """
    wrapped = ["/bin/sh", "-c", '"$@"; exit $?', "sh", *cmd] if os.path.exists("/bin/sh") else cmd
    with Probe() as p:
        proc = subprocess.run(wrapped, capture_output=True, text=True, env=env, timeout=timeout)
    return proc, p.seconds, p.foreign


def _worker_result(proc) -> dict[str, Any]:
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    raise RuntimeError(f"worker failed (exit {proc.returncode}): {tail}")


class StepWorker:
    """One side of a line, in a process of its own that lives for the whole line (the bundled line).

    The parent drives it one command at a time ("prepare", "step"; see _STEP_WORKER_TAIL) and waits for
    each answer, so the sides still take turns on the cores and `interleave` times them as usual.  The
    worker's stderr goes to a file, whose last line is the error when the worker fails.
    """

    def __init__(self, name: str, body: str, spec: dict[str, Any], log_dir: Path):
        self.name = name
        self.log_path = log_dir / f"worker-{name}.log"
        code = _worker_code(body, _STEP_WORKER_TAIL)
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(spec)], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=log, text=True, bufsize=1)
        self._answer()                                   # "ready": the model is built

    @property
    def pid(self) -> int:
        return self.proc.pid

    def request(self, command: str) -> dict[str, Any]:
        try:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass                                          # the worker died: _answer says why
        return self._answer()

    def _answer(self) -> dict[str, Any]:
        for line in self.proc.stdout:
            if line.startswith(RESULT_PREFIX):
                return json.loads(line[len(RESULT_PREFIX):])
        self.proc.wait()                                 # its output ended: it has exited or is exiting
        log = self.log_path.read_text(errors="replace").strip().splitlines() or ["no output"]
        raise RuntimeError(f"{self.name} worker failed (exit {self.proc.returncode}): {log[-1]}")

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()                  # end of input: the worker's loop ends
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()


# ==================================================================================================
# the run: options, machine, shared state, results
# ==================================================================================================
class Run:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.smoke = args.smoke
        self.threads = args.threads
        self.repeats = args.repeats if args.repeats is not None else (2 if self.smoke else 5)
        self.xrepeats = args.xxlarge_repeats if args.xxlarge_repeats is not None else self.repeats
        self.rss_repeats = args.rss_repeats
        self.warmup = args.warmup
        self.attns = list(ATTN_CHOICES) if args.attn == "both" else [args.attn]
        # Lines made of fresh processes (peak RSS, load, predict): --smoke runs each process once, no warm-up,
        # because starting torch + transformers alone takes seconds.
        self.sub_repeats = 1 if self.smoke else self.xrepeats
        self.sub_warmup = 0 if self.smoke else max(1, self.warmup)
        self.predict_repeats = 1 if self.smoke else self.repeats
        if self.smoke:
            self.xxl = AlbertConfig(**SMOKE_XXL)
            self.forward_shapes, self.train_shapes = [(1, 32), (1, 128), (2, 32)], [(1, 32), (2, 32)]
            self.mm_rows, self.bundled_shape, self.load_seq = 32, (2, 32), 32
        else:
            self.xxl = AlbertConfig()
            self.forward_shapes, self.train_shapes = [(1, 128), (1, 512), (8, 128)], [(1, 128), (4, 128)]
            self.mm_rows, self.bundled_shape, self.load_seq = 128, (32, 128), 128
        self.xxl_name = "smoke-xxl" if self.smoke else "xxlarge"
        self.lines: list[dict[str, Any]] = []
        self.errors: list[dict[str, str]] = []
        self.notes: list[str] = []
        self.np_rates: dict[str, dict[str, float]] = {}
        self.torch = self.transformers = None
        self.torch_missing: str | None = None
        self._xxl_params = None
        self._xxl_torch: dict[str, Any] = {}
        self._tmp = tempfile.TemporaryDirectory(prefix="tinyalbert-bench-", dir=args.tmpdir)
        self.tmp = Path(self._tmp.name)
        self.bundled_config, self.bundled_source = bundled_config()
        self.machine: dict[str, Any] = {}
        self.started = time.perf_counter()

    # ---- shared inputs -------------------------------------------------------------------------------
    def xxl_params(self):
        if self._xxl_params is None:
            from .nn.params import init_params

            self._xxl_params = init_params(self.xxl, seed=0, dtype=np.float32)
        return self._xxl_params

    def xxl_torch_models(self) -> dict[str, Any]:
        """{"torch-eager": model, "torch-sdpa": model} on the xxlarge params (built once; they share the arrays)."""
        if not self.load_torch():
            return {}
        for a in self.attns:
            if f"torch-{a}" not in self._xxl_torch:
                self._xxl_torch[f"torch-{a}"] = self.torch_model(self.xxl, self.xxl_params(), a)
        return {f"torch-{a}": self._xxl_torch[f"torch-{a}"] for a in self.attns}

    def load_torch(self) -> bool:
        """Import torch and transformers on first use; False (and a note) when they are not installed."""
        if self.torch is not None:
            return True
        if self.torch_missing is not None:
            return False
        try:
            import torch
            import transformers
        except ImportError as e:
            self.torch_missing = (f"PyTorch side skipped: {e}. Install the reference libraries with "
                                  f"pip install -e '.[reference]' (torch==2.13.0, transformers==4.57.6).")
            print("note: " + self.torch_missing, file=sys.stderr)
            self.notes.append(self.torch_missing)
            return False
        transformers.logging.set_verbosity_error()
        torch.set_num_threads(self.threads)
        self.torch, self.transformers = torch, transformers
        return True

    def torch_model(self, config: AlbertConfig, params: dict[str, np.ndarray], attn: str, sop_head: bool = True):
        """transformers' model for `config` whose parameters ARE `params` (torch.from_numpy views, no copy)."""
        torch, transformers = self.torch, self.transformers
        cls = transformers.AlbertForPreTraining if sop_head else transformers.AlbertForMaskedLM
        hf_config = transformers.AlbertConfig(**hf_config_dict(config), attn_implementation=attn)
        torch.manual_seed(0)
        model = cls(hf_config).eval()
        if model.config._attn_implementation != attn:
            raise RuntimeError(f"transformers chose attention {model.config._attn_implementation!r}, not {attn!r}")
        aliases = {"predictions.decoder.weight": "albert.embeddings.word_embeddings.weight",
                   "predictions.decoder.bias": "predictions.bias"}
        problems, used = [], set()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")        # read-only (memory-mapped) arrays warn; nothing writes them
            for name, p in model.named_parameters():
                key = aliases.get(name, name) if name not in params else name
                arr = params.get(key)
                if arr is None or tuple(arr.shape) != tuple(p.shape):
                    problems.append(name)
                    continue
                p.data = torch.from_numpy(arr)
                used.add(key)
        problems += sorted(set(params) - used)
        if problems:
            raise RuntimeError(f"cannot share weights with transformers' model: {', '.join(problems[:5])}")
        return model

    def torch_threads_now(self):
        if self.torch is not None:
            self.torch.set_num_threads(self.threads)

    # ---- results -------------------------------------------------------------------------------------
    def add(self, line: dict[str, Any]) -> None:
        self.lines.append(line)
        for row in format_line(line):
            print(row, flush=True)

    def to_json(self) -> dict[str, Any]:
        a = self.args
        return {
            "schema": SCHEMA,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "wall_s": time.perf_counter() - self.started,
            "argv": a.argv,
            "options": {"threads": self.threads, "repeats": self.repeats, "xxlarge_repeats": self.xrepeats,
                        "rss_repeats": self.rss_repeats, "warmup": self.warmup, "smoke": self.smoke,
                        "process_repeats": self.sub_repeats, "process_warmup": self.sub_warmup,
                        "predict_repeats": self.predict_repeats,
                        "sections": list(a.only), "attn": self.attns, "xxlarge_file": a.xxlarge_file},
            "machine": self.machine,
            "models": {"xxlarge": hf_config_dict(self.xxl), "bundled": hf_config_dict(self.bundled_config),
                       "bundled_source": self.bundled_source},
            "numpy_matmul_gflops": self.np_rates,
            "lines": self.lines,
            "errors": self.errors,
            "notes": self.notes,
        }


def bundled_config() -> tuple[AlbertConfig, str]:
    """The bundled model's config and where it came from; the recipe's config when the file is missing or damaged."""
    path = bundled_model_path()
    if path.exists():
        try:
            from .weights import load_params

            return load_params(path)[0], str(path)
        except Exception as e:     # a damaged file: say so, and time the recipe's config instead
            return AlbertConfig(**FALLBACK_BUNDLED), f"fallback config ({path} unreadable: {e})"
    return AlbertConfig(**FALLBACK_BUNDLED), f"fallback config ({path} not present)"


def bundled_model_path() -> Path:
    from .predict import BUNDLED_MODEL_NAME

    return Path(__file__).resolve().parent / "data" / BUNDLED_MODEL_NAME


def hf_config_dict(c: AlbertConfig) -> dict[str, Any]:
    d = {k: getattr(c, k) for k in HF_FIELDS}
    d.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout_prob=0.0)
    return d


def machine_info(run: Run) -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version()}
    try:
        with open("/proc/cpuinfo") as f:
            cpu = {}
            for line in f:
                if ":" in line:
                    k, v = (s.strip() for s in line.split(":", 1))
                    cpu.setdefault(k, v)
        info["cpu_model"] = cpu.get("model name")
        info["cpu_family_model"] = f"{cpu.get('cpu family')}/{cpu.get('model')}"
        flags = cpu.get("flags", "").split()
        info["simd"] = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in flags]
    except OSError:
        info["cpu_model"] = platform.processor()
    info["cpu_count"] = os.cpu_count()
    if hasattr(os, "sched_getaffinity"):
        info["affinity"] = sorted(os.sched_getaffinity(0))
    try:
        with open("/proc/meminfo") as f:
            info["mem_total_gib"] = round(int(f.readline().split()[1]) / 2 ** 20, 1)
    except (OSError, ValueError, IndexError):
        pass
    if hasattr(os, "getloadavg"):
        info["loadavg_start"] = [round(x, 2) for x in os.getloadavg()]
    import numba

    info["numpy"] = np.__version__
    info["numba"] = numba.__version__
    info["numba_threads"] = numba.get_num_threads()
    info["numba_max_threads"] = numba.config.NUMBA_NUM_THREADS
    try:
        import h5py

        info["h5py"] = h5py.__version__
    except ImportError:
        pass
    try:
        from threadpoolctl import threadpool_info

        info["threadpools"] = [{k: p.get(k) for k in ("internal_api", "version", "num_threads", "architecture",
                                                       "threading_layer", "filepath")} for p in threadpool_info()]
    except ImportError:
        info["threadpools"] = "threadpoolctl not installed"
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info["numpy_blas"] = {k: blas.get(k) for k in ("name", "version", "openblas configuration")}
    except Exception:
        pass
    if run.torch is not None:
        torch = run.torch
        info["torch"] = torch.__version__
        info["transformers"] = run.transformers.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        info["torch_mkl"] = torch.backends.mkl.is_available()
        info["torch_parallel_info"] = [s.strip() for s in torch.__config__.parallel_info().splitlines()
                                       if s.strip()][:8]
    else:
        info["torch"] = None
    info["env"] = {k: os.environ.get(k) for k in (*THREAD_ENV, "OMP_NUM_THREADS", "OMP_WAIT_POLICY",
                                                 "OPENBLAS_CORETYPE", "NUMBA_CACHE_DIR")}
    return info


def print_machine(info: dict[str, Any]) -> None:
    print(f"machine: {info.get('cpu_model')} (family/model {info.get('cpu_family_model')}), "
          f"{info.get('cpu_count')} CPUs, affinity {info.get('affinity')}, {info.get('mem_total_gib')} GiB; "
          f"SIMD {','.join(info.get('simd', []))}; load average {info.get('loadavg_start')}")
    print(f"software: python {info.get('python')}, numpy {info.get('numpy')}, numba {info.get('numba')} "
          f"({info.get('numba_threads')} threads), torch {info.get('torch')}, "
          f"transformers {info.get('transformers')}, torch threads {info.get('torch_threads')}, "
          f"torch CPU capability {info.get('torch_cpu_capability')}")
    pools = info.get("threadpools")
    if isinstance(pools, list):
        for p in pools:
            print(f"  pool: {p.get('internal_api')} {p.get('version') or ''} {p.get('architecture') or ''} "
                  f"{p.get('num_threads')} threads  ({Path(p.get('filepath') or '').name})")
    else:
        print(f"  pools: {pools}; numpy BLAS {info.get('numpy_blas')}")
    print("  env: " + ", ".join(f"{k}={v}" for k, v in info.get("env", {}).items() if v is not None))


# ==================================================================================================
# lines
# ==================================================================================================
def side_stats(seconds: list[float], foreign: list[float | None] | None = None, flops: float | None = None,
               mix_rate: float | None = None) -> dict[str, Any]:
    """Summary of one side's timed samples: median/min/max seconds, GFLOP/s and % of the numpy mix rate."""
    s = summary(seconds)
    fg = [f for f in (foreign or []) if f is not None]
    s["foreign_max"] = max(fg) if fg else None
    s["foreign"] = list(foreign or [])
    if flops and s["median"]:
        s["gflops"] = flops / s["median"] / 1e9
        s["gflops_min"] = flops / s["max"] / 1e9
        s["gflops_max"] = flops / s["min"] / 1e9
        s["pct_numpy"] = 100.0 * s["gflops"] / mix_rate if mix_rate else None
    return s


def time_line(run: Run, line_id: str, section: str, title: str, samples: dict[str, dict[str, list]],
              flops: float | None = None, mix_rate: float | None = None, ours: str = "tinyalbert",
              **extra) -> dict[str, Any]:
    """A timed line: every side's stats, the reference (fastest torch side) and the ratio ours / reference."""
    sides = {name: side_stats(s["seconds"], s["foreign"], flops, mix_rate) for name, s in samples.items()}
    line = {"id": line_id, "section": section, "title": title, "unit": "s", "flops": flops,
            "numpy_mix_gflops": mix_rate, "sides": sides, "ours": ours}
    others = [n for n in sides if n != ours and sides[n]["median"]]
    if ours in sides and sides[ours]["median"] and others:
        ref = min(others, key=lambda n: sides[n]["median"])
        a, b = samples[ours]["seconds"], samples[ref]["seconds"]
        paired = [x / y for x, y in zip(a, b)]
        line.update(reference=ref, ratio=sides[ours]["median"] / sides[ref]["median"],
                    paired_ratio=summary(paired))
    else:
        line.update(reference=None, ratio=None, paired_ratio=None)
    line.update(extra)
    line.setdefault("targets", [])
    line.setdefault("notes", [])
    return line


def target(run: Run, text: str, value: float | None, limit: float, at_most: bool = True) -> dict[str, Any]:
    """One of the issue's targets; `met` is None when there is no value or in a --smoke run."""
    met = None
    if value is not None and not run.smoke:
        met = bool(value <= limit) if at_most else bool(value >= limit)
    return {"text": text, "value": value, "limit": limit, "met": met}


def _fmt_value(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "MiB":
        return f"{v:.0f} MiB"
    if unit == "s":
        if v < 1e-3:
            return f"{v * 1e6:.0f} us"
        if v < 1:
            return f"{v * 1e3:.1f} ms"
        return f"{v:.2f} s"
    return f"{v:.3g}"


def format_line(line: dict[str, Any]) -> list[str]:
    rows = []
    unit = line["unit"]
    for name, s in line["sides"].items():
        ratio = ""
        if name == line.get("ours") and line.get("ratio") is not None:
            ratio = f"{line['ratio']:.2f}x"
        g = s.get("gflops")
        pct = s.get("pct_numpy")
        fg = s.get("foreign_max")
        rows.append(f"  {line['id']:<26} {name:<12} {_fmt_value(s['median'], unit):>10} "
                    f"{_fmt_value(s['min'], unit):>10} {_fmt_value(s['max'], unit):>10} {s['n']:>2} "
                    f"{(f'{g:.1f}' if g else '-'):>7} {(f'{pct:.0f}%' if pct else '-'):>5} {ratio:>6} "
                    f"{(f'{100 * fg:.0f}%' if fg is not None else '-'):>4}")
    for t in line.get("targets", []):
        mark = {True: "met", False: "NOT met", None: "not judged"}[t["met"]]
        v = t["value"]
        rows.append(f"      target: {t['text']}: {('-' if v is None else f'{v:.3g}')} ({mark})")
    for n in line.get("notes", []):
        rows.append(f"      note: {n}")
    return rows


TABLE_HEADER = (f"  {'line':<26} {'side':<12} {'median':>10} {'min':>10} {'max':>10} {'n':>2} {'GFLOP/s':>7} "
                f"{'%np':>5} {'ours/t':>6} {'busy':>4}")


LEGEND = ("columns: median, min and max over the repeats; GFLOP/s = analytic FLOPs / median time; %np = % of "
          "numpy's GEMM rate for the same shapes;\n  ours/t = tinyalbert (numpy in the matmul lines) / the faster "
          "torch side, by median (< 1: tinyalbert is faster or smaller);\n  busy = the largest share of the CPUs "
          "that other processes used during a sample ('-': too short to tell)")


def print_targets(run: Run) -> None:
    rows = [(line["id"], t) for line in run.lines for t in line.get("targets", [])]
    if not rows:
        return
    print("\ntargets of the issue" + (" (not judged in a --smoke run)" if run.smoke else "") + ":")
    for line_id, t in rows:
        mark = {True: "met", False: "NOT met", None: "not judged"}[t["met"]]
        v = "-" if t["value"] is None else f"{t['value']:.3g}"
        print(f"  {line_id:<26} {t['text']:<58} {v:>8}  {mark}")


def section_header(title: str) -> None:
    print(f"\n== {title}")
    print(TABLE_HEADER, flush=True)


# ==================================================================================================
# sections
# ==================================================================================================
def _gemm_shapes(rows: int, H: int, I: int, with_square: bool) -> list[tuple[str, str, tuple, tuple, bool, bool]]:
    """(key, label, left base shape, right base shape, transpose left, transpose right) of the model's GEMMs."""
    M = rows
    shapes = [
        ("qkvo", f"{M}x{H} @ ({H}x{H})T  q,k,v,dense", (M, H), (H, H), False, True),
        ("ffn_in", f"{M}x{H} @ ({I}x{H})T  ffn", (M, H), (I, H), False, True),
        ("ffn_out", f"{M}x{I} @ ({H}x{I})T  ffn_output", (M, I), (H, I), False, True),
        ("dw_qkvo", f"({M}x{H})T @ {M}x{H}  dW q,k,v,dense", (M, H), (M, H), True, False),
        ("dw_ffn_in", f"({M}x{I})T @ {M}x{H}  dW ffn", (M, I), (M, H), True, False),
        ("dw_ffn_out", f"({M}x{H})T @ {M}x{I}  dW ffn_output", (M, H), (M, I), True, False),
    ]
    if with_square:
        shapes.append(("square", f"{H}x{H} @ {H}x{H}", (H, H), (H, H), False, False))
    return shapes


def section_matmul(run: Run) -> None:
    section_header(f"matmul: fp32 GEMM rate, numpy (OpenBLAS) vs torch, {run.threads} threads")
    has_torch = run.load_torch()
    bB, bS = run.bundled_shape
    groups = [("xxl", run.xxl_name, run.mm_rows, run.xxl.hidden_size, run.xxl.intermediate_size, True),
              ("bundled", "bundled", bB * bS, run.bundled_config.hidden_size,
               run.bundled_config.intermediate_size, False)]
    rng = np.random.default_rng(0)
    target_seconds = 0.02 if run.smoke else 0.3
    for group, gname, rows, H, I, square in groups:
        run.np_rates[group] = {}
        for key, label, ls, rs, lt, rt in _gemm_shapes(rows, H, I, square):
            left_base = rng.standard_normal(ls, dtype=np.float32)
            right_base = rng.standard_normal(rs, dtype=np.float32)
            left = left_base.T if lt else left_base
            right = right_base.T if rt else right_base
            m, k = left.shape
            n = right.shape[1]
            out = np.empty((m, n), dtype=np.float32)
            flops = 2.0 * m * n * k
            sides: dict[str, Callable] = {"numpy": lambda: np.matmul(left, right, out=out)}
            if has_torch:
                torch = run.torch
                tl, tr, to = torch.from_numpy(left_base), torch.from_numpy(right_base), torch.from_numpy(out)
                tl, tr = (tl.t() if lt else tl), (tr.t() if rt else tr)
                sides["torch"] = lambda: torch.matmul(tl, tr, out=to)
            once = {}
            for name, fn in sides.items():         # calibrate: calls per sample so that a sample takes ~0.3 s
                fn()
                with Probe() as p:
                    fn()
                once[name] = p.seconds
            inner = int(max(1, min(1000, round(target_seconds / max(min(once.values()), 1e-6)))))
            samples = interleave(sides, run.repeats, run.warmup, inner=inner)
            line = time_line(run, f"matmul.{group}.{key}", "matmul", f"{gname} GEMM {label}", samples,
                             flops=flops, ours="numpy", group=group, shape_key=key,
                             shape={"m": m, "n": n, "k": k}, calls_per_sample=inner)
            rate = line["sides"]["numpy"].get("gflops")
            run.np_rates[group][key] = rate
            for s in line["sides"].values():
                s["pct_numpy"] = 100.0 * s["gflops"] / rate if rate and s.get("gflops") else None
            run.add(line)
            del left_base, right_base, left, right, out, sides
            gc.collect()


def _mix(run: Run, group: str, c: AlbertConfig, training: bool, rows: int, ref_rows: int,
         notes: list[str]) -> float | None:
    rate = numpy_mix_rate(run.np_rates.get(group), c, training)
    if rate is None:
        notes.append("no '% of numpy' figure: run the matmul section in the same run for the GEMM rates")
    elif rows != ref_rows:
        notes.append(f"'% of numpy' is against the GEMM rates measured with {ref_rows} rows; "
                     f"this line's GEMMs have {rows} rows")
    return rate


def _torch_batch(run: Run, arrays):
    return tuple(run.torch.from_numpy(np.ascontiguousarray(a)) for a in arrays)


def _rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def section_forward(run: Run) -> None:
    from .nn.model import Albert

    c, params = run.xxl, run.xxl_params()
    section_header(f"forward: {run.xxl_name} (random weights), tinyalbert vs transformers "
                   f"AlbertForPreTraining under inference_mode, {run.threads} threads")
    model = Albert(c, params)
    torch_models = run.xxl_torch_models()
    for B, S in run.forward_shapes:
        ids, types, mask, _, _ = make_batch(B, S, c.vocab_size)
        sides: dict[str, Callable] = {"tinyalbert": lambda: model.forward(ids, types, mask).mlm_logits}
        if torch_models:
            tids, ttypes, tmask = _torch_batch(run, (ids, types, mask))

            def torch_forward(m):
                def fn():
                    with run.torch.inference_mode():
                        return m(input_ids=tids, attention_mask=tmask, token_type_ids=ttypes).prediction_logits
                return fn
            sides.update({name: torch_forward(m) for name, m in torch_models.items()})
        notes: list[str] = []
        mix = _mix(run, "xxl", c, False, B * S, run.mm_rows, notes)
        check: dict[str, float] = {}

        def compare(first):
            check.update({n: _rel_diff(first[n].numpy(), first["tinyalbert"]) for n in first if n != "tinyalbert"})
        samples = interleave(sides, run.xrepeats, max(1, run.warmup), on_first=compare)
        line = time_line(run, f"forward.b{B}s{S}", "forward", f"{run.xxl_name} forward B={B} S={S}", samples,
                         flops=model_flops(c, B, S), mix_rate=mix, batch=B, seq=S, notes=notes,
                         check={"mlm_logits_max_rel_diff": check})
        if check:
            notes.append("MLM logits agree to max |diff| / max |logit| = "
                         + ", ".join(f"{v:.1e} ({k})" for k, v in check.items()))
        if (B, S) == run.forward_shapes[0]:
            ta = line["sides"]["tinyalbert"]
            line["targets"] = [target(run, "time <= 0.7x torch's", line["ratio"], 0.7),
                               target(run, ">= 80% of the numpy GEMM rate for the same shapes",
                                      ta.get("pct_numpy"), 80.0, at_most=False)]
        if run.xrepeats < 5 and not run.smoke:
            notes.append(f"{run.xrepeats} repeats (the issue asks for at least 5)")
        run.add(line)
    del model
    gc.collect()


def section_train(run: Run) -> None:
    from .nn.model import Albert
    from .nn.params import layer_prefix

    c, params = run.xxl, run.xxl_params()
    section_header(f"train: {run.xxl_name} training step (forward + backward, MLM 15% + SOP, no optimizer), "
                   f"{run.threads} threads")
    model = Albert(c, params)
    torch_models = run.xxl_torch_models()
    ffn_name = layer_prefix(0, 0) + "ffn.weight"

    def free_grads():          # before every sample of every side: no side runs while 0.9 GB of grads is held
        for m in torch_models.values():
            m.zero_grad(set_to_none=True)
    for B, S in run.train_shapes:
        ids, types, mask, labels, sop = make_batch(B, S, c.vocab_size)
        M = int((labels != -100).sum())
        # The warm-up call of each side keeps (loss, a copy of the ffn.weight gradient) for the agreement check.
        captured: dict[str, tuple[float, np.ndarray]] = {}
        capture = [True]

        def ta_step():
            loss, grads = model.loss_and_grads(ids, types, mask, labels, sop)
            if capture[0]:
                captured["tinyalbert"] = (loss, grads[ffn_name].copy())
            return loss, grads          # freed after the sample's timer stops, like torch's grads

        sides: dict[str, Callable] = {"tinyalbert": ta_step}
        if torch_models:
            tb = _torch_batch(run, (ids, types, mask, labels, sop))

            def torch_step(name, m):
                ffn_param = dict(m.named_parameters())[ffn_name]

                def fn():
                    out = m(input_ids=tb[0], token_type_ids=tb[1], attention_mask=tb[2], labels=tb[3],
                            sentence_order_label=tb[4])
                    out.loss.backward()
                    if capture[0]:
                        captured[name] = (float(out.loss.detach()), ffn_param.grad.numpy().copy())
                    return float(out.loss.detach())
                return fn
            for name, m in torch_models.items():
                sides[name] = torch_step(name, m)
        before = {name: free_grads for name in sides}
        notes: list[str] = []
        mix = _mix(run, "xxl", c, True, B * S, run.mm_rows, notes)
        check: dict[str, dict] = {}

        def compare(first):
            capture[0] = False
            ta_loss, ta_grad = captured.pop("tinyalbert")
            for name in torch_models:
                loss, grad = captured.pop(name)
                check[name] = {"loss_abs_diff": abs(loss - ta_loss),
                               "ffn_weight_grad_max_rel_diff": _rel_diff(grad, ta_grad)}
        samples = interleave(sides, run.xrepeats, max(1, run.warmup), before=before, on_first=compare)
        free_grads()
        line = time_line(run, f"train.b{B}s{S}", "train", f"{run.xxl_name} train step B={B} S={S} (M={M})",
                         samples, flops=model_flops(c, B, S, mlm_positions=M, training=True), mix_rate=mix,
                         batch=B, seq=S, mlm_positions=M, notes=notes, check=check)
        if check:
            notes.append("agreement: " + "; ".join(
                f"{k}: loss diff {v['loss_abs_diff']:.1e}, ffn.weight grad rel diff "
                f"{v['ffn_weight_grad_max_rel_diff']:.1e}" for k, v in check.items()))
        if (B, S) == run.train_shapes[0]:
            line["targets"] = [target(run, "time <= 0.6x torch's", line["ratio"], 0.6)]
        if run.xrepeats < 5 and not run.smoke:
            notes.append(f"{run.xrepeats} repeats (the issue asks for at least 5)")
        run.add(line)
    del model
    gc.collect()
    # peak RSS: each side alone in a fresh process (--smoke: the first shape only)
    for B, S in run.train_shapes[:1] if run.smoke else run.train_shapes:
        rss_line(run, c, B, S, first_shape=(B, S) == run.train_shapes[0])


def rss_line(run: Run, c: AlbertConfig, B: int, S: int, first_shape: bool) -> None:
    spec = {"config": c.to_dict(), "hf_config": hf_config_dict(c), "batch": B, "seq": S, "threads": run.threads}
    workers = {"tinyalbert": (_worker_code(_TRAIN_WORKER_TINYALBERT, _TRAIN_WORKER_TAIL), {})}
    if run.load_torch():
        for a in run.attns:
            workers[f"torch-{a}"] = (_worker_code(_TRAIN_WORKER_TORCH, _TRAIN_WORKER_TAIL), {"attn": a})
    values: dict[str, list] = {n: [] for n in workers}
    detail: dict[str, list] = {n: [] for n in workers}
    errors = []
    for r in range(run.rss_repeats):
        for name in (list(workers) if r % 2 == 0 else list(workers)[::-1]):
            code, more = workers[name]
            proc, wall, foreign = run_child([sys.executable, "-c", code, json.dumps({**spec, **more})])
            try:
                res = _worker_result(proc)
            except RuntimeError as e:
                errors.append(f"{name}: {e}")
                continue
            res.update(wall_s=wall, foreign=foreign)
            values[name].append(res["maxrss_mib"])
            detail[name].append(res)
    sides = {}
    for name in workers:
        s = summary(values[name])
        s["runs"] = detail[name]
        sides[name] = s
    line = {"id": f"train_rss.b{B}s{S}", "section": "train",
            "title": f"{run.xxl_name} train step B={B} S={S}: peak RSS of a fresh process (model + 1 step)",
            "unit": "MiB", "sides": sides, "ours": "tinyalbert", "batch": B, "seq": S, "targets": [],
            "notes": [], "reference": None, "ratio": None}
    torch_sides = [n for n in sides if n != "tinyalbert" and sides[n]["median"]]
    if sides["tinyalbert"]["median"] and torch_sides:
        ref = min(torch_sides, key=lambda n: sides[n]["median"])
        line.update(reference=ref, ratio=sides["tinyalbert"]["median"] / sides[ref]["median"])
    if first_shape:
        line["targets"] = [target(run, "peak RSS <= 0.75x torch's (the lower of its attentions)",
                                  line["ratio"], 0.75)]
    line["notes"].append(f"ru_maxrss of a fresh process that builds the model (random init) and runs one step; "
                         f"{run.rss_repeats} run(s) per side; the torch process imports no tinyalbert or Numba")
    line["notes"] += errors
    run.add(line)


def section_bundled(run: Run) -> None:
    """The bundled config's training step, each side in a process of its own (StepWorker), interleaved.

    Unlike the xxlarge lines, the sides do not share a process here: this step's activations (a few MiB
    each) are allocated and freed hundreds of times per step, and how fast that goes depends on the
    process's malloc settings and on how large earlier sections grew its heap.  tinyalbert sets its own
    policy (memory.keep_freed_memory) when it builds a model; in a shared process torch inherits that
    policy and that heap and ran 0.45-0.50 s per step instead of the 0.53 s it takes in a process of its
    own (docs/performance.md).  Separate processes time each library as its users run it.
    """
    from .nn.params import init_params
    from .weights import save

    c = run.bundled_config
    B, S = run.bundled_shape
    section_header(f"bundled: training step of the bundled model's config (H={c.hidden_size} E={c.embedding_size} "
                   f"NH={c.num_attention_heads} I={c.intermediate_size} L={c.num_hidden_layers} "
                   f"V={c.vocab_size}), B={B} S={S}, {run.threads} threads, each side in a process of its own")
    params = init_params(c, seed=0, dtype=np.float32)
    spec = {"batch": B, "seq": S, "threads": run.threads}
    ta_path = run.tmp / "bundled.h5"
    save(ta_path, c, params)
    bodies = {"tinyalbert": (_STEP_WORKER_TINYALBERT, {"path": str(ta_path)})}
    if run.load_torch():
        hf_dir = run.tmp / "bundled-hf"
        run.torch_model(c, params, "eager").save_pretrained(hf_dir)
        for a in run.attns:
            bodies[f"torch-{a}"] = (_STEP_WORKER_TORCH, {"path": str(hf_dir), "attn": a})
    _, _, _, labels, _ = make_batch(B, S, c.vocab_size)
    M = int((labels != -100).sum())
    del params
    gc.collect()
    workers: dict[str, StepWorker] = {}
    try:
        for name, (body, more) in bodies.items():
            workers[name] = StepWorker(name, body, {**spec, **more}, run.tmp)
        sides = {name: (lambda w=w: w.request("step")["loss"]) for name, w in workers.items()}
        before = {name: (lambda w=w: w.request("prepare")) for name, w in workers.items()}
        check: dict[str, float] = {}

        def compare(first):
            check.update({n: abs(first[n] - first["tinyalbert"]) for n in first if n != "tinyalbert"})
        notes = [f"config: {run.bundled_source}; random weights (the time does not depend on their values), "
                 f"written to a tinyalbert file and a transformers directory that the workers load"]
        mix = _mix(run, "bundled", c, True, B * S, B * S, notes)
        samples = interleave(sides, run.repeats, run.warmup, before=before, on_first=compare,
                             pids=tuple(w.pid for w in workers.values()))
    finally:
        for w in workers.values():
            w.close()
    line = time_line(run, "bundled.train", "bundled", f"bundled config train step B={B} S={S}", samples,
                     flops=model_flops(c, B, S, mlm_positions=M, training=True), mix_rate=mix, batch=B, seq=S,
                     mlm_positions=M, notes=notes, check={"loss_abs_diff": check})
    if check:
        notes.append("same weights and batch: first losses differ by "
                     + ", ".join(f"{v:.1e} ({k})" for k, v in check.items()))
    for s in line["sides"].values():
        s["tokens_per_s"] = B * S / s["median"] if s["median"] else None
    ref = line.get("reference")
    if ref:
        tput = line["sides"]["tinyalbert"]["tokens_per_s"] / line["sides"][ref]["tokens_per_s"]
        line["throughput_ratio"] = tput
        line["targets"] = [target(run, "tokens/s >= 1.5x torch's", tput, 1.5, at_most=False)]
        notes.append("tokens/s: " + ", ".join(f"{n} {s['tokens_per_s']:.0f}" for n, s in line["sides"].items()))
    run.add(line)


def section_load(run: Run) -> None:
    from .nn.params import has_sop_head
    from .weights import load_params, save

    S = run.load_seq
    section_header(f"load: open a converted {run.xxl_name} file and run a forward at seq {S}, fresh processes, "
                   f"page cache warm")
    notes: list[str] = []
    if run.args.xxlarge_file:
        path = Path(run.args.xxlarge_file)
        config, params, _, _ = load_params(path, dtype=np.float32)
        notes.append(f"file: {path}")
    else:
        path = run.tmp / f"{run.xxl_name}.h5"
        config, params = run.xxl, run.xxl_params()
        with Probe() as p:
            save(path, config, params)
        notes.append(f"file: {path.name} written by tinyalbert.weights.save from init_params in {p.seconds:.1f} s "
                     f"({path.stat().st_size / MIB:.0f} MiB)")
    sop_head = has_sop_head(params)
    workers = {"tinyalbert": (_worker_code(_LOAD_WORKER_TINYALBERT, _LOAD_WORKER_TAIL), {"path": str(path)})}
    if run.load_torch():
        hf_dir = run.tmp / f"{run.xxl_name}-hf"
        model = None if run.args.xxlarge_file else run._xxl_torch.get("torch-sdpa")   # reuse when it is ours
        if model is None:
            model = run.torch_model(config, params, "sdpa", sop_head=sop_head)
        with Probe() as p:
            model.save_pretrained(hf_dir)
        del model
        gc.collect()
        size = sum(f.stat().st_size for f in hf_dir.iterdir())
        notes.append(f"torch side: save_pretrained (safetensors) in {p.seconds:.1f} s ({size / MIB:.0f} MiB), "
                     f"loaded with from_pretrained (default attention)")
        workers["torch"] = (_worker_code(_LOAD_WORKER_TORCH, _LOAD_WORKER_TAIL),
                            {"path": str(hf_dir),
                             "model_class": "AlbertForPreTraining" if sop_head else "AlbertForMaskedLM"})
    del params
    spec = {"seq": S, "threads": run.threads}
    runs: dict[str, list[dict]] = {n: [] for n in workers}
    errors = []
    for r in range(-run.sub_warmup, run.sub_repeats):    # negative r: warm-up (Numba cache, page cache)
        for name in (list(workers) if r % 2 == 0 else list(workers)[::-1]):
            code, more = workers[name]
            proc, wall, foreign = run_child([sys.executable, "-c", code, json.dumps({**spec, **more})])
            try:
                res = _worker_result(proc)
            except RuntimeError as e:
                errors.append(f"{name}: {e}")
                continue
            if r >= 0:
                res.update(wall_s=wall, foreign=foreign)
                runs[name].append(res)
    notes += errors

    def line_of(key: str, line_id: str, title: str, unit: str = "s") -> dict[str, Any]:
        samples = {n: {"seconds": [x[key] for x in rs], "foreign": [x["foreign"] for x in rs]}
                   for n, rs in runs.items()}
        line = time_line(run, line_id, "load", title, samples)
        line["unit"] = unit
        return line

    imp = line_of("import_s", "load.import", "import (tinyalbert; torch + transformers + model class)")
    opn = line_of("open_s", "load.open", "open the converted file (weights.load vs from_pretrained)")
    opn["targets"] = [target(run, "tinyalbert opens the file in <= 0.3 s",
                             opn["sides"]["tinyalbert"]["median"], 0.3)]
    fwd = line_of("open_forward_s", "load.open_forward", f"open + first forward B=1 S={S}")
    rss = line_of("maxrss_mib", "load.peak_rss", f"peak RSS after open + forward B=1 S={S}", unit="MiB")
    ta_rss = rss["sides"]["tinyalbert"]["median"]
    rss["targets"] = [target(run, "tinyalbert peak RSS <= 1.2 GB (1144 MiB)",
                             ta_rss * MIB / GB if ta_rss else None, 1.2)]
    rss["notes"].append("target value in GB (1e9 bytes); ru_maxrss of the whole process, imports included")
    rss["runs"] = runs
    imp["notes"] += notes
    for line in (imp, opn, fwd, rss):
        if run.sub_repeats < 5 and not run.smoke:
            line["notes"].append(f"{run.sub_repeats} repeats (the issue asks for at least 5)")
        run.add(line)


def _stand_in_bundled(run: Run) -> tuple[Path | None, str]:
    """The bundled model, or a stand-in of the recipe's shape (random weights, float16 like the real one)."""
    path = bundled_model_path()
    if path.exists():
        return path, f"bundled model {path}"
    from .nn.params import init_params
    from .tokenizer import Tokenizer
    from .weights import save

    root = Path(__file__).resolve().parents[1]
    for vocab in (root.parent / "shared" / "albert" / "30k-clean.model",
                  root / "runs" / "mini" / "spiece.model"):
        if vocab.exists():
            break
    else:
        return None, f"{path} is not present and no SentencePiece model was found for a stand-in"
    spiece = vocab.read_bytes()
    config = AlbertConfig(**{**FALLBACK_BUNDLED, "vocab_size": Tokenizer(spiece).vocab_size})
    out = run.tmp / "tinyalbert-mini-standin.h5"
    save(out, config, init_params(config, seed=0), spiece_model_bytes=spiece, dtype="float16")
    return out, (f"{path} is not present: timed a stand-in of the recipe's shape (random weights, float16, "
                 f"vocabulary {vocab}, V={config.vocab_size})")


def section_predict(run: Run) -> None:
    section_header(f"predict: python -m tinyalbert.predict on the bundled model, wall time incl. interpreter "
                   f"start and imports, {run.threads} threads")
    path, what = _stand_in_bundled(run)
    if path is None:
        raise RuntimeError(what)
    cmd = [sys.executable, "-m", "tinyalbert.predict", "--weights", str(path), PREDICT_TEXT]
    cwd_env = dict(os.environ)
    warm_dir = run.tmp / "numba-cache-warm"
    warm_dir.mkdir(exist_ok=True)
    results: dict[str, list] = {"warm": [], "cold": []}
    errors = []

    def once(kind: str) -> dict[str, Any] | None:
        cache = warm_dir if kind == "warm" else Path(tempfile.mkdtemp(prefix="numba-cold-", dir=run.tmp))
        env = {**cwd_env, "NUMBA_CACHE_DIR": str(cache)}
        try:
            proc, wall, foreign = run_child(cmd, env=env, timeout=900)
        finally:
            if kind == "cold":
                shutil.rmtree(cache, ignore_errors=True)
        if proc.returncode != 0:
            errors.append(f"{kind} run failed (exit {proc.returncode}): "
                          f"{(proc.stderr.strip().splitlines() or [''])[-1]}")
            return None
        return {"seconds": wall, "foreign": foreign, "note_printed": "first run" in proc.stderr,
                "stdout_first_line": (proc.stdout.splitlines() or [""])[0]}

    once("warm")                                    # fills the warm cache (untimed)
    for r in range(run.predict_repeats):
        for kind in (("cold", "warm") if r % 2 == 0 else ("warm", "cold")):
            res = once(kind)
            if res is not None:
                results[kind].append(res)
    for kind in ("warm", "cold"):
        rs = results[kind]
        samples = {"tinyalbert": {"seconds": [x["seconds"] for x in rs], "foreign": [x["foreign"] for x in rs]}}
        line = time_line(run, f"predict.{kind}", "predict",
                         f"predict wall time, {'warm' if kind == 'warm' else 'empty'} Numba cache", samples,
                         runs=rs, notes=[what] + errors)
        notes_printed = [x["note_printed"] for x in rs]
        if kind == "warm":
            line["targets"] = [target(run, "wall time incl. import <= 2 s", line["sides"]["tinyalbert"]["median"],
                                      2.0)]
            if any(notes_printed):
                line["notes"].append("the first-run note was printed with a warm cache")
        else:
            line["cold_note_printed"] = all(notes_printed) if notes_printed else None
            line["notes"].append("the 'first run, compiling' note was printed in "
                                 f"{sum(notes_printed)}/{len(notes_printed)} cold runs")
        run.add(line)


SECTION_FUNCTIONS = {"matmul": section_matmul, "forward": section_forward, "train": section_train,
                     "bundled": section_bundled, "load": section_load, "predict": section_predict}


# ==================================================================================================
# threads, command line
# ==================================================================================================
def _thread_env(threads: int) -> dict[str, str]:
    return {k: str(threads) for k in THREAD_ENV}


def reexec_with_thread_env(threads: int, argv: list[str]) -> None:
    """Start this command again with OPENBLAS/MKL/NUMBA_NUM_THREADS set, unless they already are.

    OpenBLAS sizes its thread pool and Numba its maximum when they load, which happened before this
    function could run (the package imports numpy and Numba); setting the variables and re-executing
    once makes every pool the requested size from the start, with or without threadpoolctl.
    """
    want = _thread_env(threads)
    if all(os.environ.get(k) == v for k, v in want.items()) or os.environ.get(REEXEC_MARKER):
        return
    env = {**os.environ, **want, REEXEC_MARKER: "1"}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "tinyalbert.bench", *argv], env)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m tinyalbert.bench",
        description="tinyalbert against PyTorch (transformers' AlbertForPreTraining) on the same cores: "
                    "GEMM rate, xxlarge forward and training step, the bundled model's training step, "
                    "loading a converted file, predict.  Method and targets: docs/performance.md.")
    p.add_argument("--only", nargs="+", metavar="SECTION", default=list(SECTIONS),
                   help=f"sections to run, in this order: {', '.join(SECTIONS)} (default: all; commas work too)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed repeats per side and line (default 5; 2 with --smoke)")
    p.add_argument("--xxlarge-repeats", type=int, default=None,
                   help="repeats for the xxlarge forward, train and load lines (default: --repeats); "
                        "fewer saves a lot of time, but the issue asks for at least 5")
    p.add_argument("--rss-repeats", type=int, default=1,
                   help="fresh processes per side for the training peak-RSS lines (default 1: peak RSS "
                        "hardly varies, and each xxlarge run costs a minute or more)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per side before the repeats (default 1)")
    p.add_argument("--threads", type=int, default=2,
                   help="threads for numpy's BLAS, Numba and torch alike (default 2)")
    p.add_argument("--attn", choices=("both", *ATTN_CHOICES), default="both",
                   help="transformers attention implementation(s) to time (default both; ratios are against "
                        "the faster)")
    p.add_argument("--xxlarge-file", help="a converted xxlarge weights file for the load section (default: one "
                                          "written from init_params into a temporary directory)")
    p.add_argument("--tmpdir", default=None, help="where to put temporary files (about 2 GB for the load section)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny configs for every line, so the whole script runs in well under a minute: "
                        "tests the script, measures nothing")
    p.add_argument("--out", default="bench-results.json", help="JSON results file (default bench-results.json)")
    args = p.parse_args(argv)
    only = [s for item in args.only for s in item.split(",") if s]
    unknown = [s for s in only if s not in SECTIONS]
    if unknown:
        p.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}")
    args.only = [s for s in SECTIONS if s in only]
    if args.threads < 1 or (args.repeats is not None and args.repeats < 1) or args.warmup < 0 or (
            args.xxlarge_repeats is not None and args.xxlarge_repeats < 1) or args.rss_repeats < 1:
        p.error("--threads, --repeats, --xxlarge-repeats and --rss-repeats must be at least 1, --warmup at least 0")
    return args


def write_json(run: Run, path: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(run.to_json(), f, indent=1, default=float)
    os.replace(tmp, path)


def main(argv: list[str] | None = None, allow_reexec: bool = False) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    args.argv = argv
    if allow_reexec:
        reexec_with_thread_env(args.threads, argv)
    os.environ.update(_thread_env(args.threads))          # for every child process
    limit_threads(args.threads)
    import numba

    if numba.config.NUMBA_NUM_THREADS < args.threads:
        print(f"warning: Numba can use at most {numba.config.NUMBA_NUM_THREADS} threads in this process; "
              f"run `NUMBA_NUM_THREADS={args.threads} python -m tinyalbert.bench ...`", file=sys.stderr)
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    if affinity is not None and len(affinity) < args.threads:
        print(f"warning: this process may run on {len(affinity)} CPU(s) only; {args.threads} threads will "
              f"share them", file=sys.stderr)

    run = Run(args)
    if any(s != "predict" for s in args.only):
        run.load_torch()
    limit_threads(args.threads)                             # again, now that torch may be loaded
    gc.collect()
    gc.freeze()       # the imports' objects: a gc.collect() between samples then costs ms, not 0.3 s
    run.machine = machine_info(run)
    print(f"tinyalbert benchmark{' (SMOKE: tiny configs, nothing here is a measurement)' if run.smoke else ''}: "
          f"sections {', '.join(args.only)}; {run.threads} threads; repeats {run.repeats} "
          f"(xxlarge {run.xrepeats}); results -> {args.out}")
    print_machine(run.machine)
    print("  " + LEGEND)
    try:
        for name in args.only:
            started = time.perf_counter()
            try:
                SECTION_FUNCTIONS[name](run)
            except KeyboardInterrupt:
                raise
            except Exception as e:
                run.errors.append({"section": name, "error": f"{type(e).__name__}: {e}",
                                   "traceback": traceback.format_exc()})
                print(f"  error in section {name}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            print(f"  ({name}: {time.perf_counter() - started:.1f} s)", flush=True)
            run.torch_threads_now()
            write_json(run, args.out)
    except KeyboardInterrupt:
        print("\ninterrupted: writing what was measured so far", file=sys.stderr)
    finally:
        if hasattr(os, "getloadavg"):
            run.machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
        try:
            run.machine["numba_threading_layer"] = numba.threading_layer()
        except ValueError:
            run.machine["numba_threading_layer"] = None
        write_json(run, args.out)
        run._tmp.cleanup()
    print_targets(run)
    busy = [s["foreign_max"] for line in run.lines for s in line["sides"].values() if s.get("foreign_max")]
    print(f"\nwrote {args.out} ({len(run.lines)} lines, {len(run.errors)} errors) in "
          f"{time.perf_counter() - run.started:.0f} s")
    if busy and max(busy) > 0.05:
        print(f"note: other processes used up to {100 * max(busy):.0f}% of the CPUs during some samples "
              f"('busy' column); treat those lines as noisy")
    return 1 if run.errors else 0


if __name__ == "__main__":
    sys.exit(main(allow_reexec=True))
