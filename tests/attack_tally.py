"""Counting what an attack test tried, for the closing note of issue 14 (not a test module).

Each attack test builds a `Tally`, records one outcome per input it tried, and calls `report()` at the
end: a one-line summary is printed (seen with `pytest -s`, and in the failure output when the test
fails), and, if the environment variable TINYALBERT_ATTACK_REPORT names a file, appended to it as
one JSON line {"test", "inputs", "outcomes", "seconds"} (xdist workers append to the same file).
"""
from __future__ import annotations

import collections
import json
import os
import time


class Tally:
    def __init__(self, test: str):
        self.test = test
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.started = time.perf_counter()

    def add(self, outcome: str) -> None:
        self.outcomes[outcome] += 1

    @property
    def inputs(self) -> int:
        return sum(self.outcomes.values())

    def report(self) -> str:
        seconds = time.perf_counter() - self.started
        counts = ", ".join(f"{name}: {n}" for name, n in sorted(self.outcomes.items()))
        line = f"[attack] {self.test}: {self.inputs} inputs in {seconds:.1f} s ({counts})"
        print(line)
        path = os.environ.get("TINYALBERT_ATTACK_REPORT")
        if path:
            record = {"test": self.test, "inputs": self.inputs, "outcomes": dict(self.outcomes),
                      "seconds": round(seconds, 2)}
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record, sort_keys=True) + "\n")
        return line
