"""tinyalbert's own weights file: one HDF5 file holding the config, every parameter and the vocabulary.

    save(path, config, params, spiece_model_bytes=None, provenance=None, dtype=None)
    load(path, dtype=np.float32)     -> tinyalbert.nn.model.Albert (config, params, tokenizer, has_sop_head)
    load_params(path, dtype=None)    -> (config, params, spiece_bytes or None, attrs)

The layout is described in full in docs/weights-format.md.  In short:

    /                      attrs: format="tinyalbert-weights", format_version=1, config_json, has_sop_head,
                                  dtype, created, tinyalbert_version, provenance_json
    /params/<name>         one dataset per parameter, under the reference checkpoint's own name
                           (e.g. "albert.embeddings.word_embeddings.weight"), contiguous, uncompressed
    /spiece_model          uint8 bytes of the SentencePiece model (optional)

Why HDF5 and why contiguous: a contiguous, uncompressed dataset is just `nbytes` raw bytes at a
fixed offset in the file.  h5py tells us that offset, so we can hand the bytes straight to
`numpy.memmap` instead of reading them.  Opening a 0.9 GB xxlarge file then costs a few
milliseconds; the operating system pages each tensor in the first time it is touched.

Memory-mapped params are read-only (mode "r"): an accidental in-place update raises instead of
silently changing the file.  Training code that wants to update the weights in place should load
with `mmap=False` (plain in-memory arrays) or copy the arrays it updates.
"""
from __future__ import annotations

import datetime
import json
import os
from typing import TYPE_CHECKING, Any, Callable, Mapping

import numpy as np

from .files import atomic_output
from .nn.config import AlbertConfig
from .nn.params import SOP_HEAD_KEYS, check_params, param_shapes

if TYPE_CHECKING:
    from .nn.model import Albert

FORMAT = "tinyalbert-weights"
FORMAT_VERSION = 1
PARAMS_GROUP = "params"
SPIECE_DATASET = "spiece_model"
# Storage dtypes a weights file may use.  Compute dtype is chosen at load time.
STORAGE_DTYPES = ("float16", "float32", "float64")
# Every dataset starts at a multiple of this many bytes: the memory-mapped arrays are then aligned
# for any dtype (numba and BLAS prefer aligned data) and each tensor starts on its own page.
ALIGNMENT = 4096


class WeightsError(ValueError):
    """A weights file that cannot be written or read; the message is one line naming the problem."""


# ---------------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------------
def _storage_dtype(params: Mapping[str, Any], dtype: Any) -> np.dtype:
    """The dtype to store: `dtype` if given, otherwise the params' own (common) float dtype."""
    if dtype is None:
        found = {np.dtype(v.dtype) for v in params.values()}
        dt = np.result_type(*found) if found else np.dtype(np.float32)
    else:
        dt = np.dtype(dtype)
    if dt.name not in STORAGE_DTYPES:
        raise WeightsError(f"cannot store weights as {dt.name}; choose one of {', '.join(STORAGE_DTYPES)}")
    return dt


def _write_tensor(dset, value: Any, dtype: np.dtype, progress: Callable[[int], None] | None) -> None:
    """Write one parameter into its (already created) dataset, in slices of about 32 MB."""
    arr = np.asarray(value)
    if arr.shape != dset.shape:
        raise WeightsError(f"tensor {dset.name} has shape {arr.shape}, expected {dset.shape}")
    if arr.ndim == 0 or arr.nbytes <= 32 << 20:
        dset[...] = np.ascontiguousarray(arr, dtype=dtype)
        if progress:
            progress(arr.size * dtype.itemsize)
        return
    rows = max(1, (32 << 20) // max(1, (arr.size // arr.shape[0]) * arr.itemsize))
    for start in range(0, arr.shape[0], rows):
        block = np.ascontiguousarray(arr[start:start + rows], dtype=dtype)
        dset[start:start + rows] = block
        if progress:
            progress(block.size * dtype.itemsize)


def save(path: str | os.PathLike, config: AlbertConfig, params: Mapping[str, Any],
         spiece_model_bytes: bytes | None = None, provenance: dict[str, Any] | None = None,
         dtype: Any = None, progress: Callable[[int], None] | None = None) -> str:
    """Write config, params and (optionally) the SentencePiece model to an HDF5 weights file.

    The file is written to a temporary name in the same directory and moved into place with
    os.replace, so `path` is either the old file or the complete new one, never half a file.

    params: name -> array (anything with .shape and np.asarray() works, so big tensors can be
      produced lazily, one at a time).  Checked against the config with params.check_params.
    dtype: storage dtype (float16, float32 or float64); None keeps the params' own dtype.
    provenance: JSON-serialisable dict stored as the `provenance_json` attribute (where the
      weights came from: source files and their sha256, converter, ...).
    progress: optional callback called with the number of bytes written after each slice.
    Returns the path as a string.
    """
    import h5py

    from . import __version__

    path = os.fspath(path)
    try:
        check_params(config, params)
    except ValueError as e:
        raise WeightsError(f"cannot save {path}: {e}") from None
    dt = _storage_dtype(params, dtype)
    order = [k for k in param_shapes(config, sop_head=all(k in params for k in SOP_HEAD_KEYS)) if k in params]
    with atomic_output(path) as tmp:
        # libver v110: the superblock, object headers and link indexes carry checksums, so HDF5 refuses
        # damaged metadata instead of reading it; the text attributes are fixed-length strings, stored
        # inside the checksummed header (a variable-length string lives in the global heap, which has no
        # checksum, and a damaged global heap can make HDF5 loop forever).
        with h5py.File(tmp, "w", libver=("v110", "latest"), alignment_threshold=1,
                       alignment_interval=ALIGNMENT) as f:
            f.attrs["format"] = _text(FORMAT)
            f.attrs["format_version"] = np.int64(FORMAT_VERSION)
            f.attrs["config_json"] = _text(config.to_json_string())
            f.attrs["has_sop_head"] = bool(all(k in params for k in SOP_HEAD_KEYS))
            f.attrs["dtype"] = _text(dt.name)
            f.attrs["created"] = _text(datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
            f.attrs["tinyalbert_version"] = _text(__version__)
            f.attrs["provenance_json"] = _text(json.dumps(provenance or {}, sort_keys=True))
            group = f.create_group(PARAMS_GROUP)
            for name in order:
                value = params[name]
                # No chunks, no filters: contiguous layout, so load() can memory-map the bytes.
                dset = group.create_dataset(name, shape=tuple(value.shape), dtype=dt)
                _write_tensor(dset, value, dt, progress)
            if spiece_model_bytes is not None:
                f.create_dataset(SPIECE_DATASET, data=np.frombuffer(bytes(spiece_model_bytes), dtype=np.uint8))
    return path


def _text(value: str) -> np.bytes_:
    """A text attribute as a fixed-length UTF-8 string (the JSON and names written here are ASCII)."""
    return np.bytes_(value.encode("utf-8"))


# ---------------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------------
def _attr(value: Any) -> Any:
    """An HDF5 attribute as a plain Python value."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.generic):
        return value.item()
    return value


def _open(path: str):
    """Open `path` with h5py after checking it exists and is HDF5; WeightsError otherwise."""
    import h5py

    if not os.path.exists(path):
        raise WeightsError(f"weights file not found: {path}")
    if os.path.isdir(path):
        raise WeightsError(f"{path} is a directory, not a weights file")
    if not os.path.isfile(path):
        # a named pipe would block HDF5's open forever, and a device is not a file we wrote
        raise WeightsError(f"{path} is not a regular file (a pipe or a device?), not a weights file")
    if os.path.getsize(path) == 0:
        raise WeightsError(f"{path} is empty, not a weights file")
    try:
        is_hdf5 = h5py.is_hdf5(path)
    except OSError as e:
        raise WeightsError(f"cannot read {path}: {e}") from None
    if not is_hdf5:
        raise WeightsError(f"{path} is not an HDF5 file")
    try:
        return h5py.File(path, "r")
    except Exception as e:  # OSError mostly; a damaged superblock can raise others
        # HDF5 records the file's end-of-address in the superblock and refuses a shorter file.
        msg = _first_line(e)
        if "truncated" in msg or "eof" in msg.lower():
            raise WeightsError(f"{path} is truncated (the file is shorter than its header says); "
                               "re-copy or re-convert it") from None
        raise WeightsError(f"{path} is a damaged HDF5 file ({msg})") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__


# The HDF5 type classes a root attribute may have.  Any other class (a variable-length sequence, a
# compound, a reference...) is refused before it is read: a damaged type field can turn a string into
# one of those, and HDF5 2.0 then crashes the process while converting the value.
_ATTRIBUTE_CLASSES = ("INTEGER", "FLOAT", "STRING", "ENUM")


def _read_attrs(f, path: str) -> dict[str, Any]:
    """The root attributes as plain Python values; WeightsError naming an attribute that cannot be read."""
    import h5py

    allowed = {getattr(h5py.h5t, name) for name in _ATTRIBUTE_CLASSES}
    attrs = {}
    for name in f.attrs.keys():
        try:
            attribute = h5py.h5a.open(f.id, name.encode("utf-8", "surrogateescape"))
            if attribute.get_type().get_class() not in allowed:
                raise WeightsError(f"{path}: attribute {name!r} has an unexpected type; the file is damaged")
            attrs[name] = _attr(f.attrs[name])
        except WeightsError:
            raise
        except Exception as e:  # a damaged attribute raises OSError, UnicodeDecodeError, ...
            raise WeightsError(f"{path}: cannot read attribute {name!r} ({_first_line(e)}); "
                               "the file is damaged") from None
    return attrs


def _truncated(path: str, what: str) -> WeightsError:
    return WeightsError(f"{path} is truncated ({what} lies beyond the end of the file); re-copy or re-convert it")


def load_params(path: str | os.PathLike, dtype: Any = None, mmap: bool = True
                ) -> tuple[AlbertConfig, dict[str, np.ndarray], bytes | None, dict[str, Any]]:
    """Read a weights file: (config, params, spiece_model_bytes or None, root attrs as a dict).

    dtype=None returns the tensors in their stored dtype.  With mmap=True (default) each tensor
    whose stored dtype is the one asked for is a read-only numpy.memmap view of the file: opening
    is instant and costs no memory until the data is used.  A tensor that needs converting (e.g. a
    float16 file loaded as float32) is converted eagerly into an ordinary in-memory array.
    mmap=False reads everything into ordinary, writable arrays.
    Raises WeightsError for a missing, non-HDF5, truncated, foreign, wrong-version or
    mis-shaped file.
    """
    import h5py

    path = os.fspath(path)
    want = None if dtype is None else np.dtype(dtype)
    if want is not None and want.name not in STORAGE_DTYPES:
        raise WeightsError(f"cannot load weights as {want.name}; choose one of {', '.join(STORAGE_DTYPES)}")
    f = _open(path)
    file_size = os.path.getsize(path)
    # What is being read, for the message when h5py fails on a damaged file.
    reading = "the file's structure"
    try:
        attrs = _read_attrs(f, path)
        fmt = attrs.get("format")
        if not isinstance(fmt, str) or fmt != FORMAT:
            found = "no 'format' attribute" if fmt is None else f"format {fmt!r}"
            raise WeightsError(f"{path} is not a tinyalbert weights file ({found}, expected {FORMAT!r}); "
                               "convert a checkpoint with `python -m tinyalbert.convert`")
        version = attrs.get("format_version")
        if type(version) is not int or version != FORMAT_VERSION:   # a bool, a float or text is damage too
            if version is None:
                found = "no format_version attribute"
            elif type(version) is int:
                found = f"format_version {version}"
            else:
                found = f"format_version {version!r} (a {type(version).__name__}, not an integer)"
            raise WeightsError(f"{path} has {found}, but this tinyalbert reads format_version "
                               f"{FORMAT_VERSION}; re-convert it with this version of tinyalbert")
        config_json = attrs.get("config_json")
        try:
            if not isinstance(config_json, str):
                raise TypeError("missing" if config_json is None else f"a {type(config_json).__name__}, not text")
            config = AlbertConfig.from_json_string(config_json)
        except (ValueError, TypeError, AttributeError) as e:
            raise WeightsError(f"{path} has an invalid config_json attribute ({e})") from None
        group = f.get(PARAMS_GROUP)
        if not isinstance(group, h5py.Group):
            raise WeightsError(f"{path} has no '{PARAMS_GROUP}' group")

        # Where each tensor lives in the file.  get_offset() is None for chunked/compressed datasets
        # (a file re-packed by another tool) and for datasets never written; those are read instead.
        located: dict[str, tuple[int | None, tuple[int, ...], np.dtype]] = {}
        for name in group.keys():
            if isinstance(name, bytes):  # h5py hands over a name that is not UTF-8 as bytes
                name = name.decode("utf-8", "backslashreplace")
            reading = f"tensor {name}"
            located[name] = _locate(group.get(name), name, path, file_size)

        try:
            check_params(config, {name: _Shape(shape) for name, (_, shape, _) in located.items()})
        except ValueError as e:
            raise WeightsError(f"{path}: {e}") from None

        spiece = None
        if SPIECE_DATASET in f:
            reading = f"the SentencePiece model ({SPIECE_DATASET})"
            spiece = _read_spiece(f[SPIECE_DATASET], path, file_size)

        order = param_shapes(config, sop_head=all(k in located for k in SOP_HEAD_KEYS))
        params: dict[str, np.ndarray] = {}
        whole = None  # one read-only map of the whole file; every tensor is a view of it
        for name in order:
            reading = f"tensor {name}"
            offset, shape, dt = located[name]
            target = (want or dt).newbyteorder("=")  # native byte order for the kernels
            if mmap and offset is not None and offset % dt.itemsize == 0 and dt.isnative:
                if whole is None:
                    whole = np.memmap(path, dtype=np.uint8, mode="r")
                count = int(np.prod(shape, dtype=np.int64))
                arr = whole[offset:offset + count * dt.itemsize].view(dt).reshape(shape)
                if target != dt:
                    arr = np.array(arr, dtype=target)  # eager conversion (float16 -> float32): a plain array
            else:
                arr = group[name][()]
                arr = np.asarray(arr, dtype=target)
            params[name] = arr
    except WeightsError:
        raise
    except Exception as e:
        # h5py reports damaged metadata (often from truncation) as OSError, RuntimeError or KeyError, and
        # a damaged name or string as UnicodeDecodeError, ValueError, ...: whatever it is, the file is bad.
        raise WeightsError(f"{path} is damaged or truncated: cannot read {reading} ({_first_line(e)})") from None
    finally:
        f.close()
    # what the file holds, not what its attribute claims
    attrs["has_sop_head"] = all(k in params for k in SOP_HEAD_KEYS)
    return config, params, spiece, attrs


def _locate(dset: Any, name: str, path: str, file_size: int) -> tuple[int | None, tuple[int, ...], np.dtype]:
    """(byte offset or None, shape, dtype) of one tensor's dataset, after checking it is a float array."""
    import h5py

    if not isinstance(dset, h5py.Dataset):
        what = "a broken link" if dset is None else f"a {type(dset).__name__.lower()}"
        raise WeightsError(f"{path}: tensor {name} is {what}, not a dataset")
    if dset.shape is None:
        raise WeightsError(f"{path}: tensor {name} has no data (an empty dataspace)")
    dt = np.dtype(dset.dtype)
    if dt.name not in STORAGE_DTYPES:
        raise WeightsError(f"{path}: tensor {name} has dtype {dt}, expected one of {', '.join(STORAGE_DTYPES)}")
    return _data_offset(dset, path, file_size, f"tensor {name}"), tuple(dset.shape), dt


def _read_spiece(dset: Any, path: str, file_size: int) -> bytes:
    """The embedded SentencePiece model's bytes, after checking the dataset is a 1-D uint8 array."""
    import h5py

    if not isinstance(dset, h5py.Dataset) or dset.shape is None or dset.ndim != 1 or dset.dtype != np.uint8:
        found = f"shape {dset.shape}, dtype {dset.dtype}" if isinstance(dset, h5py.Dataset) else \
            f"a {type(dset).__name__.lower()}"
        raise WeightsError(f"{path}: {SPIECE_DATASET} should be the SentencePiece model's bytes (1-D uint8), "
                           f"found {found}")
    _data_offset(dset, path, file_size, "the SentencePiece model")
    return dset[()].tobytes()


def _data_offset(dset: Any, path: str, file_size: int, what: str) -> int | None:
    """The byte offset of a contiguous dataset's data, after checking it ends inside the file (else the
    file is truncated); None for chunked or compressed data, or data never written, which h5py reads."""
    offset = dset.id.get_offset() if dset.chunks is None and dset.compression is None else None
    if offset is not None and offset + int(np.prod(dset.shape, dtype=np.int64)) * dset.dtype.itemsize > file_size:
        raise _truncated(path, what)
    return offset


class _Shape:
    """Stands in for a tensor when only its shape is checked (nothing is read)."""

    __slots__ = ("shape",)

    def __init__(self, shape: tuple[int, ...]):
        self.shape = shape


def load(path: str | os.PathLike, dtype: Any = np.float32, mmap: bool = True) -> Albert:
    """Open a weights file as a ready model: `tinyalbert.Albert` with config, params and tokenizer.

    The tokenizer is a `tinyalbert.Tokenizer` built from the embedded SentencePiece model,
    or None when the file has none.  Params are computed in `dtype` (float32 by default): a float32
    file is memory-mapped, a float16 file is converted to float32 eagerly (2x its size in memory).
    The model computes in float32 or float64 only; dtype=None means float32.
    """
    from .nn.model import Albert

    dtype = np.float32 if dtype is None else dtype
    if np.dtype(dtype).name not in ("float32", "float64"):
        raise WeightsError(f"a model computes in float32 or float64, not {np.dtype(dtype).name}; "
                           "use load_params to read the stored tensors as they are")
    config, params, spiece, _ = load_params(path, dtype=dtype, mmap=mmap)
    tokenizer = None
    if spiece is not None:
        from .tokenizer import Tokenizer

        try:
            tokenizer = Tokenizer(spiece)
        except ValueError as e:
            raise WeightsError(f"{os.fspath(path)}: the embedded vocabulary ({SPIECE_DATASET}) is damaged: {e}"
                               ) from None
    return Albert(config, params, tokenizer=tokenizer)


# ---------------------------------------------------------------------------------------------------
# python -m tinyalbert.weights FILE.h5: describe a weights file (and check it opens)
# ---------------------------------------------------------------------------------------------------
def describe(path: str | os.PathLike) -> str:
    """A short human-readable summary of a weights file (validates it like load does)."""
    config, params, spiece, attrs = load_params(path)
    n = sum(int(p.size) for p in params.values())
    lines = [f"{os.fspath(path)}: tinyalbert weights, format_version {attrs['format_version']}, "
             f"stored as {attrs.get('dtype')}",
             f"  model: H={config.hidden_size} E={config.embedding_size} L={config.num_hidden_layers} "
             f"NH={config.num_attention_heads} I={config.intermediate_size} V={config.vocab_size}",
             f"  {len(params)} tensors, {n:,} parameters; SOP head: {'yes' if attrs['has_sop_head'] else 'no'}; "
             f"vocabulary: {'embedded' if spiece is not None else 'none'}",
             f"  created {attrs.get('created')} by tinyalbert {attrs.get('tinyalbert_version')}"]
    try:
        prov = json.loads(attrs.get("provenance_json") or "{}")
    except ValueError:
        prov = {}
    for item in prov.get("source_files", []):
        lines.append(f"  source {item.get('name')}: {item.get('bytes')} bytes, sha256 {item.get('sha256')}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import sys

    from .cli import OneLineParser

    parser = OneLineParser(prog="python -m tinyalbert.weights",
                           description="Check a tinyalbert weights file and print what it holds.")
    parser.add_argument("path", help="weights file (.h5) written by tinyalbert.convert or tinyalbert.weights.save")
    args = parser.parse_args(argv)
    try:
        print(describe(args.path))
    except WeightsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
