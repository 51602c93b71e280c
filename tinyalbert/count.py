"""How big and how costly an ALBERT is, before you run it: parameters, FLOPs, memory and time.

    python -m tinyalbert.count xxlarge                        # a preset: base, large, xlarge, xxlarge
    python -m tinyalbert.count config.json --batch 8 --seq 512 --train
    python -m tinyalbert.count tinyalbert/data/tinyalbert-mini.h5 --no-measure
    python -m tinyalbert.count xxlarge --vs bert-large        # why xxlarge is slower with fewer parameters
    python -m tinyalbert.count --paper                        # the ALBERT paper's Table 1, convention by convention

Parameters are counted by part (embeddings, the E -> H projection, the layer weight sets, pooler, MLM head
with its decoder tied to the word embeddings, SOP classifier), for the model as it is, for the same model
with a weight set per layer application ("unshared"), and for BERT with the same H, I and L (E = H, no
projection, an H -> H MLM transform).  ALBERT's total equals `count_params(init_params(config))`.

FLOPs are matrix products only, per op family, exactly as tinyalbert.bench counts them
(docs/performance.md): the backward costs twice the forward, and a training step runs the MLM head at the
labelled 15 % of positions only.

Memory is what this engine holds, read off its forward functions (nn/*.py) and checked against their caches
by tests/test_count.py.  One layer run caches its input, q, k, v, the context, the two residual sums before
its LayerNorms and the attention output (8 arrays of B·S·H), the GELU's input, tanh and output (3 of B·S·I;
2 for the erf GELU), the attention probabilities (B·NH·S·S) and 4 LayerNorm row statistics.  A forward
without a backward keeps the hidden states, and while a layer runs, the cache of the run before it.  A
training step adds gradients and AdamW's two moments.  Arrays up to 32 MiB come from the heap, which keeps
its high-water mark (training's malloc policy, memory.py, on purpose; glibc's default mostly); larger ones
are mapped and unmapped on their own.  So the peak is taken phase by phase: for xxlarge at batch 1, AdamW's
temporaries for the 256 MiB FFN weight come on top of the activations' heap, and set the peak.  The
estimated peak RSS adds the runtime (interpreter, NumPy, Numba's kernels, BLAS buffers) measured in a fresh
process.

Time is the FLOP count at the matmul rate measured on this machine, in that fresh process, on the model's
FFN shape in the engine's own layout (`--no-measure` skips the few seconds this takes).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, replace

import numpy as np

from .cli import CommandErrors, OneLineParser
from .memory import HEAP_ARRAY_LIMIT
from .nn.config import AlbertConfig
from .nn.linear import SKINNY_ROWS

MIB = 2 ** 20
MLM_FRACTION = 0.15       # labelled positions per sequence in a pretraining step (tinyalbert.bench.make_batch)
BERT_VOCAB = 30522        # the vocabulary of Google's released (uncased) BERT
BERT_PRESETS = {"bert-base": dict(hidden=768, intermediate=3072, layers=12, heads=12),
                "bert-large": dict(hidden=1024, intermediate=4096, layers=24, heads=16)}
# Table 1 of Lan et al., "ALBERT" (ICLR 2020), in millions of parameters.
PAPER_TABLE_1 = {"bert-base": 108, "bert-large": 334, "base": 12, "large": 18, "xlarge": 60, "xxlarge": 235}
CONVENTIONS = {"encoder": ("embeddings", "projection", "layers"),
               "+pooler": ("embeddings", "projection", "layers", "pooler"),
               "+MLM": ("embeddings", "projection", "layers", "MLM head"),
               "all": ("embeddings", "projection", "layers", "pooler", "MLM head", "SOP head")}
CONVENTION_NAMES = {"encoder": "embeddings + encoder only", "+pooler": "+ pooler (AlbertModel, BertModel)",
                    "+MLM": "+ MLM head, no pooler (AlbertForMaskedLM: the published files)",
                    "all": "+ pooler + MLM + SOP/NSP heads (ForPreTraining)"}


class CountError(ValueError):
    """Input that count cannot describe; the message is one line."""


@dataclass(frozen=True)
class Arch:
    """What the counts depend on.  kind "albert": E -> H projection and an H -> E MLM transform; "bert": E = H."""

    name: str
    kind: str
    vocab: int
    embed: int
    hidden: int
    intermediate: int
    layers: int                 # L: applications of the layer stack
    heads: int
    inner: int = 1              # layers run per application (ALBERT's inner_group_num)
    weight_sets: int = 1        # distinct layer weight sets: G x inner for ALBERT, L for BERT
    positions: int = 512
    types: int = 2
    sop_head: bool = True       # pooler + SOP (BERT: NSP) classifier
    gelu_tanh: bool = True      # gelu_new caches its tanh for the backward; the erf GELU does not

    @classmethod
    def albert(cls, config: AlbertConfig, name: str = "ALBERT", sop_head: bool = True) -> "Arch":
        return cls(name, "albert", config.vocab_size, config.embedding_size, config.hidden_size,
                   config.intermediate_size, config.num_hidden_layers, config.num_attention_heads,
                   config.inner_group_num, config.num_hidden_groups * config.inner_group_num,
                   config.max_position_embeddings, config.type_vocab_size, sop_head, config.hidden_act == "gelu_new")

    @classmethod
    def bert(cls, name: str, vocab: int = BERT_VOCAB) -> "Arch":
        d = BERT_PRESETS[name]
        return cls(name, "bert", vocab, d["hidden"], d["hidden"], d["intermediate"], d["layers"], d["heads"],
                   weight_sets=d["layers"])

    def unshared(self) -> "Arch":
        return replace(self, name=f"{self.name}, unshared", weight_sets=self.runs)

    def bert_twin(self) -> "Arch":
        return replace(self, name="BERT, same H I L", kind="bert", embed=self.hidden, inner=1, weight_sets=self.layers)

    @property
    def runs(self) -> int:
        return self.layers * self.inner

    @property
    def gelu_arrays(self) -> int:
        """Arrays the activation keeps: x + b, tanh and the output (gelu_new); x + b and the output (erf GELU)."""
        return 3 if self.gelu_tanh else 2

    @property
    def head_width(self) -> int:
        """Width of the MLM transform and decoder input: E for ALBERT, H for BERT."""
        return self.embed if self.kind == "albert" else self.hidden

    def describe(self) -> str:
        sharing = (f"{self.weight_sets} layer weight set{'s' * (self.weight_sets > 1)} for {self.runs} layer runs"
                   if self.kind == "albert" else f"{self.layers} layers")
        return (f"{self.name}: V={self.vocab} E={self.embed} H={self.hidden} I={self.intermediate} "
                f"NH={self.heads} L={self.layers}, {sharing}")


# ---- parameters ---------------------------------------------------------------------------------------
def layer_params(a: Arch) -> int:
    """One layer: q, k, v and dense (H·H + H each), ffn (H·I + I), ffn_output (I·H + H), two LayerNorms (2H each)."""
    H, I = a.hidden, a.intermediate
    return 4 * (H * H + H) + (H * I + I) + (I * H + H) + 2 * 2 * H


def parameters(a: Arch) -> dict[str, int]:
    """Parameters by part; the MLM decoder is the word embedding (tied), so only its bias counts."""
    E, H, V, W = a.embed, a.hidden, a.vocab, a.head_width
    return {"embeddings": (V + a.positions + a.types) * E + 2 * E,
            "projection": E * H + H if a.kind == "albert" else 0,
            "layers": a.weight_sets * layer_params(a),
            "pooler": H * H + H if a.sop_head else 0,
            "MLM head": H * W + W + 2 * W + V,
            "SOP head": 2 * H + 2 if a.sop_head else 0}


def largest_tensor(a: Arch) -> int:
    return max(a.vocab * a.embed, a.hidden * a.intermediate, a.hidden * a.hidden, a.positions * a.embed)


# ---- FLOPs --------------------------------------------------------------------------------------------
def labelled_positions(batch: int, seq: int) -> int:
    """MLM positions of a pretraining batch: round(15 %) of each sequence, at least one."""
    return batch * max(1, int(round(MLM_FRACTION * seq)))


def flops(a: Arch, batch: int, seq: int, train: bool = False, mlm_positions: int | None = None) -> dict[str, int]:
    """Matmul FLOPs of one forward or training step at (batch, seq), per op family; the benchmark's count too.

    Per token and layer run: 2·3H² (q, k, v), 2·2·S·H (q·kᵀ and P·v), 2H² (dense), 2·2HI (ffn, ffn_output).
    Once per token: 2EH (projection).  MLM head 2HE + 2EV at `mlm_positions` positions (default: every
    position in a forward, the labelled ones in a training step).  Once per sequence: 2H² (pooler) +
    2·2H (SOP classifier).  A training step is 3x the forward: the backward does twice its products.
    """
    N, R, H, W = batch * seq, a.runs, a.hidden, a.head_width
    if mlm_positions is not None:
        M = mlm_positions
    else:
        M = labelled_positions(batch, seq) if train else N
    forward = {"projection": 2 * N * a.embed * H if a.kind == "albert" else 0,
               "QKV": R * 2 * N * 3 * H * H,
               "scores": R * 2 * N * seq * H,
               "context": R * 2 * N * seq * H,
               "attention dense": R * 2 * N * H * H,
               "FFN": R * 2 * N * 2 * H * a.intermediate,
               "MLM head": 2 * M * (H * W + W * a.vocab),
               "pooler + SOP": 2 * batch * (H * H + 2 * H) if a.sop_head else 0}
    return {k: 3 * v for k, v in forward.items()} if train else forward


# ---- memory -------------------------------------------------------------------------------------------
Terms = list[tuple[int, int]]        # (number of arrays, elements each)


def _elements(terms: Terms) -> int:
    return sum(n * size for n, size in terms)


def run_cache(a: Arch, batch: int, seq: int) -> Terms:
    """The arrays one layer run caches for its backward (attention.py, feedforward.py, layer.py)."""
    rows = batch * seq
    return [(8, rows * a.hidden), (a.gelu_arrays, rows * a.intermediate),
            (1, batch * a.heads * seq * seq), (4, rows)]


def body_cache(a: Arch, batch: int, seq: int) -> Terms:
    """Everything the body's forward keeps for the backward: every run's cache, the last hidden state, and the
    embeddings' sum, LayerNorm output and row statistics (embeddings.py)."""
    rows = batch * seq
    return ([(a.runs * n, size) for n, size in run_cache(a, batch, seq)]
            + [(1, rows * a.hidden), (2, rows * a.embed), (2, rows)])


def heads_cache(a: Arch, batch: int, seq: int) -> Terms:
    """What the MLM head (at the labelled positions), its cross-entropy, the pooler and SOP head keep (heads.py)."""
    M, W = labelled_positions(batch, seq), a.head_width
    mlm = [(1, M * a.hidden), (a.gelu_arrays + 1, M * W), (2, M), (2, M * a.vocab)]
    return mlm + ([(2, batch * a.hidden), (4, batch)] if a.sop_head else [])


def _resident(phases: dict[str, Terms], itemsize: int) -> dict[str, int]:
    """Bytes resident in each phase (in time order): arrays up to HEAP_ARRAY_LIMIT come from the heap, which
    keeps its high-water mark (training's malloc policy keeps it on purpose, glibc's default keeps most of it);
    larger arrays are mapped and unmapped on their own."""
    resident, heap = {}, 0
    for name, terms in phases.items():
        small = sum(n * size for n, size in terms if size * itemsize <= HEAP_ARRAY_LIMIT)
        heap = max(heap, small)
        resident[name] = (heap + _elements(terms) - small) * itemsize
    return resident


def memory(a: Arch, batch: int, seq: int, itemsize: int, train: bool, stored_bytes: int = 0) -> dict:
    """Bytes this engine holds in a forward (train=False) or a training step with AdamW, phase by phase.

    stored_bytes: a weights file's tensors when they are converted on loading (float16 -> float32): the
    file's pages are mapped while the converted copies are made.
    """
    B, S, H, I, W, R = batch, seq, a.hidden, a.intermediate, a.head_width, a.runs
    rows, g = B * S, a.gelu_arrays
    bth, bti, probs = rows * H, rows * I, B * a.heads * S * S
    skinny = int(rows <= SKINNY_ROWS)       # linear_forward's transposed product: one more B·S·H in ffn_output
    weights = sum(parameters(a).values()) * itemsize
    out = {"weights": weights, "gradients": 0, "optimizer": 0}
    if not train:
        # while a layer runs, the previous run's cache is still referenced (its input is a hidden state)
        previous = [(7, bth), (g, bti), (1, probs), (4, rows)] if R > 1 else []
        attention = [(7, bth), (2, probs), (2, rows)]      # q k v, context, dense out, sum, output; scores, probs
        ffn = [(7 + skinny, bth), (1, probs), (2, rows), (1 + g, bti)]   # attention's arrays; FFN in, GELU, out
        kept = [(a.layers + 1, bth)]
        phases = {"a layer run": [(a.layers, bth)] + previous + max(attention, ffn, key=_elements),
                  "the MLM head": kept + [(g + 2, rows * W), (2, rows), (1, rows * a.vocab)]}
        transients = {"FFN intermediate (B·S·I)": bti, "attention scores (B·NH·S·S)": probs,
                      "MLM logits at every position (B·S·V)": rows * a.vocab}
        out.update(kept=_elements(kept) * itemsize, kept_what=f"the {a.layers + 1} hidden states a forward returns")
    else:
        M = labelled_positions(B, S)
        kept = body_cache(a, B, S) + heads_cache(a, B, S)
        # the backward of the first layer run, every cache still held: its attention part or its FFN part
        backward = max([(11, bth), (2, probs)], [(4, bth), (2, bti)], key=_elements)
        phases = {"the backward": kept + backward,
                  "the AdamW step": [(2, largest_tensor(a))]}    # a denominator and an update, tensor by tensor
        transients = {"FFN gradient (B·S·I)": bti, "scores gradient (B·NH·S·S)": probs,
                      "AdamW temporary (largest tensor)": largest_tensor(a), "MLM softmax (M·V)": M * a.vocab}
        out.update(gradients=weights, optimizer=2 * weights, kept=_elements(kept) * itemsize,
                   kept_what=f"{R} layer runs x {mib(_elements(run_cache(a, B, S)) * itemsize)}, embeddings, "
                             f"MLM head at {M} positions")
    fixed = out["weights"] + out["gradients"] + out["optimizer"]
    out["phases"] = {name: fixed + b for name, b in _resident(phases, itemsize).items()}
    if stored_bytes:
        out["phases"]["loading the file"] = weights + stored_bytes
    out["peak_phase"] = max(out["phases"], key=out["phases"].get)
    out["peak"] = out["phases"][out["peak_phase"]]
    name = max(transients, key=transients.get)
    out["transient"] = (name, transients[name] * itemsize)
    return out


# ---- measuring: matmul rate and the runtime's own memory, in a fresh process --------------------------
def probe(spec: dict) -> None:
    """Run in a fresh interpreter by `measure`: print {"gflops", "shape", "runtime_bytes"} as JSON."""
    import time

    import tinyalbert

    from .nn.linear import linear_forward

    tinyalbert.tune_process(training=spec["train"])     # as the programs whose memory this predicts run

    dtype = np.dtype(spec["dtype"]).type
    rows, k, n = spec["shape"]
    rng = np.random.default_rng(0)
    x, weight = rng.standard_normal((rows, k), dtype=dtype), rng.standard_normal((n, k), dtype=dtype)
    linear_forward(x, weight, None)                    # warm-up (BLAS threads and buffers)
    calls, start = 0, time.perf_counter()
    while calls < 3 or time.perf_counter() - start < spec["seconds"]:
        linear_forward(x, weight, None)
        calls += 1
    gflops = 2 * rows * k * n * calls / (time.perf_counter() - start) / 1e9
    del x, weight
    if spec["weights_file"]:            # what opening the file costs besides its tensors: HDF5, the tokenizer
        from .tokenizer import Tokenizer
        from .weights import load_params
        spiece = load_params(spec["weights_file"])[2]       # tensors memory-mapped and never touched
        tokenizer = spiece and Tokenizer(spiece)            # noqa: F841  (held, as a loaded model holds it)
    tiny = AlbertConfig(vocab_size=64, embedding_size=8, hidden_size=16, num_attention_heads=2, intermediate_size=32,
                        num_hidden_layers=2, max_position_embeddings=16, hidden_act=spec["hidden_act"])
    model = tinyalbert.Albert(tiny, tinyalbert.init_params(tiny, dtype=dtype))
    ids = np.arange(5, 13)[None]
    model.forward(ids)                                 # loads the forward's Numba kernels
    if spec["train"]:
        from .optim import AdamW
        labels = np.full_like(ids, -100)
        labels[0, 3] = 7
        AdamW(model.params).step(model.loss_and_grads(ids, None, None, labels, [0])[1])
    import psutil
    print(json.dumps({"gflops": gflops, "shape": [rows, k, n], "runtime_bytes": psutil.Process().memory_info().rss}))


def measure(a: Arch, batch: int, seq: int, dtype: str, train: bool, weights_file: str | None,
            seconds: float = 2.0) -> dict:
    """The matmul rate on the model's FFN shape (capped at 2048 x 4096 x 4096) and the runtime's RSS."""
    spec = {"dtype": dtype, "train": train, "weights_file": weights_file, "seconds": seconds,
            "hidden_act": "gelu_new" if a.gelu_tanh else "gelu",
            "shape": [min(batch * seq, 2048), min(a.hidden, 4096), min(a.intermediate, 4096)]}
    proc = subprocess.run([sys.executable, "-c", f"from tinyalbert.count import probe; probe({spec!r})"],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise CountError(f"the measuring process failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- reading the input --------------------------------------------------------------------------------
def resolve(spec: str) -> tuple[Arch, str | None]:
    """A preset, a BERT name, a config.json or a weights file -> (Arch, the file's storage dtype or None)."""
    key = spec.lower()
    if key in BERT_PRESETS:
        return Arch.bert(key), None
    if spec.endswith((".h5", ".hdf5")) or (os.path.isfile(spec) and not spec.endswith(".json")):
        from .weights import WeightsError, load_params
        try:
            config, params, _, attrs = load_params(spec)      # memory-mapped: nothing is read
        except WeightsError as e:
            raise CountError(str(e)) from None
        storage = next(iter(params.values())).dtype.name
        return Arch.albert(config, os.path.basename(spec), attrs["has_sop_head"]), storage
    try:
        config = AlbertConfig.from_name_or_file(spec)
    except (ValueError, TypeError, OSError) as e:
        raise CountError(f"{spec}: {str(e).splitlines()[0]}") from None
    preset = key.removeprefix("albert/").removeprefix("albert-").removesuffix("-v2")
    return Arch.albert(config, os.path.basename(spec) if os.path.isfile(spec) else f"ALBERT {preset}"), None


# ---- printing -----------------------------------------------------------------------------------------
def si(x: float, unit: str = "") -> str:
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}"
    return f"{x:.3g} {unit}".rstrip()


def mib(b: float) -> str:
    return f"{b / MIB:,.1f} MiB"


def table(header: list[str] | None, rows: list[list[str]], align: str = "") -> str:
    """Columns padded to their widest cell; align: one 'l' or 'r' per column (default: first left, rest right)."""
    rows = ([header] if header else []) + rows
    align = align or "l" + "r" * (len(rows[0]) - 1)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    def line(cells: list[str]) -> str:
        padded = (c.ljust(w) if al == "l" else c.rjust(w) for c, w, al in zip(cells, widths, align, strict=True))
        return ("  " + "  ".join(padded)).rstrip()
    return "\n".join(line(r) for r in rows)


def paper_note(a: Arch) -> str | None:
    """One line on the paper's figure for a preset: which convention gives it, or that none does."""
    key = next((k for k in PAPER_TABLE_1 if a.name.lower() in (k, f"albert {k}")), None)
    if key is None:
        return None
    found = paper_conventions(a, PAPER_TABLE_1[key])
    return (f"ALBERT paper, Table 1: {PAPER_TABLE_1[key]}M; " +
            (f"counted as: {'; '.join(CONVENTION_NAMES[c] for c in found)}" if found
             else "no counting convention gives it (python -m tinyalbert.count --paper)"))


def paper_conventions(a: Arch, figure: int) -> list[str]:
    counts = parameters(a)
    return [c for c, parts in CONVENTIONS.items() if round(sum(counts[p] for p in parts) / 1e6) == figure]


def paper_report() -> str:
    rows, verdicts, matched = [], {}, set()
    models = [(Arch.bert(n, v), n, v) for n in BERT_PRESETS for v in (30000, BERT_VOCAB)]
    models += [(Arch.albert(AlbertConfig.preset(n), f"ALBERT {n}"), n, 30000) for n in ("base", "large", "xlarge",
                                                                                       "xxlarge")]
    for a, key, vocab in models:
        counts, figure = parameters(a), PAPER_TABLE_1[key]
        totals = {c: sum(counts[p] for p in parts) for c, parts in CONVENTIONS.items()}
        found = paper_conventions(a, figure)
        rows.append([f"{a.name} (V={vocab})", f"{figure}M"] +
                    [f"{t / 1e6:.2f}" + (" *" if c in found else "  ") for c, t in totals.items()])
        matched.update([key] if found else [])
        near = min(totals, key=lambda c: abs(totals[c] - figure * 1e6))
        off = [(figure + half) - totals[near] / 1e6 for half in (-0.5, 0.5)]
        verdicts.setdefault(key, f"  {a.name}: {figure}M matches no convention; the nearest is "
                                 f"{totals[near] / 1e6:.2f}M ({CONVENTION_NAMES[near]}), {off[0]:+.2f}M to "
                                 f"{off[1]:+.2f}M away")
    legend = "\n".join(f"  {c:<8} {name}" for c, name in CONVENTION_NAMES.items())
    return ("The ALBERT paper's Table 1 (millions of parameters) against this count, by convention "
            "(* = rounds to the paper's figure):\n" + table(["model", "paper"] + list(CONVENTIONS), rows) +
            "\n" + legend + "\n" + "\n".join(v for k, v in verdicts.items() if k not in matched) +
            "\n  BERT has no E -> H projection; the paper's BERT vocabulary is not stated (30000 = ALBERT's, "
            f"{BERT_VOCAB} = Google's BERT).")


def parameter_report(a: Arch) -> str:
    archs = [a, a.unshared(), a.bert_twin()] if a.kind == "albert" else [a]
    counts = [parameters(x) for x in archs]
    rows = [[part] + [f"{c[part]:,}" for c in counts] for part in counts[0]]
    rows.append(["total"] + [f"{sum(c.values()):,}" for c in counts])
    rows.append(["layer weight sets"] + [f"{x.weight_sets} for {x.runs} runs" for x in archs])
    note = paper_note(a)
    return "Parameters\n" + table([""] + [x.name for x in archs], rows) + (f"\n  {note}" if note else "")


def flops_report(a: Arch, batch: int, seq: int, measured: dict | None) -> str:
    fwd, step = flops(a, batch, seq), flops(a, batch, seq, train=True)
    tf, ts = sum(fwd.values()), sum(step.values())
    rows = [[k, si(fwd[k] / batch), f"{100 * fwd[k] / tf:.1f}%", si(step[k] / batch), f"{100 * step[k] / ts:.1f}%"]
            for k in fwd]
    rows.append(["total", si(tf / batch), "", si(ts / batch), ""])
    text = (f"FLOPs per sequence (matrix products; a training step is 3x a forward and runs the MLM head at "
            f"{labelled_positions(1, seq)} labelled positions per sequence)\n"
            + table(["", "forward", "", "training step", ""], rows))
    if measured:
        rate, shape = measured["gflops"], " x ".join(map(str, measured["shape"]))
        text += (f"\n  Time at {rate:.0f} GFLOP/s (measured: a {shape} matmul in a fresh process), batch {batch}: "
                 f"forward {tf / rate / 1e9:.2f} s, training step {ts / rate / 1e9:.2f} s (matrix products only; "
                 "the other ops come on top)")
    return text


def memory_report(a: Arch, batch: int, seq: int, itemsize: int, train: bool, stored: int,
                  runtime: int | None) -> str:
    m = memory(a, batch, seq, itemsize, train, stored)
    rows = [["weights", mib(m["weights"]), ""]]
    if train:
        rows += [["gradients", mib(m["gradients"]), ""], ["AdamW moments", mib(m["optimizer"]), "2 per weight"]]
    rows += [["activations kept" if train else "hidden states kept", mib(m["kept"]), m["kept_what"]],
             ["largest transient buffer", mib(m["transient"][1]), m["transient"][0]]]
    rows += [[f"tensors during {name}", mib(b), "the peak" if name == m["peak_phase"] else ""]
             for name, b in m["phases"].items()]
    if runtime:
        rows.append(["+ runtime", mib(runtime), "measured: interpreter, NumPy, Numba kernels, BLAS buffers"])
        rows.append(["= estimated peak RSS", mib(m["peak"] + runtime), ""])
    else:
        rows.append(["+ runtime", "not measured", "the interpreter's, NumPy's, Numba's own memory (--no-measure)"])
    what = "a training step with AdamW" if train else "a forward"
    text = (f"Memory of {what} at batch {batch} x seq {seq}, {itemsize * 8}-bit floats\n"
            + table(None, rows, align="lrl"))
    if train:
        text += ("\n  A loop that still holds the previous step's gradients while computing the next holds "
                 f"{mib(m['gradients'])} more.")
    return text


def versus_report(a: Arch, b: Arch, batch: int, seq: int, itemsize: int, rate: float | None) -> str:
    rows = []
    pa, pb = sum(parameters(a).values()), sum(parameters(b).values())
    fa, fb = sum(flops(a, batch, seq).values()), sum(flops(b, batch, seq).values())
    ffn_a, ffn_b = 4 * a.hidden * a.intermediate, 4 * b.hidden * b.intermediate
    ma, mb = memory(a, batch, seq, itemsize, True), memory(b, batch, seq, itemsize, True)

    def row(label: str, x, y, ratio: float | None = None) -> None:
        rows.append([label, str(x), str(y), "" if ratio is None else f"{ratio:.2f}x"])

    row("hidden size H", a.hidden, b.hidden, a.hidden / b.hidden)
    row("FFN size I", a.intermediate, b.intermediate, a.intermediate / b.intermediate)
    row("layer runs", a.runs, b.runs, a.runs / b.runs)
    row("layer weight sets", a.weight_sets, b.weight_sets)
    row("parameters", f"{pa:,}", f"{pb:,}", pa / pb)
    row("FFN FLOPs per token, one layer run", si(ffn_a), si(ffn_b), ffn_a / ffn_b)
    row("FFN FLOPs per token, all runs", si(ffn_a * a.runs), si(ffn_b * b.runs), ffn_a * a.runs / (ffn_b * b.runs))
    row(f"forward FLOPs per sequence (seq {seq})", si(fa / batch), si(fb / batch), fa / fb)
    row("training step FLOPs per sequence", si(3 * fa / batch), si(3 * fb / batch), fa / fb)
    row(f"activations kept for the backward (batch {batch})", mib(ma["kept"]), mib(mb["kept"]),
        ma["kept"] / mb["kept"])
    row("weights + gradients + AdamW", mib(4 * ma["weights"]), mib(4 * mb["weights"]), ma["weights"] / mb["weights"])
    row("peak tensors, training step", mib(ma["peak"]), mib(mb["peak"]), ma["peak"] / mb["peak"])
    if rate:
        row(f"forward time at {rate:.0f} GFLOP/s", f"{fa / rate / 1e9:.2f} s", f"{fb / rate / 1e9:.2f} s", fa / fb)
    why = (f"  {a.name} stores {pa / pb:.2f}x the parameters of {b.name} but computes {fa / fb:.1f}x the FLOPs: "
           f"parameters count a weight set once, FLOPs count every use.  Its FFN does "
           f"{ffn_a / ffn_b:.0f}x the work per token and layer run (H {a.hidden} vs {b.hidden}, I {a.intermediate} "
           f"vs {b.intermediate}), applied {a.runs} times against {b.runs}; and each run caches "
           f"{_elements(run_cache(a, batch, seq)) / _elements(run_cache(b, batch, seq)):.1f}x the activations "
           f"for the backward.")
    # activations grow with the batch, weights do not: find where the order of the training peaks flips
    def a_needs_more(n: int) -> bool:
        return memory(a, n, seq, itemsize, True)["peak"] > memory(b, n, seq, itemsize, True)["peak"]

    flip = next((n for n in range(batch + 1, 4097) if a_needs_more(n) != a_needs_more(batch)), None)
    if flip:
        why += (f"\n  From batch {flip} x seq {seq} on, {a.name if ma['peak'] <= mb['peak'] else b.name}'s training "
                f"step needs the more memory: the activations outgrow the difference in weights.")
    return (f"{a.name} against {b.name}\n" + table(["", a.name, b.name, "ratio"], rows) + "\n" + why)



def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(
        prog="python -m tinyalbert.count",
        description="Parameters, FLOPs, memory and time of an ALBERT (or BERT), before running it: parameters by "
                    "part (shared, unshared and next to BERT of the same H, I, L), matmul FLOPs per op family for "
                    "a forward and a training step, the memory this engine holds (weights, gradients, AdamW, the "
                    "activations the backward keeps, the largest transient buffer, the peak) and a time estimate "
                    "from this machine's measured matmul rate.",
        epilog="Method and the checks against measured peaks: the module docstring (tinyalbert/count.py) and "
               "README.md, section 'See inside'.")
    parser.add_argument("model", nargs="?", help="a preset (base, large, xlarge, xxlarge; bert-base, bert-large), a "
                                                 "config.json, or a tinyalbert weights file (.h5)")
    parser.add_argument("--batch", type=int, default=1, help="sequences per batch (default 1)")
    parser.add_argument("--seq", type=int, default=128, help="tokens per sequence (default 128)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                        help="compute dtype (default float32)")
    parser.add_argument("--train", action="store_true",
                        help="memory of a training step with AdamW instead of a forward")
    parser.add_argument("--vs", metavar="MODEL", help="compare side by side with another model (e.g. bert-large)")
    parser.add_argument("--no-measure", action="store_true",
                        help="skip the few seconds of measuring (matmul rate, runtime memory): no time estimate, "
                             "and the peak is given for the tensors alone")
    parser.add_argument("--paper", action="store_true",
                        help="print the ALBERT paper's Table 1 figures against every counting convention")

    args = parser.parse_args(argv)
    with CommandErrors((CountError,)) as status:
        if args.batch < 1 or args.seq < 1:
            raise CountError("--batch and --seq must be at least 1")
        if args.model is None:
            if not args.paper:
                raise CountError("name a model (a preset, a config.json or a weights file), or give --paper")
            print(paper_report())
            return 0
        a, storage = resolve(args.model)
        if a.kind == "albert" and args.seq > a.positions:
            raise CountError(f"--seq {args.seq} is longer than the model's {a.positions} positions")
        other = resolve(args.vs)[0] if args.vs else None
        itemsize = np.dtype(args.dtype).itemsize
        # a file in another dtype is converted on loading, while its own pages are mapped
        stored = sum(parameters(a).values()) * np.dtype(storage).itemsize if storage not in (None, args.dtype) else 0
        measured = None if args.no_measure else measure(a, args.batch, args.seq, args.dtype, args.train,
                                                        weights_file=args.model if storage else None)
        parts = [a.describe() + f"; batch {args.batch} x seq {args.seq}, {args.dtype}", parameter_report(a),
                 flops_report(a, args.batch, args.seq, measured),
                 memory_report(a, args.batch, args.seq, itemsize, args.train, stored,
                               measured and measured["runtime_bytes"])]
        if other:
            parts.append(versus_report(a, other, args.batch, args.seq, itemsize, measured and measured["gflops"]))
        if args.paper:
            parts.append(paper_report())
        print("\n\n".join(parts))
    return status.exit_code


if __name__ == "__main__":
    sys.exit(main())
