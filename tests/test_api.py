"""The public names of `import tinyalbert`: all there, listed for tab completion, and imported lazily."""
from __future__ import annotations

import inspect
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

import tinyalbert

PACKAGE_ROOT = str(Path(tinyalbert.__file__).resolve().parent.parent)
PROMISED = {"load", "save", "Tokenizer", "fill_mask", "fill_mask_batch", "sentence_order", "logit_lens", "convert",
            "export", "bundled_model_path", "AlbertConfig", "PRESETS", "init_params", "param_shapes", "count_params",
            "Albert", "ForwardOutput", "__version__"}


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
