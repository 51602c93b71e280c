"""tinyalbert: ALBERT (albert-xxlarge-v2) in NumPy and Numba, every forward and backward written by hand.

Start with `tinyalbert/model.py`: the whole forward fits on one page.
"""
from .config import AlbertConfig, PRESETS
from .params import init_params, param_shapes, count_params
from .model import Albert, ForwardOutput

__version__ = "0.1.0"

__all__ = ["AlbertConfig", "PRESETS", "init_params", "param_shapes", "count_params", "Albert", "ForwardOutput",
           "__version__"]
