"""Attack: `python -m tinyalbert.predict` with inputs at and past its limits.

A tiny model with the genuine 30000-piece vocabulary and 512 positions is saved here.  Every case
must give a sensible result (exit code 0, the predictions asked for) or one line `error: ...` on
stderr naming the problem and a non-zero exit code: never a traceback, never the catch-all for
unforeseen exceptions.  Most cases call `main(argv)` in this process (with stdin replaced where the
case needs it); the few that depend on the process itself (the locale's decoding of stdin and of the
command line, a named pipe that would block) run `python -m tinyalbert.predict` in a subprocess.
"""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from attack_tally import Tally

import tinyalbert
from tinyalbert import predict, weights
from tinyalbert.nn.config import AlbertConfig
from tinyalbert.nn.params import init_params
from tinyalbert.tokenizer import ALBERT_VOCAB, Tokenizer

PACKAGE_ROOT = str(Path(tinyalbert.__file__).resolve().parent.parent)
UNFORESEEN = "TINYALBERT_DEBUG"   # the catch-all's message ends by pointing at it
LIMIT = 512


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    config = AlbertConfig(vocab_size=30000, embedding_size=4, hidden_size=8, num_hidden_layers=1,
                          num_attention_heads=1, intermediate_size=8, max_position_embeddings=LIMIT)
    path = tmp_path_factory.mktemp("attack-predict") / "tiny.h5"
    return Path(weights.save(path, config, init_params(config, seed=9, sop_head=True),
                             spiece_model_bytes=ALBERT_VOCAB.read_bytes()))


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    return Tokenizer(ALBERT_VOCAB)


def text_of_length(tokenizer: Tokenizer, n_ids: int, word: str = "hello") -> str:
    """A text with one [MASK] that encodes to exactly n_ids ids, [CLS] and [SEP] included."""
    text = "[MASK]" + f" {word}" * (n_ids - 3)
    assert len(tokenizer.encode(text)) == n_ids
    return text


class Outcome:
    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err

    def problem(self, expect: str, needles: tuple[str, ...] = ()) -> str | None:
        """None if this is what `expect` ("ok" or "error") asks for, else what is wrong."""
        if "Traceback" in self.err or UNFORESEEN in self.err:
            return f"traceback or unforeseen exception: {self.err[-800:]}"
        if expect == "ok":
            return None if self.code == 0 else f"failed (exit {self.code}): {self.err[-400:]}"
        lines = self.err.strip().splitlines()
        if self.code == 0:
            return f"succeeded, expected an error; stdout starts {self.out[:200]!r}"
        if len(lines) != 1 or not lines[0].startswith("error: "):
            return f"not a one-line error: {self.err[-400:]!r}"
        missing = [n for n in needles if n.lower() not in lines[0].lower()]
        return f"the error does not name {missing}: {lines[0]}" if missing else None


def run_main(argv: list[str], capsys, monkeypatch, stdin: bytes | None = None) -> Outcome:
    """main(argv) in this process, with `stdin` (default: empty) as standard input."""
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin or b""), encoding="utf-8"))
    try:
        code = predict.main(argv)
    except SystemExit as e:      # argparse's usage errors
        code = e.code
    captured = capsys.readouterr()
    return Outcome(code, captured.out, captured.err)


def run_cli(args: list[str | bytes], stdin: bytes = b"", env_extra: dict | None = None) -> Outcome:
    env = dict(os.environ)
    env["PYTHONPATH"] = PACKAGE_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("PYTHONIOENCODING", None)
    env.update(env_extra or {})
    result = subprocess.run([sys.executable, "-m", "tinyalbert.predict", *args], input=stdin, capture_output=True,
                            env=env, timeout=300)
    return Outcome(result.returncode, result.stdout.decode("utf-8", "replace"),
                   result.stderr.decode("utf-8", "replace"))


def test_in_process_cases(model_path, tokenizer, tmp_path, capsys, monkeypatch):
    weights_args = ["--weights", str(model_path)]
    at_limit = text_of_length(tokenizer, LIMIT)
    masks_at_limit = " ".join(["[MASK]"] * (LIMIT - 2))
    empty, blank = tmp_path / "empty.txt", tmp_path / "blank.txt"
    empty.write_bytes(b"")
    blank.write_text("\ufeff\n\n   \n\t\r\n\x0c\n\u3000\n", encoding="utf-8")   # a byte-order mark first
    bom = tmp_path / "bom.txt"
    bom.write_bytes("\ufeffThe [MASK] is here.\n".encode("utf-8"))
    not_hdf5 = tmp_path / "notes.h5"
    not_hdf5.write_text("not weights\n")
    latin1 = "Caf\xe9 [MASK].\n".encode("latin-1")

    # (name, argv, stdin, expect, needles, check of a good result)
    cases = [
        ("512 ids", [at_limit], None, "ok", (), lambda out: "input:" in out),
        ("512 ids as JSON", ["--json", at_limit], None, "ok", (), lambda out: len(json.loads(out)) == 5),
        ("513 ids", [text_of_length(tokenizer, LIMIT + 1)], None, "error", ("513 tokens", "512")),
        ("5000 ids", [text_of_length(tokenizer, 5000)], None, "error", ("5000 tokens", "512")),
        ("one mask only", ["--json", "[MASK]"], None, "ok", (), lambda out: len(json.loads(out)) == 5),
        ("three masks only", ["--json", "[MASK][MASK][MASK]"], None, "ok",
         (), lambda out: [len(r) for r in json.loads(out)] == [5, 5, 5]),
        ("510 masks only (512 ids)", ["--json", "--top-k", "1", masks_at_limit], None, "ok",
         (), lambda out: [len(r) for r in json.loads(out)] == [1] * (LIMIT - 2)),
        ("511 masks only", [masks_at_limit + " [MASK]"], None, "error", ("513 tokens",)),
        ("mask with NUL and controls", ["--json", "\x00\x01 [MASK] \x7f\x1b[31m"], None, "ok", (), None),
        ("empty file", ["--file", str(empty)], None, "error", ("no input",)),
        ("file of blank lines", ["--file", str(blank)], None, "error", ("no input",)),
        ("empty stdin", ["--file", "-"], b"", "error", ("no input",)),
        ("blank lines on stdin", ["--file", "-"], b"\n \n\t\n", "error", ("no input",)),
        ("file with a byte-order mark", ["--json", "--file", str(bom)], None, "ok",
         (), lambda out: all("\ufeff" not in o["sequence"] for o in json.loads(out))),
        ("latin-1 on stdin", ["--file", "-"], latin1, "error", ("standard input", "UTF-8")),
        ("latin-1 on stdin, no --file", [], latin1, "error", ("standard input", "UTF-8")),
        ("random bytes on stdin", ["--file", "-"], bytes(range(128, 256)) * 4, "error", ("UTF-8",)),
        ("a lone surrogate in UTF-8 (CESU)", ["--file", "-"], b"The \xed\xa0\x80 [MASK].\n", "error", ("UTF-8",)),
        ("UTF-16 on stdin", ["--file", "-"], "The [MASK].\n".encode("utf-16"), "error", ("UTF-8",)),
        ("a lone surrogate in the text", ["The \udcff [MASK]."], None, "error", ("UTF-8",)),
        ("--top-k 0", ["--top-k", "0", "The [MASK]."], None, "error", ("top_k", "0")),
        ("--top-k -1", ["--top-k", "-1", "The [MASK]."], None, "error", ("top_k", "-1")),
        ("--top-k -10**20", ["--top-k", str(-10**20), "The [MASK]."], None, "error", ("top_k",)),
        ("--top-k 10**9", ["--json", "--top-k", str(10**9), "[MASK]"], None, "ok",
         (), lambda out: len(json.loads(out)) == tokenizer.vocab_size),
        ("--top-k 10**30", ["--top-k", str(10**30), "[MASK]"], None, "ok", (), None),
        ("--top-k 1e3", ["--top-k", "1e3", "The [MASK]."], None, "error", ("--top-k",)),
        ("--top-k empty", ["--top-k", "", "The [MASK]."], None, "error", ("--top-k",)),
        ("--batch-size 0", ["--batch-size", "0", "The [MASK]."], None, "error", ("batch_size",)),
        ("--batch-size 10**9", ["--batch-size", str(10**9), "The [MASK].", "A [MASK]."], None, "ok", (), None),
        ("--depth 0", ["--depth", "0", "The [MASK]."], None, "error", ("depth",)),
        ("--depth -3", ["--depth", "-3", "The [MASK]."], None, "error", ("depth",)),
        ("weights: a directory", ["--weights", str(tmp_path), "The [MASK]."], None, "error",
         (str(tmp_path), "directory")),
        ("weights: not HDF5", ["--weights", str(not_hdf5), "The [MASK]."], None, "error", (str(not_hdf5), "HDF5")),
        ("weights: /dev/null", ["--weights", os.devnull, "The [MASK]."], None, "error", (os.devnull,)),
        ("weights: empty path", ["--weights", "", "The [MASK]."], None, "error", ("--weights",)),
        ("weights: the vocabulary file", ["--weights", str(ALBERT_VOCAB), "The [MASK]."], None, "error",
         ("not an HDF5 file",)),
    ]
    tally = Tally("predict, in process")
    failures = []
    for name, argv, stdin, expect, needles, *check in cases:
        full = argv if any(a == "--weights" for a in argv) else weights_args + argv
        outcome = run_main(full, capsys, monkeypatch, stdin)
        problem = outcome.problem(expect, needles)
        if problem is None and expect == "ok" and check and check[0] is not None and not check[0](outcome.out):
            problem = f"unexpected result: {outcome.out[:300]!r}"
        tally.add(f"{expect} as expected" if problem is None else "FAILED")
        if problem:
            failures.append(f"{name}: {problem}")
    tally.report()
    assert not failures, "\n".join(failures)


def test_subprocess_cases(model_path, tmp_path):
    """What depends on the process: the C locale's decoding of stdin and argv, a named pipe as weights."""
    fifo = tmp_path / "pipe.h5"
    os.mkfifo(fifo)
    c_locale = {"LC_ALL": "C", "LANG": "C"}
    weights_args = ["--weights", str(model_path)]
    cases = [
        ("latin-1 on stdin, C locale", weights_args + ["--file", "-"], "Caf\xe9 [MASK].\n".encode("latin-1"),
         c_locale, "error", ("standard input", "UTF-8")),
        ("not UTF-8 in the command line", weights_args + [b"Caf\xe9 [MASK]."], b"", c_locale, "error", ("UTF-8",)),
        ("weights: a named pipe", ["--weights", str(fifo), "The [MASK]."], b"", {}, "error",
         (str(fifo), "not a regular file")),
        ("512 ids, UTF-8 locale", weights_args + ["--top-k", "2", text_of_length(Tokenizer(ALBERT_VOCAB), LIMIT)],
         b"", {"LC_ALL": "C.UTF-8"}, "ok", ()),
    ]
    tally = Tally("predict, subprocess")
    failures = []
    for name, args, stdin, env, expect, needles in cases:
        problem = run_cli(args, stdin, env).problem(expect, needles)
        tally.add(f"{expect} as expected" if problem is None else "FAILED")
        if problem:
            failures.append(f"{name}: {problem}")
    tally.report()
    assert not failures, "\n".join(failures)
