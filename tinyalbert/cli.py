"""What every command-line tool of tinyalbert does with an error: one line on stderr, never a traceback."""
from __future__ import annotations

import argparse
import os
import sys


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (`error: ... (see --help)`) and exit code 2, like every other
    bad input of the commands, instead of the usage block."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see --help)\n")


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
