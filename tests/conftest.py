"""Shared fixtures of the correctness suite (tier 1, tier 2 and the whole-model gradient check).

`error_report`  every gradient/output check records its measured error here; at the end of the
                session a summary is printed (visible with `pytest -s`) and, if the environment
                variable TINYALBERT_ERROR_REPORT names a path, the full table is written there as JSON:
                {tier: {op: {tensor: error}}}.
`one_numba_thread`  runs a module with one Numba thread.  The checks call tiny kernels thousands of
                times; on a busy 2-core machine every parallel launch then waits for a second core
                (about 0.5 ms per launch, ~100x slower than one thread).  The kernels are written to
                give bitwise the same result for any thread count, which
                test_model_gradcheck.py::test_gradients_do_not_depend_on_numba_thread_count checks.
"""
from __future__ import annotations

import json
import os

# Set before anything (torch included) loads libgomp: Numba's OpenMP workers must sleep
# between kernels instead of spinning on the cores the BLAS threads need next.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numba  # noqa: E402
import pytest  # noqa: E402


class ErrorReport:
    def __init__(self) -> None:
        self.errors: dict[str, dict[str, dict[str, float]]] = {}

    def add(self, tier: str, op: str, tensor: str, error: float) -> None:
        self.errors.setdefault(tier, {}).setdefault(op, {})[tensor] = float(error)

    def summary(self) -> str:
        lines = []
        for tier, ops in self.errors.items():
            lines.append(f"--- {tier}: max error per op (worst tensor) ---")
            for op, tensors in ops.items():
                worst = max(tensors, key=tensors.get)
                lines.append(f"  {op:<48s} {tensors[worst]:9.2e}  ({len(tensors)} tensors; worst: {worst})")
        return "\n".join(lines)


@pytest.fixture(scope="session")
def error_report():
    report = ErrorReport()
    yield report
    if report.errors:
        print("\n" + report.summary())
        path = os.environ.get("TINYALBERT_ERROR_REPORT")
        if path:
            with open(path, "w", encoding="utf-8") as f:
                json.dump(report.errors, f, indent=2, sort_keys=True)


@pytest.fixture(scope="module")
def one_numba_thread():
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(previous)
