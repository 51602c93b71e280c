"""Convert a Hugging Face ALBERT checkpoint into a tinyalbert weights file.

    python -m tinyalbert.convert SRC OUT.h5 [--dtype float32|float16]
    python -m tinyalbert.convert [DIR] OUT.h5 --from-hub albert/albert-xxlarge-v2

From Python, `tinyalbert.convert(SRC, OUT.h5)` does the same as the first command (the module is
callable; `convert` below is the function it calls).

SRC is a checkpoint directory, or the weights file inside one.  The directory must hold:

    config.json                            the model's hyper-parameters
    spiece.model                           the SentencePiece vocabulary (embedded in OUT.h5)
    model.safetensors  or  pytorch_model.bin   the tensors

model.safetensors is read by this module itself (no torch, no safetensors package): the file is
an 8-byte little-endian header length, a JSON header giving each tensor's dtype, shape and byte
range, then the raw bytes.  pytorch_model.bin needs torch (imported only then).

Accepted checkpoints: AlbertForMaskedLM (what the hub publishes: no pooler, no SOP head) and
AlbertForPreTraining (with pooler and SOP head).  An AlbertModel checkpoint (bare encoder, keys
without the "albert." prefix) is refused: it has no MLM head, and every tinyalbert model needs one.
Tied duplicates (predictions.decoder.weight/bias) and buffers (*position_ids, *token_type_ids)
that older writers saved are ignored.  Anything else missing, unexpected or mis-shaped is refused
with the full list.

The tensor names need no renaming: tinyalbert uses the reference names as they are.

Google's original TensorFlow checkpoints (google-research/albert) are read too, without TensorFlow
(the format and its reader: tinyalbert/tfcheckpoint.py).  SRC is then

    a folder with model.ckpt-*.index, model.ckpt-*.data-00000-of-00001, albert_config.json and
    30k-clean.model (the released tar.gz), or one of its .index files / checkpoint prefixes;
    a TF-Hub module folder: variables/variables.{index,data-*}, assets/albert_config.json,
    assets/30k-clean.model (variable names may start with "module/").

Google's names are mapped to the reference names (`google_to_reference`), kernels transposed from
[in, out] to [out, in], and optimizer slots (adam_m, adam_v) and global_step skipped and reported.
These checkpoints keep the sentence-order head, so the converted file has one.  albert_config.json's
"hidden_act": "gelu" is Google's tanh approximation, stored as "gelu_new" (docs/weights-format.md).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import struct
import sys
import types
from typing import Any

import numpy as np

from .cli import CommandErrors, OneLineParser
from .nn.config import AlbertConfig
from .nn.params import EMB, MAPPING, MLM, POOLER, SOP, SOP_HEAD_KEYS, layer_prefix, param_shapes
from .tfcheckpoint import TFCheckpoint, TFCheckpointError, bfloat16_to_float32
from .weights import WeightsError, save

CONFIG_FILE = "config.json"
SPIECE_FILE = "spiece.model"
SAFETENSORS_FILE = "model.safetensors"
TORCH_FILE = "pytorch_model.bin"
HUB_FILES = (CONFIG_FILE, SPIECE_FILE, SAFETENSORS_FILE)
DEFAULT_HUB_REPO = "albert/albert-xxlarge-v2"

# Keys a checkpoint may carry that tinyalbert does not store: the MLM decoder is tied to the word
# embedding and to predictions.bias, and the position/token-type ids are buffers, not parameters.
TIED = {"predictions.decoder.weight": "albert.embeddings.word_embeddings.weight",
        "predictions.decoder.bias": "predictions.bias"}
BUFFER_SUFFIXES = ("position_ids", "token_type_ids")


class ConvertError(ValueError):
    """A checkpoint that cannot be converted; the message is one line (or a list) naming the problem."""

    exit_code = 1


class MissingFileError(ConvertError):
    """A required source file (config.json, spiece.model, the weights) is not there."""

    exit_code = 2


class HubUnavailable(ConvertError):
    """--from-hub could not download the files (no huggingface_hub, no network, ...)."""

    exit_code = 2


# ---------------------------------------------------------------------------------------------------
# reading safetensors without the safetensors package
# ---------------------------------------------------------------------------------------------------
# safetensors dtype code -> numpy dtype of the stored bytes (BF16 is decoded to float32 by hand).
# Integer tensors are read only so that buffers such as position_ids can be recognised and skipped.
_ST_DTYPES = {"F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
              "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
              "U8": np.dtype("u1"), "BOOL": np.dtype("?")}


class SourceTensor:
    """One tensor of a checkpoint, read only when np.asarray() asks for it.

    Has `.shape` and `.dtype` (the dtype it decodes to), so shapes can be checked before any data
    is read, and weights.save can convert a 0.9 GB checkpoint one tensor at a time.
    """

    def __init__(self, name: str, shape: tuple[int, ...], dtype: np.dtype, read, source_dtype: str):
        self.name, self.shape, self.dtype = name, tuple(shape), np.dtype(dtype)
        self.source_dtype = source_dtype
        self._read = read

    def __array__(self, dtype=None, copy=None):
        arr = self._read()
        return arr if dtype is None else arr.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"SourceTensor({self.name!r}, shape={self.shape}, {self.source_dtype})"


def read_safetensors(path: str) -> dict[str, SourceTensor]:
    """The tensors of a .safetensors file, memory-mapped (nothing is read until used)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ConvertError(f"{path} is not a safetensors file (shorter than 8 bytes)")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > min(size - 8, 100 << 20):
            raise ConvertError(f"{path} is not a safetensors file (header length {header_len} is impossible)")
        try:
            header = json.loads(f.read(header_len).decode("utf-8"))
        except (ValueError, RecursionError) as e:  # not UTF-8, not JSON, nested too deep, a 5000-digit number
            raise ConvertError(f"{path} is not a safetensors file (bad JSON header: {e})") from None
    if not isinstance(header, dict):
        raise ConvertError(f"{path} is not a safetensors file (header is not a JSON object)")
    if not isinstance(header.get("__metadata__", {}), dict):
        raise ConvertError(f"{path}: the header's __metadata__ is not a JSON object")
    data_start = 8 + header_len
    whole = np.memmap(path, dtype=np.uint8, mode="r") if size > data_start else np.zeros(0, np.uint8)
    tensors: dict[str, SourceTensor] = {}
    byte_ranges = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        code, shape, begin, end = _safetensors_entry(path, name, info)
        raw_dtype = _ST_DTYPES[code]
        count = math.prod(shape)
        if end - begin != count * raw_dtype.itemsize or data_start + end > size:
            raise ConvertError(f"{path}: tensor {name} has a bad byte range {begin}..{end} for {code} {list(shape)} "
                               "(file truncated or corrupt)")
        byte_ranges.append((begin, end, name))

        def read(begin=begin, count=count, raw_dtype=raw_dtype, shape=shape, code=code):
            lo = data_start + begin
            raw = whole[lo:lo + count * raw_dtype.itemsize]
            if lo % raw_dtype.itemsize:  # unaligned: copy out the bytes first
                raw = np.array(raw)
            arr = raw.view(raw_dtype).reshape(shape)
            return bfloat16_to_float32(arr) if code == "BF16" else arr

        decoded = np.float32 if code == "BF16" else raw_dtype.newbyteorder("=")
        tensors[name] = SourceTensor(name, shape, decoded, read, code)
    # The format's rule: the tensors' byte ranges tile the data exactly, no overlap and no hole; a
    # damaged offset that still lies inside the file would otherwise read another tensor's bytes.
    position = 0
    for begin, end, name in sorted(byte_ranges):
        if begin != position:
            problem = "overlaps the tensor before it" if begin < position else f"leaves a hole at byte {position}"
            raise ConvertError(f"{path}: tensor {name}'s byte range {begin}..{end} {problem} (file corrupt)")
        position = end
    if position != size - data_start:
        raise ConvertError(f"{path}: the tensors cover {position} bytes of the {size - data_start} after the "
                           "header (file corrupt)")
    return tensors


def _safetensors_entry(path: str, name: str, info: Any) -> tuple[str, tuple[int, ...], int, int]:
    """(dtype code, shape, begin, end) of one header entry, after checking every field's type."""

    def is_count(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
        raise ConvertError(f"{path}: malformed header entry for tensor {name} (needs dtype, shape and data_offsets)")
    code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(code, str) or code not in _ST_DTYPES:
        raise ConvertError(f"{path}: tensor {name} has dtype {code!r}; supported: {', '.join(_ST_DTYPES)}")
    if not isinstance(shape, list) or not all(is_count(n) for n in shape):
        raise ConvertError(f"{path}: tensor {name} has shape {shape!r}, not a list of sizes")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(is_count(n) for n in offsets) \
            or offsets[0] > offsets[1]:
        raise ConvertError(f"{path}: tensor {name} has data_offsets {offsets!r}, not [begin, end] with "
                           "0 <= begin <= end")
    return code, tuple(shape), offsets[0], offsets[1]


def read_torch_bin(path: str) -> dict[str, SourceTensor]:
    """The tensors of a pytorch_model.bin (needs torch; loaded with weights_only=True)."""
    try:
        import torch
    except ImportError:
        raise ConvertError(f"{path} is a PyTorch pickle and reading it needs torch, which is not installed; "
                           "install torch, or convert from model.safetensors instead") from None
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # old (non-zip) serialisation cannot be memory-mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a bad file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConvertError(f"cannot read {path} with torch.load(weights_only=True): {first}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ConvertError(f"{path} does not hold a state dict (found {type(state).__name__})")
    tensors: dict[str, SourceTensor] = {}
    for name, t in state.items():
        if not isinstance(name, str):
            raise ConvertError(f"{path}: the state dict has a key {name!r} ({type(name).__name__}), not a tensor name")
        if not isinstance(t, torch.Tensor):
            raise ConvertError(f"{path}: entry {name} is a {type(t).__name__}, not a tensor")
        if t.layout != torch.strided or t.is_meta or t.is_quantized:
            kind = "meta" if t.is_meta else "quantized" if t.is_quantized else str(t.layout).removeprefix("torch.")
            raise ConvertError(f"{path}: tensor {name} is a {kind} tensor; tinyalbert.convert reads dense ones")
        if not t.is_floating_point():
            # integer buffers such as position_ids: keep their names so they are recognised and ignored
            tensors[name] = SourceTensor(name, tuple(t.shape), np.int64, lambda t=t: t.numpy(), str(t.dtype))
            continue

        def read(t=t):
            t = t.detach()
            if t.dtype == torch.bfloat16:
                t = t.float()
            return t.numpy()

        dtype = np.float32 if t.dtype == torch.bfloat16 else torch.empty(0, dtype=t.dtype).numpy().dtype
        tensors[name] = SourceTensor(name, tuple(t.shape), dtype, read, str(t.dtype).removeprefix("torch."))
    return tensors


# ---------------------------------------------------------------------------------------------------
# Google's TensorFlow checkpoints
# ---------------------------------------------------------------------------------------------------
GOOGLE_CONFIG_FILE = "albert_config.json"
GOOGLE_SPIECE_FILE = "30k-clean.model"
HUB_INDEX = os.path.join("variables", "variables.index")
HUB_ASSETS = "assets"

# Google module -> reference module; a variable is "<module>/<leaf>" with the leaf renamed below.
_GOOGLE_MODULES = {
    "bert/embeddings/LayerNorm": EMB + "LayerNorm",
    "bert/encoder/embedding_hidden_mapping_in": MAPPING.rstrip("."),
    "bert/pooler/dense": POOLER.rstrip("."),
    "cls/predictions/transform/dense": MLM + "dense",
    "cls/predictions/transform/LayerNorm": MLM + "LayerNorm",
}
# ...and inside bert/encoder/transformer/group_G/inner_group_I/
_GOOGLE_LAYER_MODULES = {
    "attention_1/self/query": "attention.query",
    "attention_1/self/key": "attention.key",
    "attention_1/self/value": "attention.value",
    "attention_1/output/dense": "attention.dense",
    "LayerNorm": "attention.LayerNorm",
    "ffn_1/intermediate/dense": "ffn",
    "ffn_1/intermediate/output/dense": "ffn_output",
    "LayerNorm_1": "full_layer_layer_norm",
}
_GOOGLE_LEAVES = {"kernel": "weight", "bias": "bias", "gamma": "weight", "beta": "bias"}
# Whole variables with no module/leaf split.  output_weights is already [out, in]: no transpose.
_GOOGLE_VARIABLES = {
    "bert/embeddings/word_embeddings": EMB + "word_embeddings.weight",
    "bert/embeddings/position_embeddings": EMB + "position_embeddings.weight",
    "bert/embeddings/token_type_embeddings": EMB + "token_type_embeddings.weight",
    "cls/predictions/output_bias": MLM + "bias",
    "cls/seq_relationship/output_weights": SOP + "weight",
    "cls/seq_relationship/output_bias": SOP + "bias",
}
_LAYER_PATTERN = re.compile(r"bert/encoder/transformer/group_(\d+)/inner_group_(\d+)/(.+)")
_OPTIMIZER_SLOTS = ("adam_m", "adam_v")
# Google's albert_config.json keys for variants tinyalbert does not build, with their plain-ALBERT values.
_GOOGLE_PLAIN_VALUES = {"net_structure_type": 0, "gap_size": 0, "num_memory_blocks": 0, "down_scale_factor": 1,
                        "layers_to_keep": []}


def is_optimizer_state(name: str) -> bool:
    """adam_m / adam_v slots (Adam and LAMB) and the step counter: training state, not model weights."""
    name = name.removeprefix("module/")
    return name == "global_step" or name.rsplit("/", 1)[-1] in _OPTIMIZER_SLOTS


def google_to_reference(name: str) -> tuple[str, bool] | None:
    """(reference name, transpose?) of a Google ALBERT variable, or None if the name is not one.

    Kernels are stored [in, out] and the reference stores [out, in], hence the transpose.
    """
    name = name.removeprefix("module/")
    if name in _GOOGLE_VARIABLES:
        return _GOOGLE_VARIABLES[name], False
    module, _, leaf = name.rpartition("/")
    if leaf not in _GOOGLE_LEAVES:
        return None
    layer = _LAYER_PATTERN.fullmatch(module)
    if layer:
        inner_module = _GOOGLE_LAYER_MODULES.get(layer.group(3))
        if inner_module is None:
            return None
        reference_module = layer_prefix(int(layer.group(1)), int(layer.group(2))) + inner_module
    elif module in _GOOGLE_MODULES:
        reference_module = _GOOGLE_MODULES[module]
    else:
        return None
    return f"{reference_module}.{_GOOGLE_LEAVES[leaf]}", leaf == "kernel"


def _config_and_vocab(folder: str, config_name: str, spiece_name: str, where: str) -> tuple[str, str]:
    """The config and vocabulary files in `folder`; MissingFileError naming the first one absent."""
    paths = os.path.join(folder, config_name), os.path.join(folder, spiece_name)
    for needed in paths:
        if not os.path.isfile(needed):
            raise MissingFileError(f"missing {os.path.basename(needed)}: expected it at {needed} ({where})")
    return paths


def find_tf_source(src: str) -> tuple[str, str, str] | None:
    """(checkpoint prefix, albert_config.json, 30k-clean.model) if `src` is a Google TF checkpoint, else None.

    src: a released-tar.gz folder, a TF-Hub module folder, a .index file or a checkpoint prefix.
    """
    if os.path.isdir(src):
        if os.path.isfile(os.path.join(src, HUB_INDEX)):
            prefix = os.path.join(src, HUB_INDEX).removesuffix(".index")
            assets = os.path.join(src, HUB_ASSETS)
        else:
            indexes = sorted(n for n in os.listdir(src) if n.endswith(".index"))
            if not indexes:
                return None
            if len(indexes) > 1:
                raise ConvertError(f"{src} holds {len(indexes)} TensorFlow checkpoints ({', '.join(indexes)}); "
                                   "pass the .index file of the one to convert")
            prefix = os.path.join(src, indexes[0]).removesuffix(".index")
            assets = src
    elif src.endswith(".index") and os.path.isfile(src):
        prefix, assets = src.removesuffix(".index"), os.path.dirname(os.path.abspath(src))
    elif not os.path.exists(src) and os.path.isfile(src + ".index"):
        prefix, assets = src, os.path.dirname(os.path.abspath(src))
    else:
        return None
    if os.path.basename(os.path.dirname(os.path.abspath(prefix))) == "variables" and \
            not os.path.isfile(os.path.join(assets, GOOGLE_CONFIG_FILE)):
        assets = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(prefix))), HUB_ASSETS)
    return (prefix, *_config_and_vocab(assets, GOOGLE_CONFIG_FILE, GOOGLE_SPIECE_FILE,
                                       "beside the TensorFlow checkpoint"))


def google_config(path: str) -> AlbertConfig:
    """albert_config.json -> AlbertConfig; Google's "gelu" (tanh approximation) becomes "gelu_new"."""
    try:
        with open(path, encoding="utf-8") as f:
            fields = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConvertError(f"{path}: cannot read it as JSON ({e})") from None
    if not isinstance(fields, dict):
        raise ConvertError(f"{path}: not a JSON object")
    for key, plain in _GOOGLE_PLAIN_VALUES.items():
        if key in fields and fields.pop(key) not in (plain, None):
            raise ConvertError(f"{path}: {key} is not {plain!r}; tinyalbert builds only the plain ALBERT")
    activation = fields.get("hidden_act", "gelu")
    if activation != "gelu":
        raise ConvertError(f"{path}: hidden_act {activation!r} is not supported; Google's 'gelu' (the tanh "
                           "approximation) is")
    fields["hidden_act"] = "gelu_new"
    fields.setdefault("architectures", ["AlbertForPreTraining"])
    try:
        return AlbertConfig.from_dict(fields)
    except (ValueError, TypeError) as e:
        raise ConvertError(f"{path}: {e}") from None


def read_tf_checkpoint(prefix: str) -> tuple[dict[str, SourceTensor], list[str], TFCheckpoint]:
    """(tensors under reference names, skipped optimizer-state names, the checkpoint) of a Google checkpoint.

    Names that are neither model variables nor optimizer state are kept as they are, so that
    select_params lists them as unexpected.
    """
    try:
        checkpoint = TFCheckpoint(prefix)
    except TFCheckpointError as e:
        raise ConvertError(str(e)) from None
    tensors: dict[str, SourceTensor] = {}
    skipped: list[str] = []
    for name, entry in checkpoint.entries.items():
        if is_optimizer_state(name):
            skipped.append(name)
            continue
        mapped = google_to_reference(name)
        target, transpose = mapped if mapped else (name, False)
        if target in tensors:
            raise ConvertError(f"{checkpoint.index_path}: variables {tensors[target].name} and {name} both map "
                               f"to {target}")
        try:
            dtype = checkpoint.decoded_dtype(name)
        except TFCheckpointError as e:
            raise ConvertError(str(e)) from None
        if transpose and len(entry.shape) != 2:
            raise ConvertError(f"{checkpoint.index_path}: variable {name} has shape {entry.shape}; a kernel "
                               "should be 2-D")

        def read(name=name, transpose=transpose):
            try:
                array = checkpoint.read(name)
            except TFCheckpointError as e:
                raise ConvertError(str(e)) from None
            return np.ascontiguousarray(array.T) if transpose else array

        shape = entry.shape[::-1] if transpose else entry.shape
        tensors[target] = SourceTensor(name, shape, dtype, read, entry.dtype_name)
    return tensors, skipped, checkpoint


def verify_skipped(checkpoint: TFCheckpoint, skipped: list[str]) -> None:
    """Check the CRC of the tensors that are not converted too, so that a corrupt file never passes."""
    for name in skipped:
        try:
            checkpoint.verify(name)
        except TFCheckpointError as e:
            raise ConvertError(str(e)) from None


def describe_skipped(checkpoint: TFCheckpoint, skipped: list[str]) -> str:
    """One line: how many optimizer tensors were skipped, and the global step if there is one."""
    slots = [n for n in skipped if n.removeprefix("module/") != "global_step"]
    parts = [f"{len(slots)} optimizer slots (adam_m, adam_v)"] if slots else []
    for name in skipped:
        if name.removeprefix("module/") == "global_step":
            try:
                step = checkpoint.read(name)
            except TFCheckpointError:  # a step counter of an odd dtype is still only a step counter
                step = None
            parts.append(f"global_step ({int(step)})" if step is not None and step.size == 1 else "global_step")
    return "skipped " + " and ".join(parts) if parts else ""


# ---------------------------------------------------------------------------------------------------
# finding the files and matching the tensors
# ---------------------------------------------------------------------------------------------------
def find_source(src: str) -> tuple[str, str, str]:
    """(weights file, config.json, spiece.model) for a checkpoint directory or weights file."""
    src = os.fspath(src)
    if not os.path.exists(src):
        raise MissingFileError(f"source not found: {src}")
    if os.path.isdir(src):
        directory = src
        for name in (SAFETENSORS_FILE, TORCH_FILE):
            if os.path.isfile(os.path.join(src, name)):
                weights_file = os.path.join(src, name)
                break
        else:
            sharded = [n for n in os.listdir(src) if n.endswith(".index.json")]
            if sharded:
                raise ConvertError(f"{src} holds a sharded checkpoint ({sharded[0]}); tinyalbert.convert reads "
                                   f"a single {SAFETENSORS_FILE} or {TORCH_FILE}")
            raise MissingFileError(f"{src} has no {SAFETENSORS_FILE} or {TORCH_FILE}")
    else:
        weights_file = src
        directory = os.path.dirname(os.path.abspath(src))
    return (weights_file, *_config_and_vocab(directory, CONFIG_FILE, SPIECE_FILE, "next to the checkpoint's weights"))


def read_tensors(weights_file: str) -> dict[str, SourceTensor]:
    """Dispatch on the file's content: safetensors, or a torch zip/pickle."""
    with open(weights_file, "rb") as f:
        head = f.read(9)
    if head[:2] == b"PK" or head[:1] == b"\x80":  # zip archive (torch >= 1.6) or bare pickle
        return read_torch_bin(weights_file)
    if len(head) == 9 and head[8:9] == b"{":
        return read_safetensors(weights_file)
    raise ConvertError(f"{weights_file} is neither a safetensors file nor a PyTorch checkpoint")


def select_params(tensors: dict[str, SourceTensor], config: AlbertConfig, where: str) -> dict[str, SourceTensor]:
    """Match checkpoint tensors to tinyalbert's parameters; refuse with a full list if they don't fit."""
    names = list(tensors)
    if names and not any(n.startswith("albert.") for n in names) and any(n.startswith("embeddings.") for n in names):
        raise ConvertError(
            f"{where} is an AlbertModel checkpoint (bare encoder: keys like 'embeddings.word_embeddings.weight' "
            "without the 'albert.' prefix). It has no MLM head (predictions.*), which every tinyalbert model "
            "needs; convert an AlbertForMaskedLM or AlbertForPreTraining checkpoint instead")
    kept = {n: t for n, t in tensors.items()
            if n not in TIED and n.rsplit(".", 1)[-1] not in BUFFER_SUFFIXES}
    sop_head = any(k in kept for k in SOP_HEAD_KEYS)
    expected = param_shapes(config, sop_head=sop_head)
    problems = []
    missing = [k for k in expected if k not in kept]
    if missing:
        problems.append("missing tensors: " + ", ".join(missing))
    unexpected = [k for k in kept if k not in expected]
    if unexpected:
        problems.append("unexpected tensors: " + ", ".join(unexpected))
    for k, shape in expected.items():
        if k in kept and kept[k].shape != shape:
            problems.append(f"tensor {k} has shape {kept[k].shape}, expected {shape} (from config.json)")
    for k, t in kept.items():
        if k in expected and not np.issubdtype(t.dtype, np.floating):
            problems.append(f"tensor {k} has dtype {t.source_dtype}, expected a float type")
    if problems:
        raise ConvertError(f"{where} does not match config.json: " + "; ".join(problems))
    # An untied decoder would silently change the model: make sure the duplicates really are duplicates.
    for dup, target in TIED.items():
        if dup in tensors and target in kept:
            a, b = np.asarray(tensors[dup]), np.asarray(kept[target])
            if a.shape != b.shape or not np.array_equal(a, b):
                raise ConvertError(f"{where}: {dup} differs from {target}; tinyalbert ties the MLM decoder "
                                   "to them, so it cannot represent this checkpoint")
    return {k: kept[k] for k in expected}


def _sha256(path: str, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _check_vocab(spiece_bytes: bytes, config: AlbertConfig, spiece_file: str) -> None:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(spiece_bytes)
    except Exception:  # sentencepiece raises RuntimeError or OSError depending on the version
        raise ConvertError(f"{spiece_file} is not a SentencePiece model") from None
    if sp.GetPieceSize() != config.vocab_size:
        raise ConvertError(f"{spiece_file} has {sp.GetPieceSize()} pieces but config.json says "
                           f"vocab_size={config.vocab_size}")


def convert(src: str | os.PathLike, out_path: str | os.PathLike, dtype: str = "float32",
            progress: bool | None = None) -> str:
    """Convert the checkpoint at `src` (directory or weights file) into `out_path`; returns out_path.

    dtype: "float32" (bit-identical to a float32 checkpoint) or "float16" (half the size; loaded
    back as float32).  progress: show a tqdm bar (None = only on a terminal).
    Raises ConvertError (MissingFileError for an absent config.json / spiece.model / weights).
    """
    from . import __version__

    try:
        out_dtype = np.dtype(dtype)
    except TypeError:
        out_dtype = None
    if out_dtype is None or out_dtype.name not in ("float32", "float16"):
        raise ConvertError(f"dtype must be float32 or float16, not {dtype}")
    out_dir = os.path.dirname(os.path.abspath(os.fspath(out_path)))
    if not os.path.isdir(out_dir):
        raise ConvertError(f"output directory does not exist: {out_dir}")
    src = os.fspath(src)
    tf_source = find_tf_source(src)
    if tf_source:
        prefix, config_file, spiece_file = tf_source
        config = google_config(config_file)
    else:
        weights_file, config_file, spiece_file = find_source(src)
        try:
            config = AlbertConfig.from_json(config_file)
        except (ValueError, TypeError) as e:
            raise ConvertError(f"{config_file}: {e}") from None
    with open(spiece_file, "rb") as f:
        spiece_bytes = f.read()
    _check_vocab(spiece_bytes, config, spiece_file)

    skipped_note = ""
    if tf_source:
        tensors, skipped, checkpoint = read_tf_checkpoint(prefix)
        weights_file = checkpoint.index_path
        if POOLER + "weight" in tensors and SOP + "weight" not in tensors:
            # a module exported without the SOP head: its pooler alone has no use in tinyalbert
            tensors = {k: t for k, t in tensors.items() if not k.startswith(POOLER)}
        verify_skipped(checkpoint, skipped)
        skipped_note = describe_skipped(checkpoint, skipped)
        source_files = (checkpoint.index_path, checkpoint.data_path, config_file, spiece_file)
    else:
        tensors = read_tensors(weights_file)
        source_files = (weights_file, config_file, spiece_file)
    params = select_params(tensors, config, weights_file)
    if out_dtype == np.float16:
        params = {k: _checked_half(t) for k, t in params.items()}

    architectures = config.extra.get("architectures")
    provenance = {
        "converter": f"tinyalbert.convert {__version__}",
        "source": os.path.abspath(os.fspath(src)),
        "source_architectures": architectures,
        "source_dtypes": sorted({t.source_dtype for t in tensors.values()}),
        "source_files": [{"name": os.path.basename(p), "bytes": os.path.getsize(p), "sha256": _sha256(p)}
                         for p in source_files],
        "ignored_tensors": sorted(set(tensors) - set(params)),
    }
    if tf_source:
        provenance["source_format"] = "TensorFlow checkpoint (google-research/albert)"
        provenance["skipped_optimizer_state"] = skipped
        provenance["source_hidden_act"] = "gelu (Google's tanh approximation, stored as gelu_new)"
    total = sum(int(np.prod(t.shape, dtype=np.int64)) for t in params.values()) * out_dtype.itemsize
    from tqdm import tqdm

    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="converting",
              disable=None if progress is None else not progress, file=sys.stderr) as bar:
        try:
            save(out_path, config, params, spiece_model_bytes=spiece_bytes, provenance=provenance,
                 dtype=out_dtype, progress=bar.update)
        except WeightsError as e:
            raise ConvertError(str(e)) from None
    if skipped_note:
        print(f"{skipped_note} (training state, not model weights)", file=sys.stderr)
    return os.fspath(out_path)


def _checked_half(t: SourceTensor) -> SourceTensor:
    """Wrap a tensor so that its float16 copy is checked for overflow when it is written."""

    def read():
        arr = np.asarray(t)
        half = arr.astype(np.float16)
        if not np.isfinite(half).all() and np.isfinite(arr).all():
            raise ConvertError(f"tensor {t.name} overflows float16 (|x| > 65504); convert with --dtype float32")
        return half

    return SourceTensor(t.name, t.shape, np.float16, read, t.source_dtype)


# ---------------------------------------------------------------------------------------------------
# --from-hub
# ---------------------------------------------------------------------------------------------------
def manual_download_help(repo: str, directory: str | None) -> str:
    where = directory or f"a new directory, e.g. ./{repo.rstrip('/').split('/')[-1]}"
    lines = [f"Download these {len(HUB_FILES)} files by hand from https://huggingface.co/{repo}/tree/main",
             f"and put them together in {where}:"]
    lines += [f"    https://huggingface.co/{repo}/resolve/main/{name}" for name in HUB_FILES]
    lines.append(f"then run: python -m tinyalbert.convert {directory or 'DIR'} OUT.h5")
    return "\n".join(lines)


def _hub_reachable(timeout: float = 5.0) -> bool:
    """Can we open a TCP connection to the hub?  (Fails fast instead of the client's long retries.)"""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                      timeout=timeout):
            return True
    except OSError:
        return False


def download_from_hub(repo: str, directory: str | None) -> str:
    """Fetch config.json, spiece.model and model.safetensors; returns the directory holding them.

    Without network only files already in the local hub cache can be used.
    """
    import logging

    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise HubUnavailable("huggingface_hub is not installed") from None
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)  # no retry chatter
    online = _hub_reachable()
    paths = []
    try:
        for name in HUB_FILES:
            kwargs = {"local_dir": directory} if directory else {}
            paths.append(hf_hub_download(repo_id=repo, filename=name, local_files_only=not online, **kwargs))
    except Exception as e:  # offline, 404, disk full, ...: all mean "do it by hand"
        if not online:
            reason = "no network connection to the Hugging Face Hub and the files are not cached"
        else:
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            reason = f"{type(e).__name__}: {first[:160]}"
        raise HubUnavailable(f"could not download {repo} ({reason})") from None
    return os.path.dirname(paths[0])


# ---------------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m tinyalbert.convert",
        usage="python -m tinyalbert.convert SRC OUT.h5 [--dtype float32|float16]\n"
              "       python -m tinyalbert.convert [DIR] OUT.h5 --from-hub REPO [--dtype float32|float16]",
        description="Convert a Hugging Face ALBERT checkpoint (model.safetensors or pytorch_model.bin, with "
                    "config.json and spiece.model beside it), or one of Google's original TensorFlow checkpoints "
                    "(model.ckpt-*.index/.data-*, albert_config.json, 30k-clean.model; or a TF-Hub module folder), "
                    "into a tinyalbert HDF5 weights file.",
        epilog="examples:\n"
               "  python -m tinyalbert.convert ./albert-xxlarge-v2 weights/albert-xxlarge-v2.h5\n"
               "  python -m tinyalbert.convert ./albert-xxlarge-v2 xxlarge-fp16.h5 --dtype float16\n"
               "  python -m tinyalbert.convert ./albert-xxlarge-v2 out.h5 --from-hub albert/albert-xxlarge-v2\n"
               "  python -m tinyalbert.convert ./albert_xxlarge weights/albert-xxlarge-v2.h5   (Google's tar.gz)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="+", metavar="PATH",
                   help="SRC (checkpoint directory or weights file), then OUT.h5; with --from-hub, "
                        "DIR (where to download; default: the hub cache), then OUT.h5")
    p.add_argument("--dtype", choices=("float32", "float16"), default="float32",
                   help="storage dtype of OUT.h5 (float16 halves the file; it is computed in float32)")
    p.add_argument("--from-hub", metavar="REPO", default=None,
                   help=f"download the checkpoint first with huggingface_hub, e.g. {DEFAULT_HUB_REPO}")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    with CommandErrors((ConvertError, WeightsError, OSError), code=1) as status:
        if args.from_hub:
            if len(args.paths) > 2:
                parser.error("with --from-hub give at most [DIR] OUT.h5")
            directory = args.paths[0] if len(args.paths) == 2 else None
            out = args.paths[-1]
            try:
                src = download_from_hub(args.from_hub, directory)
            except HubUnavailable as e:
                print(f"error: {e}", file=sys.stderr)
                print(manual_download_help(args.from_hub, directory), file=sys.stderr)
                return e.exit_code
        else:
            if len(args.paths) != 2:
                parser.error("expected SRC OUT.h5")
            src, out = args.paths
        convert(src, out, dtype=args.dtype, progress=False if args.no_progress else None)
    if status.exit_code:
        return status.exit_code
    size = os.path.getsize(out)
    print(f"wrote {out} ({size / 2**20:.1f} MiB, {args.dtype})")
    return 0


class _CallableModule(types.ModuleType):
    """The type of this module: calling it calls `convert`, so `tinyalbert.convert(src, out_path)` works.

    A package attribute cannot be both a submodule and a function (importing the submodule rebinds the
    name to the module), so the module itself is made callable; `tinyalbert.convert.ConvertError` and
    the other names stay where they are.
    """

    def __call__(self, src: str | os.PathLike, out_path: str | os.PathLike, dtype: str = "float32",
                 progress: bool | None = None) -> str:
        """Same as `tinyalbert.convert.convert(src, out_path, dtype, progress)`."""
        return convert(src, out_path, dtype=dtype, progress=progress)


sys.modules[__name__].__class__ = _CallableModule


if __name__ == "__main__":
    sys.exit(main())
