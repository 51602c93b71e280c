"""Google's TensorFlow checkpoints -> tinyalbert, read without TensorFlow (tinyalbert/tfcheckpoint.py).

The fixtures under tests/fixtures/tf/ were written by TensorFlow's own Saver and converted by
transformers' own load_tf_weights_in_albert (tests/make_tf_fixtures.py, run by a developer); these
tests need neither TensorFlow nor protobuf.  Corrupt checkpoints are made by copying the fixtures and
changing bytes; for the cases TensorFlow cannot easily be made to write (several shards, Snappy,
slices, an odd dtype) the index is rewritten with a small table writer below.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tinyalbert
from tinyalbert import convert as conv
from tinyalbert import tfcheckpoint as tfc
from tinyalbert.weights import load, load_params

PACKAGE_ROOT = str(Path(tinyalbert.__file__).parent.parent)
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "tf"
CKPT = FIXTURES / "ckpt"
HUB = FIXTURES / "hub"
REFERENCE = FIXTURES / "reference"
CKPT_PREFIX = CKPT / "model.ckpt-12345"
HUB_PREFIX = HUB / "variables" / "variables"
N_MODEL_VARIABLES = 80  # tests/make_tf_fixtures.py: 2 groups x 2 inner layers, both heads
SENTENCES = ("The cat sat on the mat.", "Then it fell asleep in the sun.")


def run(module: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = PACKAGE_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env,
                          timeout=300)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def reference_tensors() -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(REFERENCE / "model.safetensors"))


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("tf")
    return {layout: Path(conv.convert(src, out / f"{layout}.h5", progress=False))
            for layout, src in (("ckpt", CKPT), ("hub", HUB))}


# ---------------------------------------------------------------------------------------------------
# the format pieces
# ---------------------------------------------------------------------------------------------------
def test_crc32c_known_values():
    assert tfc.crc32c(b"123456789") == 0xE3069283  # the standard check value of CRC-32C
    assert tfc.crc32c(b"") == 0
    assert tfc.crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4: 32 bytes of zeros
    assert tfc.crc32c(bytes(range(32))) == 0x46DD794E  # RFC 3720 B.4: 0x00..0x1F
    data = np.random.default_rng(0).integers(0, 256, 1000, dtype=np.uint8)
    assert tfc.crc32c(data, chunk=7) == tfc.crc32c(data.tobytes())


def test_varint_and_protobuf_fields():
    assert tfc.read_varint(bytes([0xAC, 0x02]), 0) == (300, 2)
    # field 1 varint 19, field 2 bytes "ab", field 6 fixed32
    message = bytes([0x08, 19, 0x12, 2]) + b"ab" + bytes([0x35]) + struct.pack("<I", 0xDEADBEEF)
    assert tfc.protobuf_fields(message) == [(1, 19), (2, b"ab"), (6, 0xDEADBEEF)]


def test_reads_every_variable_of_both_layouts():
    ckpt, hub = tfc.TFCheckpoint(CKPT_PREFIX), tfc.TFCheckpoint(str(HUB_PREFIX) + ".index")
    assert len(ckpt.entries) == 3 * N_MODEL_VARIABLES + 1  # + adam_m, adam_v each, + global_step
    assert set(hub.entries) == {"module/" + n for n in ckpt.entries}
    for name, entry in ckpt.entries.items():
        a, b = ckpt.read(name), hub.read("module/" + name)
        assert a.shape == entry.shape and np.array_equal(a, b)
    assert ckpt.read("global_step").dtype == np.int64 and int(ckpt.read("global_step")) == 12345
    assert ckpt.read("bert/embeddings/word_embeddings").dtype == np.float32


def test_google_names():
    assert conv.google_to_reference("module/bert/encoder/transformer/group_1/inner_group_0/ffn_1/intermediate/"
                                    "output/dense/kernel") == \
        ("albert.encoder.albert_layer_groups.1.albert_layers.0.ffn_output.weight", True)
    assert conv.google_to_reference("cls/seq_relationship/output_weights") == ("sop_classifier.classifier.weight",
                                                                               False)
    assert conv.google_to_reference("bert/encoder/transformer/group_0/inner_group_0/LayerNorm_1/gamma") == \
        ("albert.encoder.albert_layer_groups.0.albert_layers.0.full_layer_layer_norm.weight", False)
    assert conv.google_to_reference("bert/something/else/kernel") is None
    assert conv.is_optimizer_state("module/bert/pooler/dense/kernel/adam_v")
    assert conv.is_optimizer_state("global_step")
    assert not conv.is_optimizer_state("bert/pooler/dense/kernel")


def test_source_detection(tmp_path):
    hub_files = (str(HUB_PREFIX), str(HUB / "assets" / "albert_config.json"), str(HUB / "assets" / "30k-clean.model"))
    assert conv.find_tf_source(str(HUB)) == hub_files
    assert conv.find_tf_source(str(HUB_PREFIX) + ".index") == hub_files
    ckpt_files = (str(CKPT_PREFIX), str(CKPT / "albert_config.json"), str(CKPT / "30k-clean.model"))
    assert conv.find_tf_source(str(CKPT)) == ckpt_files
    assert conv.find_tf_source(str(CKPT_PREFIX)) == ckpt_files
    assert conv.find_tf_source(str(REFERENCE)) is None  # a Hugging Face folder
    two = Path(shutil.copytree(CKPT, tmp_path / "two"))
    shutil.copyfile(index_of(two), two / "model.ckpt-1.index")
    with pytest.raises(conv.ConvertError, match="holds 2 TensorFlow checkpoints"):
        conv.find_tf_source(str(two))


def test_google_gelu_is_the_tanh_approximation(tmp_path):
    config = conv.google_config(str(CKPT / "albert_config.json"))
    assert config.hidden_act == "gelu_new"
    fields = json.loads((CKPT / "albert_config.json").read_text())
    fields["hidden_act"] = "relu"
    (tmp_path / "albert_config.json").write_text(json.dumps(fields))
    with pytest.raises(conv.ConvertError, match="hidden_act 'relu'"):
        conv.google_config(str(tmp_path / "albert_config.json"))


# ---------------------------------------------------------------------------------------------------
# against transformers' own conversion
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["ckpt", "hub"])
def test_bit_identical_to_the_reference_conversion(converted, layout):
    reference = reference_tensors()
    _, params, _, _ = load_params(converted[layout])
    assert set(params) == set(reference)
    for name, expected in reference.items():
        got = np.asarray(params[name])
        assert got.dtype == expected.dtype and got.shape == expected.shape, name
        assert got.tobytes() == expected.tobytes(), name


def test_config_and_provenance(converted):
    model = load(converted["ckpt"])
    assert model.has_sop_head
    assert model.config.hidden_act == "gelu_new"
    reference = json.loads((REFERENCE / "config.json").read_text())
    for key in ("vocab_size", "embedding_size", "hidden_size", "num_hidden_layers", "num_hidden_groups",
                "inner_group_num", "num_attention_heads", "intermediate_size", "max_position_embeddings",
                "hidden_act", "layer_norm_eps"):
        assert getattr(model.config, key) == reference[key], key
    import h5py

    with h5py.File(converted["ckpt"], "r") as f:
        provenance = json.loads(f.attrs["provenance_json"])
    skipped = provenance["skipped_optimizer_state"]
    assert len(skipped) == 2 * N_MODEL_VARIABLES + 1 and "global_step" in skipped


def test_outputs_match_transformers(converted):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    reference = transformers.AlbertForPreTraining.from_pretrained(REFERENCE).eval()
    rng = np.random.default_rng(3)
    ids = rng.integers(5, reference.config.vocab_size, (2, 12))
    types = np.zeros_like(ids)
    types[:, 7:] = 1
    with torch.no_grad():
        expected = reference(input_ids=torch.from_numpy(ids), token_type_ids=torch.from_numpy(types))
    for layout in ("ckpt", "hub"):
        got = load(converted[layout]).forward(ids, token_type_ids=types)
        mlm = expected.prediction_logits.numpy()
        # relative to the logits' scale: some of the 3072 logits are within 1e-3 of zero
        assert np.abs(got.mlm_logits - mlm).max() <= 1e-5 * np.abs(mlm).max()
        np.testing.assert_allclose(got.sop_logits, expected.sop_logits.numpy(), rtol=1e-5, atol=0)


# ---------------------------------------------------------------------------------------------------
# the command line, then predict --sop
# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["ckpt", "hub"])
def test_cli_then_predict_sop_matches_transformers(tmp_path, layout):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    out = tmp_path / "out.h5"
    result = run("tinyalbert.convert", str(FIXTURES / layout), str(out), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "skipped 160 optimizer slots (adam_m, adam_v) and global_step (12345)" in result.stderr
    result = run("tinyalbert.predict", "--sop", *SENTENCES, "--weights", str(out), "--json")
    assert result.returncode == 0, result.stderr
    got = json.loads(result.stdout)

    spiece = (CKPT if layout == "ckpt" else HUB / "assets") / "30k-clean.model"
    tokenizer = transformers.AlbertTokenizer(vocab_file=str(spiece))
    encoded = tokenizer(*SENTENCES, return_tensors="pt")
    assert encoded["input_ids"][0].tolist() == load(out).tokenizer.encode_pair(*SENTENCES)[0]
    reference = transformers.AlbertForPreTraining.from_pretrained(REFERENCE).eval()
    with torch.no_grad():
        logits = reference(**encoded).sop_logits[0].double()
    expected = torch.softmax(logits, -1).numpy()
    np.testing.assert_allclose([got["original_order"], got["swapped"]], expected, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------
# corrupt and unsupported checkpoints: one-line errors naming the file (and the variable)
# ---------------------------------------------------------------------------------------------------
@pytest.fixture
def ckpt_copy(tmp_path) -> Path:
    return Path(shutil.copytree(CKPT, tmp_path / "ckpt"))


def index_of(folder: Path) -> Path:
    return folder / "model.ckpt-12345.index"


def data_of(folder: Path) -> Path:
    return folder / "model.ckpt-12345.data-00000-of-00001"


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def convert_error(folder: Path, tmp_path: Path) -> str:
    return one_line_error(run("tinyalbert.convert", str(folder), str(tmp_path / "out.h5"), "--no-progress"))


def test_tensor_crc_mismatch(ckpt_copy, tmp_path):
    entry = tfc.TFCheckpoint(CKPT_PREFIX).entries["bert/pooler/dense/kernel"]
    flip_byte(data_of(ckpt_copy), entry.offset + 5)
    message = convert_error(ckpt_copy, tmp_path)
    assert "CRC32C mismatch for variable bert/pooler/dense/kernel" in message
    assert str(data_of(ckpt_copy)) in message


def test_optimizer_slot_crc_is_checked_too(ckpt_copy, tmp_path):
    entry = tfc.TFCheckpoint(CKPT_PREFIX).entries["bert/pooler/dense/kernel/adam_m"]
    flip_byte(data_of(ckpt_copy), entry.offset)
    assert "CRC32C mismatch for variable bert/pooler/dense/kernel/adam_m" in convert_error(ckpt_copy, tmp_path)


def test_index_block_crc_mismatch(ckpt_copy, tmp_path):
    flip_byte(index_of(ckpt_copy), 40)  # inside the first data block
    message = convert_error(ckpt_copy, tmp_path)
    assert "CRC32C mismatch in the data block at byte 0" in message and str(index_of(ckpt_copy)) in message


def test_truncated_data_file(ckpt_copy, tmp_path):
    data = data_of(ckpt_copy)
    data.write_bytes(data.read_bytes()[:-100])
    message = convert_error(ckpt_copy, tmp_path)
    assert "(truncated)" in message and str(data) in message and "variable " in message


def test_bad_footer_magic(ckpt_copy, tmp_path):
    index = index_of(ckpt_copy)
    flip_byte(index, index.stat().st_size - 1)
    message = convert_error(ckpt_copy, tmp_path)
    assert "bad footer magic" in message and str(index) in message


def test_truncated_index(ckpt_copy, tmp_path):
    index = index_of(ckpt_copy)
    index.write_bytes(index.read_bytes()[:-10])
    assert "bad footer magic" in convert_error(ckpt_copy, tmp_path)


# A minimal table writer, to make the checkpoints TensorFlow does not write by itself.
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _block(entries: list[tuple[bytes, bytes]], compression: int = 0, restart_interval: int = 16
           ) -> tuple[bytes, bytes]:
    """(block content, trailer), keys prefix-compressed between restart points as LevelDB writes them."""
    content, restarts, previous = bytearray(), [], b""
    for i, (key, value) in enumerate(entries):
        shared = 0
        if i % restart_interval:
            while shared < min(len(key), len(previous)) and key[shared] == previous[shared]:
                shared += 1
        else:
            restarts.append(len(content))
        content += _varint(shared) + _varint(len(key) - shared) + _varint(len(value)) + key[shared:] + value
        previous = key
    content += b"".join(struct.pack("<I", r) for r in restarts) + struct.pack("<I", len(restarts))
    type_byte = bytes([compression])
    return bytes(content), type_byte + struct.pack("<I", tfc.mask_crc(tfc.crc32c(bytes(content) + type_byte)))


def write_index(path: Path, entries: list[tuple[bytes, bytes]], compression: int = 0,
                entries_per_block: int = 50) -> None:
    """A .index file holding `entries` (sorted by key) in data blocks of `entries_per_block` entries."""
    out, index_entries = bytearray(), []
    for start in range(0, len(entries), entries_per_block):
        chunk = entries[start:start + entries_per_block]
        content, trailer = _block(chunk, compression)
        index_entries.append((chunk[-1][0], _varint(len(out)) + _varint(len(content))))
        out += content + trailer
    handles = []
    for block in ([], index_entries):
        content, trailer = _block(block)
        handles.append(_varint(len(out)) + _varint(len(content)))
        out += content + trailer
    footer = (handles[0] + handles[1]).ljust(40, b"\0") + struct.pack("<Q", tfc.TABLE_MAGIC)
    path.write_bytes(bytes(out) + footer)


def index_block_of(folder: Path) -> bytes:
    raw = index_of(folder).read_bytes()
    footer = raw[-tfc.FOOTER_LENGTH:]
    _, pos = tfc._read_handle(footer, 0)
    index_handle, _ = tfc._read_handle(footer, pos)
    return tfc._read_block(raw, index_handle, "", "index block")


def rewritten(folder: Path, change) -> None:
    """Rewrite folder's index with change(key, value) -> value applied to every entry."""
    raw = index_of(folder).read_bytes()
    entries = []
    for _, handle_bytes in tfc._block_entries(index_block_of(folder), "", "index block"):
        handle, _ = tfc._read_handle(handle_bytes, 0)
        entries += tfc._block_entries(tfc._read_block(raw, handle, "", "data block"), "", "data block")
    write_index(index_of(folder), [(k, change(k, v)) for k, v in entries])


def _entry_proto(dtype_code: int, shape: tuple[int, ...], offset: int, raw: bytes) -> bytes:
    dims = b"".join(_varint(2 << 3 | 2) + _varint(len(d)) + d for d in (_varint(1 << 3) + _varint(n) for n in shape))
    return (_varint(1 << 3) + _varint(dtype_code) + _varint(2 << 3 | 2) + _varint(len(dims)) + dims
            + _varint(4 << 3) + _varint(offset) + _varint(5 << 3) + _varint(len(raw))
            + _varint(6 << 3 | 5) + struct.pack("<I", tfc.mask_crc(tfc.crc32c(raw))))


def test_every_supported_dtype(tmp_path):
    rng = np.random.default_rng(1)
    wide = rng.normal(size=(3, 4)).astype(np.float32)
    bfloat16_bits = (wide.view(np.uint32) >> 16).astype("<u2")  # truncation: exact in bfloat16
    tensors = {b"a/half": (19, rng.normal(size=(2, 3)).astype("<f2")), b"b/bfloat16": (14, bfloat16_bits),
               b"c/double": (2, rng.normal(size=(5,)).astype("<f8")), b"d/int32": (3, np.arange(-3, 3, dtype="<i4")),
               b"e/scalar": (9, np.array(7, dtype="<i8")), b"f/empty": (1, np.zeros((0, 4), dtype="<f4"))}
    data, entries = bytearray(), [(b"", bytes([0x08, 1]))]  # the header: num_shards = 1
    for name, (code, array) in tensors.items():
        entries.append((name, _entry_proto(code, array.shape, len(data), array.tobytes())))
        data += array.tobytes()
    (tmp_path / "model.ckpt-12345.data-00000-of-00001").write_bytes(bytes(data))
    write_index(index_of(tmp_path), entries, entries_per_block=2)
    checkpoint = tfc.TFCheckpoint(tmp_path / "model.ckpt-12345")
    for name, (code, array) in tensors.items():
        got = checkpoint.read(name.decode())
        if code == 14:
            np.testing.assert_array_equal(got, (wide.view(np.uint32) & 0xFFFF0000).view(np.float32))
            assert got.dtype == np.float32
        else:
            assert got.dtype == array.dtype.newbyteorder("=") and np.array_equal(got, array)
        assert got.shape == array.shape


def test_rewritten_index_reads_the_same(ckpt_copy):
    rewritten(ckpt_copy, lambda key, value: value)  # 5 data blocks instead of TensorFlow's one
    assert len(tfc._block_entries(index_block_of(ckpt_copy), "", "")) == 5
    original, rewritten_one = tfc.TFCheckpoint(CKPT_PREFIX), tfc.TFCheckpoint(ckpt_copy / "model.ckpt-12345")
    assert original.entries.keys() == rewritten_one.entries.keys()
    for name in original.entries:
        assert np.array_equal(original.read(name), rewritten_one.read(name))


def test_several_shards(ckpt_copy, tmp_path):
    rewritten(ckpt_copy, lambda key, value: bytes([0x08, 2]) + value[2:] if key == b"" else value)
    message = convert_error(ckpt_copy, tmp_path)
    assert "split in 2 shards" in message and str(index_of(ckpt_copy)) in message


def all_entries(folder: Path) -> list[tuple[bytes, bytes]]:
    entries: list[tuple[bytes, bytes]] = []
    rewritten(folder, lambda key, value: entries.append((key, value)) or value)
    return entries


def test_snappy_blocks(ckpt_copy, tmp_path):
    write_index(index_of(ckpt_copy), all_entries(ckpt_copy), compression=tfc.SNAPPY_COMPRESSION)
    message = convert_error(ckpt_copy, tmp_path)
    assert "Snappy-compressed" in message and str(index_of(ckpt_copy)) in message


def _set_field(value: bytes, field: int, new_varint: int) -> bytes:
    """Replace the varint field `field` of a BundleEntryProto (re-encoded field by field)."""
    out = bytearray()
    for number, v in tfc.protobuf_fields(value):
        if number == field:
            v = new_varint
        if isinstance(v, bytes):
            out += _varint(number << 3 | 2) + _varint(len(v)) + v
        elif number == 6:
            out += _varint(number << 3 | 5) + struct.pack("<I", v)
        else:
            out += _varint(number << 3) + _varint(v)
    return bytes(out)


def test_unsupported_dtype(ckpt_copy, tmp_path):
    name = b"bert/pooler/dense/bias"
    rewritten(ckpt_copy, lambda key, value: _set_field(value, 1, 7) if key == name else value)  # DT_STRING
    message = convert_error(ckpt_copy, tmp_path)
    assert "variable bert/pooler/dense/bias has dtype string" in message and str(index_of(ckpt_copy)) in message


def test_partitioned_variable(ckpt_copy, tmp_path):
    name = b"bert/pooler/dense/kernel"
    slice_field = _varint(7 << 3 | 2) + _varint(0)  # an (empty) TensorSliceProto marks a partitioned variable
    rewritten(ckpt_copy, lambda key, value: value + slice_field if key == name else value)
    message = convert_error(ckpt_copy, tmp_path)
    assert "variable bert/pooler/dense/kernel is partitioned" in message and str(index_of(ckpt_copy)) in message


def test_unknown_variable_is_listed(ckpt_copy, tmp_path):
    renamed = [(b"bert/extra/kernel" if k == b"bert/pooler/dense/kernel" else k, v)
               for k, v in all_entries(ckpt_copy)]
    write_index(index_of(ckpt_copy), sorted(renamed))
    message = convert_error(ckpt_copy, tmp_path)
    assert "unexpected tensors: bert/extra/kernel" in message and "missing tensors: albert.pooler.weight" in message


def test_missing_config_and_vocabulary(tmp_path):
    hub = Path(shutil.copytree(HUB, tmp_path / "hub"))
    (hub / "assets" / "30k-clean.model").unlink()
    message = one_line_error(run("tinyalbert.convert", str(hub), str(tmp_path / "out.h5")))
    assert "missing 30k-clean.model" in message and str(hub / "assets") in message
