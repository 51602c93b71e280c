"""The ALBERT model itself: one module per concept, each op's forward beside its backward.

Start at `model.py`: the whole pretraining forward and backward on one page.  Below it,
`body.py` runs the embeddings and the encoder that every head sits on (it also checks the inputs);
`encoder.py` and `layer.py` build the shared transformer layer from `attention.py` and
`feedforward.py`, which build on the basic ops (`linear.py`, `layernorm.py`, `activations.py`,
`softmax.py`, `embeddings.py`, `dropout.py`, `losses.py`) and their Numba kernels (`kernels.py`).  `config.py`
and `params.py` hold the configuration and the flat parameter store; `gradcheck.py` the tools
that check every backward.
"""
from .config import PRESETS, AlbertConfig
from .model import Albert, ForwardOutput
from .params import count_params, init_params, param_shapes

__all__ = ["AlbertConfig", "PRESETS", "init_params", "param_shapes", "count_params", "Albert", "ForwardOutput"]
