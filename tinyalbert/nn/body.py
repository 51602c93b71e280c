"""The ALBERT body: checked token ids in, the encoder's hidden states out.  Every head sits on top of it.

    ids, tt, mask = prepare_inputs(config, input_ids, token_type_ids, attention_mask)      (B, T) each
    e          = Dropout_h(LayerNorm(word[ids] + type[tt] + pos[0..T-1]))   embeddings.py, dropout.py   (B, T, E)
    key_mask   = (1 - mask) * finfo(dtype).min                       softmax.py      (B, T)
    h_0 .. h_N = Encoder(e, key_mask)                                encoder.py      N+1 arrays (B, T, H)

N is the number of layer applications: L (config.num_hidden_layers) unless `depth` says otherwise.
Dropout_h (hidden_dropout_prob) and the encoder's dropouts run only in training, when a
`dropout.Dropout` is passed; otherwise the body is deterministic.

Backward: d e = Encoder'(d h_L), then Dropout_h'(d e), then Embeddings'.  Both accumulate (+=) into one gradient
dict with the params' keys; the padding token's row of the word table receives no lookup gradient.

The pretraining model (model.py) and the sequence classifier (tinyalbert/classifier.py) run this
one body and differ only in their heads.
"""
from __future__ import annotations

import numpy as np

from .config import AlbertConfig
from .dropout import Dropout, dropout_backward, dropout_forward
from .embeddings import embeddings_backward, embeddings_forward
from .encoder import encoder_backward, encoder_forward
from .layer import layer_cache_tensors
from .params import EMB, Params, sub
from .softmax import additive_key_mask


def _batch_like_ids(values, name: str, shape: tuple[int, int], default: int) -> np.ndarray:
    """`values` as a (B, T) array like input_ids (1-D is one sequence); None gives `default` everywhere."""
    if values is None:
        return np.full(shape, default, dtype=np.int64)
    values = np.asarray(values)
    if values.ndim == 1:
        values = values[None, :]
    if values.shape != shape:
        raise ValueError(f"{name} has shape {values.shape}, expected {shape} like input_ids")
    return values


def prepare_inputs(config: AlbertConfig, input_ids, token_type_ids=None,
                   attention_mask=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check one batch and bring it to (B, T): ValueError with a one-line message for anything the model cannot run.

    input_ids: (B, T) or (T,) integers in [0, V), 1 <= T <= max_position_embeddings.
    token_type_ids: same shape, integers in [0, type_vocab_size); default all 0.
    attention_mask: same shape, 1 for a token and 0 for padding; default all 1.
    Returns (ids int64, token type ids int64, mask as given).
    """
    ids = np.asarray(input_ids)
    if ids.ndim == 1:
        ids = ids[None, :]
    if ids.ndim != 2 or ids.shape[1] == 0:
        raise ValueError(f"input_ids must have shape (batch, tokens) with at least one token, got {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"input_ids must be integers, got dtype {ids.dtype}")
    tokens = ids.shape[1]
    if tokens > config.max_position_embeddings:
        raise ValueError(f"sequence of {tokens} tokens is longer than the model's maximum of "
                         f"{config.max_position_embeddings} positions")
    bad = ids[(ids < 0) | (ids >= config.vocab_size)]
    if bad.size:
        raise ValueError(f"token id {int(bad[0])} is outside the vocabulary [0, {config.vocab_size})")

    token_types = _batch_like_ids(token_type_ids, "token_type_ids", ids.shape, default=0)
    if not np.issubdtype(token_types.dtype, np.integer):
        raise ValueError(f"token_type_ids must be integers, got dtype {token_types.dtype}")
    if ((token_types < 0) | (token_types >= config.type_vocab_size)).any():
        raise ValueError(f"token_type_ids must be in [0, {config.type_vocab_size})")
    mask = _batch_like_ids(attention_mask, "attention_mask", ids.shape, default=1)
    # anything else would be silently rounded, or would half-mask a key
    if ((mask != 0) & (mask != 1)).any():
        raise ValueError("attention_mask must hold only 1 (a token) and 0 (padding)")
    return ids.astype(np.int64, copy=False), token_types.astype(np.int64, copy=False), mask


def albert_body_forward(input_ids: np.ndarray, token_type_ids: np.ndarray, attention_mask: np.ndarray,
                        params: Params, config: AlbertConfig, keep_cache: bool = True,
                        output_attentions: bool = False, depth: int | None = None,
                        dropout: Dropout | None = None) -> tuple[list[np.ndarray], list[np.ndarray] | None, tuple]:
    """(B, T) ids, token type ids and mask, as prepare_inputs returns them  ->  (hidden_states, attentions, cache).

    hidden_states: N+1 arrays (B, T, H), the projected embeddings and then each layer application's output,
    N = depth (an integer >= 1, else ValueError), default L.
    attentions: one (B, NH, T, T) per layer run when output_attentions, else None.
    keep_cache=False (inference) frees each layer's activations as soon as the next one has used them.
    dropout: training's rates and Generator (dropout.Dropout.for_training); None, the default, drops nothing.
    """
    embedded, embeddings_cache = embeddings_forward(input_ids, token_type_ids, sub(params, EMB), config.layer_norm_eps)
    embedded_dropout = None
    if dropout is not None:     # in place: the embeddings' output is a fresh array that no cache holds
        embedded, embedded_dropout = dropout_forward(embedded, dropout.hidden, dropout.rng, out=embedded)
    key_mask = additive_key_mask(attention_mask, embedded.dtype.type)
    hidden_states, attentions, encoder_cache = encoder_forward(embedded, key_mask, params, config,
                                                               keep_cache=keep_cache,
                                                               output_attentions=output_attentions,
                                                               depth=depth, dropout=dropout)
    return hidden_states, attentions, (embeddings_cache, encoder_cache, config.pad_token_id, embedded_dropout)


def albert_body_backward(dlast: np.ndarray, cache: tuple, grads: Params) -> None:
    """dlast: (B, T, H), the gradient of the last hidden state; accumulates (+=) into every body gradient in grads."""
    embeddings_cache, encoder_cache, pad_token_id, embedded_dropout = cache
    dembedded = encoder_backward(dlast, encoder_cache, grads)
    dembedded = dropout_backward(dembedded, embedded_dropout, out=dembedded)
    embeddings_backward(dembedded, embeddings_cache, sub(grads, EMB), padding_idx=pad_token_id)


def body_cache_tensors(cache: tuple) -> tuple[np.ndarray, list[tuple[int, int, dict[str, np.ndarray]]]]:
    """The body's cache, for tools that look inside (tinyalbert.diff): (embeddings output (B, T, E),
    [(group, inner layer, layer.layer_cache_tensors(...)) for every layer run, in order])."""
    _, (proj_cache, layer_caches), *_ = cache
    return proj_cache[0], [(group, j, layer_cache_tensors(c)) for group, j, c in layer_caches]
