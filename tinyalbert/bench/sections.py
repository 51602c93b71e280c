"""The benchmark's sections; each measures its lines and adds them to the run (`Run.add`)."""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import warnings
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from ..nn.config import AlbertConfig
from .measure import TABLE_HEADER, StepWorker, interleave, model_flops, numpy_mix_rate, value_line
from .worker import make_batch, run_model

if TYPE_CHECKING:
    from .run import Run

MIB = 2 ** 20


def hf_config_dict(c: AlbertConfig) -> dict[str, Any]:
    """The config for transformers.AlbertConfig, every dropout 0: both sides compute the same function."""
    return {**c.to_dict(), "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
            "classifier_dropout_prob": 0.0}


def torch_model(run: Run, config: AlbertConfig, params: dict[str, np.ndarray], attn: str, sop_head: bool = True):
    """transformers' model for `config` whose parameters ARE `params` (torch.from_numpy views, no copy)."""
    transformers = run.transformers
    model_class = transformers.AlbertForPreTraining if sop_head else transformers.AlbertForMaskedLM
    model = model_class(transformers.AlbertConfig(**hf_config_dict(config), attn_implementation=attn)).eval()
    if model.config._attn_implementation != attn:
        raise RuntimeError(f"transformers chose attention {model.config._attn_implementation!r}, not {attn!r}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")         # read-only (memory-mapped) arrays warn; nothing writes them
        state = {name: run.torch.from_numpy(array) for name, array in params.items()}
    state.update({"predictions.decoder.weight": state["albert.embeddings.word_embeddings.weight"],
                  "predictions.decoder.bias": state["predictions.bias"]})
    model.load_state_dict(state, assign=True)   # strict: a missing, extra or misshaped tensor raises
    model.tie_weights()                         # assign untied them: the decoder shares the embeddings again
    return model


def header(title: str) -> None:
    print(f"\n== {title}\n{TABLE_HEADER}", flush=True)


def rel_diff(a: Any, b: Any) -> float:
    """max |a - b| / max |b|."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def model_line(run: Run, line_id: str, title: str, sides: dict[str, Callable], group: str, c: AlbertConfig,
               shape: tuple[int, int, int | None], metrics: dict[str, Callable], notes: list[str], **options) -> dict:
    """A model line at shape (B, S, M), M the MLM positions of a training step or None for a forward: the sides
    timed (`interleave` with `options`), and `check`: {metric: {torch side: fn(its first output, tinyalbert's)}}."""
    (B, S, M), repeats = shape, run.xrepeats if group == "xxl" else run.repeats
    samples, first = interleave(sides, repeats, max(1, run.warmup), **options)
    ours = first.pop("tinyalbert")
    check = {metric: {side: fn(out, ours) for side, out in first.items()} for metric, fn in metrics.items()}
    if any(check.values()):
        notes.append("the sides agree (first outputs, same weights and batch): " + "; ".join(
            f"{metric} " + ", ".join(f"{v:.1e} ({side})" for side, v in by_side.items())
            for metric, by_side in check.items()))
    return value_line(line_id, line_id.split(".")[0], title, samples, flops=model_flops(c, B, S, M, M is not None),
                      mix_rate=numpy_mix_rate(run.np_rates.get(group), c, M is not None), batch=B, seq=S,
                      mlm_positions=M, check=check, notes=notes)


def section_matmul(run: Run) -> None:
    header("matmul: fp32 GEMM rate, numpy (OpenBLAS) vs torch")
    rng = np.random.default_rng(0)
    for group, c, name in (("xxl", run.xxl, run.xxl_name), ("bundled", run.bundled, "bundled")):
        M, H, I = run.gemm_rows[group], c.hidden_size, c.intermediate_size
        # (key, label, left and right operand shapes, transposed or not): x·Wᵀ in the Linear layout, dyᵀ·x, H³
        layers = {"qkvo": (H, H, "q,k,v,dense"), "ffn_in": (H, I, "ffn"), "ffn_out": (I, H, "ffn_output")}
        shapes = [(k, f"{M}x{i} @ ({o}x{i})T  {n}", (M, i), (o, i), False, True) for k, (i, o, n) in layers.items()]
        shapes += [(f"dw_{k}", f"({M}x{o})T @ {M}x{i}  dW {n}", (M, o), (M, i), True, False)
                   for k, (i, o, n) in layers.items()]
        shapes += [("square", f"{H}x{H} @ {H}x{H}", (H, H), (H, H), False, False)] if group == "xxl" else []
        run.np_rates[group] = {}
        for key, label, left_shape, right_shape, left_t, right_t in shapes:
            a, b = (rng.standard_normal(shape, dtype=np.float32) for shape in (left_shape, right_shape))
            a, b = (a.T if left_t else a), (b.T if right_t else b)
            out = np.empty((a.shape[0], b.shape[1]), dtype=np.float32)
            sides: dict[str, Callable] = {"numpy": partial(np.matmul, a, b, out=out)}
            if run.torch:                                 # on the same memory, the same strides
                sides["torch"] = partial(run.torch.matmul, *map(run.torch.from_numpy, (a, b)),
                                         out=run.torch.from_numpy(out))
            once, _ = interleave(sides, 1, 1)   # calls per sample: so that a sample takes 0.3 s (0.02 s in --smoke)
            fastest = min(s["values"][0] for s in once.values())
            calls = min(1000, max(1, round((0.02 if run.smoke else 0.3) / max(fastest, 1e-6))))
            samples, _ = interleave(sides, run.repeats, run.warmup, inner=calls)
            flops = 2.0 * a.shape[0] * b.shape[1] * a.shape[1]
            rate = run.np_rates[group][key] = flops / statistics.median(samples["numpy"]["values"]) / 1e9
            run.add(value_line(f"matmul.{group}.{key}", "matmul", f"{name} GEMM {label}", samples, flops=flops,
                               mix_rate=rate, ours="numpy", calls_per_sample=calls,
                               shape={"m": a.shape[0], "n": b.shape[1], "k": a.shape[1]}))


def model_lines(run: Run, training: bool) -> None:
    """The xxlarge forward or training-step lines: both sides in this process, on the same arrays."""
    from ..nn.model import Albert
    from ..nn.params import layer_prefix

    c, kind, ffn = run.xxl, "train" if training else "forward", layer_prefix(0, 0) + "ffn.weight"
    header(f"{kind}: {run.xxl_name} " + ("training step (MLM 15% + SOP, forward + backward, no optimizer)"
                                         if training else "forward (random weights), torch under inference_mode"))
    models = {"tinyalbert": Albert(c, run.xxl_params), **run.xxl_torch}

    def free_grads(side: str = "") -> None:    # before every call: no side runs beside another's 0.9 GB of grads
        for m in run.xxl_torch.values():
            m.zero_grad(set_to_none=True)

    def first_output(side: str, out: tuple) -> Any:    # what the sides' agreement is checked on
        if not training:
            return np.asarray(out[1].mlm_logits if side == "tinyalbert" else out[1].prediction_logits)
        grad = out[1][ffn] if side == "tinyalbert" else models[side].get_parameter(ffn).grad.numpy()
        return out[0], grad.copy()
    metrics = {"loss_abs_diff": lambda a, b: abs(a[0] - b[0]),
               "ffn_weight_grad_max_rel_diff": lambda a, b: rel_diff(a[1], b[1])} if training else {
        "mlm_logits_max_rel_diff": rel_diff}
    for B, S in run.train_shapes if training else run.forward_shapes:
        batch = make_batch(B, S, c.vocab_size)
        M = int((batch[3] != -100).sum()) if training else None
        # worker.run_model, the workers' code, in this process: a training step's gradients are freed after the timer
        sides = {name: partial(run_model, name.split("-")[0], m, batch, training) for name, m in models.items()}
        title = f"{run.xxl_name} train step B={B} S={S} (M={M})" if training else f"{run.xxl_name} forward B={B} S={S}"
        run.add(model_line(run, f"{kind}.b{B}s{S}", title, sides, "xxl", c, (B, S, M), metrics, [], before=free_grads,
                           keep_first=first_output))
    free_grads()


def fresh_lines(run: Run, specs: dict[str, dict], command: str, repeats: int, warmup: int,
                lines: list[tuple[str, str, str, str]], notes: list[str], **extra) -> None:
    """Lines (id, answer field, unit, title) measured by a fresh worker per side and repeat, interleaved, that
    answers one `command` and ends.  The first line gets the notes, every line the workers' answers."""
    runs: dict[str, list[dict]] = {name: [] for name in specs}

    def run_once(name: str) -> None:
        worker = StepWorker(name, specs[name], run.tmp)
        answer = worker.request(command)
        runs[name].append({**worker.opened, **answer, "open_forward_s": worker.opened["open_s"] + answer["seconds"]})
        worker.close()
    samples, _ = interleave({name: partial(run_once, name) for name in specs}, repeats, warmup)
    runs = {name: answers[warmup:] for name, answers in runs.items()}
    for i, (line_id, field, unit, title) in enumerate(lines):
        sides = {n: {"values": [r[field] for r in rs], "foreign": samples[n]["foreign"]} for n, rs in runs.items()}
        run.add(value_line(line_id, line_id.split(".")[0], title, sides, unit=unit, runs=runs,
                           notes=notes if i == 0 else [], **extra))


def section_train(run: Run) -> None:
    model_lines(run, training=True)
    for B, S in run.train_shapes[:1] if run.smoke else run.train_shapes:     # peak RSS: a fresh process per side
        spec = {"batch": B, "seq": S, "threads": run.threads}
        specs = {"tinyalbert": {**spec, "side": "tinyalbert", "config": run.xxl.to_dict()}}
        specs.update({f"torch-{a}": {**spec, "side": "torch", "attn": a, "config": hf_config_dict(run.xxl)}
                      for a in run.attns if run.torch})
        title = f"{run.xxl_name} train step B={B} S={S}: peak RSS (ru_maxrss) of a fresh process (model + 1 step)"
        fresh_lines(run, specs, "step", run.args.rss_repeats, 0, [(f"train_rss.b{B}s{S}", "maxrss_mib", "MiB", title)],
                    ["the torch processes import no tinyalbert or Numba"], batch=B, seq=S)


def section_bundled(run: Run) -> None:
    """The bundled config's training step, each side in a worker process of its own: in a shared process
    torch would inherit tinyalbert's malloc policy (memory.py) and the heap earlier sections grew, which
    changes its many small allocations' cost by up to 15 % (docs/performance.md)."""
    from ..nn.params import init_params
    from ..weights import save

    c, (B, S) = run.bundled, run.bundled_shape
    header(f"bundled: training step of the bundled model's config (H={c.hidden_size} I={c.intermediate_size} "
           f"L={c.num_hidden_layers} V={c.vocab_size}) at B={B} S={S}, each side in a process of its own")
    params, spec = init_params(c, seed=0, dtype=np.float32), {"batch": B, "seq": S, "threads": run.threads}
    save(run.tmp / "bundled.h5", c, params)
    specs = {"tinyalbert": {**spec, "side": "tinyalbert", "path": str(run.tmp / "bundled.h5"), "mmap": False}}
    if run.torch:
        torch_model(run, c, params, "eager").save_pretrained(run.tmp / "bundled-hf")
        specs.update({f"torch-{a}": {**spec, "side": "torch", "attn": a, "path": str(run.tmp / "bundled-hf")}
                      for a in run.attns})
    notes = [f"config: {run.bundled_path}; random weights, saved by each library for its worker to load"]
    workers: dict[str, StepWorker] = {}
    try:
        for name, worker_spec in specs.items():
            workers[name] = StepWorker(name, worker_spec, run.tmp)
        line = model_line(run, "bundled.train", f"bundled config train step B={B} S={S}",
                          {name: (lambda w=w: w.request("step")["loss"]) for name, w in workers.items()}, "bundled",
                          c, (B, S, int((make_batch(B, S, c.vocab_size)[3] != -100).sum())),
                          {"loss_abs_diff": lambda a, b: abs(a - b)}, notes,
                          before=lambda name: workers[name].request("prepare"),
                          workers=tuple(w.process for w in workers.values()))
    finally:
        for w in workers.values():
            w.close()
    for s in line["sides"].values():
        s["tokens_per_s"] = B * S / s["median"] if s["median"] else None
    line["throughput_ratio"] = line["ratio"] and 1 / line["ratio"]         # tinyalbert's tokens/s / the reference's
    notes.append("tokens/s: " + ", ".join(f"{n} {s['tokens_per_s'] or 0:.0f}" for n, s in line["sides"].items()))
    run.add(line)


def section_load(run: Run) -> None:
    from ..nn.params import has_sop_head
    from ..weights import load_params, save

    S = run.load_seq
    header(f"load: open a converted {run.xxl_name} file and run a forward at seq {S}, fresh processes, page cache warm")
    if run.args.xxlarge_file:
        path = Path(run.args.xxlarge_file)
        config, params, _, _ = load_params(path, dtype=np.float32)
    else:
        path, config, params = run.tmp / f"{run.xxl_name}.h5", run.xxl, run.xxl_params
        save(path, config, params)
    notes = [f"file: {path}; torch: from_pretrained of a save_pretrained (safetensors) folder of the same weights"]
    spec = {"seq": S, "batch": 1, "threads": run.threads}
    specs = {"tinyalbert": {**spec, "side": "tinyalbert", "path": str(path)}}
    if run.torch:
        sop_head, hf_dir = has_sop_head(params), run.tmp / f"{run.xxl_name}-hf"
        torch_model(run, config, params, "sdpa", sop_head).save_pretrained(hf_dir)
        specs["torch"] = {**spec, "side": "torch", "path": str(hf_dir),
                          "model_class": "AlbertForPreTraining" if sop_head else "AlbertForMaskedLM"}
    fresh_lines(run, specs, "forward", run.sub_repeats, run.sub_warmup, [
        ("load.import", "import_s", "s", "import (tinyalbert; torch + transformers + model class)"),
        ("load.open", "open_s", "s", "open the converted file (weights.load vs from_pretrained)"),
        ("load.open_forward", "open_forward_s", "s", f"open + first forward B=1 S={S}"),
        ("load.peak_rss", "maxrss_mib", "MiB", f"peak RSS (ru_maxrss) after open + forward B=1 S={S}")],
        notes)


def section_predict(run: Run) -> None:
    header("predict: python -m tinyalbert.predict on the bundled model, wall time incl. interpreter start and imports")
    cmd = [sys.executable, "-m", "tinyalbert.predict", "--weights", run.bundled_path,
           "The man went to the [MASK] to buy some milk."]
    warm_cache, notes_printed = tempfile.mkdtemp(dir=run.tmp), {"cold": [], "warm": []}

    def once(kind: str) -> None:           # cold: a new, empty Numba cache; warm: the one the warm-up run filled
        cache = tempfile.mkdtemp(dir=run.tmp) if kind == "cold" else warm_cache
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "NUMBA_CACHE_DIR": cache})
        if proc.returncode != 0:
            raise RuntimeError(f"predict failed (exit {proc.returncode}): {proc.stderr.strip()[-300:]}")
        notes_printed[kind].append("first run" in proc.stderr)
    samples, _ = interleave({kind: partial(once, kind) for kind in notes_printed}, 1 if run.smoke else run.repeats, 1)
    for kind, printed in notes_printed.items():
        note = f"model: {run.bundled_path}; 'first run, compiling' printed in {sum(printed[1:])} of {len(printed[1:])}"
        line = value_line(f"predict.{kind}", "predict", f"predict wall time, {kind} Numba cache",
                          {"tinyalbert": samples[kind]}, notes=[note])
        line["cold_note_printed"] = all(printed[1:]) if kind == "cold" else None
        run.add(line)


SECTIONS: dict[str, Callable[[Run], None]] = {
    "matmul": section_matmul, "forward": partial(model_lines, training=False), "train": section_train,
    "bundled": section_bundled, "load": section_load, "predict": section_predict}
