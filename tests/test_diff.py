"""python -m tinyalbert.diff: with a fault planted in transformers' copy it names the right first tensor; with
the same weights on both sides no tensor is above the threshold; its command line."""
from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from tinyalbert.diff import (
    DEFAULT_THRESHOLD,
    RUN_TENSORS,
    diff,
    first_above,
    format_rows,
    main,
    run_names,
    transformers_model,
)
from tinyalbert.nn.config import AlbertConfig
from tinyalbert.nn.params import init_params
from tinyalbert.weights import load_params, save

BUNDLED = os.path.join(os.path.dirname(__file__), os.pardir, "tinyalbert", "data", "tinyalbert-mini.h5")
CONFIG = AlbertConfig(vocab_size=61, embedding_size=12, hidden_size=32, num_attention_heads=4, intermediate_size=48,
                      num_hidden_layers=3, max_position_embeddings=24)
GROUPS = dataclasses.replace(CONFIG, num_hidden_layers=4, num_hidden_groups=2, inner_group_num=2)
IDS = np.array([[2, 17, 40, 4, 33, 9, 58, 3]])


def first_name(config, params, model, dtype="float32") -> str | None:
    row = first_above(diff(config, params, model, IDS), DEFAULT_THRESHOLD[dtype])
    return row and row.name


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("config", [CONFIG, GROUPS], ids=["shared", "groups"])
def test_same_weights_no_tensor_above_the_threshold(config, dtype):
    params = init_params(config, seed=1, dtype=getattr(np, dtype))
    rows = diff(config, params, transformers_model(config, params, dtype), IDS)
    names = ["embeddings", "projection"] + [f"{r} {t}" for r in run_names(config) for t in RUN_TENSORS] + [
        "MLM transform", "MLM logits", "pooled", "SOP logits"]
    assert [r.name for r in rows] == names
    assert first_above(rows, DEFAULT_THRESHOLD[dtype]) is None, format_rows(rows, DEFAULT_THRESHOLD[dtype])


def _layer(model, group=0, inner=0):
    return model.albert.encoder.albert_layer_groups[group].albert_layers[inner]


@pytest.mark.parametrize("where,expected", [
    (lambda m: _layer(m).ffn.weight, "layer 1 FFN intermediate"),
    (lambda m: _layer(m).attention.value.weight, "layer 1 value"),
    (lambda m: _layer(m).attention.dense.bias, "layer 1 attention output"),
    (lambda m: _layer(m).ffn_output.weight, "layer 1 FFN output"),
    (lambda m: m.predictions.dense.weight, "MLM transform"),
    (lambda m: m.sop_classifier.classifier.weight, "SOP logits"),
])
def test_a_perturbed_weight_is_found_where_it_acts(where, expected):
    params = init_params(CONFIG, seed=2)
    model = transformers_model(CONFIG, params, "float32")
    with torch.no_grad():
        where(model).view(-1)[3] += 0.05          # one element, a few times the weights' std of 0.02
    assert first_name(CONFIG, params, model) == expected


def test_a_perturbed_weight_of_the_second_group_shows_in_its_first_run():
    params = init_params(GROUPS, seed=3)
    model = transformers_model(GROUPS, params, "float32")
    with torch.no_grad():
        _layer(model, group=1, inner=1).attention.query.weight[0, 0] += 0.05
    assert first_name(GROUPS, params, model) == "layer 3.2 query"   # runs 3 and 4 use group 2


def test_a_wrong_layer_norm_eps_shows_in_the_embeddings():
    params = init_params(CONFIG, seed=4)
    model = transformers_model(dataclasses.replace(CONFIG, layer_norm_eps=1e-5), params, "float32")
    assert first_name(CONFIG, params, model) == "embeddings"


def test_weights_without_the_sop_head():
    params = init_params(CONFIG, seed=5, sop_head=False)
    rows = diff(CONFIG, params, transformers_model(CONFIG, params, "float32"), IDS)
    assert rows[-1].name == "MLM logits" and first_above(rows, DEFAULT_THRESHOLD["float32"]) is None


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tinyalbert.diff", *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ, **(env or {})})


def test_cli_help():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for word in ("--threshold", "--text", "--dtype", "transformers", "first tensor above"):
        assert word in " ".join(proc.stdout.split())


def test_cli_weights_file_and_checkpoint_folder(tmp_path, capsys):
    assert main([BUNDLED]) == 0
    out = capsys.readouterr().out
    assert "layer 1 scores" in out and "no tensor is above 1e-04" in out

    config, params, spiece, _ = load_params(BUNDLED, dtype=np.float32)
    folder = tmp_path / "checkpoint"
    transformers_model(config, params, "float32").save_pretrained(folder)
    (folder / "spiece.model").write_bytes(spiece)
    assert main([str(folder), "--text", "Once upon a [MASK] there was a cat.", "--dtype", "float64"]) == 0
    assert "no tensor is above 1e-10" in capsys.readouterr().out


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    save(tmp_path / "novocab.h5", CONFIG, init_params(CONFIG))          # no spiece.model inside
    (tmp_path / "junk.h5").write_bytes(b"junk")
    cases = [[str(tmp_path / "missing.h5")], [str(tmp_path / "junk.h5")], [str(tmp_path / "novocab.h5")],
             [str(tmp_path / "novocab.h5"), "--ids", "2,x"], [str(tmp_path / "novocab.h5"), "--ids", "2,999"],
             [str(tmp_path)]]
    for args in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, (args, err)
    assert main([str(tmp_path / "novocab.h5"), "--ids", "2,17,40,3"]) == 0


def test_cli_without_torch_says_what_to_install(tmp_path):
    (tmp_path / "torch.py").write_text("raise ImportError('blocked for this test', name='torch')\n")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    proc = run_cli(BUNDLED, env=env)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "needs torch and transformers" in proc.stderr
