"""The command line, the run's shared state (options, models, lines) and the JSON results file."""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from ..files import atomic_output
from ..nn.config import AlbertConfig
from ..tuning import tune_process
from .measure import LEGEND, format_line
from .sections import SECTIONS, torch_model
from .worker import limit_threads

THREAD_ENV = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")
SMOKE = dict(vocab_size=2000, embedding_size=32, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
             intermediate_size=512, max_position_embeddings=128)


def bundled_config() -> tuple[AlbertConfig, str]:
    """The bundled model's config (tinyalbert/data/), and the file it was read from."""
    from ..predict import BUNDLED_MODEL_NAME
    from ..weights import load_params

    path = Path(__file__).resolve().parents[1] / "data" / BUNDLED_MODEL_NAME
    return load_params(path)[0], str(path)


class Run:
    """The options of one invocation, the models its sections share, and the lines measured so far."""

    def __init__(self, args: argparse.Namespace):
        self.args, self.smoke, self.threads, self.warmup = args, args.smoke, args.threads, args.warmup
        self.repeats = args.repeats or (2 if self.smoke else 5)
        self.xrepeats = args.xxlarge_repeats or self.repeats
        self.attns = ["eager", "sdpa"] if args.attn == "both" else [args.attn]
        # fresh-process lines (load, predict): --smoke runs each once, without warm-up (torch imports for seconds)
        self.sub_repeats, self.sub_warmup = (1, 0) if self.smoke else (self.xrepeats, max(1, self.warmup))
        # --smoke: a tiny stand-in for xxlarge and small shapes, so that every line runs in seconds
        self.xxl, self.xxl_name = (AlbertConfig(**SMOKE), "smoke-xxl") if self.smoke else (AlbertConfig(), "xxlarge")
        self.forward_shapes = [(1, 32), (1, 128), (2, 32)] if self.smoke else [(1, 128), (1, 512), (8, 128)]
        self.train_shapes = [(1, 32), (2, 32)] if self.smoke else [(1, 128), (4, 128)]
        self.bundled_shape, self.load_seq = ((2, 32), 32) if self.smoke else ((32, 128), 128)
        self.bundled, self.bundled_path = bundled_config()
        # the matmul section's rows: xxlarge's at the first forward's seq, the bundled model's at B·S
        self.gemm_rows = {"xxl": self.forward_shapes[0][1], "bundled": self.bundled_shape[0] * self.bundled_shape[1]}
        self.lines, self.errors, self.notes, self.np_rates = [], [], [], {}
        self._tmp = tempfile.TemporaryDirectory(prefix="tinyalbert-bench-", dir=args.tmpdir)
        self.tmp, self.started = Path(self._tmp.name), time.time()
        self.torch = self.transformers = None
        try:
            if args.only != ["predict"]:                 # predict has no torch side: do not pay for the import
                import torch
                import transformers

                transformers.logging.set_verbosity_error()
                self.torch, self.transformers = torch, transformers
        except ImportError as e:
            self.notes.append(f"PyTorch side skipped: {e}; pip install -e '.[reference]' installs it")
            print("note: " + self.notes[-1], file=sys.stderr)

    @cached_property
    def xxl_params(self) -> dict[str, np.ndarray]:
        from ..nn.params import init_params

        return init_params(self.xxl, seed=0, dtype=np.float32)

    @cached_property
    def xxl_torch(self) -> dict[str, Any]:
        """{"torch-eager": model, "torch-sdpa": model} on the xxlarge params: one set of arrays for all sides."""
        return {f"torch-{a}": torch_model(self, self.xxl, self.xxl_params, a) for a in self.attns if self.torch}

    def add(self, line: dict[str, Any]) -> None:
        self.lines.append(line)
        print(format_line(line), flush=True)

    def write_json(self, machine: dict[str, Any]) -> None:
        machine["loadavg_end"] = [round(x, 2) for x in psutil.getloadavg()]
        options = {**vars(self.args), "repeats": self.repeats, "xxlarge_repeats": self.xrepeats,
                   "attn": self.attns, "process_repeats": self.sub_repeats, "process_warmup": self.sub_warmup}
        result = {"schema": "tinyalbert-bench/2", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "wall_s": time.time() - self.started, "options": options, "machine": machine,
                  "models": {"xxlarge": self.xxl.to_dict(), "bundled": self.bundled.to_dict()},
                  "numpy_matmul_gflops": self.np_rates, "lines": self.lines, "errors": self.errors, "notes": self.notes}
        with atomic_output(self.args.out) as tmp, open(tmp, "w") as f:
            json.dump(result, f, indent=1, default=float)


def machine_info(run: Run) -> dict[str, Any]:
    """The CPU, memory, load, software versions and thread counts of this run: printed, and kept in the results."""
    import numba

    cpu: dict[str, str] = {}
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:          # reversed: the first CPU's fields win
            cpu = dict(reversed([[s.strip() for s in line.split(":", 1)] for line in f if ":" in line]))
    info = {"cpu": f"{cpu.get('model name')} (family {cpu.get('cpu family')} model {cpu.get('model')}; "
                   f"{' '.join(f for f in ('avx2', 'avx512f', 'amx_tile') if f in cpu.get('flags', ''))})",
            "cpus": psutil.cpu_count(), "affinity": sorted(psutil.Process().cpu_affinity()),
            "memory_gib": round(psutil.virtual_memory().total / 2 ** 30, 1),
            "loadavg_start": [round(x, 2) for x in psutil.getloadavg()], "python": platform.python_version(),
            "numpy": np.__version__, "numba": numba.__version__, "numba_threads": numba.get_num_threads(),
            "torch": run.torch and run.torch.__version__, "transformers": run.torch and run.transformers.__version__,
            "torch_threads": run.torch and run.torch.get_num_threads(),
            "env": {k: os.environ[k] for k in (*THREAD_ENV, "OMP_NUM_THREADS", "OMP_WAIT_POLICY") if k in os.environ}}
    print("machine: " + "; ".join(f"{k} {v}" for k, v in info.items()))
    return info


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tinyalbert.bench", description=(
        "tinyalbert against PyTorch (transformers' AlbertForPreTraining) on the same cores: GEMM rate, xxlarge "
        "forward and training step, the bundled model's training step, loading a converted file, predict.  "
        "Method and figures: docs/performance.md."))
    p.add_argument("--only", nargs="+", metavar="SECTION", default=list(SECTIONS),
                   help=f"sections to run, in this order: {', '.join(SECTIONS)} (default: all; commas work too)")
    p.add_argument("--repeats", type=int, help="timed repeats per side and line (default 5; 2 with --smoke)")
    p.add_argument("--xxlarge-repeats", type=int, help="repeats for the xxlarge forward, train and load lines "
                   "(default: --repeats); fewer save much time, but make the median less certain")
    p.add_argument("--rss-repeats", type=int, default=1, help="fresh processes per side for the training peak-RSS "
                   "lines (default 1: peak RSS hardly varies, and each xxlarge run takes a minute or more)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per side before the repeats (default 1)")
    p.add_argument("--threads", type=int, default=2, help="threads for numpy's BLAS, Numba and torch alike (default 2)")
    p.add_argument("--attn", choices=("both", "eager", "sdpa"), default="both", help="transformers attention "
                   "implementation(s) to time (default both; ratios are against the faster)")
    p.add_argument("--xxlarge-file", help="a converted xxlarge weights file for the load section (default: one "
                   "written from random weights into a temporary folder)")
    p.add_argument("--tmpdir", help="where to put temporary files (about 2 GB for the load section)")
    p.add_argument("--smoke", action="store_true", help="tiny configs for every line: checks the script in "
                   "minutes, measures nothing")
    p.add_argument("--out", default="bench-results.json", help="JSON results file (default bench-results.json)")
    args = p.parse_args(argv)
    only = {s for item in args.only for s in item.split(",") if s}
    if only - set(SECTIONS):
        p.error(f"unknown section(s) {', '.join(sorted(only - set(SECTIONS)))}; choose from {', '.join(SECTIONS)}")
    if min(args.threads, args.repeats or 1, args.xxlarge_repeats or 1, args.rss_repeats) < 1 or args.warmup < 0:
        p.error("--threads, --repeats, --xxlarge-repeats and --rss-repeats must be at least 1, --warmup at least 0")
    args.only, args.argv = [s for s in SECTIONS if s in only], argv
    return args


def main(argv: list[str] | None = None, allow_reexec: bool = False) -> int:
    tune_process(training=False)        # the training lines add malloc's setting at their first step (run_model)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    # OpenBLAS sizes its thread pool and Numba its maximum when they load, which the package's imports did
    # before this line: re-executing once with the variables set makes every pool the right size from the start.
    thread_env = {k: str(args.threads) for k in THREAD_ENV}
    if allow_reexec and thread_env.items() - os.environ.items() and not os.environ.get("TINYALBERT_BENCH_REEXEC"):
        sys.stdout.flush()
        os.execve(sys.executable, [sys.executable, "-m", "tinyalbert.bench", *argv],
                  {**os.environ, **thread_env, "TINYALBERT_BENCH_REEXEC": "1"})
    os.environ.update(thread_env)          # for every child process
    if len(psutil.Process().cpu_affinity()) < args.threads:     # parallel regions would wait for descheduled threads
        print(f"warning: this process may use fewer than {args.threads} CPUs: the times mean little", file=sys.stderr)
    run = Run(args)
    limit_threads(args.threads)
    gc.collect()
    gc.freeze()       # the imports' objects: a gc.collect() between samples then costs ms, not 0.3 s
    print(f"tinyalbert benchmark{' (SMOKE: tiny configs, nothing here is a measurement)' if run.smoke else ''}: "
          f"sections {', '.join(args.only)}; {run.threads} threads; repeats {run.repeats} (xxlarge {run.xrepeats}); "
          f"results -> {args.out}")
    machine = machine_info(run)
    print(LEGEND)
    try:
        for name in args.only:
            try:
                SECTIONS[name](run)
            except Exception as e:
                run.errors.append({"section": name, "error": f"{type(e).__name__}: {e}",
                                   "traceback": traceback.format_exc()})
                print(f"  error in section {name}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
            limit_threads(run.threads)           # a section's library may have changed its pool
            run.write_json(machine)
    finally:                                     # also on Ctrl-C: the file keeps what was measured
        run.write_json(machine)
        run._tmp.cleanup()
    busy = max((s["foreign_max"] or 0 for line in run.lines for s in line["sides"].values()), default=0)
    print(f"\nwrote {args.out}: {len(run.lines)} lines, {len(run.errors)} errors, {time.time() - run.started:.0f} s; "
          f"other processes used up to {100 * busy:.0f}% of the CPUs during a sample (busy above 5%: a noisy line)")
    return 1 if run.errors else 0
