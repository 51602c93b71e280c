"""Writing files so that nothing is lost: a temporary file beside the target, then an atomic rename."""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Iterator


def _new_mode(path: str, requested: int) -> int:
    """The permissions `path` keeps when it is replaced, else those a new file (requested 0o666) or folder
    (0o777) would get from open() or mkdir() under the process's umask."""
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return requested & ~umask


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[str]:
    """Yield a temporary path in the target's folder; when the block succeeds, move it onto `path`.

    `path` is therefore always either the old file or the complete new one, never half a file; if
    the block raises, the temporary file is removed and `path` is untouched.
    """
    path = os.fspath(path)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), prefix=f".{os.path.basename(path)}.",
                               suffix=suffix)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, _new_mode(path, 0o666))     # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_output_dir(path: str | os.PathLike, replace: bool = False) -> Iterator[str]:
    """Yield a temporary folder beside `path`; when the block succeeds, rename it to `path`.

    A folder of several files that belong together (a transformers checkpoint: config, weights,
    vocabulary) then appears whole or not at all: a crash leaves no folder that mixes new files with
    old ones.  `path` must not exist, or be an empty folder; replace=True also accepts a non-empty
    folder, which is moved aside and deleted once the new one is in place (between those two
    renames `path` is briefly absent, never half-written).  If the block raises, nothing changes.
    """
    import shutil

    path = os.path.abspath(os.fspath(path))
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(f"{path} exists and is not a folder")
    if os.path.isdir(path) and os.listdir(path) and not replace:
        raise FileExistsError(f"{path} exists and is not empty")
    tmp = tempfile.mkdtemp(dir=os.path.dirname(path), prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        yield tmp
        os.chmod(tmp, _new_mode(path, 0o777))     # mkdtemp makes 0700; give the folder the usual permissions
        if os.path.isdir(path) and os.listdir(path):
            old = tempfile.mkdtemp(dir=os.path.dirname(path), prefix=f".{os.path.basename(path)}.", suffix=".old")
            os.replace(path, old)     # an empty target folder: rename() replaces it atomically
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
