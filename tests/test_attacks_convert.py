"""Attack: damaged and hostile checkpoint files given to `python -m tinyalbert.convert`.

One checkpoint folder (config.json, spiece.model) holds a valid model.safetensors written by the
safetensors package and many damaged weights files beside it; each is converted on its own (SRC is
the weights file).  Every one must end in one line `error: ...` on stderr from a ConvertError (not the
catch-all for unforeseen exceptions), a non-zero exit code, and no output file.  The cases run
through `main(argv)` in this process, a few through a real subprocess.

safetensors: the header length (zero, too short, too long, past the end, 2**64-1), the JSON (cut,
not UTF-8, not an object, nested a million deep, numbers out of range), each entry (not an object,
fields missing or of the wrong type, offsets negative / reversed / outside the file / overlapping,
shapes negative / huge / not a list, unknown dtypes, shape and byte count that disagree).
pytorch_model.bin: pickles of other things than a state dict (a list, a tensor, a plain object, a
pickle that would run a command), zips that are not torch files, random bytes, a truncated file, state
dicts with non-tensor values, non-text keys, wrong shapes, integer, complex, sparse, meta or quantized
tensors.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import random
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
import torch
from attack_tally import Tally

import tinyalbert
from tinyalbert import convert as conv
from tinyalbert.nn.config import AlbertConfig
from tinyalbert.nn.params import init_params
from tinyalbert.tokenizer import ALBERT_VOCAB

PACKAGE_ROOT = str(Path(tinyalbert.__file__).resolve().parent.parent)
SEED = int(os.environ.get("TINYALBERT_ATTACK_SEED", "1405"))   # another seed explores other damage
UNFORESEEN = "TINYALBERT_DEBUG"   # the catch-all's message ends by pointing at it


class RunsACommand:
    """Unpickling this would create a file: torch.load(weights_only=True) must refuse it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class Plain:
    """An ordinary object: not something a state dict holds."""

    def __init__(self):
        self.weights = [1.0, 2.0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """(folder, params) with config.json, spiece.model and a valid model.safetensors."""
    folder = tmp_path_factory.mktemp("attack-convert")
    config = AlbertConfig(vocab_size=30000, embedding_size=4, hidden_size=8, num_hidden_layers=1,
                          num_attention_heads=1, intermediate_size=8, max_position_embeddings=8)
    config.save_json(folder / "config.json")
    os.symlink(ALBERT_VOCAB, folder / "spiece.model")
    params = init_params(config, seed=5, sop_head=False)
    safetensors.numpy.save_file(params, str(folder / "model.safetensors"))
    return folder, params


def safetensors_parts(path: Path) -> tuple[dict, bytes]:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def with_header(header: dict | bytes, body: bytes, length: int | None = None) -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + body


def safetensors_cases(folder: Path, rng: random.Random) -> list[tuple[str, bytes]]:
    header, body = safetensors_parts(folder / "model.safetensors")
    text = json.dumps(header).encode()
    names = sorted(k for k in header if k != "__metadata__")
    cases = []

    # the header length
    for length in (0, 1, 7, len(text) - 1, len(text) + 1, len(text) + len(body) + 1, 2**63, 2**64 - 1):
        cases.append((f"header length {length}", with_header(text, body, length)))
    for _ in range(6):
        cases.append(("random header length", with_header(text, body, rng.randrange(2**64))))
    # the JSON
    cut = rng.randrange(2, len(text) - 1)
    cases += [
        ("JSON cut short", with_header(text[:cut], body)),
        ("JSON not UTF-8", with_header(b'{"\xff\xfe": 1}', body)),
        ("JSON with a NUL", with_header(text[:10] + b"\x00" + text[11:], body)),
        ("JSON list", with_header(b"[1, 2, 3]", body)),
        ("JSON string", with_header(b'"{}"', body)),
        ("JSON nested a million deep", with_header(b'{"a": ' + b"[" * 1_000_000 + b"]" * 1_000_000 + b"}", body)),
        ("JSON number out of range", with_header(text.replace(b"[0,", b"[1e999,", 1), body)),
        ("JSON huge integer", with_header(text.replace(b"[0,", b"[" + b"9" * 5000 + b",", 1), body)),
        ("empty file", b""),
        ("only the length", struct.pack("<Q", 10)),
    ]
    for _ in range(6):
        damaged = bytearray(text)
        for _ in range(rng.choice((1, 2, 4))):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        cases.append(("random bytes in the JSON", with_header(bytes(damaged), body)))

    # one entry at a time
    def entry_case(what: str, change) -> None:
        damaged = json.loads(json.dumps(header))
        change(damaged, rng.choice(names))
        cases.append((what, with_header(damaged, body)))

    def set_field(field, value):
        def change(h, name):
            h[name][field] = value
        return change

    def drop_field(field):
        def change(h, name):
            del h[name][field]
        return change

    entry_case("entry is a string", lambda h, n: h.__setitem__(n, "F32"))
    entry_case("entry is a list", lambda h, n: h.__setitem__(n, [1, 2]))
    for field in ("dtype", "shape", "data_offsets"):
        entry_case(f"entry without {field}", drop_field(field))
    for what, value in (("unknown dtype F8_E4M3", "F8_E4M3"), ("unknown dtype Q4", "Q4"), ("dtype lower case", "f32"),
                        ("dtype empty", ""), ("dtype null", None), ("dtype a number", 32), ("integer dtype", "I32"),
                        ("dtype of another size", "F64")):
        entry_case(what, set_field("dtype", value))
    for what, value in (("shape negative", [-1, 4]), ("shape float", [2.5]), ("shape text", "12"),
                        ("shape nested", [[2], [3]]), ("shape huge", [2**40, 2**40]), ("shape overflowing", [2**62, 8]),
                        ("shape null", None), ("shape boolean", [True]), ("shape too big for its bytes", [30000, 5])):
        entry_case(what, set_field("shape", value))

    def offsets(transform):
        def change(h, name):
            h[name]["data_offsets"] = transform(*h[name]["data_offsets"])
        return change

    size = len(body)
    for what, transform in (("offsets negative", lambda b, e: [b - 10**6, e - 10**6]),
                            ("offsets reversed", lambda b, e: [e, b]),
                            ("offsets past the end", lambda b, e: [b + size, e + size]),
                            ("offsets end past the end", lambda b, e: [b, size + 1]),
                            ("offsets floats", lambda b, e: [float(b), float(e)]),
                            ("offsets text", lambda b, e: [str(b), str(e)]),
                            ("offsets one number", lambda b, e: [b]),
                            ("offsets three numbers", lambda b, e: [b, e, e]),
                            ("offsets huge", lambda b, e: [2**70, 2**70 + e - b]),
                            ("offsets shifted by one", lambda b, e: [b + 1, e + 1])):
        entry_case(what, offsets(transform))

    def overlap(h, name):
        other = next(n for n in names if n != name and h[n]["dtype"] == h[name]["dtype"])
        h[name]["shape"], h[name]["data_offsets"] = h[other]["shape"], h[other]["data_offsets"]
    entry_case("offsets overlapping another tensor", overlap)
    entry_case("metadata not an object", lambda h, n: h.__setitem__("__metadata__", [1]))
    entry_case("tensor named ''", lambda h, n: h.__setitem__("", h.pop(n)))
    return cases


def torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def bin_cases(params: dict[str, np.ndarray], marker: Path, rng: random.Random) -> list[tuple[str, bytes]]:
    state = {k: torch.from_numpy(v.copy()) for k, v in params.items()}
    good = torch_bytes(state)
    name = "predictions.bias"
    not_torch_zip = io.BytesIO()
    with zipfile.ZipFile(not_torch_zip, "w") as z:
        z.writestr("hello.txt", "not a checkpoint")
    fake_torch_zip = io.BytesIO()
    with zipfile.ZipFile(fake_torch_zip, "w") as z:
        z.writestr("archive/data.pkl", bytes(rng.randrange(256) for _ in range(200)))
        z.writestr("archive/version", "3\n")
    cases = [
        ("a list of tensors", torch_bytes(list(state.values()))),
        ("a tuple", torch_bytes(("albert", 1))),
        ("one tensor", torch_bytes(state[name])),
        ("a number", torch_bytes(3.5)),
        ("None", torch_bytes(None)),
        ("a plain object", pickle.dumps(Plain(), protocol=2)),
        ("a pickle that runs a command", pickle.dumps(RunsACommand(marker), protocol=2)),
        ("the command pickle, old protocol", b"\x80\x02" + pickle.dumps(RunsACommand(marker), protocol=0)),
        ("a zip that is not torch", not_torch_zip.getvalue()),
        ("a zip with a damaged pickle", fake_torch_zip.getvalue()),
        ("random bytes after a pickle opcode", b"\x80" + bytes(rng.randrange(256) for _ in range(5000))),
        ("random bytes after a zip signature", b"PK" + bytes(rng.randrange(256) for _ in range(5000))),
        ("random bytes", bytes(rng.randrange(256) for _ in range(5000))),
        ("a torch file cut in half", good[:len(good) // 2]),
        ("a torch file without its last 100 bytes", good[:-100]),
        ("values that are numbers", torch_bytes({**state, name: 1.0})),
        ("values that are lists", torch_bytes({k: v.tolist() for k, v in state.items()})),
        ("a nested dict", torch_bytes({"model": state})),
        ("state_dict that is a list", torch_bytes({"state_dict": list(state.values())})),
        ("keys that are numbers", torch_bytes({i: v for i, v in enumerate(state.values())})),
        ("keys that are tuples", torch_bytes({(k,): v for k, v in state.items()})),
        ("a wrong shape", torch_bytes({**state, name: torch.zeros(7)})),
        ("every shape transposed", torch_bytes({k: v.T.contiguous() if v.ndim == 2 else v for k, v in state.items()})),
        ("an integer tensor", torch_bytes({**state, name: torch.zeros(state[name].shape, dtype=torch.int32)})),
        ("a complex tensor", torch_bytes({**state, name: torch.zeros(state[name].shape, dtype=torch.complex64)})),
        ("a boolean tensor", torch_bytes({**state, name: torch.zeros(state[name].shape, dtype=torch.bool)})),
        ("a sparse tensor", torch_bytes({**state, name: torch.zeros(state[name].shape).to_sparse()})),
        ("a meta tensor", torch_bytes({**state, name: torch.zeros(state[name].shape, device="meta")})),
        ("a quantized tensor", torch_bytes({**state, name: torch.quantize_per_tensor(
            torch.zeros(state[name].shape), 0.1, 0, torch.qint8)})),
        ("an empty dict", torch_bytes({})),
    ]
    return cases


def convert_in_process(src: Path, out: Path, capsys) -> tuple[int, str]:
    code = conv.main([str(src), str(out), "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.err


def check_refused(what: str, code: int, err: str, out: Path) -> str | None:
    """None if the conversion was refused as it should be, else what went wrong."""
    lines = err.strip().splitlines()
    if code == 0:
        return f"{what}: converted without complaint"
    if len(lines) != 1 or not lines[0].startswith("error: ") or "Traceback" in err:
        return f"{what}: not a one-line error: {err[-600:]!r}"
    if UNFORESEEN in lines[0]:
        return f"{what}: an unforeseen exception, not a ConvertError: {lines[0]}"
    if out.exists():
        return f"{what}: left an output file"
    return None


@pytest.fixture
def vocab_checked_once(monkeypatch):
    """convert checks spiece.model on every call (a quarter of a second); here it is always the same file,
    so the real check runs once and its result is reused."""
    real_check, checked = conv._check_vocab, []

    def check_once(spiece_bytes, config, spiece_file):
        if (spiece_bytes, config.vocab_size) not in checked:
            real_check(spiece_bytes, config, spiece_file)
            checked.append((spiece_bytes, config.vocab_size))

    monkeypatch.setattr(conv, "_check_vocab", check_once)


def run_cases(kind: str, cases, folder: Path, capsys) -> tuple[list[str], Tally]:
    tally = Tally(f"convert, {kind}")
    failures = []
    out = folder / "out.h5"
    for i, (what, data) in enumerate(cases):
        src = folder / f"case{i:03d}.{kind}"
        src.write_bytes(data)
        code, err = convert_in_process(src, out, capsys)
        problem = check_refused(what, code, err, out)
        tally.add("refused with one line" if problem is None else "FAILED")
        if problem:
            failures.append(problem)
        out.unlink(missing_ok=True)
    tally.report()
    return failures, tally


def test_valid_checkpoint_converts(checkpoint, tmp_path, capsys):
    """The base the attacks start from is itself fine."""
    folder, params = checkpoint
    code = conv.main([str(folder / "model.safetensors"), str(tmp_path / "ok.h5"), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    _, loaded, _, _ = tinyalbert.weights.load_params(tmp_path / "ok.h5")
    assert all(np.array_equal(loaded[k], v) for k, v in params.items())


def test_damaged_safetensors(checkpoint, capsys, vocab_checked_once):
    folder, _ = checkpoint
    cases = safetensors_cases(folder, random.Random(SEED))
    failures, tally = run_cases("safetensors", cases, folder, capsys)
    assert tally.inputs >= 60
    assert not failures, "\n".join(failures)


def test_bin_files_that_are_not_state_dicts(checkpoint, tmp_path, capsys, monkeypatch, vocab_checked_once):
    folder, params = checkpoint
    marker = tmp_path / "the-pickle-ran"
    calls = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    cases = bin_cases(params, marker, random.Random(SEED))
    failures, tally = run_cases("bin", cases, folder, capsys)
    assert not marker.exists(), "a pickle ran a command: torch.load was not called with weights_only=True"
    assert calls and all(flag is True for flag in calls), f"torch.load called with weights_only={calls}"
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("what", ["safetensors offsets past the end", "pickle that runs a command",
                                  "safetensors nested JSON"])
def test_cli_subprocess(checkpoint, tmp_path, what):
    """The same refusals from a real `python -m tinyalbert.convert`: one line, exit code 1, no file."""
    folder, params = checkpoint
    header, body = safetensors_parts(folder / "model.safetensors")
    marker = tmp_path / "the-pickle-ran"
    if what == "pickle that runs a command":
        data, name = pickle.dumps(RunsACommand(marker), protocol=2), "case.bin"
    elif what == "safetensors nested JSON":
        data, name = with_header(b'{"a": ' + b"[" * 1_000_000 + b"]" * 1_000_000 + b"}", body), "case.safetensors"
    else:
        key = sorted(k for k in header if k != "__metadata__")[0]
        begin, end = header[key]["data_offsets"]
        header[key]["data_offsets"] = [begin + len(body), end + len(body)]
        data, name = with_header(header, body), "case.safetensors"
    src = folder / f"{tmp_path.name}-{name}"
    src.write_bytes(data)
    out = tmp_path / "out.h5"
    env = dict(os.environ)
    env["PYTHONPATH"] = PACKAGE_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run([sys.executable, "-m", "tinyalbert.convert", str(src), str(out), "--no-progress"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 1, result.stderr
    assert check_refused(what, result.returncode, result.stderr, out) is None, result.stderr
    assert not marker.exists()


def test_damaged_tensorflow_checkpoints(tmp_path, capsys):
    """Random damage to a Google TF checkpoint (tests/fixtures/tf/ckpt): byte flips anywhere in the .index
    and the .data file, and both files cut short.  Each conversion is refused with one line, or, where
    the flip hit bytes nothing reads (the footer's padding), gives exactly the undamaged result."""
    fixture = Path(__file__).parent / "fixtures" / "tf" / "ckpt"
    index_name = next(p.name for p in fixture.iterdir() if p.name.endswith(".index"))
    data_name = next(p.name for p in fixture.iterdir() if ".data-" in p.name)
    clean = tmp_path / "clean.h5"
    code = conv.main([str(fixture), str(clean), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()     # its note on the skipped optimizer slots
    _, want, _, _ = tinyalbert.weights.load_params(clean)

    rng = random.Random(SEED)
    cases = []
    for name, flips in ((index_name, 40), (data_name, 25)):
        data = (fixture / name).read_bytes()
        for _ in range(flips):
            damaged = bytearray(data)
            for _ in range(rng.choice((1, 1, 3))):
                damaged[rng.randrange(len(data))] ^= rng.randrange(1, 256)
            cases.append((f"flip in {name}", name, bytes(damaged)))
        for _ in range(8):
            cases.append((f"{name} cut short", name, data[:rng.randrange(len(data))]))

    tally = Tally("convert, TF checkpoints")
    failures = []
    out = tmp_path / "out.h5"
    for i, (what, name, damaged) in enumerate(cases):
        folder = tmp_path / f"case{i:03d}"
        folder.mkdir()
        for item in fixture.iterdir():
            os.symlink(item, folder / item.name)
        (folder / name).unlink()
        (folder / name).write_bytes(damaged)
        code, err = convert_in_process(folder, out, capsys)
        if code == 0:
            _, got, _, _ = tinyalbert.weights.load_params(out)
            same = got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
            tally.add("converted, identical to the undamaged" if same else "FAILED")
            if not same:
                failures.append(f"{what} (case {i}): converted to different weights")
        else:
            problem = check_refused(what, code, err, out)
            tally.add("refused with one line" if problem is None else "FAILED")
            if problem:
                failures.append(f"{problem} (case {i})")
        out.unlink(missing_ok=True)
    tally.report()
    assert not failures, "\n".join(failures)
