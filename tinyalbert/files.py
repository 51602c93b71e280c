"""Writing files so that nothing is lost: every file tinyalbert writes goes through this module.

atomic_output (one file) and atomic_output_dir (a folder of files that belong together) both
1. write to a temporary name beside the target, created the way open(path, "w") or mkdir() would
   create it (mode 0o666 or 0o777, the kernel applies the umask: no process-wide os.umask call,
   which would race with other threads); a file that is replaced keeps its permissions;
2. fsync what was written, so the bytes are on disk before the name points at them;
3. os.replace the temporary onto the target, which is atomic: a reader sees the old target or the
   complete new one, never half of one;
4. fsync the folder, so that the rename itself survives a power cut.

A process killed while writing cannot delete its temporary file.  The name of the temporary holds
the writer's process id, and the next write to the same target removes the temporaries whose
writer is no longer running.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import stat
import time
from typing import Iterator

# Seconds to sleep after the content is written and before it is renamed into place.  Only the kill
# test (tests/test_killed.py) sets it, to kill writers at that moment on purpose.
TEST_PAUSE_ENV = "TINYALBERT_TEST_PAUSE_BEFORE_RENAME"


def _temporary_name(target_name: str, suffix: str) -> str:
    return f".{target_name}.{os.getpid()}-{secrets.token_hex(4)}{suffix}"


def _temporary_pattern(target_name: str, suffix: str) -> re.Pattern[str]:
    """Matches _temporary_name(target_name, suffix) of any process; group 1 is the writer's process id."""
    return re.compile(rf"\.{re.escape(target_name)}\.(\d+)-[0-9a-f]{{8}}{re.escape(suffix)}")


def _writer_is_gone(pid: int) -> bool:
    """True only when process `pid` is certainly not running on this machine."""
    if os.name != "posix" or pid == os.getpid():
        return False            # on Windows os.kill(pid, 0) would send a signal, not ask a question
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:             # EPERM: it runs, under another user
        return False
    return False


def stale_temporaries(folder: str, target_name: str, suffix: str) -> list[str]:
    """Paths of the temporaries left in `folder` for `target_name` by writers that are no longer running."""
    pattern = _temporary_pattern(target_name, suffix)
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    return [os.path.join(folder, name) for name in sorted(names)
            if (m := pattern.fullmatch(name)) and _writer_is_gone(int(m.group(1)))]


def _create_temporary(folder: str, target_name: str, suffix: str, directory: bool) -> str:
    while True:
        tmp = os.path.join(folder, _temporary_name(target_name, suffix))
        try:
            if directory:
                os.mkdir(tmp, 0o777)
            else:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:     # a name drawn twice: draw again
            continue


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's (or a folder's entries') data from the kernel's cache to the disk."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except (IsADirectoryError, PermissionError):
        if os.path.isdir(path):
            return              # Windows cannot open a folder to flush it; its renames are journalled
        raise
    try:
        os.fsync(fd)
    except OSError as e:
        # some file systems (and folders on some platforms) do not support fsync: nothing to flush there
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def _fsync_tree(folder: str) -> None:
    """fsync every file and folder under `folder`, then `folder` itself."""
    for root, _subfolders, files in os.walk(folder, topdown=False):
        for name in files:
            if not os.path.islink(os.path.join(root, name)):
                fsync_path(os.path.join(root, name))
        fsync_path(root)


def _keep_mode(target: str, tmp: str) -> None:
    """A target that already exists keeps its permissions, as when open(target, "w") truncates it."""
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        return
    os.chmod(tmp, mode)


def _pause_for_tests() -> None:
    seconds = os.environ.get(TEST_PAUSE_ENV)
    if seconds:
        time.sleep(float(seconds))


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[str]:
    """Yield a temporary path in the target's folder; when the block succeeds, move it onto `path`.

    `path` is therefore always either the old file or the complete new one, never half a file; if
    the block raises, the temporary file is removed and `path` is untouched.  The temporary already
    exists (empty) when the block starts; `suffix` ends its name (e.g. ".png" for writers that pick
    the format from the name).  See the module docstring for the fsyncs and the permissions.
    """
    path = os.path.abspath(os.fspath(path))
    folder, name = os.path.split(path)
    for stale in stale_temporaries(folder, name, suffix):
        _remove(stale)
    tmp = _create_temporary(folder, name, suffix, directory=False)
    try:
        yield tmp
        _pause_for_tests()
        _keep_mode(path, tmp)
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(folder)
    finally:
        _remove(tmp)


def _recover_interrupted_replacement(path: str) -> None:
    """Clean up after writers of folder `path` that were killed: remove their temporary folders, and put
    back an old folder that was moved aside but whose replacement never arrived."""
    folder, name = os.path.split(path)
    for stale in stale_temporaries(folder, name, ".tmp"):
        _remove(stale)
    for old in stale_temporaries(folder, name, ".old"):
        if os.path.lexists(path):
            _remove(old)
        else:
            os.replace(old, path)


@contextlib.contextmanager
def atomic_output_dir(path: str | os.PathLike, replace: bool = False) -> Iterator[str]:
    """Yield a temporary folder beside `path`; when the block succeeds, rename it to `path`.

    A folder of several files that belong together (a transformers checkpoint: config, weights,
    vocabulary) then appears whole or not at all: a crash leaves no folder that mixes new files with
    old ones.  `path` must not exist, or be an empty folder; replace=True also accepts a non-empty
    folder, which is moved aside and deleted once the new one is in place (between those two
    renames `path` is briefly absent, never half-written; if the writer dies right there, the next
    write to `path` puts the old folder back first).  If the block raises, nothing changes.
    Everything in the folder is fsync'ed before the rename.
    """
    path = os.path.abspath(os.fspath(path))
    parent, name = os.path.split(path)
    _recover_interrupted_replacement(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(f"{path} exists and is not a folder")
    if os.path.isdir(path) and os.listdir(path) and not replace:
        raise FileExistsError(f"{path} exists and is not empty")
    tmp = _create_temporary(parent, name, ".tmp", directory=True)
    try:
        yield tmp
        _pause_for_tests()
        _keep_mode(path, tmp)
        _fsync_tree(tmp)
        if os.path.isdir(path) and os.listdir(path):
            old = _create_temporary(parent, name, ".old", directory=True)
            os.replace(path, old)     # an empty target folder: rename() replaces it atomically
            os.replace(tmp, path)
            fsync_path(parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
            fsync_path(parent)
    finally:
        _remove(tmp)
