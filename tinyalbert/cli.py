"""What every command-line tool of tinyalbert does with an error nobody foresaw: one line, not a traceback."""
from __future__ import annotations

import os
import sys


def report_unexpected(error: BaseException) -> int:
    """Print `error: Type: first line` on stderr and return exit code 1.

    Call it from an `except` block: with TINYALBERT_DEBUG=1 it re-raises, so the traceback shows.
    """
    if os.environ.get("TINYALBERT_DEBUG"):
        raise error
    text = str(error).strip()
    first = text.splitlines()[0] if text else ""
    print(f"error: {type(error).__name__}: {first} (set TINYALBERT_DEBUG=1 for a traceback)", file=sys.stderr)
    return 1
