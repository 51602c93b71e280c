"""tinyalbert: ALBERT (albert-xxlarge-v2) in NumPy and Numba, every forward and backward written by hand.

Start with `tinyalbert/model.py`: the whole forward fits on one page.
"""
import os as _os

# Numba's OpenMP worker threads must sleep, not spin, once a kernel ends: on 2 cores a
# spinning worker takes a core from the BLAS threads that run next (measured: a small
# model's training step went from 2.4 s to 42 s).  libgomp reads this when it loads,
# which is at the first parallel kernel, so it has to be set before that.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _keep_freed_memory() -> None:
    """Ask glibc's malloc to keep freed activation buffers for reuse instead of returning them to the OS.

    Every forward allocates arrays of several MB and frees them by the end of the step.  By default glibc
    gives such memory back (munmap, or trimming the heap top), and the next step pays a page fault and a
    kernel zero-fill for every 4 KiB it touches again: measured 11 % of a small model's training step.
    Arrays up to 32 MiB (the largest mallopt allows) now come from the heap, and the heap is trimmed only
    above 1 GiB of free space.  Nothing changes where the user set MALLOC_* variables, or off glibc.
    """
    if any(k.startswith("MALLOC_") for k in _os.environ):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        libc.mallopt(m_mmap_threshold, 32 * 2 ** 20)
        libc.mallopt(m_trim_threshold, 2 ** 30)
    except (OSError, AttributeError):
        pass


_keep_freed_memory()

from .config import AlbertConfig, PRESETS
from .params import init_params, param_shapes, count_params
from .model import Albert, ForwardOutput

__version__ = "0.1.0"

__all__ = ["AlbertConfig", "PRESETS", "init_params", "param_shapes", "count_params", "Albert", "ForwardOutput",
           "__version__"]
