"""How a line is measured (interleaved repeats, the CPU share of other processes, worker processes), its FLOP
counts, and what it reports: statistics, the ratio to torch, the printed table."""
from __future__ import annotations

import gc
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import psutil

from ..count import Arch, flops
from ..nn.config import AlbertConfig
from .worker import RESULT_PREFIX

WORKER = [sys.executable, str(Path(__file__).with_name("worker.py"))]
Samples = dict[str, dict[str, list]]          # {side: {"values": [...], "foreign": [share or None, ...]}}


class Probe:
    """Wall time of a block, and `foreign`: the share of the CPUs that OTHER processes used meanwhile, that is
    (the machine's busy CPU seconds - those of this process, its reaped children and the running `workers`) /
    (wall x CPUs); None under 0.2 s, as the kernel counts CPU time in 10 ms ticks."""

    def __init__(self, workers: tuple[psutil.Process, ...] = ()):
        self.workers = workers

    def _cpu_seconds(self) -> tuple[float, float]:
        machine, me = psutil.cpu_times(), psutil.Process().cpu_times()
        return (sum(getattr(machine, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq")),
                sum(me[:4]) + sum(sum(w.cpu_times()[:2]) for w in self.workers))   # user, system (+ children's)

    def __enter__(self) -> Probe:
        self.cpu0, self.t0 = self._cpu_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.t0
        (machine1, own1), (machine0, own0) = self._cpu_seconds(), self.cpu0
        other = max(0.0, (machine1 - machine0) - (own1 - own0))
        self.foreign = min(1.0, other / (self.seconds * psutil.cpu_count())) if self.seconds >= 0.2 else None


def interleave(sides: dict[str, Callable[[], Any]], repeats: int, warmup: int, inner: int = 1,
               before: Callable[[str], Any] = lambda side: None,
               keep_first: Callable[[str, Any], Any] = lambda side, out: out,
               workers: tuple[psutil.Process, ...] = ()) -> tuple[Samples, dict[str, Any]]:
    """Time every side `repeats` times in ABBA order (A B in even repeats, B A in odd ones), after `warmup`
    untimed calls each: (samples of the seconds per call, {side: keep_first(side, its first output)}).

    inner: calls per sample.  before(side): untimed, before each call.  workers: processes that do a side's
    work; their CPU time is not "foreign"."""
    first = {}
    for w in range(warmup):
        for name, call in sides.items():
            before(name)
            out = call()
            if w == 0:
                first[name] = keep_first(name, out)
            del out
    samples: Samples = {name: {"values": [], "foreign": []} for name in sides}
    for r in range(repeats):
        for name in list(sides) if r % 2 == 0 else list(sides)[::-1]:
            before(name)
            gc.collect()
            gc.disable()                       # as timeit does: no collector pauses inside a sample
            try:
                with Probe(workers) as probe:
                    for _ in range(inner):
                        out = sides[name]()
            finally:
                gc.enable()
            del out
            samples[name]["values"].append(probe.seconds / inner)
            samples[name]["foreign"].append(probe.foreign)
    gc.collect()
    return samples, first


class StepWorker:
    """One side of a line in a worker process (worker.py), driven one command at a time, so that the sides
    still take turns on the cores.  It starts through `sh -c`, which forks it from the small shell: exec'd
    directly from this large process, it would inherit this one's peak in ru_maxrss (Linux folds the old
    address space's high-water mark in at exec).  Its stderr goes to a file, for the error if it fails."""

    def __init__(self, name: str, spec: dict[str, Any], log_dir: Path):
        self.name, self.log_path = name, log_dir / f"worker-{name}.log"
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(["/bin/sh", "-c", '"$@"; exit $?', "sh", *WORKER, json.dumps(spec)],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                                         bufsize=1)
        self.opened = self.request(None)                 # its first answer: the model is built
        self.process = psutil.Process(self.proc.pid).children()[0]     # the worker, the shell's child

    def request(self, command: str | None) -> dict[str, Any]:
        try:
            self.proc.stdin.write(f"{command}\n" if command else "")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass                                          # the worker has died: its log below says why
        for line in self.proc.stdout:
            if line.startswith(RESULT_PREFIX):
                return json.loads(line[len(RESULT_PREFIX):])
        self.proc.wait()                                  # its output ended: it has exited or is exiting
        log = self.log_path.read_text(errors="replace").strip().splitlines() or ["no output"]
        raise RuntimeError(f"{self.name} worker failed (exit {self.proc.returncode}): {log[-1]}")

    def close(self) -> None:
        self.proc.stdin.close()                           # end of input ends the worker's loop
        self.proc.wait(timeout=60)
        self.proc.stdout.close()


def model_flops(c: AlbertConfig, batch: int, seq: int, mlm_positions: int | None = None,
                training: bool = False) -> float:
    """Matmul FLOPs of one forward (training=False) or one training step (3x the forward) at (batch, seq),
    with the MLM head at `mlm_positions` positions (default: all): tinyalbert.count's per-family FLOPs, summed."""
    M = batch * seq if mlm_positions is None else mlm_positions
    return float(sum(flops(Arch.albert(c), batch, seq, train=training, mlm_positions=M).values()))


def numpy_mix_rate(rates: dict[str, float] | None, c: AlbertConfig, training: bool) -> float | None:
    """The numpy GEMM rate (GFLOP/s) of the model's mix of layer GEMMs: Σ flops / Σ (flops / rate).

    Forward: q, k, v, dense at the "qkvo" rate (8H² per token), ffn and ffn_output at theirs (2HI each).
    Training adds the input gradients (the same FLOPs, counted at the forward shapes' rates) and the
    weight gradients dyᵀ·x at the measured K = rows rates.
    """
    H, I = c.hidden_size, c.intermediate_size
    weights = {"qkvo": 8 * H * H, "ffn_in": 2 * H * I, "ffn_out": 2 * H * I}
    if training:
        weights = {k: 2 * v for k, v in weights.items()} | {"dw_" + k: v for k, v in weights.items()}
    if not rates or not all(rates.get(k) for k in weights):
        return None
    return sum(weights.values()) / sum(w / rates[k] for k, w in weights.items())


def summary(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values) if values else None, "min": min(values, default=None),
            "max": max(values, default=None), "n": len(values), "samples": list(values)}


def value_line(line_id: str, section: str, title: str, samples: Samples, unit: str = "s", flops: float | None = None,
               mix_rate: float | None = None, ours: str = "tinyalbert", **extra) -> dict[str, Any]:
    """A line: each side's median, min, max (and GFLOP/s, % of the numpy mix rate), and the ratio of our
    median to the reference's, the torch side with the lowest median (of times, or of peak RSS in MiB)."""
    sides = {}
    for name, s in samples.items():
        side = sides[name] = summary(s["values"])
        side.update(foreign=s["foreign"], foreign_max=max((f for f in s["foreign"] if f is not None), default=None))
        if flops and side["median"]:
            side["gflops"] = flops / side["median"] / 1e9
            side["pct_numpy"] = 100.0 * side["gflops"] / mix_rate if mix_rate else None
    line = {"id": line_id, "section": section, "title": title, "unit": unit, "flops": flops,
            "numpy_mix_gflops": mix_rate, "sides": sides, "ours": ours, "reference": None, "ratio": None,
            "paired_ratio": None, "notes": []}
    others = [n for n in sides if n != ours and sides[n]["median"]]
    if sides.get(ours, {}).get("median") and others:
        ref = min(others, key=lambda n: sides[n]["median"])
        paired = [a / b for a, b in zip(samples[ours]["values"], samples[ref]["values"], strict=True)]
        line.update(reference=ref, ratio=sides[ours]["median"] / sides[ref]["median"], paired_ratio=summary(paired))
    return {**line, **extra}


def _fmt(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "MiB":
        return f"{v:.0f} MiB"
    return f"{v * 1e6:.0f} us" if v < 1e-3 else f"{v * 1e3:.1f} ms" if v < 1 else f"{v:.2f} s"


TABLE_HEADER = (f"  {'line':<26} {'side':<12} {'median':>10} {'min':>10} {'max':>10} {'n':>2} {'GFLOP/s':>7} "
                f"{'%np':>5} {'ours/t':>6} {'busy':>4}")
LEGEND = """\
  median, min, max over the n repeats; GFLOP/s = counted matrix-product FLOPs / median; %np = that rate / numpy's
  rate for the same GEMM shapes (at the matmul section's rows); ours/t = tinyalbert's median (numpy's in matmul) /
  the faster torch side's, below 1 when tinyalbert takes less time or memory; busy = the most of the CPUs other
  processes used during a sample ('-': too short to tell)."""


def format_line(line: dict[str, Any]) -> str:
    rows = []
    for name, s in line["sides"].items():
        ratio = f"{line['ratio']:.2f}x" if name == line["ours"] and line["ratio"] is not None else ""
        g, pct, busy, unit = s.get("gflops"), s.get("pct_numpy"), s["foreign_max"], line["unit"]
        rows.append(f"  {line['id']:<26} {name:<12} {_fmt(s['median'], unit):>10} {_fmt(s['min'], unit):>10} "
                    f"{_fmt(s['max'], unit):>10} {s['n']:>2} {(f'{g:.1f}' if g else '-'):>7} "
                    f"{(f'{pct:.0f}%' if pct else '-'):>5} {ratio:>6} "
                    f"{(f'{100 * busy:.0f}%' if busy is not None else '-'):>4}")
    return "\n".join(rows + [f"      note: {n}" for n in line["notes"]])
