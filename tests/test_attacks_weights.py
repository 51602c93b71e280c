"""Attack: hundreds of corrupted weights files; each must give a one-line WeightsError or load and run.

Three small valid files are made here (a tiny model without vocabulary, so that most of the file is
HDF5 metadata; the same model with the embedded SentencePiece model; and the first one rewritten in
the layout weights.save used before issue 14: HDF5's oldest format, whose metadata has no checksums,
with variable-length string attributes), then damaged:

  truncated       cut at random offsets
  header flips    1-3 random bytes changed outside the tensors' bytes (superblock, object headers,
                  B-trees, heaps, attributes)
  data flips      one byte changed inside a tensor: the file must load and run, and only that
                  tensor may differ from the original
  vocab flips     bytes changed inside the embedded SentencePiece model
  structured      wrong attribute types, missing / extra / nested / mis-shaped / mis-typed datasets,
                  wrong format versions, broken links, ...

The loads run in a worker subprocess (started again after a crash) with a per-file timeout, so a
segfault or a hang inside HDF5 is reported as a failure of this test instead of killing pytest.
Every outcome is one of: loaded and ran, WeightsError (one line, naming the file), or a failure
(another exception, a crash, a hang, an error message without the file's name or on several lines).
"""
from __future__ import annotations

import json
import os
import queue
import random
import subprocess
import sys
import threading
from pathlib import Path

import h5py
import numpy as np
import pytest
from attack_tally import Tally

import tinyalbert
from tinyalbert import weights
from tinyalbert.nn.config import AlbertConfig
from tinyalbert.nn.params import init_params, param_shapes
from tinyalbert.tokenizer import ALBERT_VOCAB

PACKAGE_ROOT = str(Path(tinyalbert.__file__).resolve().parent.parent)
SEED = int(os.environ.get("TINYALBERT_ATTACK_SEED", "20240514"))   # another seed explores other damage
FIRST_CASE_TIMEOUT = 240.0   # the worker imports numpy/h5py/numba and loads the kernels first
CASE_TIMEOUT = 30.0          # one load + one tiny forward takes milliseconds

# Runs in the worker process: reads a JSON list of cases on stdin, loads each file, runs it, and
# writes "begin <i>" before and one JSON result line after each case (flushed), so that the parent
# knows which file was being loaded when the worker died or hung.
WORKER = r"""
import json, sys, traceback
import numpy as np
from tinyalbert import weights

cases = json.loads(sys.stdin.readline())
originals = {}

def original(path):
    if path not in originals:
        originals[path] = weights.load_params(path, mmap=False)[1]
    return originals[path]

for case in cases:
    print("begin", case["i"], flush=True)
    result = {"i": case["i"]}
    try:
        model = weights.load(case["path"])
        ids = np.arange(min(6, model.config.max_position_embeddings)) % model.config.vocab_size
        out = model.forward(ids[None, :])
        result["outcome"] = "loaded"
        result["finite"] = bool(np.isfinite(out.mlm_logits).all())
        if model.tokenizer is not None:
            model.tokenizer.encode("Hello world, [MASK] 1,000 naive cafe")
        if case.get("original"):
            reference = original(case["original"])
            result["changed"] = sorted(name for name, value in model.params.items()
                                       if name not in reference or
                                       np.asarray(value).tobytes() != reference[name].tobytes())
    except weights.WeightsError as e:
        result["outcome"] = "WeightsError"
        result["message"] = str(e)
    except BaseException as e:
        result["outcome"] = "other exception"
        result["message"] = f"{type(e).__name__}: {e}"
        result["traceback"] = traceback.format_exc()[-1500:]
    print(json.dumps(result), flush=True)
"""


def tiny_config() -> AlbertConfig:
    return AlbertConfig(vocab_size=90, embedding_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=24, max_position_embeddings=16)


def _reader(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def run_guarded(cases: list[dict]) -> dict[int, dict]:
    """Load every case in worker subprocesses; a crash or a hang is recorded for the case it happened in."""
    env = dict(os.environ)
    env["PYTHONPATH"] = PACKAGE_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    results: dict[int, dict] = {}
    pending = list(cases)
    while pending:
        worker = subprocess.Popen([sys.executable, "-c", WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, env=env)
        worker.stdin.write(json.dumps(pending) + "\n")
        worker.stdin.close()
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=_reader, args=(worker.stdout, lines), daemon=True).start()
        current, timeout, died = None, FIRST_CASE_TIMEOUT, None
        while True:
            try:
                line = lines.get(timeout=timeout)
            except queue.Empty:
                worker.kill()
                died = f"hang (no answer within {timeout:.0f} s)"
                break
            if line is None:
                code = worker.wait()
                if current is not None:
                    died = f"crash (worker exit code {code}): {worker.stderr.read()[-500:]}"
                break
            if line.startswith("begin "):
                current, timeout = int(line.split()[1]), CASE_TIMEOUT
            else:
                result = json.loads(line)
                results[result["i"]] = result
                current = None
        worker.wait()
        worker.stderr.close()
        if died is None:
            assert not any(c["i"] not in results for c in pending), "the worker stopped early without a crash"
            break
        if current is None:   # died before starting any case: do not loop forever
            raise AssertionError(f"the load worker failed before its first case: {died}")
        results[current] = {"i": current, "outcome": died.split(" ", 1)[0], "message": died}
        pending = [c for c in pending if c["i"] not in results]
    return results


# ------------------------------------------------------------------------------------------------
# the corrupted files
# ------------------------------------------------------------------------------------------------
def data_ranges(path: Path) -> dict[str, tuple[int, int]]:
    """name -> (first byte, end) of every tensor's (and the vocabulary's) raw bytes in the file."""
    ranges = {}
    with h5py.File(path, "r") as f:
        datasets = [(f"params/{n}", d) for n, d in f["params"].items()]
        if "spiece_model" in f:
            datasets.append(("spiece_model", f["spiece_model"]))
        for name, dset in datasets:
            offset = dset.id.get_offset()
            ranges[name] = (offset, offset + dset.id.get_storage_size())
    return ranges


def legacy_copy(src: Path, dst: Path) -> Path:
    """`src` rewritten as weights.save wrote files before issue 14 (HDF5's default, earliest format)."""
    with h5py.File(src, "r") as old, h5py.File(dst, "w", alignment_threshold=1,
                                                alignment_interval=weights.ALIGNMENT) as new:
        for name, value in old.attrs.items():
            new.attrs[name] = value.decode() if isinstance(value, bytes) else value   # variable-length strings
        for name, dset in old["params"].items():
            new.create_dataset(f"params/{name}", data=dset[()])
    return dst


class Corruptor:
    """Writes the damaged copies of the base files, each with what its load must give."""

    def __init__(self, root: Path, rng: random.Random):
        self.root, self.rng, self.cases = root, rng, []
        config = tiny_config()
        params = init_params(config, seed=3, sop_head=True)
        self.plain = weights.save(root / "plain.h5", config, params)
        self.with_vocab = weights.save(root / "vocab.h5", config, params, spiece_model_bytes=ALBERT_VOCAB.read_bytes())
        self.legacy = str(legacy_copy(Path(self.plain), root / "legacy.h5"))
        self.names = list(param_shapes(config, sop_head=True))
        self.shapes = {k: v.shape for k, v in params.items()}

    def add(self, category: str, data: bytes | None = None, base: str | None = None, edit=None,
            expect: str = "error or loaded", needles: tuple[str, ...] = (), original: str | None = None) -> None:
        """One case: the bytes to write, or an h5py edit applied to a copy of `base`."""
        i = len(self.cases)
        path = self.root / f"case{i:04d}-{category.replace(' ', '_')}.h5"
        if data is not None:
            path.write_bytes(data)
        else:
            path.write_bytes(Path(base or self.plain).read_bytes())
            with h5py.File(path, "r+") as f:
                edit(f)
        self.cases.append({"i": i, "path": str(path), "category": category, "expect": expect,
                           "needles": list(needles), "original": original})

    def flip(self, data: bytes, positions: list[int]) -> bytes:
        damaged = bytearray(data)
        for p in positions:
            # half single-bit flips (a bit rotted on disk), half random bytes
            damaged[p] ^= (1 << self.rng.randrange(8)) if self.rng.random() < 0.5 else self.rng.randrange(1, 256)
        return bytes(damaged)

    def truncations(self, count: int) -> None:
        for base in (self.plain, self.with_vocab, self.legacy):
            data = Path(base).read_bytes()
            for _ in range(count // 3):
                cut = self.rng.randrange(len(data))
                self.add("truncated", data[:cut], expect="error")

    def header_flips(self, count: int, legacy: bool = False) -> None:
        base = self.legacy if legacy else self.plain
        data = Path(base).read_bytes()
        inside = np.zeros(len(data), bool)
        for lo, hi in data_ranges(Path(base)).values():
            inside[lo:hi] = True
        # mostly bytes that hold something (the metadata is surrounded by alignment padding)
        meaningful = [p for p in np.nonzero(~inside)[0].tolist() if data[p] != 0]
        anywhere = np.nonzero(~inside)[0].tolist()
        for _ in range(count):
            n = self.rng.choice((1, 1, 2, 3))
            pool = meaningful if self.rng.random() < 0.85 else anywhere
            self.add("header flip (legacy layout)" if legacy else "header flip",
                     self.flip(data, self.rng.sample(pool, n)))

    def data_flips(self, count: int) -> None:
        data = Path(self.plain).read_bytes()
        ranges = {k: v for k, v in data_ranges(Path(self.plain)).items() if k.startswith("params/")}
        for _ in range(count):
            name = self.rng.choice(sorted(ranges))
            lo, hi = ranges[name]
            self.add("data flip", self.flip(data, [self.rng.randrange(lo, hi)]), expect="loaded",
                     needles=(name.removeprefix("params/"),), original=str(self.plain))

    def vocab_flips(self, count: int) -> None:
        data = Path(self.with_vocab).read_bytes()
        lo, hi = data_ranges(Path(self.with_vocab))["spiece_model"]
        for _ in range(count):
            n = self.rng.choice((1, 2, 8))
            self.add("vocab flip", self.flip(data, [self.rng.randrange(lo, hi) for _ in range(n)]))

    def structured(self) -> None:
        """Damage an HDF5 tool could do: everything is valid HDF5, only tinyalbert's layout is broken."""
        rng = self.rng
        bias = "predictions.bias"

        def attr(name, value):
            def edit(f):
                f.attrs[name] = value
            return edit

        def drop_attr(name):
            def edit(f):
                del f.attrs[name]
            return edit

        # wrong format versions
        for version in (0, 2, -1, 99, 2**62):
            self.add("wrong format version", edit=attr("format_version", np.int64(version)), expect="error",
                     needles=("format_version", str(version)))
        # wrong attribute types
        wrong_types = [
            ("format_version", "1"), ("format_version", 1.5), ("format_version", np.array([1, 1])),
            ("format_version", np.float64(1.0)), ("format_version", True), ("format", 7),
            ("format", np.bytes_(b"\xff\xfe not utf-8")), ("format", np.array(["tinyalbert-weights"] * 2, dtype="S")),
            ("config_json", 42), ("config_json", "not json {"), ("config_json", "[1, 2, 3]"),
            ("config_json", np.bytes_(b"{\"hidden_size\": \xff}")),
            ("config_json", json.dumps({**tiny_config().to_dict(), "hidden_size": None})),
            ("config_json", json.dumps({**tiny_config().to_dict(), "hidden_size": "16"})),
            ("config_json", json.dumps({**tiny_config().to_dict(), "num_hidden_layers": 0})),
            ("config_json", json.dumps({**tiny_config().to_dict(), "layer_norm_eps": "tiny"})),
            ("config_json", json.dumps({**tiny_config().to_dict(), "hidden_act": 3})),
            ("config_json", np.array([1.0, 2.0])),
        ]
        for name, value in wrong_types:
            self.add("wrong attribute type", edit=attr(name, value), expect="error", needles=(name,))
        # a valid config of another model (every field at its default: the xxlarge shapes)
        self.add("wrong attribute type", edit=attr("config_json", "{}"), expect="error",
                 needles=("word_embeddings.weight has shape (90, 8), expected (30000, 128)",))
        # attributes that only describe the file: another type does not matter
        for name, value in (("has_sop_head", "maybe"), ("dtype", 7), ("created", np.arange(3)),
                            ("provenance_json", "{not json"), ("format", np.bytes_(b"tinyalbert-weights"))):
            self.add("harmless attribute", edit=attr(name, value), expect="loaded")
        for name in ("format", "format_version", "config_json"):
            self.add("missing attribute", edit=drop_attr(name), expect="error", needles=(name,))

        # missing datasets
        for name in rng.sample(self.names, 5) + ["sop_classifier.classifier.bias"]:
            def edit(f, name=name):
                del f["params"][name]
            self.add("missing dataset", edit=edit, expect="error", needles=("missing", name))
        self.add("missing dataset", base=self.with_vocab, edit=lambda f: f.__delitem__("spiece_model"),
                 expect="loaded")
        self.add("missing dataset", edit=lambda f: f.__delitem__("params"), expect="error", needles=("params",))

        # extra datasets and objects
        self.add("extra dataset", edit=lambda f: f["params"].create_dataset("extra.weight", data=np.zeros(3, "f4")),
                 expect="error", needles=("unexpected", "extra.weight"))
        self.add("extra dataset", edit=lambda f: f["params"].create_group("nested"), expect="error",
                 needles=("nested",))
        self.add("extra dataset", edit=lambda f: f.create_dataset("notes", data=np.arange(4)), expect="loaded")
        self.add("extra dataset", edit=lambda f: f["params"].attrs.__setitem__("note", "hello"), expect="loaded")

        # wrong shapes
        for name in rng.sample(self.names, 5):
            shape = self.shapes[name]
            for bad in (shape[:-1] + (shape[-1] + 1,), shape + (1,), ()):
                def edit(f, name=name, bad=bad):
                    del f["params"][name]
                    f["params"].create_dataset(name, shape=bad, dtype="f4")
                self.add("wrong shape", edit=edit, expect="error", needles=(name, "shape"))

        def empty_dataspace(f):
            del f["params"][bias]
            f["params"].create_dataset(bias, data=h5py.Empty("f4"))
        self.add("wrong shape", edit=empty_dataspace, expect="error", needles=(bias,))

        # wrong dtypes
        for dtype in ("i4", "i8", "u1", "c8", "?", h5py.string_dtype(), np.dtype([("a", "f4"), ("b", "f4")]), "S4"):
            def edit(f, dtype=dtype):
                del f["params"][bias]
                f["params"].create_dataset(bias, shape=self.shapes[bias], dtype=dtype)
            self.add("wrong dtype", edit=edit, expect="error", needles=(bias, "dtype"))
        # dtypes a weights file may use, in any byte order and layout
        for dtype, kw in (("f2", {}), (">f4", {}), ("f8", {}), ("f4", {"chunks": True, "compression": "gzip"})):
            def edit(f, dtype=dtype, kw=kw):
                name = "albert.embeddings.word_embeddings.weight"
                value = f["params"][name][()]
                del f["params"][name]
                f["params"].create_dataset(name, data=value.astype(dtype), **kw)
            self.add("other storage", edit=edit, expect="loaded")

        # the vocabulary dataset
        for value in (np.zeros(10, "f4"), np.frombuffer(b"not a model" * 9, "u1"), np.zeros(0, "u1"),
                      np.zeros((3, 4), "u1")):
            def edit(f, value=value):
                del f["spiece_model"]
                f.create_dataset("spiece_model", data=value)
            self.add("bad vocabulary", base=self.with_vocab, edit=edit, expect="error", needles=("spiece_model",))
        self.add("bad vocabulary", base=self.with_vocab,
                 edit=lambda f: (f.__delitem__("spiece_model"), f.create_group("spiece_model")),
                 expect="error", needles=("spiece_model",))

        # links
        def dangling(f):
            del f["params"][bias]
            f["params"][bias] = h5py.SoftLink("/nowhere")
        self.add("broken link", edit=dangling, expect="error", needles=(bias,))

        def external(f):
            del f["params"][bias]
            f["params"][bias] = h5py.ExternalLink("missing-file.h5", "/x")
        self.add("broken link", edit=external, expect="error", needles=(bias,))

        def params_is_a_dataset(f):
            del f["params"]
            f.create_dataset("params", data=np.zeros(3))
        self.add("params not a group", edit=params_is_a_dataset, expect="error", needles=("params",))

    def whole_files(self) -> None:
        self.add("not a weights file", b"", expect="error", needles=("empty",))
        signature = b"\x89HDF\r\n\x1a\n"
        for n in (0, 8, 100, 5000):
            self.add("not a weights file", signature + bytes(self.rng.randrange(256) for _ in range(n)), expect="error")


def check_outcome(case: dict, result: dict) -> str | None:
    """None if the outcome is acceptable for the case, else what is wrong."""
    outcome, message = result["outcome"], result.get("message", "")
    if outcome == "WeightsError":
        if case["expect"] == "loaded":
            return f"expected it to load, got WeightsError: {message}"
        if "\n" in message:
            return f"message on several lines: {message!r}"
        if case["path"] not in message:
            return f"message does not name the file: {message}"
        missing = [n for n in case["needles"] if n.lower() not in message.lower()]
        if missing:
            return f"message does not name {missing}: {message}"
        return None
    if outcome == "loaded":
        if case["expect"] == "error":
            return "loaded without complaint"
        if case["original"] is not None and result["changed"] != case["needles"]:
            return f"a flip in {case['needles']} changed {result['changed']}"
        return None
    return f"{outcome}: {message}"


def test_corrupted_weights_files(tmp_path):
    rng = random.Random(SEED)
    corruptor = Corruptor(tmp_path, rng)
    corruptor.truncations(60)
    corruptor.header_flips(90)
    corruptor.header_flips(45, legacy=True)
    corruptor.data_flips(30)
    corruptor.vocab_flips(20)
    corruptor.structured()
    corruptor.whole_files()
    cases = corruptor.cases
    assert len(cases) >= 200

    tally = Tally("weights files")
    results = run_guarded(cases)
    failures, tracebacks = [], {}
    for case in cases:
        result = results[case["i"]]
        problem = check_outcome(case, result)
        tally.add(f"{case['category']} -> {result['outcome'] if problem is None else 'FAILED'}")
        if problem:
            failures.append(f"{Path(case['path']).name} ({case['category']}): {problem}")
            if "traceback" in result:
                tracebacks.setdefault(problem.split(":")[1], result["traceback"])
    tally.report()
    assert not failures, (f"{len(failures)} of {len(cases)} corrupted files misbehaved:\n" + "\n".join(failures)
                          + "\n\n" + "\n".join(tracebacks.values()))


@pytest.mark.parametrize("kind", ["directory", "fifo", "device"])
def test_weights_path_not_a_regular_file(tmp_path, kind):
    """A directory, a named pipe (opening it would block forever) or a device is refused at once."""
    if kind == "directory":
        path = tmp_path
    elif kind == "fifo":
        path = tmp_path / "pipe.h5"
        os.mkfifo(path)
    else:
        path = Path(os.devnull)
    results = run_guarded([{"i": 0, "path": str(path)}])
    assert results[0]["outcome"] == "WeightsError", results[0]
    assert str(path) in results[0]["message"] and "\n" not in results[0]["message"]
