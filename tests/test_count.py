"""python -m tinyalbert.count: its parameter counts against the engine and real files, its FLOPs against the
benchmark's, its activation memory against the caches the engine really keeps, and its command line."""
from __future__ import annotations

import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

import tinyalbert
from tinyalbert.bench import make_batch, model_flops
from tinyalbert.count import (
    PAPER_TABLE_1,
    Arch,
    body_cache,
    flops,
    heads_cache,
    labelled_positions,
    main,
    parameters,
    resolve,
    si,
)
from tinyalbert.nn import model as model_module
from tinyalbert.nn.body import albert_body_forward, prepare_inputs
from tinyalbert.nn.config import PRESETS, AlbertConfig
from tinyalbert.nn.params import count_params, init_params, param_shapes
from tinyalbert.weights import save

SMALL = dict(vocab_size=97, embedding_size=8, hidden_size=24, num_attention_heads=3, intermediate_size=40,
             num_hidden_layers=4, max_position_embeddings=32)
ODD = [AlbertConfig(**SMALL), AlbertConfig(**{**SMALL, "num_hidden_groups": 2, "inner_group_num": 2}),
       AlbertConfig(**{**SMALL, "hidden_act": "gelu", "num_hidden_layers": 1})]


def total(arch: Arch) -> int:
    return sum(parameters(arch).values())


def shapes_only(config: AlbertConfig, sop_head: bool) -> dict[str, np.ndarray]:
    """Zero-strided stand-ins with the parameters' shapes: count_params without allocating xxlarge."""
    return {k: np.broadcast_to(np.float32(0), s) for k, s in param_shapes(config, sop_head).items()}


@pytest.mark.parametrize("sop_head", [True, False])
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_parameters_equal_count_params_for_every_preset(name, sop_head):
    config = AlbertConfig.preset(name)
    assert total(Arch.albert(config, sop_head=sop_head)) == count_params(shapes_only(config, sop_head))


@pytest.mark.parametrize("config", ODD, ids=["plain", "groups", "erf-gelu"])
def test_parameters_equal_count_params_of_real_arrays(config):
    assert total(Arch.albert(config)) == count_params(init_params(config))
    assert total(Arch.albert(config, sop_head=False)) == count_params(init_params(config, sop_head=False))


@pytest.mark.parametrize("sop_head", [True, False])
def test_parameters_equal_the_tensors_of_a_saved_file(tmp_path, sop_head):
    config = ODD[1]
    path = tmp_path / "m.h5"
    save(path, config, init_params(config, sop_head=sop_head), dtype="float16")
    with h5py.File(path, "r") as f:
        in_file = sum(d.size for d in f["params"].values())
    arch, storage = resolve(str(path))
    assert total(arch) == in_file and arch.sop_head == sop_head and storage == "float16"


CONFIGS = [AlbertConfig.preset(n) for n in sorted(PRESETS)] + ODD


@pytest.mark.parametrize("config", CONFIGS, ids=sorted(PRESETS) + ["plain", "groups", "erf-gelu"])
@pytest.mark.parametrize("batch,seq", [(1, 128), (3, 17), (8, 512)])
def test_flops_equal_the_benchmark(config, batch, seq):
    seq = min(seq, config.max_position_embeddings)
    arch = Arch.albert(config)
    assert sum(flops(arch, batch, seq).values()) == model_flops(config, batch, seq)
    M = labelled_positions(batch, seq)
    assert sum(flops(arch, batch, seq, train=True).values()) == model_flops(config, batch, seq, M, training=True)


def test_labelled_positions_are_those_of_the_benchmark_batch():
    for batch, seq in [(1, 128), (4, 7), (2, 3)]:
        labels = make_batch(batch, seq, 100)[3]
        assert labelled_positions(batch, seq) == int((labels != -100).sum())


def _root(a: np.ndarray) -> np.ndarray:
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def _float_bytes(objects, exclude: set[int]) -> int:
    """Bytes of the distinct float buffers reachable through tuples, lists and dicts (views count once)."""
    seen: dict[int, np.ndarray] = {}

    def walk(o) -> None:
        if isinstance(o, np.ndarray):
            r = _root(o)
            if r.dtype.kind == "f" and id(r) not in exclude:
                seen[id(r)] = r
        elif isinstance(o, (tuple, list)):
            for x in o:
                walk(x)
        elif isinstance(o, dict):
            for x in o.values():
                walk(x)

    walk(objects)
    return sum(r.nbytes for r in seen.values())


@pytest.mark.parametrize("config", ODD, ids=["plain", "groups", "erf-gelu"])
def test_kept_activations_are_the_caches_the_engine_holds(config, monkeypatch):
    batch, seq = 3, 20
    params = init_params(config)
    param_ids = {id(_root(p)) for p in params.values()}
    ids, types, mask, labels, sop = make_batch(batch, seq, config.vocab_size)
    arch = Arch.albert(config)

    # the body alone
    body = albert_body_forward(*prepare_inputs(config, ids, types, mask), params, config)
    assert _float_bytes(body[0::2], param_ids) == sum(n * s for n, s in body_cache(arch, batch, seq)) * 4

    # a training step: everything the forward functions return while loss_and_grads runs
    returned = []

    def recorder(forward):
        def recording(*args, **kwargs):
            out = forward(*args, **kwargs)
            returned.append(out)
            return out
        return recording

    for name in ("albert_body_forward", "mlm_head_forward", "cross_entropy_forward", "pooler_forward",
                 "sop_head_forward"):
        monkeypatch.setattr(model_module, name, recorder(getattr(model_module, name)))
    tinyalbert.Albert(config, params).loss_and_grads(ids, types, mask, labels, sop)
    expected = sum(n * s for n, s in body_cache(arch, batch, seq) + heads_cache(arch, batch, seq)) * 4
    assert _float_bytes(returned, param_ids) == expected


def test_paper_table_says_which_convention_gives_each_figure(capsys):
    assert main(["--paper"]) == 0
    out = capsys.readouterr().out
    for figure in PAPER_TABLE_1.values():
        assert f"{figure}M" in out
    unmatched = [line.split(":")[0].strip() for line in out.splitlines() if "matches no convention" in line]
    assert unmatched == ["ALBERT xlarge", "ALBERT xxlarge"]
    everything = count_params(shapes_only(AlbertConfig(), sop_head=True))      # xxlarge, as the files hold it
    assert f"the nearest is {everything / 1e6:.2f}M" in out


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tinyalbert.count", *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})


def test_cli_help():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for word in ("--batch", "--seq", "--dtype", "--train", "--vs", "--no-measure", "--paper", "FLOPs", "memory"):
        assert word in proc.stdout


def test_cli_preset(capsys):
    assert main(["xxlarge", "--no-measure", "--train"]) == 0
    out = capsys.readouterr().out
    assert f"{count_params(shapes_only(AlbertConfig(), sop_head=True)):,}" in out
    forward, step = model_flops(AlbertConfig(), 1, 128), model_flops(AlbertConfig(), 1, 128, 19, training=True)
    assert "FLOPs per sequence" in out and si(forward) in out and si(step) in out
    assert "AdamW moments" in out and "tensors during the AdamW step" in out and "the peak" in out


def test_cli_versus_bert_large(capsys):
    assert main(["xxlarge", "--vs", "bert-large", "--no-measure"]) == 0
    out = capsys.readouterr().out
    assert "ALBERT xxlarge against bert-large" in out
    assert "16.00x" in out          # the FFN's FLOPs per token and layer run
    assert "0.66x" in out           # the parameters


def test_cli_config_json_and_weights_file_with_measuring(tmp_path):
    config = ODD[0]
    config.save_json(tmp_path / "config.json")
    proc = run_cli(str(tmp_path / "config.json"), "--batch", "2", "--seq", "16", "--no-measure")
    assert proc.returncode == 0, proc.stderr
    assert f"{total(Arch.albert(config)):,}" in proc.stdout

    save(tmp_path / "m.h5", config, init_params(config))
    proc = run_cli(str(tmp_path / "m.h5"), "--batch", "2", "--seq", "16", "--train")
    assert proc.returncode == 0, proc.stderr
    assert f"{count_params(init_params(config)):,}" in proc.stdout
    assert "+ runtime" in proc.stdout and "estimated peak RSS" in proc.stdout and "GFLOP/s" in proc.stdout


@pytest.mark.parametrize("args", [["no-such-model"], ["missing.json"], ["--seq", "0", "base"], [],
                                  ["base", "--seq", "513", "--no-measure"], ["base", "--vs", "gpt-2", "--no-measure"]])
def test_cli_bad_input_is_one_line(args):
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert proc.stdout == "" and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1


def test_cli_bad_files_are_one_line(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "bad.h5").write_bytes(b"not an hdf5 file")
    (tmp_path / "wrong.json").write_text('{"hidden_size": 10, "num_attention_heads": 3}')
    for name in ("bad.json", "bad.h5", "wrong.json"):
        proc = run_cli(str(tmp_path / name), "--no-measure")
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
