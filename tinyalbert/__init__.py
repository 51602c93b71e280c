"""tinyalbert: ALBERT (albert-xxlarge-v2) in NumPy and Numba, every forward and backward written by hand.

Start with `tinyalbert/nn/model.py`: the whole forward fits on one page.

The public names, all reachable as `tinyalbert.<name>`:

    load, save                    a weights file (HDF5) <-> a ready `Albert` model      (tinyalbert.weights)
    bundled_model_path            the small model that ships with the package           (tinyalbert.predict)
    fill_mask, fill_mask_batch    top-k completions of [MASK], as transformers' pipeline (tinyalbert.predict)
    sentence_order                the SOP head's probabilities for two sentences        (tinyalbert.predict)
    logit_lens                    fill_mask read after every application of the layer   (tinyalbert.predict)
    Tokenizer                     SentencePiece + ALBERT's clean-up                      (tinyalbert.tokenizer)
    convert                       a Hugging Face checkpoint -> a weights file            (tinyalbert.convert)
    export                        a weights or classifier file -> a transformers folder  (tinyalbert.export)
    tune_process                  the process-wide settings for speed, applied only when called (tinyalbert.tuning)
    AlbertConfig, PRESETS, init_params, param_shapes, count_params, Albert, ForwardOutput   (tinyalbert.nn)

Each is imported on first use (PEP 562), so `import tinyalbert` stays cheap: Numba, h5py and
SentencePiece load only when a name that needs them is touched.  Importing changes nothing in the process
(no environment variable, no malloc setting): `tune_process()` does that, when called.
"""
from importlib import import_module as _import_module
from importlib.util import find_spec as _find_spec

__version__ = "0.1.0"

# public name -> the submodule that defines it.  `convert` and `export` are the submodules themselves, which
# are callable (see tinyalbert/convert.py): a package attribute cannot be both a submodule and a function.
_LAZY_NAMES = {
    "AlbertConfig": "nn.config", "PRESETS": "nn.config",
    "init_params": "nn.params", "param_shapes": "nn.params", "count_params": "nn.params",
    "Albert": "nn.model", "ForwardOutput": "nn.model",
    "load": "weights", "save": "weights",
    "Tokenizer": "tokenizer",
    "fill_mask": "predict", "fill_mask_batch": "predict", "sentence_order": "predict", "logit_lens": "predict",
    "bundled_model_path": "predict",
    "convert": "convert", "export": "export",
    "tune_process": "tuning",
}

__all__ = [*_LAZY_NAMES, "__version__"]


def __getattr__(name: str):
    """Import the submodule behind a public name on first access, then keep the name in the package.

    A submodule's own name works too (`tinyalbert.predict.PredictError` without importing it first).
    """
    if name in _LAZY_NAMES:
        module = _import_module(f"{__name__}.{_LAZY_NAMES[name]}")
        value = module if module.__name__ == f"{__name__}.{name}" else getattr(module, name)
    elif not name.startswith("_") and _find_spec(f"{__name__}.{name}") is not None:
        value = _import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module 'tinyalbert' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
