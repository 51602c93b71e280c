"""`tune_process()`: the process-wide settings that speed tinyalbert up, applied only when asked.

`import tinyalbert` and the model's own calls change nothing outside tinyalbert: no environment variable,
no malloc setting.  These settings belong to the whole process (a notebook's session, a program that also
runs torch), so the caller decides:

* the command-line programs (pretrain, finetune, predict, bench, opprofile, count, diff) call
  `tune_process` first thing;
* a notebook or a program that uses tinyalbert as a library calls it once, before the first model call.

The two settings and why (measured figures: docs/performance.md, "Process-wide settings"):

OMP_WAIT_POLICY=PASSIVE
    Numba's parallel kernels run on OpenMP (libgomp) threads.  By default an idle OpenMP thread spins
    for a while before it sleeps, and on a machine with few cores that spinning takes a core from the
    BLAS threads that run next.  libgomp reads the variable once, when it loads (at the first parallel
    kernel), so it must be set before that; later it reaches child processes only, and `tune_process`
    warns.  A value the user set is left alone.
malloc keeps freed memory (`memory.keep_freed_memory`), for training only
    A training step frees and re-allocates hundreds of activation buffers; glibc's default hands them
    back to the OS and the next step pays a page fault for every 4 KiB again.  Inference gains nothing
    from it and keeps more memory, so `training=False` skips it.
"""
from __future__ import annotations

import contextlib
import os
import sys
import warnings
from typing import Iterator

from .memory import keep_freed_memory

OMP_WAIT_POLICY = "PASSIVE"


def numba_threads_started() -> bool:
    """Whether Numba has started its thread pool (and with the "omp" layer loaded libgomp) in this process."""
    parallel = sys.modules.get("numba.np.ufunc.parallel")
    return bool(getattr(parallel, "_is_initialized", False))        # a private flag: False if it ever goes


def tune_process(training: bool = True) -> None:
    """Set this process up for tinyalbert: OpenMP threads sleep when idle; with `training`, malloc keeps freed memory.

    Call it once, before the first model call (the command-line programs do).  Idempotent.  What each
    setting does and what it is worth: the module docstring and docs/performance.md.
    """
    if "OMP_WAIT_POLICY" not in os.environ:
        if numba_threads_started():
            warnings.warn("tune_process: Numba's threads have already started, so OMP_WAIT_POLICY=PASSIVE "
                          "reaches only child processes; call tune_process() before the first model call",
                          RuntimeWarning, stacklevel=2)
        os.environ["OMP_WAIT_POLICY"] = OMP_WAIT_POLICY
    if training:
        keep_freed_memory()


@contextlib.contextmanager
def limit_threads(n: int | None) -> Iterator[None]:
    """At most n Numba threads (and n BLAS threads, when threadpoolctl is installed) for the block; the
    previous limits come back at its end.  None changes nothing."""
    if n is None:
        yield
        return
    import numba

    previous = numba.get_num_threads()
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    try:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            limits = contextlib.nullcontext()
        else:
            limits = threadpool_limits(limits=n)
        with limits:
            yield
    finally:
        numba.set_num_threads(previous)


def one_thread() -> contextlib.AbstractContextManager[None]:
    """One Numba and one BLAS thread for the block (limit_threads(1)).

    For many calls on small arrays (gradient checks, a tiny model, an evaluation beside training runs):
    at that size handing work to a second thread costs more than it saves, and on a busy machine a small
    product can wait milliseconds for the other thread to be scheduled.
    """
    return limit_threads(1)
