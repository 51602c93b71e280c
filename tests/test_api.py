"""The public names of `import tinyalbert`: all there, listed for tab completion, and imported lazily."""
from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

import tinyalbert
from tinyalbert import memory, tuning

PACKAGE_ROOT = str(Path(tinyalbert.__file__).resolve().parent.parent)
PROMISED = {"load", "save", "Tokenizer", "fill_mask", "fill_mask_batch", "sentence_order", "logit_lens", "convert",
            "export", "bundled_model_path", "AlbertConfig", "PRESETS", "init_params", "param_shapes", "count_params",
            "Albert", "ForwardOutput", "tune_process", "__version__"}


def run_python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = PACKAGE_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def test_every_public_name_resolves_and_is_listed():
    assert set(tinyalbert.__all__) == PROMISED
    assert PROMISED <= set(dir(tinyalbert))
    for name in tinyalbert.__all__:
        assert getattr(tinyalbert, name) is not None, name
    assert tinyalbert.load is tinyalbert.weights.load
    assert tinyalbert.fill_mask is tinyalbert.predict.fill_mask
    assert tinyalbert.Albert is tinyalbert.nn.model.Albert


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="fill_masks"):
        getattr(tinyalbert, "fill_masks")   # noqa: B009 (the attribute access itself is the test)


def test_submodules_are_attributes_without_an_import():
    """`except tinyalbert.predict.PredictError` works even when nothing imported tinyalbert.predict yet."""
    result = run_python("import sys, tinyalbert\nassert 'tinyalbert.predict' not in sys.modules\n"
                        "print(tinyalbert.predict.PredictError.__name__, tinyalbert.weights.WeightsError.__name__)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["PredictError", "WeightsError"]


def test_import_loads_no_heavy_dependency():
    """Numba, h5py and SentencePiece load on first use of a name that needs them, not at `import tinyalbert`."""
    result = run_python("import sys, tinyalbert\n"
                        "print(sorted(m for m in ('numba', 'h5py', 'sentencepiece', 'tinyalbert.nn') "
                        "if m in sys.modules))")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_convert_is_both_the_module_and_the_function():
    """`tinyalbert.convert(src, out)` converts; `tinyalbert.convert.ConvertError` etc. stay reachable."""
    import tinyalbert.convert as convert_module

    assert isinstance(tinyalbert.convert, types.ModuleType) and tinyalbert.convert is convert_module
    assert callable(tinyalbert.convert)
    assert list(inspect.signature(tinyalbert.convert).parameters) == \
        list(inspect.signature(convert_module.convert).parameters)
    # the same whichever comes first: the submodule import or the attribute
    result = run_python("import tinyalbert\nf = tinyalbert.convert\nimport tinyalbert.convert as m\n"
                        "from tinyalbert import convert as c\nassert f is m is c and callable(f)")
    assert result.returncode == 0, result.stderr


def test_calling_convert_runs_the_converter(tmp_path):
    """Calling the module runs `convert.convert`: a missing checkpoint gets the converter's own error."""
    with pytest.raises(tinyalbert.convert.ConvertError, match="no-such-checkpoint"):
        tinyalbert.convert(tmp_path / "no-such-checkpoint", tmp_path / "out.h5")


def test_export_is_both_the_module_and_the_function(tmp_path):
    """`tinyalbert.export(model, out_dir)` exports; `tinyalbert.export.ExportError` stays reachable."""
    import tinyalbert.export as export_module

    assert tinyalbert.export is export_module and callable(tinyalbert.export)
    assert list(inspect.signature(tinyalbert.export).parameters) == \
        list(inspect.signature(export_module.export).parameters)
    with pytest.raises(tinyalbert.export.ExportError, match="no-such-model"):
        tinyalbert.export(tmp_path / "no-such-model.h5", tmp_path / "out")


# ---- process-wide settings: only tune_process() makes them ---------------------------------------------
# Spies on every mallopt call made through ctypes, then imports tinyalbert and runs a model, a classifier
# and finally tune_process(); prints what the environment and malloc saw at each point.
SIDE_EFFECTS_PROBE = """
import ctypes, json, os, warnings
mallopt_calls = []

class SpyCDLL(ctypes.CDLL):
    def __getattr__(self, name):
        if name == "mallopt":
            real = super().__getattr__(name)
            return lambda *args: mallopt_calls.append(list(args)) or real(*args)
        return super().__getattr__(name)

ctypes.CDLL = SpyCDLL
environ = dict(os.environ)
seen = {}
import numpy as np
import tinyalbert
from tinyalbert.classifier import AlbertClassifier
seen["import"] = [dict(os.environ) == environ, len(mallopt_calls)]
c = tinyalbert.AlbertConfig(vocab_size=50, embedding_size=8, hidden_size=16, num_attention_heads=2,
                            intermediate_size=32, num_hidden_layers=2)
model = tinyalbert.Albert(c, tinyalbert.init_params(c))
ids = np.array([[2, 7, 9, 3]])
model.forward(ids)
model.loss_and_grads(ids, None, None, np.array([[-100, 7, -100, -100]]), np.array([0]))
AlbertClassifier.from_pretrained(model, 2).loss_and_grads(ids, None, None, np.array([1]))
seen["model calls"] = [dict(os.environ) == environ, len(mallopt_calls)]
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    tinyalbert.tune_process()
seen["tune_process"] = [os.environ.get("OMP_WAIT_POLICY"), mallopt_calls, [str(w.message) for w in caught]]
print(json.dumps(seen))
"""


def test_import_and_model_calls_change_nothing_in_the_process_until_tune_process():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY" and not k.startswith("MALLOC_")}
    env["PYTHONPATH"] = PACKAGE_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run([sys.executable, "-c", SIDE_EFFECTS_PROBE], capture_output=True, text=True, env=env,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.splitlines()[-1])
    assert seen["import"] == [True, 0]
    assert seen["model calls"] == [True, 0]
    policy, mallopt_calls, warned = seen["tune_process"]
    assert policy == "PASSIVE"
    assert mallopt_calls == [[-3, memory.HEAP_ARRAY_LIMIT], [-1, 2 ** 30]]     # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
    # Numba's threads had started (the model ran), so the policy can no longer reach them: said so
    assert len(warned) == 1 and "before the first model call" in warned[0]


@pytest.fixture
def fresh_process(monkeypatch):
    """As in a new process: no OMP_WAIT_POLICY, malloc untouched, Numba's threads not started; mallopt recorded."""
    calls = []
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    for name in [k for k in os.environ if k.startswith("MALLOC_")]:
        monkeypatch.delenv(name)
    monkeypatch.setattr(memory, "_applied", False)
    monkeypatch.setattr(memory, "_mallopt", lambda param, value: calls.append((param, value)))
    monkeypatch.setattr(tuning, "numba_threads_started", lambda: False)
    return calls


def test_tune_process_sets_the_policy_and_for_training_malloc(fresh_process, recwarn):
    tinyalbert.tune_process(training=False)
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE" and fresh_process == []
    tinyalbert.tune_process()
    tinyalbert.tune_process()           # idempotent
    assert fresh_process == [(-3, memory.HEAP_ARRAY_LIMIT), (-1, 2 ** 30)]
    assert not recwarn.list


def test_tune_process_leaves_the_users_own_settings_alone(fresh_process, monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    tinyalbert.tune_process()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE" and fresh_process == []


@pytest.mark.parametrize("module, argv, training", [
    ("pretrain", ["--help"], True), ("finetune", ["--help"], True), ("predict", ["--help"], False),
    ("diff", ["--help"], False), ("bench.run", ["--help"], False),
    ("opprofile", ["--config", "no-such.json", "--train"], True), ("opprofile", ["--config", "no-such.json"], False),
])
def test_every_program_that_computes_tunes_its_process_first(module, argv, training, monkeypatch):
    calls = []
    cli = importlib.import_module(f"tinyalbert.{module}")
    monkeypatch.setattr(cli, "tune_process", lambda training=True: calls.append(training))
    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        cli.main(argv)
    assert calls == [training]
