"""Read a TensorFlow checkpoint (a "tensor bundle") with NumPy alone: no TensorFlow, no protobuf package.

Google released ALBERT as TF1 checkpoints.  A checkpoint is a prefix, e.g. `model.ckpt-best`, and two
files beside it (TF-Hub modules use the same format, under `variables/variables.*`):

    model.ckpt-best.index                  which tensors exist, and where their bytes are
    model.ckpt-best.data-00000-of-00001    the tensors' raw bytes, one after the other

The data file is nothing but concatenated little-endian arrays.  All the structure is in the index.

The .index file: a sorted table (LevelDB's SSTable format)
---------------------------------------------------------
The file is a sequence of *blocks* and ends with a fixed 48-byte *footer*:

    footer = metaindex handle, index handle, zero padding up to 40 bytes, magic (8 bytes)
    handle = varint64 offset, varint64 size            (where a block starts, how long it is)
    magic  = 0xdb4775248b80fb57, little-endian

A *varint* stores an unsigned integer 7 bits per byte, low bits first; the top bit of a byte says
"more bytes follow".  So 300 = 0b10_0101100 is stored as 0xAC 0x02.

Every block is followed by a 5-byte *trailer*: one byte of compression type (0 = none, 1 = Snappy)
and the *masked* CRC32C of the block's bytes plus that type byte.  A block's content is a list of
key/value entries followed by its *restart points*:

    entry    = varint shared, varint unshared, varint value_length, key[shared:] bytes, value bytes
    restarts = uint32 offset of each restart entry ..., uint32 count        (all little-endian)

Keys are sorted and prefix-compressed: an entry's key is the first `shared` bytes of the previous
key followed by its own `unshared` bytes.  At a restart point `shared` is 0, so a reader seeking a key
can binary-search the restarts; reading every entry in order (as here) only needs the count, to know
where the entries stop.

The *index block* (found through the footer) has one entry per data block: its value is the data
block's handle.  The data blocks hold the real entries: key = the tensor's name, value = a
`BundleEntryProto`.  The *metaindex block* is empty in tensor bundles.

The values: protocol-buffer messages, decoded by hand
-----------------------------------------------------
A protobuf message is a list of fields.  Each field starts with a varint *tag* = field_number << 3 |
wire_type; wire type 0 is a varint, 1 a fixed 8 bytes, 2 a varint length then that many bytes (a
string or a nested message), 5 a fixed 4 bytes.  Fields may come in any order, and unknown fields are
skipped by their wire type.  The two messages here:

    BundleEntryProto (one per tensor)          BundleHeaderProto (the entry whose key is "")
      1 dtype     varint  (1 = float32, ...)     1 num_shards   varint
      2 shape     TensorShapeProto               2 endianness   varint (0 = little)
      3 shard_id  varint                         3 version      VersionDef
      4 offset    varint  (byte offset in the data file)
      5 size      varint  (number of bytes)
      6 crc32c    fixed32 (masked CRC32C of those bytes)
      7 slices    TensorSliceProto (only for partitioned variables)

    TensorShapeProto: 2 dim (repeated message: 1 size varint, 2 name string), 3 unknown_rank varint

Checksums
---------
CRC32C is the Castagnoli CRC (reflected polynomial 0x82F63B78), computed here with a 256-entry table
one byte at a time in a Numba kernel.  LevelDB and TensorFlow store it *masked*, rotated right by 15
bits plus the constant 0xa282ead8, so that a CRC of data holding CRCs does not degenerate.  Every
block's trailer is checked when the index is parsed; every tensor's crc32c when its bytes are read.

What is refused (each with a one-line `TFCheckpointError` naming the file, and the variable if any):
Snappy-compressed blocks, a bundle in several shards, big-endian bundles, dtypes other than float16,
bfloat16, float32, float64, int32 and int64, and partitioned variables (saved as slices).
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import numpy as np
from numba import njit

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_LENGTH = 48  # two handles of at most 2 x 10 varint bytes each, padded to 40, then the magic
BLOCK_TRAILER_LENGTH = 5
NO_COMPRESSION, SNAPPY_COMPRESSION = 0, 1
CRC_MASK_DELTA = 0xA282EAD8

# TensorFlow's DataType enum -> little-endian NumPy dtype of the stored bytes (bfloat16 is decoded by hand).
DTYPES = {1: np.dtype("<f4"), 2: np.dtype("<f8"), 3: np.dtype("<i4"), 9: np.dtype("<i8"),
          14: np.dtype("<u2"), 19: np.dtype("<f2")}
DTYPE_NAMES = {1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8", 7: "string",
               8: "complex64", 9: "int64", 10: "bool", 14: "bfloat16", 18: "complex128", 19: "float16",
               20: "resource", 21: "variant", 22: "uint32", 23: "uint64"}
BFLOAT16 = 14


def bfloat16_to_float32(raw: np.ndarray) -> np.ndarray:
    """bfloat16 (stored as uint16) is the top 16 bits of a float32: shift them back into place."""
    return (raw.astype(np.uint32) << 16).view(np.float32)


class TFCheckpointError(ValueError):
    """A checkpoint that cannot be read; the message is one line naming the file (and the variable)."""


# ---------------------------------------------------------------------------------------------------
# CRC32C
# ---------------------------------------------------------------------------------------------------
def _crc32c_table() -> np.ndarray:
    table = np.zeros(256, dtype=np.uint32)
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table[byte] = crc
    return table


_CRC_TABLE = _crc32c_table()


@njit(cache=True)
def _crc32c_update(crc: np.uint32, data: np.ndarray, table: np.ndarray) -> np.uint32:
    """Feed `data` (uint8) into a running CRC32C (pre-inverted form)."""
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc


def crc32c(data: bytes | np.ndarray, chunk: int = 64 << 20) -> int:
    """CRC32C of `data` (bytes or a uint8 array, memory-mapped ones included), as an unsigned 32-bit int."""
    array = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    crc = np.uint32(0xFFFFFFFF)
    for start in range(0, len(array), chunk):  # chunks keep a memory-mapped read from paging in all at once
        crc = _crc32c_update(crc, np.ascontiguousarray(array[start:start + chunk]), _CRC_TABLE)
    return int(crc) ^ 0xFFFFFFFF


def mask_crc(crc: int) -> int:
    """LevelDB's masking: rotate right by 15 bits, add a constant (mod 2^32)."""
    return (((crc >> 15) | (crc << 17)) + CRC_MASK_DELTA) & 0xFFFFFFFF


# ---------------------------------------------------------------------------------------------------
# varints and protobuf fields
# ---------------------------------------------------------------------------------------------------
def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """(value, position after it) of the varint starting at buf[pos]; IndexError/ValueError if malformed."""
    value = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def protobuf_fields(buf: bytes) -> list[tuple[int, int | bytes]]:
    """The (field number, value) pairs of a serialized message, in order.

    Varint and fixed-width fields give ints; length-delimited fields give their bytes.
    """
    fields = []
    pos = 0
    while pos < len(buf):
        tag, pos = read_varint(buf, pos)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == 0:
            value, pos = read_varint(buf, pos)
        elif wire_type == 1:
            value, pos = int.from_bytes(buf[pos:pos + 8], "little"), pos + 8
        elif wire_type == 2:
            length, pos = read_varint(buf, pos)
            value, pos = bytes(buf[pos:pos + length]), pos + length
        elif wire_type == 5:
            value, pos = int.from_bytes(buf[pos:pos + 4], "little"), pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire_type}")
        if pos > len(buf):
            raise ValueError("protobuf field runs past the end of the message")
        fields.append((number, value))
    return fields


@dataclass(frozen=True)
class BundleEntry:
    """Where one tensor is: the decoded BundleEntryProto."""

    name: str
    dtype_code: int
    shape: tuple[int, ...]
    shard_id: int
    offset: int
    size: int
    masked_crc32c: int | None
    is_sliced: bool

    @property
    def dtype_name(self) -> str:
        return DTYPE_NAMES.get(self.dtype_code, f"DataType {self.dtype_code}")


def _decode_shape(buf: bytes) -> tuple[int, ...]:
    dims = []
    for number, value in protobuf_fields(buf):
        if number == 2:
            size = dict(protobuf_fields(value)).get(1, 0)
            dims.append(size - (1 << 64) if size >= 1 << 63 else size)  # int64: -1 means unknown
        elif number == 3 and value:
            raise ValueError("shape of unknown rank")
    return tuple(dims)


def decode_bundle_entry(name: str, buf: bytes) -> BundleEntry:
    """Decode a BundleEntryProto (field numbers in the module docstring); absent fields are 0."""
    dtype_code = shard_id = offset = size = 0
    shape: tuple[int, ...] = ()
    masked_crc = None
    is_sliced = False
    for number, value in protobuf_fields(buf):
        if number == 1:
            dtype_code = value
        elif number == 2:
            shape = _decode_shape(value)
        elif number == 3:
            shard_id = value
        elif number == 4:
            offset = value
        elif number == 5:
            size = value
        elif number == 6:
            masked_crc = value
        elif number == 7:
            is_sliced = True
    return BundleEntry(name, dtype_code, shape, shard_id, offset, size, masked_crc, is_sliced)


# ---------------------------------------------------------------------------------------------------
# the .index table
# ---------------------------------------------------------------------------------------------------
def _read_handle(buf: bytes, pos: int) -> tuple[tuple[int, int], int]:
    offset, pos = read_varint(buf, pos)
    size, pos = read_varint(buf, pos)
    return (offset, size), pos


def _read_block(index_bytes: bytes, handle: tuple[int, int], path: str, what: str) -> bytes:
    """The content of the block at `handle`, after checking its trailer (compression type and CRC)."""
    offset, size = handle
    end = offset + size + BLOCK_TRAILER_LENGTH
    if end > len(index_bytes) - FOOTER_LENGTH:
        raise TFCheckpointError(f"{path}: {what} at byte {offset} runs past the end of the file (truncated or corrupt)")
    content = index_bytes[offset:offset + size]
    compression = index_bytes[offset + size]
    (stored,) = struct.unpack_from("<I", index_bytes, offset + size + 1)
    if mask_crc(crc32c(index_bytes[offset:offset + size + 1])) != stored:
        raise TFCheckpointError(f"{path}: CRC32C mismatch in the {what} at byte {offset} (the file is corrupt)")
    if compression == SNAPPY_COMPRESSION:
        raise TFCheckpointError(f"{path}: the {what} at byte {offset} is Snappy-compressed, which this reader "
                                "does not decode (TensorFlow writes checkpoints uncompressed)")
    if compression != NO_COMPRESSION:
        raise TFCheckpointError(f"{path}: the {what} at byte {offset} has unknown compression type {compression}")
    return content


def _block_entries(block: bytes, path: str, what: str) -> list[tuple[bytes, bytes]]:
    """The (key, value) pairs of a block, keys rebuilt from their shared prefixes."""
    if len(block) < 4:
        raise TFCheckpointError(f"{path}: {what} is too short to hold its restart count")
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    entries_end = len(block) - 4 - 4 * num_restarts
    if entries_end < 0:
        raise TFCheckpointError(f"{path}: {what} claims {num_restarts} restart points, more than fit")
    entries = []
    key = b""
    pos = 0
    try:
        while pos < entries_end:
            shared, pos = read_varint(block, pos)
            unshared, pos = read_varint(block, pos)
            value_length, pos = read_varint(block, pos)
            if shared > len(key) or pos + unshared + value_length > entries_end:
                raise ValueError("entry runs past the block")
            key = key[:shared] + block[pos:pos + unshared]
            pos += unshared
            entries.append((key, block[pos:pos + value_length]))
            pos += value_length
    except (IndexError, ValueError) as e:
        raise TFCheckpointError(f"{path}: malformed entry in {what} ({e})") from None
    return entries


def read_index(path: str) -> tuple[dict[int, int] | None, list[BundleEntry]]:
    """Parse a tensor bundle's .index file: (header, tensor entries in key order).

    header: the BundleHeaderProto's varint fields by number (1 num_shards, 2 endianness), None if absent.
    """
    with open(path, "rb") as f:
        index_bytes = f.read()
    if len(index_bytes) < FOOTER_LENGTH:
        raise TFCheckpointError(f"{path}: too short ({len(index_bytes)} bytes) to be a TensorFlow checkpoint index")
    footer = index_bytes[-FOOTER_LENGTH:]
    (magic,) = struct.unpack_from("<Q", footer, FOOTER_LENGTH - 8)
    if magic != TABLE_MAGIC:
        raise TFCheckpointError(f"{path}: bad footer magic 0x{magic:016x} (expected 0x{TABLE_MAGIC:016x}): "
                                "not a TensorFlow checkpoint index, or truncated")
    try:
        metaindex_handle, pos = _read_handle(footer, 0)
        index_handle, _ = _read_handle(footer, pos)
    except IndexError:
        raise TFCheckpointError(f"{path}: malformed block handles in the footer") from None
    _read_block(index_bytes, metaindex_handle, path, "metaindex block")  # empty in bundles, but checked
    index_block = _read_block(index_bytes, index_handle, path, "index block")

    header: dict[int, int] | None = None
    entries: list[BundleEntry] = []
    for _, handle_bytes in _block_entries(index_block, path, "index block"):
        try:
            handle, _ = _read_handle(handle_bytes, 0)
        except IndexError:
            raise TFCheckpointError(f"{path}: malformed block handle in the index block") from None
        data_block = _read_block(index_bytes, handle, path, "data block")
        for key, value in _block_entries(data_block, path, f"data block at byte {handle[0]}"):
            name = key.decode("utf-8", errors="replace")
            try:
                if key == b"":
                    header = {n: v for n, v in protobuf_fields(value) if n in (1, 2)}
                else:
                    entries.append(decode_bundle_entry(name, value))
            except (IndexError, ValueError) as e:
                raise TFCheckpointError(f"{path}: malformed record for variable {name or '(header)'} ({e})") from None
    return header, entries


# ---------------------------------------------------------------------------------------------------
# the checkpoint: index + data file
# ---------------------------------------------------------------------------------------------------
class TFCheckpoint:
    """A tensor bundle: `entries` (name -> BundleEntry) and `read(name)` -> np.ndarray (CRC-checked).

    prefix: the checkpoint prefix (`.../model.ckpt-best`), or its `.index` file.
    """

    def __init__(self, prefix: str | os.PathLike):
        prefix = os.fspath(prefix)
        self.prefix = prefix.removesuffix(".index")
        self.index_path = self.prefix + ".index"
        if not os.path.isfile(self.index_path):
            raise TFCheckpointError(f"{self.index_path}: no such checkpoint index")
        header, entries = read_index(self.index_path)
        if header is None:
            raise TFCheckpointError(f"{self.index_path}: no bundle header (the entry with the empty key)")
        num_shards = header.get(1, 0)
        if num_shards != 1:
            raise TFCheckpointError(f"{self.index_path}: the checkpoint is split in {num_shards} shards; this "
                                    "reader takes a single .data-00000-of-00001 file")
        if header.get(2, 0) != 0:
            raise TFCheckpointError(f"{self.index_path}: big-endian checkpoint; only little-endian is supported")
        self.data_path = f"{self.prefix}.data-00000-of-00001"
        if not os.path.isfile(self.data_path):
            raise TFCheckpointError(f"{self.data_path}: missing (the data file of {self.index_path})")
        self.entries = {e.name: e for e in entries}
        data_size = os.path.getsize(self.data_path)
        for e in entries:
            if e.offset + e.size > data_size:
                raise TFCheckpointError(f"{self.data_path}: variable {e.name} needs bytes "
                                        f"{e.offset}..{e.offset + e.size} but the file has {data_size} (truncated)")
        self._data = np.memmap(self.data_path, dtype=np.uint8, mode="r") if data_size else np.zeros(0, np.uint8)

    def check_readable(self, name: str) -> BundleEntry:
        """The entry of `name`, or a one-line error if this reader cannot decode it."""
        e = self.entries[name]
        if e.is_sliced:
            raise TFCheckpointError(f"{self.index_path}: variable {name} is partitioned (saved as slices); "
                                    "this reader takes whole tensors only")
        if e.dtype_code not in DTYPES:
            raise TFCheckpointError(f"{self.index_path}: variable {name} has dtype {e.dtype_name}; supported: "
                                    "float16, bfloat16, float32, float64, int32, int64")
        if e.shard_id != 0:
            raise TFCheckpointError(f"{self.index_path}: variable {name} is in shard {e.shard_id}; only one shard "
                                    "is supported")
        if any(d < 0 for d in e.shape):
            raise TFCheckpointError(f"{self.index_path}: variable {name} has an unknown dimension {e.shape}")
        expected = int(np.prod(e.shape, dtype=np.int64)) * DTYPES[e.dtype_code].itemsize
        if e.size != expected:
            raise TFCheckpointError(f"{self.index_path}: variable {name} has {e.size} bytes, but shape {e.shape} "
                                    f"of {e.dtype_name} needs {expected}")
        return e

    def decoded_dtype(self, name: str) -> np.dtype:
        """The dtype `read(name)` returns (bfloat16 comes back as float32)."""
        code = self.check_readable(name).dtype_code
        return np.dtype(np.float32) if code == BFLOAT16 else DTYPES[code].newbyteorder("=")

    def verify(self, name: str) -> np.ndarray:
        """The raw bytes of `name` after checking their masked CRC32C against the index (any dtype)."""
        e = self.entries[name]
        raw = self._data[e.offset:e.offset + e.size]
        if e.masked_crc32c is not None and mask_crc(crc32c(raw)) != e.masked_crc32c:
            raise TFCheckpointError(f"{self.data_path}: CRC32C mismatch for variable {name} "
                                    f"(bytes {e.offset}..{e.offset + e.size}): the file is corrupt")
        return raw

    def read(self, name: str) -> np.ndarray:
        """The tensor `name` as a NumPy array (a copy; bfloat16 decoded to float32)."""
        e = self.check_readable(name)
        raw = np.array(self.verify(name))  # a copy: aligned, and independent of the memory map
        array = raw.view(DTYPES[e.dtype_code]).reshape(e.shape)
        if e.dtype_code == BFLOAT16:
            return bfloat16_to_float32(array)
        return array.astype(array.dtype.newbyteorder("="), copy=False)
