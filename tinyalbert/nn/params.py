"""The flat parameter store: every tensor's name, shape and initial value.

Parameters are one `dict[str, np.ndarray]` keyed by the reference checkpoint's
own names, so that converting a published checkpoint is a copy with no
renaming.  Gradients are a dict with the same keys.  Linear weights are stored
[out, in], as PyTorch stores them: y = x @ W.T + b.

    albert.embeddings.word_embeddings.weight          (V, E)   also the MLM decoder (tied)
    albert.embeddings.position_embeddings.weight      (P, E)
    albert.embeddings.token_type_embeddings.weight    (2, E)
    albert.embeddings.LayerNorm.{weight,bias}         (E,)
    albert.encoder.embedding_hidden_mapping_in.weight (H, E)   .bias (H,)
    albert.encoder.albert_layer_groups.{g}.albert_layers.{j}.
        attention.{query,key,value,dense}.weight      (H, H)   .bias (H,)
        attention.LayerNorm.{weight,bias}             (H,)
        ffn.weight (I, H)  ffn.bias (I,)
        ffn_output.weight (H, I)  ffn_output.bias (H,)
        full_layer_layer_norm.{weight,bias}           (H,)
    albert.pooler.weight (H, H)  albert.pooler.bias (H,)           [pretraining head only]
    predictions.dense.weight (E, H)  predictions.dense.bias (E,)
    predictions.LayerNorm.{weight,bias} (E,)
    predictions.bias (V,)
    sop_classifier.classifier.weight (2, H)  .bias (2,)             [pretraining head only]
"""
from __future__ import annotations

import numpy as np

from .config import AlbertConfig

Params = dict[str, np.ndarray]

EMB = "albert.embeddings."
MAPPING = "albert.encoder.embedding_hidden_mapping_in."
POOLER = "albert.pooler."
MLM = "predictions."
SOP = "sop_classifier.classifier."
SOP_HEAD_KEYS = (POOLER + "weight", POOLER + "bias", SOP + "weight", SOP + "bias")


def sub(d: Params, prefix: str) -> Params:
    """The entries of d under `prefix`, keyed by the rest of their name (the arrays are shared, not copied)."""
    return {k[len(prefix):]: v for k, v in d.items() if k.startswith(prefix)}


def layer_prefix(group: int, inner: int) -> str:
    """Name prefix of the shared layer `inner` of group `group`."""
    return f"albert.encoder.albert_layer_groups.{group}.albert_layers.{inner}."


def layer_shapes(config: AlbertConfig) -> dict[str, tuple[int, ...]]:
    """Shapes of one ALBERT layer's tensors, by their name inside the layer."""
    H, I = config.hidden_size, config.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {}
    for name in ("query", "key", "value", "dense"):
        shapes[f"attention.{name}.weight"] = (H, H)
        shapes[f"attention.{name}.bias"] = (H,)
    shapes["attention.LayerNorm.weight"] = (H,)
    shapes["attention.LayerNorm.bias"] = (H,)
    shapes["ffn.weight"] = (I, H)
    shapes["ffn.bias"] = (I,)
    shapes["ffn_output.weight"] = (H, I)
    shapes["ffn_output.bias"] = (H,)
    shapes["full_layer_layer_norm.weight"] = (H,)
    shapes["full_layer_layer_norm.bias"] = (H,)
    return shapes


def param_shapes(config: AlbertConfig, sop_head: bool = True) -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape, in the reference checkpoint's order.

    sop_head=False gives the published `AlbertForMaskedLM` set: no pooler and no SOP classifier.
    """
    V, E, H = config.vocab_size, config.embedding_size, config.hidden_size
    shapes: dict[str, tuple[int, ...]] = {
        EMB + "word_embeddings.weight": (V, E),
        EMB + "position_embeddings.weight": (config.max_position_embeddings, E),
        EMB + "token_type_embeddings.weight": (config.type_vocab_size, E),
        EMB + "LayerNorm.weight": (E,),
        EMB + "LayerNorm.bias": (E,),
        MAPPING + "weight": (H, E),
        MAPPING + "bias": (H,),
    }
    for g in range(config.num_hidden_groups):
        for j in range(config.inner_group_num):
            for name, shape in layer_shapes(config).items():
                shapes[layer_prefix(g, j) + name] = shape
    if sop_head:
        shapes[POOLER + "weight"] = (H, H)
        shapes[POOLER + "bias"] = (H,)
    shapes[MLM + "bias"] = (V,)
    shapes[MLM + "LayerNorm.weight"] = (E,)
    shapes[MLM + "LayerNorm.bias"] = (E,)
    shapes[MLM + "dense.weight"] = (E, H)
    shapes[MLM + "dense.bias"] = (E,)
    if sop_head:
        shapes[SOP + "weight"] = (2, H)
        shapes[SOP + "bias"] = (2,)
    return shapes


def has_sop_head(params: Params) -> bool:
    """True when the params hold the pooler and the SOP classifier (AlbertForPreTraining)."""
    present = [k in params for k in SOP_HEAD_KEYS]
    if any(present) and not all(present):
        missing = [k for k in SOP_HEAD_KEYS if k not in params]
        raise ValueError(f"incomplete SOP head: missing {missing}")
    return all(present)


def check_params(config: AlbertConfig, params: Params) -> None:
    """Raise ValueError naming every missing, unexpected or mis-shaped tensor."""
    check_shapes(param_shapes(config, sop_head=any(k in params for k in SOP_HEAD_KEYS)), params)


def check_shapes(expected: dict[str, tuple[int, ...]], params: Params) -> None:
    """Raise ValueError naming every tensor of `params` that is missing, unexpected or mis-shaped."""
    problems = []
    missing = [k for k in expected if k not in params]
    if missing:
        problems.append(f"missing tensors: {', '.join(missing)}")
    unexpected = [k for k in params if k not in expected]
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(unexpected)}")
    for name, shape in expected.items():
        if name in params and tuple(params[name].shape) != shape:
            problems.append(f"tensor {name} has shape {tuple(params[name].shape)}, expected {shape}")
    if problems:
        raise ValueError("; ".join(problems))


def common_dtype(params: Params) -> type:
    """The one dtype of every tensor (np.float32 or np.float64); ValueError for a mix or anything else."""
    dtypes = {v.dtype for v in params.values()}
    if len(dtypes) != 1 or next(iter(dtypes)) not in (np.float32, np.float64):
        raise ValueError(f"params must all be float32 or all float64, got {sorted(map(str, dtypes))}")
    return next(iter(dtypes)).type


def init_params(config: AlbertConfig, seed: int = 0, dtype: type = np.float32, sop_head: bool = True) -> Params:
    """Fresh parameters, initialised as the reference does.

    Weight matrices and embeddings ~ normal(0, initializer_range); the padding row of the word
    embedding is zero; LayerNorm weights one and biases zero; every other bias zero.
    """
    dtype = np.dtype(dtype).type
    rng = np.random.default_rng(seed)
    params: Params = {}
    for name, shape in param_shapes(config, sop_head).items():
        if name.endswith("LayerNorm.weight") or name.endswith("layer_norm.weight"):
            value = np.ones(shape, dtype=dtype)
        elif len(shape) == 1:
            value = np.zeros(shape, dtype=dtype)
        else:
            value = rng.standard_normal(shape, dtype=dtype)
            value *= dtype(config.initializer_range)
        params[name] = value
    params[EMB + "word_embeddings.weight"][config.pad_token_id] = 0
    return params


def sinusoidal_positions(num_positions: int, dim: int, std: float, dtype: type = np.float32) -> np.ndarray:
    """A (num_positions, dim) table of sines and cosines (the original Transformer's), scaled to a std of about std.

    P[p, 2k] = sin(p / 10000^(2k/dim)), P[p, 2k+1] = cos(p / 10000^(2k/dim)), times std·√2.
    An optional starting point for ALBERT's learned position embeddings: P[i]·P[j] depends on i − j
    and is largest for neighbours, so attending to nearby tokens needs only a query/key map to be
    learned, not the geometry of the positions as well.  The table stays a trained parameter.
    """
    half = (dim + 1) // 2
    angles = np.arange(num_positions)[:, None] / 10000.0 ** (2 * np.arange(half) / dim)
    table = np.empty((num_positions, 2 * half))
    table[:, 0::2], table[:, 1::2] = np.sin(angles), np.cos(angles)
    return (table[:, :dim] * (std * np.sqrt(2.0))).astype(dtype)


def fan_in_init(params: Params, seed: int = 0) -> None:
    """Redraw every weight matrix outside the embeddings as normal(0, 1/fan_in), in place.

    For W of shape (out, in), y = W x keeps the scale of x (LeCun initialisation).  ALBERT's std 0.02
    does that only near H = 2500; at H = 256 it leaves every product, attention scores included, about
    3x smaller, and a small model then stays on uniform attention for thousands of steps.
    """
    rng = np.random.default_rng(seed)
    for name, value in params.items():
        if value.ndim == 2 and not name.startswith(EMB):
            params[name] = (rng.standard_normal(value.shape) / np.sqrt(value.shape[1])).astype(value.dtype)


def tie_query_key_init(config: AlbertConfig, params: Params) -> None:
    """Start every layer with key.weight = query.weight (in place), the query/key half of "mimetic" initialisation.

    Then a head's score x_i^T W_q^T W_k x_j = (W_q x_i)·(W_q x_j) is a positive semi-definite form: from the
    first step a token leans towards tokens that resemble it, and with sinusoidal positions towards its
    neighbours, instead of attending uniformly until a query/key pattern emerges from noise.
    The two matrices are trained independently afterwards.
    """
    for group in range(config.num_hidden_groups):
        for inner in range(config.inner_group_num):
            prefix = layer_prefix(group, inner) + "attention."
            params[prefix + "key.weight"] = params[prefix + "query.weight"].copy()


def zero_grads(params: Params) -> Params:
    """A gradient dict for `params`: one zero array per tensor, same name, shape and dtype, for backwards to += into."""
    return {name: np.zeros_like(value) for name, value in params.items()}


def count_params(params: Params) -> int:
    """Number of scalars (the tied decoder is the word embedding, so it is counted once)."""
    return int(sum(p.size for p in params.values()))
