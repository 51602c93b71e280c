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


class CommandErrors:
    """The error handling of every command's main(): one line on stderr and an exit code, never a traceback.

        with CommandErrors((PredictError, WeightsError, OSError)) as status:
            ...                                      # the command's work
        return status.exit_code

    An `expected` error (bad input, which the message names) prints `error: <message>` and sets its
    `exit_code` attribute if it has one, else `code`; Ctrl-C sets 130; any other exception is a bug or
    an unforeseen file, and goes to report_unexpected (exit code 1).  exit_code stays 0 on success.
    """

    def __init__(self, expected: tuple[type[BaseException], ...] = (), code: int = 2):
        self.expected, self.code, self.exit_code = expected, code, 0

    def __enter__(self) -> CommandErrors:
        return self

    def __exit__(self, kind, error, traceback) -> bool:
        if error is None:
            return False
        if isinstance(error, self.expected):
            print(f"error: {error}", file=sys.stderr)
            self.exit_code = getattr(error, "exit_code", self.code)
        elif isinstance(error, KeyboardInterrupt):
            print("error: interrupted", file=sys.stderr)
            self.exit_code = 130
        elif isinstance(error, Exception):
            self.exit_code = report_unexpected(error)
        else:
            return False        # SystemExit and the like go on
        return True


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
