"""Export a tinyalbert weights or classifier file as a Hugging Face transformers checkpoint folder.

    python -m tinyalbert.export MODEL.h5 OUT_DIR [--overwrite] [--no-progress]

From Python: `tinyalbert.export(MODEL.h5, OUT_DIR)` (the function below; the module is callable too).

The folder holds what `transformers.AutoModelFor...from_pretrained(OUT_DIR)` and
`AutoTokenizer.from_pretrained(OUT_DIR)` read:

    config.json             every AlbertConfig field, model_type "albert", architectures (and, for a
                            classifier, id2label / label2id from its label names)
    model.safetensors       the tensors under the reference names, in their stored dtype
    spiece.model            the SentencePiece model embedded in MODEL.h5
    tokenizer_config.json   AlbertTokenizer with ALBERT's clean-up (lowercase, accents stripped), which
                            gives the ids tinyalbert.Tokenizer gives

Which class loads it:

    weights file with the SOP head (pooler + sop_classifier)  ->  AlbertForPreTraining
    weights file without it (converted from the hub)          ->  AlbertForMaskedLM
    classifier file (tinyalbert.classifier.save_classifier)   ->  AlbertForSequenceClassification

The MLM decoder (predictions.decoder.weight and .bias) is tied to the word embedding and to
predictions.bias, so it is not written: transformers ties it again when it loads the model and
lists no missing key for it.  `python -m tinyalbert.convert OUT_DIR back.h5` reads the folder
back, tensor for tensor bit-identical.

model.safetensors is written by this module with NumPy (no torch, no safetensors package): an
8-byte little-endian header length N, N bytes of JSON giving each tensor's dtype, shape and byte
range [begin, end) in the data that follows, plus "__metadata__": {"format": "pt"} (what
transformers expects of a PyTorch checkpoint), padded with spaces so that the data starts on an
8-byte boundary; then the raw little-endian bytes, tensor after tensor.

Atomicity: the folder is written as a whole.  Everything goes into a temporary folder beside
OUT_DIR, which is renamed to OUT_DIR at the end (tinyalbert.files.atomic_output_dir), so OUT_DIR
never holds a mix of old and new files, nor a half-written model.safetensors.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import types
from typing import Any, Callable, Mapping

import numpy as np

from .cli import CommandErrors, OneLineParser
from .convert import _ST_DTYPES, CONFIG_FILE, SAFETENSORS_FILE, SPIECE_FILE
from .files import atomic_output_dir
from .nn.config import AlbertConfig
from .nn.params import has_sop_head
from .weights import WeightsError

TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
# numpy dtype of a stored tensor -> safetensors dtype code (the inverse of the reader's table, floats only)
_ST_CODES = {np.dtype(dt).name: code for code, dt in _ST_DTYPES.items() if code in ("F64", "F32", "F16")}
SAFETENSORS_HEADER_ALIGNMENT = 8
WRITE_SLICE_BYTES = 32 << 20


class ExportError(ValueError):
    """A file that cannot be exported, or a folder that cannot be written; the message is one line."""


# ---------------------------------------------------------------------------------------------------
# writing safetensors by hand
# ---------------------------------------------------------------------------------------------------
def safetensors_header(tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None) -> bytes:
    """The 8-byte length and the JSON header for `tensors` (name -> array-like), in their order.

    Each tensor's bytes follow the previous one's without gaps; the JSON is padded with spaces to a
    multiple of 8 bytes so that every tensor of 8-byte (or smaller) items starts aligned.
    """
    header: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    for name, value in tensors.items():
        dtype = np.dtype(value.dtype)
        if dtype.name not in _ST_CODES:
            raise ExportError(f"tensor {name} has dtype {dtype.name}; safetensors export supports "
                              f"{', '.join(_ST_CODES)}")
        nbytes = int(np.prod(value.shape, dtype=np.int64)) * dtype.itemsize
        header[name] = {"dtype": _ST_CODES[dtype.name], "shape": [int(n) for n in value.shape],
                        "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % SAFETENSORS_HEADER_ALIGNMENT)
    return len(text).to_bytes(8, "little") + text


def write_safetensors(path: str, tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None,
                      progress: Callable[[int], None] | None = None) -> None:
    """Write `tensors` (name -> array-like with .shape/.dtype) to `path` as safetensors, little-endian.

    Large tensors are written in slices of about 32 MB, so a memory-mapped 0.9 GB model is copied
    without holding a second copy in memory; `progress` is called with the bytes written.
    """
    with open(path, "wb") as f:
        f.write(safetensors_header(tensors, metadata))
        for value in tensors.values():
            arr = np.asarray(value)
            little = arr.dtype.newbyteorder("<")
            rows = max(1, WRITE_SLICE_BYTES // max(1, arr[:1].nbytes)) if arr.ndim else 1
            for start in range(0, max(1, arr.shape[0] if arr.ndim else 1), rows):
                block = arr[start:start + rows] if arr.ndim else arr
                f.write(np.ascontiguousarray(block, dtype=little).tobytes())
                if progress:
                    progress(block.nbytes)


# ---------------------------------------------------------------------------------------------------
# what goes into the folder
# ---------------------------------------------------------------------------------------------------
def tokenizer_config(config: AlbertConfig) -> dict[str, Any]:
    """tokenizer_config.json for AlbertTokenizer(Fast) with ALBERT's own settings.

    lowercase, spaces collapsed, accents stripped: what tinyalbert.Tokenizer does.  [MASK] eats the
    space before it (lstrip), as in the reference tokenizer; the other special tokens do not.
    """
    def token(content: str, lstrip: bool = False) -> dict[str, Any]:
        return {"content": content, "lstrip": lstrip, "normalized": False, "rstrip": False,
                "single_word": False, "special": True, "__type": "AddedToken"}

    return {"tokenizer_class": "AlbertTokenizer", "do_lower_case": True, "remove_space": True,
            "keep_accents": False, "bos_token": "[CLS]", "eos_token": "[SEP]", "unk_token": "<unk>",
            "sep_token": "[SEP]", "pad_token": "<pad>", "cls_token": "[CLS]",
            "mask_token": token("[MASK]", lstrip=True), "model_max_length": config.max_position_embeddings,
            "clean_up_tokenization_spaces": True}


def transformers_config(config: AlbertConfig, architecture: str, labels: list[str] | None = None,
                        dtype: np.dtype | None = None) -> dict[str, Any]:
    """config.json: every field of `config` (and the keys it carried over), for `architecture`."""
    out = config.to_dict()
    out["model_type"] = "albert"
    out["architectures"] = [architecture]
    # keys a converted-back checkpoint carries over from its transformers config, true of that model only
    for stale in ("id2label", "label2id", "num_labels", "problem_type", "dtype", "torch_dtype"):
        out.pop(stale, None)
    if labels is not None:
        out["id2label"] = {str(i): name for i, name in enumerate(labels)}
        out["label2id"] = {name: i for i, name in enumerate(labels)}
    if dtype is not None:     # the key every transformers version reads (4.56+ writes "dtype" and reads both)
        out["torch_dtype"] = np.dtype(dtype).name
    return out


def _file_format(path: str) -> tuple[str | None, np.dtype | None]:
    """(the `format` attribute of a tinyalbert HDF5 file or None, the dtype its first tensor is stored in)."""
    import h5py

    if not os.path.isfile(path):
        raise ExportError(f"model file not found: {path}")
    try:
        if not h5py.is_hdf5(path):
            raise ExportError(f"{path} is not an HDF5 file (expected a tinyalbert weights or classifier file)")
        with h5py.File(path, "r") as f:
            fmt = f.attrs.get("format")
            stored = next(iter(f["params"].values())).dtype if "params" in f and len(f["params"]) else None
    except OSError as e:
        raise ExportError(f"cannot read {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    fmt = fmt.decode("utf-8") if isinstance(fmt, bytes) else fmt
    return fmt, stored


def read_model(path: str | os.PathLike) -> tuple[AlbertConfig, dict[str, np.ndarray], bytes | None, str,
                                                  list[str] | None]:
    """(config, params in their stored dtype, spiece bytes, transformers architecture, labels or None)."""
    from . import classifier, weights

    path = os.fspath(path)
    fmt, stored_dtype = _file_format(path)
    if fmt == classifier.FORMAT:
        clf = classifier.load_classifier(path, dtype=stored_dtype)
        spiece = clf.tokenizer.model_bytes if clf.tokenizer is not None else None
        return clf.config, clf.params, spiece, "AlbertForSequenceClassification", clf.labels
    if fmt == weights.FORMAT:
        config, params, spiece, _ = weights.load_params(path, dtype=None, mmap=True)
        return config, params, spiece, "AlbertForPreTraining" if has_sop_head(params) else "AlbertForMaskedLM", None
    raise ExportError(f"{path} is neither a tinyalbert weights file nor a classifier file (format {fmt!r})")


def export(model_path: str | os.PathLike, out_dir: str | os.PathLike, overwrite: bool = False,
           progress: bool | None = None) -> str:
    """Write the transformers folder for `model_path` into `out_dir` (see the module docstring); returns it.

    overwrite: replace an existing, non-empty `out_dir` (otherwise refused).  progress: a tqdm bar of
    the bytes written (None = only on a terminal).  Raises ExportError (or WeightsError) with one line.
    """
    from tqdm import tqdm

    out_dir = os.fspath(out_dir)
    try:
        config, params, spiece, architecture, labels = read_model(model_path)
    except WeightsError as e:
        raise ExportError(str(e)) from None
    if spiece is None:
        raise ExportError(f"{os.fspath(model_path)} holds no SentencePiece model, so there is no tokenizer to "
                          "export; save the model with spiece_model_bytes")
    parent = os.path.dirname(os.path.abspath(out_dir))
    try:
        os.makedirs(parent, exist_ok=True)      # like save_pretrained: the folder's parents are created
    except OSError as e:
        raise ExportError(f"cannot create the folder to hold {out_dir}: {e}") from None
    dtypes = {np.dtype(v.dtype).name for v in params.values()}
    config_json = transformers_config(config, architecture, labels,
                                      dtype=np.dtype(next(iter(dtypes))) if len(dtypes) == 1 else None)
    total = sum(int(np.prod(v.shape, dtype=np.int64)) * np.dtype(v.dtype).itemsize for v in params.values())
    try:
        with atomic_output_dir(out_dir, replace=overwrite) as tmp:
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="exporting",
                      disable=None if progress is None else not progress, file=sys.stderr) as bar:
                write_safetensors(os.path.join(tmp, SAFETENSORS_FILE), params, progress=bar.update)
            with open(os.path.join(tmp, SPIECE_FILE), "wb") as f:
                f.write(spiece)
            for name, content in ((CONFIG_FILE, config_json), (TOKENIZER_CONFIG_FILE, tokenizer_config(config))):
                with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
                    f.write(json.dumps(content, indent=2, sort_keys=True) + "\n")
    except FileExistsError as e:
        raise ExportError(f"{e}; choose a new folder or pass --overwrite (overwrite=True)") from None
    except NotADirectoryError as e:
        raise ExportError(str(e)) from None
    return out_dir


# ---------------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(
        prog="python -m tinyalbert.export",
        description="Export a tinyalbert weights or classifier file (.h5) as a transformers checkpoint folder "
                    "(config.json, model.safetensors, spiece.model, tokenizer_config.json).",
        epilog="example:\n  python -m tinyalbert.export weights/mine.h5 exported/mine\n"
               "  then in Python: AutoModelForPreTraining.from_pretrained('exported/mine')",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="weights file or classifier file written by tinyalbert")
    parser.add_argument("out_dir", help="folder to create, with its parents (it must not exist or be empty, "
                                        "unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists and is not empty")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    with CommandErrors((ExportError, WeightsError, OSError), code=1) as status:
        export(args.model, args.out_dir, overwrite=args.overwrite, progress=False if args.no_progress else None)
    if status.exit_code:
        return status.exit_code
    size = os.path.getsize(os.path.join(args.out_dir, SAFETENSORS_FILE))
    print(f"wrote {args.out_dir} ({SAFETENSORS_FILE}: {size / 2**20:.1f} MiB)")
    return 0


class _CallableModule(types.ModuleType):
    """The type of this module: calling it calls `export`, so `tinyalbert.export(model, out_dir)` works
    (as for tinyalbert.convert: a package attribute cannot be both a submodule and a function)."""

    def __call__(self, model_path: str | os.PathLike, out_dir: str | os.PathLike, overwrite: bool = False,
                 progress: bool | None = None) -> str:
        """Same as `tinyalbert.export.export(model_path, out_dir, overwrite, progress)`."""
        return export(model_path, out_dir, overwrite=overwrite, progress=progress)


sys.modules[__name__].__class__ = _CallableModule


if __name__ == "__main__":
    sys.exit(main())
