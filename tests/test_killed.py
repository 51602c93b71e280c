"""Kill the command-line tools with SIGKILL at random moments: nothing is lost, nothing is half-written.

- pretrain: a small run is killed 20+ times (at seeded random moments: any time after the start, a
  few steps into training, or while a checkpoint or the log is being written, which the test pause
  in tinyalbert.files stretches so that a kill lands there on purpose).  After each kill the
  checkpoint is whole, `--resume` continues, and the finished run's checkpoint, weights and log are
  bitwise equal to those of an uninterrupted run; no temporary file is left behind.
- convert and finetune: killed while they replace an existing output file, which is afterwards
  always the old file or the new one, loadable, never truncated; the next run leaves no temporary.

Each test prints its figures (run pytest with -s to see them); the seeds make a failure reproducible.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from tinyalbert import files, pretrain
from tinyalbert.classifier import load_classifier
from tinyalbert.data import SAMPLE_CORPUS
from tinyalbert.nn.config import AlbertConfig
from tinyalbert.nn.params import init_params
from tinyalbert.vocab import train_vocab
from tinyalbert.weights import load_params, save

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="SIGKILL is POSIX-only")

# one thread each: the killed processes and the test share the cores, and threads waiting for a free core
# would only make every run slower (the results do not depend on the thread count)
ONE_THREAD = {"NUMBA_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
PAUSE = 0.3          # seconds the test pause holds a finished temporary file before its rename
TIMEOUT = 120.0      # seconds any one wait may take before the test fails instead of hanging


def launch(module: str, args: list[str], log: Path, pause: bool = False) -> subprocess.Popen:
    env = {**os.environ, **ONE_THREAD}
    if pause:
        env[files.TEST_PAUSE_ENV] = str(PAUSE)
    with open(log, "ab") as err:
        return subprocess.Popen([sys.executable, "-m", module, *args], env=env, stdout=subprocess.DEVNULL,
                                stderr=err)


def kill(proc: subprocess.Popen) -> bool:
    """SIGKILL `proc` and reap it; False if it had already exited by itself."""
    if proc.poll() is not None:
        return False
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc.returncode == -signal.SIGKILL


def wait_for(condition, proc: subprocess.Popen, log: Path) -> bool:
    """Poll until condition() holds (True) or `proc` exits (False)."""
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if proc.poll() is not None:
            assert proc.returncode == 0, f"exit {proc.returncode}: {log.read_text(errors='replace')[-2000:]}"
            return False
        assert time.monotonic() < deadline, f"waited {TIMEOUT} s: {log.read_text(errors='replace')[-2000:]}"
        time.sleep(0.005)
    return True


def temporaries(folder: Path, target: str = "") -> list[str]:
    """Hidden names in `folder` (every temporary of tinyalbert.files starts with '.'), of `target` if given."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{target}")) if folder.is_dir() else []


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> tuple[Path, Path]:
    """The first 15 kB of two TinyStories files of the bundled sample, and a 400-piece vocabulary of them."""
    root = tmp_path_factory.mktemp("killed")
    folder = root / "stories"
    folder.mkdir()
    for name in ("tinystories_000.txt", "tinystories_001.txt"):
        text = (SAMPLE_CORPUS / "tinystories" / name).read_text(encoding="utf-8")[:15000]
        (folder / name).write_text(text[:text.rindex("\n") + 1], encoding="utf-8")
    vocab = train_vocab([folder], root / "spiece.model", vocab_size=400, progress=False)
    return folder, vocab


def pretrain_args(out: Path, corpus: Path, vocab: Path, cache: Path) -> list[str]:
    return ["--out", str(out), "--vocab", str(vocab), "--data", str(corpus), "--cache-dir", str(cache),
            "--export", str(out.parent / f"{out.name}-export.h5"),
            "--embedding-size", "8", "--hidden-size", "16", "--num-heads", "2", "--intermediate-size", "24",
            "--num-layers", "2", "--seq-len", "32", "--steps", "40", "--batch-size", "4", "--warmup", "2",
            "--lr", "1e-2", "--log-every", "1", "--eval-every", "10", "--eval-batches", "1",
            "--checkpoint-every", "2", "--heldout-fraction", "0.1"]


def new_temporaries(folder: Path, target: str, earlier: set[str]) -> set[str]:
    """The temporaries of `target` in `folder` that are not among the `earlier` ones (left by killed writers)."""
    return set(temporaries(folder, target)) - earlier


def inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except FileNotFoundError:
        return None


def logged_step(log_path: Path) -> int:
    """The step of the log's last whole record (0 for none)."""
    try:
        lines = log_path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return 0
    for line in reversed(lines):
        try:
            return json.loads(line)["step"]
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return 0


def has_trained_to(log_path: Path, step: int, old_inode: int | None) -> bool:
    """This process has logged `step`.  Its log is a new file (a new inode): the one it starts from may
    hold records of the killed process beyond the checkpoint's step."""
    return inode(log_path) not in (None, old_inode) and logged_step(log_path) >= step


def checkpoint_step(path: Path) -> int:
    """The step of the checkpoint, which must be whole whenever it exists (0 for none)."""
    if not path.exists():
        return 0
    return pretrain.load_checkpoint(path)[3]


def checkpoint_arrays(path: Path) -> dict[str, np.ndarray]:
    config, params, opt_state, step, _, _ = pretrain.load_checkpoint(path)
    return {**{f"params/{k}": v for k, v in params.items()}, **{f"optimizer/{k}": v for k, v in opt_state.items()},
            "step": np.array(step)}


def log_records(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "tokens_per_s"}
            for line in path.read_text(encoding="utf-8").splitlines()]


def assert_bitwise_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray], what: str) -> None:
    assert a.keys() == b.keys(), what
    for k in a:
        assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), f"{what}: {k} differs"


def test_pretraining_killed_at_random_moments_resumes_bitwise_exactly(tmp_path, small_corpus):
    corpus, vocab = small_corpus
    cache = tmp_path / "cache"
    straight = tmp_path / "straight"
    assert pretrain.main(pretrain_args(straight, corpus, vocab, cache)) == 0   # also fills the token cache

    run = tmp_path / "killed"
    args = pretrain_args(run, corpus, vocab, cache)
    ckpt, log_path, stderr = run / "checkpoint.h5", run / "log.jsonl", tmp_path / "stderr.txt"
    rng = random.Random(14)
    figures = Counter()
    seconds_to_train = None        # from a launch to a few steps of training: measured, then kept up to date
    while figures["kills"] < 20:
        start = checkpoint_step(ckpt)
        resuming = start > 0
        mode = rng.choice(["any moment", "a few steps in", "checkpoint write"] + ["log rewrite"] * resuming)
        if seconds_to_train is None:
            mode = "a few steps in"
        launched, log_inode, earlier_temporaries = time.monotonic(), inode(log_path), set(temporaries(run))
        proc = launch("tinyalbert.pretrain", args + ["--resume"] * resuming, stderr,
                      pause=mode in ("checkpoint write", "log rewrite"))
        figures["resumes" if resuming else "fresh starts"] += 1
        if mode == "any moment":
            time.sleep(rng.uniform(0, seconds_to_train))
        elif mode == "a few steps in":
            target = start + rng.randint(1, 3)
            if not wait_for(partial(has_trained_to, log_path, target, log_inode), proc, stderr):
                break
            seconds_to_train = time.monotonic() - launched
            time.sleep(rng.uniform(0, 0.05))
        else:
            name = "checkpoint.h5" if mode == "checkpoint write" else "log.jsonl"
            if not wait_for(partial(new_temporaries, run, name, earlier_temporaries), proc, stderr):
                break
            time.sleep(rng.uniform(0, PAUSE * 1.1))
        if not kill(proc):
            assert proc.returncode == 0, stderr.read_text(errors="replace")[-2000:]
            break                  # finished before the kill landed: no more kills possible
        figures["kills"] += 1
        figures[f"kills: {mode}"] += 1
        left = new_temporaries(run, "", earlier_temporaries)
        figures["temporaries left by a kill"] += len(left)
        figures["killed in the middle of a write (temporary found)"] += bool(left)
        assert checkpoint_step(ckpt) >= start        # whole (it loads), and never older than before

    figures["step reached by the killed processes"] = checkpoint_step(ckpt)
    proc = launch("tinyalbert.pretrain", args + ["--resume"] * (checkpoint_step(ckpt) > 0), stderr)
    figures["resumes" if checkpoint_step(ckpt) > 0 else "fresh starts"] += 1
    assert proc.wait(timeout=TIMEOUT * 5) == 0, stderr.read_text(errors="replace")[-2000:]

    assert_bitwise_equal(checkpoint_arrays(straight / "checkpoint.h5"), checkpoint_arrays(ckpt), "checkpoint")
    figures["bitwise-equal checkpoints"] += 1
    for name, other in (("model.h5", "model.h5"), ("../straight-export.h5", "../killed-export.h5")):
        a, b = load_params(straight / name, mmap=False), load_params(run / other, mmap=False)
        assert a[0] == b[0] and a[2] == b[2], name
        assert_bitwise_equal(a[1], b[1], name)
        figures["bitwise-equal weights files"] += 1
    assert log_records(straight / "log.jsonl") == log_records(log_path)
    left = temporaries(run) + temporaries(tmp_path, "killed-export") + temporaries(cache)
    figures["temporaries left at the end"] = len(left)
    print("\npretrain kill test:", dict(figures))
    assert not left, left
    assert figures["kills"] >= 20, dict(figures)
    assert figures["kills: checkpoint write"] > 0 and figures["killed in the middle of a write (temporary found)"] > 0


def kill_while_replacing(module: str, args: list[str], target: Path, old: Path, new_ok, old_ok, kills: int,
                         seed: int, log: Path) -> Counter:
    """Run `module args` (which writes `target`) again and again over a copy of the `old` output and kill
    it at a seeded random moment: any time, or while the new file waits to be renamed into place.
    After each kill `target` must be the old file or the new one."""
    rng = random.Random(seed)
    figures = Counter()
    seconds_to_finish = None
    while figures["kills"] < kills:
        shutil.copyfile(old, target)
        earlier = set(temporaries(target.parent, target.name))
        mode = "any moment" if seconds_to_finish is not None and rng.random() < 0.5 else "before the rename"
        launched = time.monotonic()
        proc = launch(module, args, log, pause=mode == "before the rename")
        if mode == "any moment":
            time.sleep(rng.uniform(0, seconds_to_finish))
        else:
            assert wait_for(partial(new_temporaries, target.parent, target.name, earlier), proc, log)
            seconds_to_finish = time.monotonic() - launched
            time.sleep(rng.uniform(0, PAUSE * 1.5))     # a third of these land after the rename
        if not kill(proc):
            figures["finished before the kill"] += 1
            continue
        figures["kills"] += 1
        figures[f"kills: {mode}"] += 1
        figures["temporaries left by a kill"] += len(new_temporaries(target.parent, target.name, earlier))
        if old_ok(target):
            figures["old file after a kill"] += 1
        else:
            assert new_ok(target), f"{target} is neither the old output nor the new one"
            figures["new file after a kill"] += 1
    proc = launch(module, args, log)
    assert proc.wait(timeout=TIMEOUT) == 0, log.read_text(errors="replace")[-2000:]
    assert new_ok(target)
    figures["temporaries left at the end"] = len(temporaries(target.parent, target.name))
    assert figures["temporaries left at the end"] == 0, temporaries(target.parent)
    return figures


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory, small_corpus) -> Path:
    _, vocab = small_corpus
    config = AlbertConfig(vocab_size=400, embedding_size=8, hidden_size=16, num_attention_heads=2,
                          intermediate_size=24, num_hidden_layers=2, max_position_embeddings=64)
    path = tmp_path_factory.mktemp("tiny") / "tiny.h5"
    save(path, config, init_params(config, seed=0), spiece_model_bytes=vocab.read_bytes())
    return path


def same_params(path: Path, expected: dict[str, np.ndarray], dtype) -> bool:
    """True when `path` loads and holds exactly `expected`; a truncated or foreign file fails the test."""
    params = load_params(path, mmap=False)[1]
    assert params.keys() == expected.keys()
    return all(v.dtype == dtype and np.array_equal(v, expected[k]) for k, v in params.items())


def test_convert_killed_leaves_the_old_file_or_the_new_one(tmp_path, tiny_weights):
    from tinyalbert import convert
    from tinyalbert.export import export

    source = export(tiny_weights, tmp_path / "hf", progress=False)
    old, out = tmp_path / "old.h5", tmp_path / "out" / "model.h5"
    out.parent.mkdir()
    assert convert.main([str(source), str(old), "--no-progress"]) == 0
    old_params = load_params(old, mmap=False)[1]
    new_params = {k: v.astype(np.float16) for k, v in old_params.items()}
    figures = kill_while_replacing(
        "tinyalbert.convert", [str(source), str(out), "--dtype", "float16", "--no-progress"], out, old,
        new_ok=lambda p: same_params(p, new_params, np.float16), old_ok=lambda p: same_params(p, old_params,
                                                                                             np.float32),
        kills=6, seed=15, log=tmp_path / "stderr.txt")
    print("\nconvert kill test:", dict(figures))


def test_finetune_killed_leaves_the_old_file_or_the_new_one(tmp_path, tiny_weights):
    from tinyalbert import finetune

    rows = [f"the cat sat on mat number {i}\tcats" if i % 2 else f"the stock market fell {i} points\tmoney"
            for i in range(16)]
    train = tmp_path / "train.tsv"
    train.write_text("text\tlabel\n" + "\n".join(rows) + "\n", encoding="utf-8")
    out = tmp_path / "out" / "clf.h5"
    out.parent.mkdir()

    def args(path: Path, seed: int) -> list[str]:
        return ["--weights", str(tiny_weights), "--train", str(train), "--out", str(path), "--max-steps", "2",
                "--batch-size", "4", "--lr", "1e-3", "--threads", "1", "--quiet", "--seed", str(seed)]

    old, new = tmp_path / "old.h5", tmp_path / "new.h5"
    assert finetune.main(args(old, 0)) == 0 and finetune.main(args(new, 1)) == 0
    old_params, new_params = load_classifier(old).params, load_classifier(new).params
    assert any(not np.array_equal(v, new_params[k]) for k, v in old_params.items())

    def holds(params):
        return lambda p: all(np.array_equal(v, params[k]) for k, v in load_classifier(p).params.items())

    figures = kill_while_replacing("tinyalbert.finetune", args(out, 1), out, old, new_ok=holds(new_params),
                                   old_ok=holds(old_params), kills=6, seed=16, log=tmp_path / "stderr.txt")
    print("\nfinetune kill test:", dict(figures))
