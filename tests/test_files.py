"""tinyalbert.files: atomic, durable writes.

- a new file or folder gets the permissions a plain open() or mkdir() gives it under the umask, a
  replaced file keeps its own, and the umask is never changed (that would race with other threads);
- the content is fsync'ed before the rename, and the folder after it;
- an exception leaves the target as it was and no temporary behind; the temporaries of a killed
  writer are removed by the next write, and a folder moved aside by a killed writer is put back.
(tests/test_killed.py kills real writers.)
"""
from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tinyalbert import files
from tinyalbert.files import atomic_output, atomic_output_dir

REAL_UMASK = os.umask      # the tests set the umask with it even while os.umask is made to fail


@contextlib.contextmanager
def umask(mask: int):
    previous = REAL_UMASK(mask)
    try:
        yield
    finally:
        REAL_UMASK(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def umask_untouchable(monkeypatch):
    """Makes any os.umask call from the code under test fail."""
    def refuse(mask):
        raise AssertionError("os.umask must not be called: it changes the whole process")
    monkeypatch.setattr(os, "umask", refuse)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002, 0o027])
def test_new_file_and_folder_get_the_permissions_of_open_and_mkdir(tmp_path, mask, umask_untouchable):
    with umask(mask):
        with open(tmp_path / "plain.txt", "w") as f:
            f.write("x")
        os.mkdir(tmp_path / "plain-dir")
        with atomic_output(tmp_path / "atomic.txt") as tmp:
            Path(tmp).write_text("x")
        with atomic_output_dir(tmp_path / "atomic-dir") as tmp:
            Path(tmp, "inside.txt").write_text("x")
    assert mode(tmp_path / "atomic.txt") == mode(tmp_path / "plain.txt") == 0o666 & ~mask
    assert mode(tmp_path / "atomic-dir") == mode(tmp_path / "plain-dir") == 0o777 & ~mask


def test_a_replaced_file_keeps_its_permissions(tmp_path, umask_untouchable):
    for name in ("plain.txt", "atomic.txt"):
        (tmp_path / name).write_text("old")
        os.chmod(tmp_path / name, 0o640)
    with open(tmp_path / "plain.txt", "w") as f:
        f.write("new")
    with atomic_output(tmp_path / "atomic.txt") as tmp:
        Path(tmp).write_text("new")
    assert mode(tmp_path / "atomic.txt") == mode(tmp_path / "plain.txt") == 0o640
    assert (tmp_path / "atomic.txt").read_text() == "new"


def test_a_vocabulary_gets_normal_permissions(tmp_path):
    from tinyalbert.vocab import train_vocab

    text = tmp_path / "text.txt"
    text.write_text("\n".join(f"the {w} sat on the mat number {i}." for i, w in enumerate(["cat", "dog", "owl"] * 40)))
    with umask(0o022):
        (tmp_path / "plain").write_text("x")
        out = train_vocab([text], tmp_path / "v.model", vocab_size=40, progress=False)
    assert mode(out) == mode(tmp_path / "plain") == 0o644


class FsyncRecorder:
    """Stands in for os.fsync: records the inode, the kind and whether `target` existed at each call."""

    def __init__(self, target: Path, real=os.fsync):
        self.target, self.real, self.calls = target, real, []

    def __call__(self, fd: int) -> None:
        st = os.fstat(fd)
        self.calls.append((st.st_ino, stat.S_ISDIR(st.st_mode), self.target.exists()))
        self.real(fd)


def test_file_is_fsynced_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    target = tmp_path / "out.bin"
    recorder = FsyncRecorder(target)
    monkeypatch.setattr(os, "fsync", recorder)
    with atomic_output(target) as tmp:
        Path(tmp).write_bytes(b"data")
    file_ino, folder_ino = os.stat(target).st_ino, os.stat(tmp_path).st_ino
    assert recorder.calls == [(file_ino, False, False), (folder_ino, True, True)]


def test_folder_contents_are_fsynced_before_the_rename_and_the_parent_after(tmp_path, monkeypatch):
    target = tmp_path / "export"
    recorder = FsyncRecorder(target)
    monkeypatch.setattr(os, "fsync", recorder)
    with atomic_output_dir(target) as tmp:
        Path(tmp, "a.json").write_text("{}")
        Path(tmp, "sub").mkdir()
        Path(tmp, "sub", "b.bin").write_bytes(b"b")
    inodes = {p: os.stat(p).st_ino for p in (target / "a.json", target / "sub" / "b.bin", target / "sub", target)}
    before_rename = {(ino, kind) for ino, kind, exists in recorder.calls if not exists}
    assert before_rename == {(inodes[target / "a.json"], False), (inodes[target / "sub" / "b.bin"], False),
                             (inodes[target / "sub"], True), (inodes[target], True)}
    assert recorder.calls[-1] == (os.stat(tmp_path).st_ino, True, True)


def test_replacing_a_folder_fsyncs_the_parent_after_the_rename(tmp_path, monkeypatch):
    target = tmp_path / "export"
    target.mkdir()
    (target / "old.txt").write_text("old")
    recorder = FsyncRecorder(target)
    monkeypatch.setattr(os, "fsync", recorder)
    with atomic_output_dir(target, replace=True) as tmp:
        Path(tmp, "new.txt").write_text("new")
    assert sorted(os.listdir(target)) == ["new.txt"]
    assert recorder.calls[-1][:2] == (os.stat(tmp_path).st_ino, True)
    assert sorted(os.listdir(tmp_path)) == ["export"]


class Boom(Exception):
    pass


def test_an_exception_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(Boom), atomic_output(target) as tmp:
        Path(tmp).write_text("half")
        raise Boom
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_an_exception_leaves_the_old_folder_and_no_temporary(tmp_path):
    target = tmp_path / "export"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(Boom), atomic_output_dir(target, replace=True) as tmp:
        Path(tmp, "new.txt").write_text("half")
        raise Boom
    assert os.listdir(tmp_path) == ["export"] and os.listdir(target) == ["old.txt"]


def test_the_temporaries_of_a_killed_writer_are_removed_by_the_next_write(tmp_path):
    gone, alive = dead_pid(), os.getppid()
    stale = tmp_path / f".out.h5.{gone}-0123abcd.tmp"
    live = tmp_path / f".out.h5.{alive}-0123abcd.tmp"        # a writer still at work: left alone
    other = tmp_path / f".other.h5.{gone}-0123abcd.tmp"      # another target's: left to its next write
    for p in (stale, live, other):
        p.write_bytes(b"half a file")
    with atomic_output(tmp_path / "out.h5") as tmp:
        Path(tmp).write_bytes(b"whole")
    assert sorted(os.listdir(tmp_path)) == sorted(["out.h5", live.name, other.name])


def test_a_folder_moved_aside_by_a_killed_writer_is_put_back(tmp_path):
    # killed between its two renames: the old folder is aside, the new one not yet in place
    gone = dead_pid()
    aside = tmp_path / f".export.{gone}-0123abcd.old"
    aside.mkdir()
    (aside / "old.txt").write_text("old")
    (tmp_path / f".export.{gone}-4567cdef.tmp").mkdir()
    target = tmp_path / "export"
    with pytest.raises(Boom), atomic_output_dir(target, replace=True):
        raise Boom
    assert os.listdir(tmp_path) == ["export"] and (target / "old.txt").read_text() == "old"


def test_a_folder_moved_aside_after_its_replacement_arrived_is_removed(tmp_path):
    gone = dead_pid()
    aside = tmp_path / f".export.{gone}-0123abcd.old"
    aside.mkdir()
    (aside / "old.txt").write_text("old")
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "new.txt").write_text("new")
    with atomic_output_dir(tmp_path / "other"):
        pass
    assert aside.exists()                              # another target's leftovers are not touched
    with pytest.raises(FileExistsError), atomic_output_dir(tmp_path / "export"):
        pass
    assert sorted(os.listdir(tmp_path)) == ["export", "other"]
    assert os.listdir(tmp_path / "export") == ["new.txt"]


def test_the_test_pause_happens_before_the_rename(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setenv(files.TEST_PAUSE_ENV, "0.01")
    monkeypatch.setattr(files.time, "sleep", lambda s: seen.append((s, (tmp_path / "out").exists())))
    with atomic_output(tmp_path / "out") as tmp:
        Path(tmp).write_text("x")
    assert seen == [(0.01, False)]
