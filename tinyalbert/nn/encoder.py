"""The encoder: project E -> H once, then apply the shared ALBERT layer L times.

    h_0 = e Wmap^T + bmap                        (B, T, H)   `embedding_hidden_mapping_in`
    h_i = Layer(h_{i-1})   for i = 1..L          one weight set, L activation caches
Groups: application i uses group int(i / (L / G)) and runs that group's
`inner_group_num` layers in turn.  Every published model has G = 1 and one inner
layer, so all L applications share one layer.

Depth: because the weights are shared, the layer can be applied N times instead of L
at inference (`depth=N`): h_1 .. h_N, with application i in group int(i / (N / G)).

Backward walks the caches in reverse.  Because every layer backward accumulates
(+=) into the same gradient arrays, the shared weights' gradient is the sum of
their L per-application contributions, with no extra code.
"""
from __future__ import annotations

import numpy as np

from .config import AlbertConfig
from .dropout import Dropout
from .layer import albert_layer_backward, albert_layer_forward
from .linear import linear_backward, linear_forward
from .params import MAPPING, layer_prefix, sub


def check_depth(depth) -> None:
    """ValueError (one line) unless depth is None (meaning L) or an integer >= 1.

    True and False are refused: Python counts them as ints, but depth=True is surely a mistake.
    """
    if depth is None:
        return
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)):
        raise ValueError(f"depth must be a whole number of layer applications, got {depth!r} "
                         f"({type(depth).__name__})")
    if depth < 1:
        raise ValueError(f"depth must be at least 1 (applications of the shared layer), got {int(depth)}")


def encoder_forward(embedded: np.ndarray, key_mask: np.ndarray, params: dict[str, np.ndarray],
                    config: AlbertConfig, keep_cache: bool = True,
                    output_attentions: bool = False, depth: int | None = None,
                    dropout: Dropout | None = None) -> tuple[list[np.ndarray], list[np.ndarray] | None, tuple]:
    """embedded: (B, T, E)  ->  (hidden_states: N+1 arrays (B, T, H), attentions or None, cache).

    N = depth, default L (config.num_hidden_layers); a bad depth raises ValueError (check_depth).
    hidden_states[0] is the projected embedding output; hidden_states[i] is the output of application i.
    With keep_cache=False (inference) each application's activations are freed as soon as they are used.
    dropout: training's rates and Generator, handed to every layer run (None: no dropout).
    """
    check_depth(depth)
    applications = config.num_hidden_layers if depth is None else int(depth)
    h, proj_cache = linear_forward(embedded, params[MAPPING + "weight"], params[MAPPING + "bias"])
    hidden_states = [h]
    attentions: list[np.ndarray] = []
    layer_caches = []
    layers = {(g, j): sub(params, layer_prefix(g, j))
              for g in range(config.num_hidden_groups) for j in range(config.inner_group_num)}
    for i in range(applications):
        group = config.group_of_application(i, applications)
        for j in range(config.inner_group_num):
            h, probs, cache = albert_layer_forward(h, key_mask, layers[group, j], config.num_attention_heads,
                                                   config.layer_norm_eps, config.hidden_act, dropout)
            if keep_cache:
                layer_caches.append((group, j, cache))
            if output_attentions:
                attentions.append(probs)
        hidden_states.append(h)
    return hidden_states, (attentions if output_attentions else None), (proj_cache, layer_caches)


def encoder_backward(dlast: np.ndarray, cache: tuple, grads: dict[str, np.ndarray]) -> np.ndarray:
    """dlast: (B, T, H), gradient of the last hidden state  ->  d embedded: (B, T, E)."""
    proj_cache, layer_caches = cache
    dh = dlast
    for group, j, layer_cache in reversed(layer_caches):
        dh = albert_layer_backward(dh, layer_cache, sub(grads, layer_prefix(group, j)))
    return linear_backward(dh, proj_cache, grads[MAPPING + "weight"], grads[MAPPING + "bias"])
