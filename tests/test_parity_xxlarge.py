"""Parity with the reference on the full-size architecture: albert-xxlarge-v2's exact config.

transformers' AlbertForMaskedLM is built with AlbertConfig() (whose defaults are xxlarge-v2: H=4096,
E=128, 64 heads, I=16384, 12 applications of one shared layer, V=30000; 223M parameters), eager
attention, random float32 weights.  It is saved with save_pretrained twice (model.safetensors and
pytorch_model.bin) next to the genuine spiece.model, and both are converted with the CLI.  Then:

  * every parameter of both converted files is bit-identical to the torch state dict;
  * every hidden state (the projected embeddings and all 12 layer applications) matches torch's
    (output_hidden_states) at rel = max|a - b| / max|b| <= 1e-4, on a padded batch of short sentences;
  * fill_mask gives the fill-mask pipeline's top-5: the same ids in the same order, the same strings,
    scores within 1e-5.

Why some tensors are scaled after the standard init (std 0.02).  With that init the xxlarge model is
nearly degenerate: each of the 12 applications of the shared layer averages the positions (nearly
flat attention whose output outweighs the residual), so the spread of the last hidden state across
positions is ~1e-4 of its size.  Every position and every sentence then gets the same top tokens,
and a max-norm error of 1e-4 could not see a wrong context-dependent part at all.  The MLM logits
have std ~0.2, so the top-5 scores are ~8e-5 each: a 1e-5 score tolerance would test nothing, and
two masks of one sentence get scores equal to 1e-7, i.e. ids tied at the tolerance.  So:
  * attention query and key weights x2 (std 0.04): sharper, context-dependent attention;
  * attention output dense x0.25 (std 0.005): the residual path carries each position through, and
    the last hidden state keeps ~20% of its spread across positions (measured: 0.18 vs 0.0003);
  * MLM head LayerNorm weight x16: logits spread (std ~3), top-1 scores ~0.05-0.4, so scores are
    compared where they are large, and consecutive top-6 logits are >= 1e-2 apart (printed), far
    above the float32 differences, so the ids are unambiguous.
Tolerances are not loosened: a real error (wrong formula, wrong tensor) shows at 1e-2 or worse.

Cost (2-core machine shared with other jobs, load ~5): ~2 minutes, peak RSS ~2.1 GB (printed with -s).
The big files (3.6 GB) are deleted when the module ends.
"""
from __future__ import annotations

import gc
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from transformers import AlbertTokenizer

import tinyalbert
from tinyalbert import weights
from tinyalbert.predict import fill_mask_batch
from tinyalbert.tokenizer import ALBERT_VOCAB

pytestmark = pytest.mark.slow      # a 223M-parameter model, written, converted twice and run: minutes

PACKAGE_ROOT = str(Path(tinyalbert.__file__).resolve().parent.parent)
TIED = {"predictions.decoder.weight": "albert.embeddings.word_embeddings.weight",
        "predictions.decoder.bias": "predictions.bias"}
HIDDEN_TOL = 1e-4
SCORE_TOL = 1e-5
MAX_TOKENS = 16
SENTENCES = [
    "The capital of France is [MASK].",
    "The man went to the [MASK] to buy some milk.",
    "She [MASK] the ball over the [MASK] fence.",           # two masks
    "Héllo wörld, 9,000 [MASK] live here.",
]

transformers.logging.set_verbosity_error()


def _rss_peak_gb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 2**20     # Linux: kilobytes


def _convert_cli(src: Path, out: Path) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = PACKAGE_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run([sys.executable, "-m", "tinyalbert.convert", str(src), str(out), "--no-progress"],
                            capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr


def _bit_mismatches(path: Path, state: dict[str, torch.Tensor]) -> list[str]:
    """Names of the parameters of `path` that are not bit-identical to the torch state dict (or missing/extra)."""
    _, params, spiece, _ = weights.load_params(path, dtype=None)        # memory-mapped: nothing read yet
    problems = []
    expected = {k for k in state if k not in TIED}
    if set(params) != expected:
        problems.append(f"names differ: missing {sorted(expected - set(params))}, "
                        f"extra {sorted(set(params) - expected)}")
    for name in sorted(expected & set(params)):
        ours, ref = params[name], state[name].detach().numpy()
        if ours.dtype != np.float32 or ours.shape != ref.shape or not np.array_equal(
                ours.view(np.uint32), ref.view(np.uint32)):
            problems.append(name)
    for dup, target in TIED.items():    # the tied duplicates are what we store under the target's name
        if dup in state and target in params and not np.array_equal(params[target].view(np.uint32),
                                                                     state[dup].detach().numpy().view(np.uint32)):
            problems.append(f"{dup} (tied to {target})")
    if spiece != ALBERT_VOCAB.read_bytes():
        problems.append("spiece_model")
    del params
    gc.collect()                        # drop the memory map before the next file
    return problems


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), np.finfo(np.float64).tiny))


@pytest.fixture(scope="module")
def parity(tmp_path_factory):
    start = time.perf_counter()
    timings: dict[str, float] = {}
    tick = [start]

    def lap(name: str) -> None:
        now = time.perf_counter()
        timings[name] = now - tick[0]
        tick[0] = now

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("xxlarge")
    res: dict = {"timings": timings}
    try:
        # ---- the reference model, saved twice --------------------------------------------------------
        torch.manual_seed(0)
        config = transformers.AlbertConfig(attn_implementation="eager")
        assert (config.hidden_size, config.embedding_size, config.num_attention_heads, config.intermediate_size,
                config.num_hidden_layers, config.vocab_size, config.hidden_act) == \
            (4096, 128, 64, 16384, 12, 30000, "gelu_new"), "AlbertConfig() defaults are no longer xxlarge-v2"
        model = transformers.AlbertForMaskedLM(config).eval()
        assert model.config._attn_implementation == "eager"
        layer = model.albert.encoder.albert_layer_groups[0].albert_layers[0]
        with torch.no_grad():           # see the module docstring
            layer.attention.query.weight.mul_(2.0)
            layer.attention.key.weight.mul_(2.0)
            layer.attention.dense.weight.mul_(0.25)
            model.predictions.LayerNorm.weight.mul_(16.0)
        assert all(p.dtype == torch.float32 for p in model.parameters())
        lap("build torch model")
        dirs = {"safetensors": root / "hf-safetensors", "bin": root / "hf-bin"}
        for fmt, d in dirs.items():
            model.save_pretrained(d, safe_serialization=(fmt == "safetensors"))
            shutil.copy(ALBERT_VOCAB, d / "spiece.model")
        assert (dirs["safetensors"] / "model.safetensors").is_file()
        assert (dirs["bin"] / "pytorch_model.bin").is_file()
        lap("save_pretrained x2")

        # ---- reference outputs -------------------------------------------------------------------
        tok = AlbertTokenizer(vocab_file=str(ALBERT_VOCAB))
        enc = tok(SENTENCES, padding=True, return_tensors="pt")
        lengths = enc["attention_mask"].sum(1).tolist()
        assert max(lengths) <= MAX_TOKENS, lengths
        with torch.no_grad():
            out = model(**enc, output_hidden_states=True)
        res["input_ids"] = enc["input_ids"].numpy()
        res["attention_mask"] = enc["attention_mask"].numpy()
        res["ref_hidden"] = [h.numpy().copy() for h in out.hidden_states]
        res["ref_logits"] = out.logits.numpy().copy()
        del out
        lap("torch forward")
        pipe = transformers.pipeline("fill-mask", model=model, tokenizer=tok, framework="pt", device="cpu")
        res["ref_fill"] = [pipe(text, top_k=5) for text in SENTENCES]
        del pipe
        lap("fill-mask pipeline")

        # ---- convert both files with the CLI, compare every parameter bit for bit ------------------
        state = model.state_dict()
        res["mismatches"], res["n_params"] = {}, len(state) - len(TIED)
        for fmt, d in dirs.items():
            h5 = root / f"xxlarge-{fmt}.h5"
            _convert_cli(d, h5)
            lap(f"convert {fmt} (CLI)")
            res["mismatches"][fmt] = _bit_mismatches(h5, state)
            lap(f"bit check {fmt}")
        del state, model
        gc.collect()                    # the torch model goes before ours is loaded
        shutil.rmtree(dirs["safetensors"])
        shutil.rmtree(dirs["bin"])

        # ---- tinyalbert: memory-mapped; one forward serves both checks ----------------------------
        # fill_mask_batch runs all sentences as one padded batch (sorted by length).  A spy on forward
        # keeps that batch's hidden states, so the hidden-state check needs no second forward (each
        # costs ~10-20 s here; many times that on a busy machine).
        ours = weights.load(root / "xxlarge-safetensors.h5")
        calls = []

        def spy(input_ids, *args, real_forward=ours.forward, **kwargs):
            out = real_forward(input_ids, *args, **kwargs)
            calls.append((np.array(input_ids), np.array(kwargs.get("attention_mask")), out))
            return out

        ours.forward = spy
        res["our_fill"] = fill_mask_batch(ours, SENTENCES, top_k=5, batch_size=len(SENTENCES))
        lap("tinyalbert fill_mask_batch")
        assert len(calls) == 1, f"{len(calls)} forward calls"
        ids, mask, out = calls[0]
        # the row of our batch that holds each sentence (same ids, same padding as the tokenizer's batch)
        order = [next(j for j in range(len(ids)) if np.array_equal(ids[j], row)) for row in res["input_ids"]]
        assert sorted(order) == list(range(len(SENTENCES)))
        assert np.array_equal(mask[order], res["attention_mask"])
        res["our_hidden"] = [h[order] for h in out.hidden_states]
        res["our_logits"] = out.mlm_logits[order]
        calls.clear()                   # the spy and its list go with the model: 3.6 GB of activations freed
        del ours, spy, out
        gc.collect()
        yield res
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(root, ignore_errors=True)
        total = time.perf_counter() - start
        # (The converter subprocesses are not reported: Linux counts the pages a child inherits from
        # this process before exec in its ru_maxrss, so that figure would say nothing.)
        print(f"\n--- xxlarge parity: {total:.1f} s wall in all; peak RSS of this process "
              f"{_rss_peak_gb(resource.RUSAGE_SELF):.2f} GB")
        for name, seconds in timings.items():
            print(f"    {name:<28s} {seconds:6.1f} s")
        for line in res.get("report", []):
            print("    " + line)


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_converted_parameters_are_bit_identical(parity, fmt):
    assert parity["mismatches"][fmt] == [], parity["mismatches"][fmt][:10]
    parity.setdefault("report", []).append(f"{fmt}: all {parity['n_params']} tensors bit-identical")


def test_hidden_states_match_torch(parity):
    ref, ours = parity["ref_hidden"], parity["our_hidden"]
    assert len(ours) == len(ref) == 13
    errors = [_rel(a, b) for a, b in zip(ours, ref, strict=True)]
    # the spread across positions is real (the model is not degenerate; see the module docstring)
    last = ref[-1][0, :int(parity["attention_mask"][0].sum())]
    spread = float(last.std(0).mean() / last.std())
    logit_rel = _rel(parity["our_logits"], parity["ref_logits"])
    parity.setdefault("report", []).append(
        f"hidden states: max rel error {max(errors):.2e} (last {errors[-1]:.2e}; per state "
        f"{' '.join(f'{e:.1e}' for e in errors)}); MLM logits rel error {logit_rel:.2e}; "
        f"spread of the last state across positions {spread:.3f}")
    assert spread > 0.05, spread
    assert max(errors) <= HIDDEN_TOL, errors


def test_fill_mask_matches_pipeline(parity):
    worst, min_gap = 0.0, np.inf
    for text, got, want in zip(SENTENCES, parity["our_fill"], parity["ref_fill"], strict=True):
        single = isinstance(want[0], dict)
        assert isinstance(got[0], dict) == single, text
        for g_opts, w_opts in zip([got] if single else got, [want] if single else want, strict=True):
            assert [o["token"] for o in g_opts] == [o["token"] for o in w_opts], text
            for g, w in zip(g_opts, w_opts, strict=True):
                assert (g["token_str"], g["sequence"]) == (w["token_str"], w["sequence"]), text
                worst = max(worst, abs(g["score"] - w["score"]))
    # how far apart the reference's top-6 logits are at the masks: ids are unambiguous if >> logit errors
    ids, logits = parity["input_ids"], parity["ref_logits"]
    for b, t in zip(*np.nonzero(ids == 4), strict=True):
        top = np.sort(logits[b, t])[-6:]
        min_gap = min(min_gap, float(np.diff(top).min()))
    top1 = [opts[0]["score"] for r in parity["ref_fill"] for opts in ([r] if isinstance(r[0], dict) else r)]
    parity.setdefault("report", []).append(
        f"fill-mask: top-5 ids identical; max |score difference| {worst:.2e}; top-1 scores "
        f"{min(top1):.3f}..{max(top1):.3f}; smallest gap between the reference's top-6 logits {min_gap:.2e}")
    assert worst <= SCORE_TOL, worst
