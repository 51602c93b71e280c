"""tinyalbert: ALBERT (albert-xxlarge-v2) in NumPy and Numba, every forward and backward written by hand.

Start with `tinyalbert/nn/model.py`: the whole forward fits on one page.
"""
import os as _os

# Numba's OpenMP worker threads must sleep, not spin, once a kernel ends: on 2 cores a
# spinning worker takes a core from the BLAS threads that run next (measured: a small
# model's training step went from 2.4 s to 42 s).  libgomp reads this when it loads,
# which is at the first parallel kernel, so it has to be set before that.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from .nn.config import AlbertConfig, PRESETS
from .nn.params import init_params, param_shapes, count_params
from .nn.model import Albert, ForwardOutput

__version__ = "0.1.0"

__all__ = ["AlbertConfig", "PRESETS", "init_params", "param_shapes", "count_params", "Albert", "ForwardOutput",
           "__version__"]
