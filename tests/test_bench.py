"""The performance tools run: `python -m tinyalbert.bench --smoke` and the per-op profiler.

These check the scripts, not speed: timing never decides a test (docs/performance.md has the figures).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tinyalbert.bench import StepWorker
from tinyalbert.nn import attention, linear
from tinyalbert.nn.config import AlbertConfig
from tinyalbert.opprofile import format_profile, profile

TINY = AlbertConfig(vocab_size=64, embedding_size=8, hidden_size=16, num_attention_heads=2, intermediate_size=32,
                    num_hidden_layers=3, max_position_embeddings=16)


@pytest.mark.parametrize("train", [False, True])
def test_profile_accounts_for_the_step(train):
    original = linear.linear_forward
    result = profile(TINY, batch=2, seq=8, train=train, repeats=2)
    ops = result["ops"]
    expected = {"linear_forward", "self_attention_forward", "gelu_forward", "_shifted_scores_kernel",
                "_layernorm_forward_kernel"}
    if train:
        expected |= {"linear_backward", "matmul_tn_accumulate_", "_masked_softmax_backward_kernel",
                     "cross_entropy_forward"}
    assert expected <= set(ops)
    assert ops["linear_forward"]["class"] == "BLAS" and ops["self_attention_forward"]["class"] == "BLAS"
    assert ops["_layernorm_forward_kernel"]["class"] == "Numba" and ops["gelu_forward"]["class"] == "NumPy"
    # exclusive times of one run never count a nested call twice: together they fit in that run's step
    assert all(op["seconds"] >= 0 for op in ops.values())
    assert sum(op["seconds"] for op in ops.values()) <= result["total_seconds"]
    assert ops["self_attention_forward"]["calls"] == TINY.num_hidden_layers
    # the wrappers are gone afterwards, everywhere they were installed
    assert linear.linear_forward is original and attention.linear_forward is original
    assert "GFLOP/s" in format_profile(result)


@pytest.mark.slow
def test_bench_smoke_writes_every_line(tmp_path):
    out = tmp_path / "bench.json"
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", NUMBA_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "tinyalbert.bench", "--smoke", "--threads", "1", "--repeats", "1",
                           "--only", "matmul", "forward", "train", "bundled", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["errors"] == []
    sections = {line["id"].split(".")[0] for line in result["lines"]}
    assert {"matmul", "forward", "train", "bundled"} <= sections
    forward = next(line for line in result["lines"] if line["id"].startswith("forward."))
    assert "tinyalbert" in forward["sides"] and any(side.startswith("torch") for side in forward["sides"])
    # the bundled line's sides run in worker processes of their own, on the same weights and batch
    bundled = next(line for line in result["lines"] if line["id"] == "bundled.train")
    assert {"tinyalbert", "torch-eager", "torch-sdpa"} <= set(bundled["sides"])
    assert all(len(side["samples"]) == 1 for side in bundled["sides"].values())
    assert all(diff < 1e-4 for diff in bundled["check"]["loss_abs_diff"].values())


def test_step_worker_failure_names_the_worker_and_the_error(tmp_path):
    spec = {"side": "tinyalbert", "path": "/nowhere/model.h5", "batch": 1, "seq": 8, "threads": 1}
    with pytest.raises(RuntimeError, match=r"broken-side worker failed \(exit 1\): \S*WeightsError: "
                                           r"weights file not found: /nowhere/model.h5"):
        StepWorker("broken-side", spec, tmp_path)
