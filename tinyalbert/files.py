"""Writing files so that nothing is lost: a temporary file beside the target, then an atomic rename."""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Iterator


def _file_mode(path: str) -> int:
    """The permissions a new file would get (or the existing file's, when it is replaced)."""
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


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
        os.chmod(tmp, _file_mode(path))     # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
