"""The ALBERT pretraining model: the whole forward and backward on one page.

    e      = LayerNorm(word[ids] + type[tt] + pos[0..T-1])          embeddings.py   (B, T, E)
    h_0    = e Wmap^T + bmap                                          encoder.py      (B, T, H)
    h_i    = AlbertLayer(h_{i-1}),  i = 1..L, one shared weight set   layer.py        (B, T, H)
    mlm    = LayerNorm(gelu(h_L Wd^T + bd)) Wword^T + b               heads.py        (B, T, V)
    pooled = tanh(h_L[:, 0] Wp^T + bp);   sop = pooled Ws^T + bs      heads.py        (B, 2)
    loss   = CE(mlm at labelled positions) + CE(sop)                  losses.py

At inference `forward(..., depth=N)` applies the shared layer N times instead of L, and the heads
read h_N; `mlm_head(h_i)` is the MLM head on any hidden state (the logit lens).

The first three lines are the body (body.py, which also checks the inputs); the
sequence classifier (tinyalbert/classifier.py) runs the same body under its own head.
`loss_and_grads` runs the same forward keeping every cache, with dropout where the config asks
for it (dropout.py; `forward` never drops anything), then the backward in reverse order.
`loss` is the same loss from a forward pass alone, for evaluation.  Gradients accumulate (+=)
into one dict with the params' keys, which is what makes the shared layer's gradient the sum
over its L uses and the tied word-embedding gradient the sum of lookup and decoder parts.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .body import albert_body_backward, albert_body_forward, prepare_inputs
from .config import AlbertConfig
from .dropout import Dropout
from .encoder import check_depth
from .heads import (
    mlm_head_backward,
    mlm_head_forward,
    pooler_backward,
    pooler_forward,
    sop_head_backward,
    sop_head_forward,
)
from .losses import IGNORE_INDEX, check_labels, cross_entropy_backward, cross_entropy_forward
from .params import EMB, MLM, POOLER, SOP, Params, check_params, common_dtype, has_sop_head, sub, zero_grads


@dataclass
class ForwardOutput:
    """What `Albert.forward` returns.  Shapes: B batch, T tokens, H hidden, V vocabulary, NH heads."""

    mlm_logits: np.ndarray                      # (B, T, V)
    sop_logits: np.ndarray | None               # (B, 2), None without the SOP head
    pooled: np.ndarray | None                   # (B, H), None without the SOP head
    hidden_states: list[np.ndarray]             # N+1 arrays (B, T, H): projected embeddings, then each application
    attentions: list[np.ndarray] | None         # one (B, NH, T, T) per layer application, if asked for

    @property
    def last_hidden_state(self) -> np.ndarray:
        return self.hidden_states[-1]


class Albert:
    """ALBERT for pretraining (MLM + SOP), or for masked LM only when the params have no SOP head.

    params: flat dict of reference names -> arrays (see params.py); float32 or float64, all one dtype.
    """

    def __init__(self, config: AlbertConfig, params: Params, tokenizer=None):
        check_params(config, params)
        dtype = common_dtype(params)
        self.config = config
        self.params = params
        self.tokenizer = tokenizer
        self.dtype = dtype
        self.last_stats: dict = {}

    @property
    def has_sop_head(self) -> bool:
        return has_sop_head(self.params)

    # ---- forward ---------------------------------------------------------------------------------------
    def forward(self, input_ids, token_type_ids=None, attention_mask=None,
                output_attentions: bool = False, depth: int | None = None) -> ForwardOutput:
        """input_ids (B, T) -> ForwardOutput with MLM logits at every position and SOP logits.

        depth: apply the shared layer N = depth times instead of L (an integer >= 1, else ValueError);
        hidden_states then holds N+1 arrays and the heads read the N-th application's output.
        None runs L applications, exactly the default computation.
        """
        ids, tt, mask = prepare_inputs(self.config, input_ids, token_type_ids, attention_mask)
        check_depth(depth)          # a bad depth fails before any work
        p = self.params
        hidden_states, attentions, _ = albert_body_forward(ids, tt, mask, p, self.config, keep_cache=False,
                                                           output_attentions=output_attentions, depth=depth)
        last = hidden_states[-1]
        mlm_logits = self.mlm_head(last)
        pooled = sop_logits = None
        if self.has_sop_head:
            pooled, _ = pooler_forward(last, p[POOLER + "weight"], p[POOLER + "bias"])
            sop_logits, _ = sop_head_forward(pooled, p[SOP + "weight"], p[SOP + "bias"])
        return ForwardOutput(mlm_logits, sop_logits, pooled, hidden_states, attentions)

    def mlm_head(self, hidden: np.ndarray) -> np.ndarray:
        """hidden: (..., H), any hidden state  ->  MLM logits (..., V), with no cache kept.

        forward's mlm_logits are this applied to the last hidden state; applied to hidden_states[i]
        it reads out what the model would predict after i applications (the logit lens).
        """
        c, p = self.config, self.params
        logits, _ = mlm_head_forward(hidden, sub(p, MLM), p[EMB + "word_embeddings.weight"], c.layer_norm_eps,
                                     c.hidden_act)
        return logits

    # ---- the pretraining loss ----------------------------------------------------------------------------
    def loss(self, input_ids, token_type_ids, attention_mask, mlm_labels,
             sop_labels=None) -> tuple[float, dict]:
        """The pretraining loss of `loss_and_grads` and its stats, from a forward pass only: (loss, stats).

        No backward caches, no gradients and never dropout (held-out evaluation): the body runs as in
        `forward`, freeing each layer's activations once used, and the heads run as in `loss_and_grads`.
        Labels as in `loss_and_grads`; stats as its `last_stats`, which this sets too.
        """
        ids, tt, mask = prepare_inputs(self.config, input_ids, token_type_ids, attention_mask)
        labels, sop_labels = self._checked_labels(ids.shape, mlm_labels, sop_labels)
        hidden_states, _, _ = albert_body_forward(ids, tt, mask, self.params, self.config, keep_cache=False)
        loss, stats, _ = self._pretraining_heads(hidden_states[-1], labels, sop_labels)
        self.last_stats = stats
        return float(loss), stats

    def _checked_labels(self, shape: tuple[int, int], mlm_labels, sop_labels) -> tuple[np.ndarray, np.ndarray | None]:
        """(mlm labels (B, T), SOP labels (B,) or None) as int64, after losses.check_labels: one-line ValueErrors."""
        labels = check_labels(mlm_labels, "mlm_labels", shape, self.config.vocab_size)
        if sop_labels is None:
            return labels, None
        if not self.has_sop_head:
            raise ValueError("sop_labels were given but these params have no SOP head (pooler + sop_classifier)")
        return labels, check_labels(sop_labels, "sop_labels", shape[:1], 2)

    def _pretraining_heads(self, last: np.ndarray, labels: np.ndarray,
                           sop_labels: np.ndarray | None) -> tuple[float, dict, tuple]:
        """last: h_L (B, T, H)  ->  (MLM + SOP loss, stats, the heads' caches for loss_and_grads' backward).

        The MLM head runs only at labelled positions: the loss needs no others, and the result is identical.
        Positions and sequences labelled -100 count neither in the losses nor in the stats.
        """
        c, p = self.config, self.params
        b_idx, t_idx = np.nonzero(labels != IGNORE_INDEX)
        picked = last[b_idx, t_idx]                                               # (M, H)
        mlm_logits, mlm_cache = mlm_head_forward(picked, sub(p, MLM), p[EMB + "word_embeddings.weight"],
                                                 c.layer_norm_eps, c.hidden_act)
        mlm_targets = labels[b_idx, t_idx]
        mlm_loss, mlm_ce_cache = cross_entropy_forward(mlm_logits, mlm_targets)
        loss = mlm_loss
        stats = {"mlm_loss": mlm_loss, "sop_loss": None,
                 "mlm_correct": int((mlm_logits.argmax(-1) == mlm_targets).sum()), "mlm_count": int(b_idx.size),
                 "sop_correct": 0, "sop_count": 0}
        sop_caches = None
        if sop_labels is not None:
            pooled, pool_cache = pooler_forward(last, p[POOLER + "weight"], p[POOLER + "bias"])
            sop_logits, sop_cache = sop_head_forward(pooled, p[SOP + "weight"], p[SOP + "bias"])
            sop_loss, sop_ce_cache = cross_entropy_forward(sop_logits, sop_labels)
            loss += sop_loss
            stats.update(sop_loss=sop_loss,
                         sop_correct=int((sop_logits.argmax(-1) == sop_labels).sum()),    # -100 never matches
                         sop_count=int((sop_labels != IGNORE_INDEX).sum()))
            sop_caches = (pool_cache, sop_cache, sop_ce_cache)
        return loss, stats, ((b_idx, t_idx), mlm_cache, mlm_ce_cache, sop_caches)

    # ---- forward + backward ----------------------------------------------------------------------------
    def loss_and_grads(self, input_ids, token_type_ids, attention_mask, mlm_labels,
                       sop_labels=None, rng: np.random.Generator | None = None) -> tuple[float, Params]:
        """Pretraining loss (MLM mean CE over labelled positions + SOP CE) and its gradient for every param.

        mlm_labels: (B, T) integers, -100 where nothing is predicted, else a token id in [0, V).
        sop_labels: (B,) integers, 0 (in order), 1 (swapped) or -100 (ignored); or None (MLM only).
        Labels are checked before any work (ValueError naming the tensor, its shape and the bad value).
        rng: draws the dropout masks when the config's hidden_dropout_prob or attention_probs_dropout_prob
        is non-zero (dropout.py); pass a seeded Generator for reproducible masks (None: a fresh one).
        With both rates 0 nothing is drawn.  After the call `last_stats` holds the losses and the counts.
        """
        ids, tt, mask = prepare_inputs(self.config, input_ids, token_type_ids, attention_mask)
        c, p = self.config, self.params
        labels, sop_labels = self._checked_labels(ids.shape, mlm_labels, sop_labels)
        dropout = Dropout.for_training(c, rng)
        grads = zero_grads(p)

        # forward, keeping caches
        hidden_states, _, body_cache = albert_body_forward(ids, tt, mask, p, c, dropout=dropout)
        last = hidden_states[-1]
        loss, stats, ((b_idx, t_idx), mlm_cache, mlm_ce_cache, sop_caches) = self._pretraining_heads(
            last, labels, sop_labels)

        # backward, in reverse
        dlast = np.zeros_like(last)
        dpicked = mlm_head_backward(cross_entropy_backward(mlm_ce_cache), mlm_cache, sub(grads, MLM),
                                    grads[EMB + "word_embeddings.weight"])
        dlast[b_idx, t_idx] = dpicked          # each labelled position appears once
        if sop_caches is not None:
            pool_cache, sop_cache, sop_ce_cache = sop_caches
            dpooled = sop_head_backward(cross_entropy_backward(sop_ce_cache), sop_cache, grads[SOP + "weight"],
                                        grads[SOP + "bias"])
            dlast += pooler_backward(dpooled, pool_cache, grads[POOLER + "weight"], grads[POOLER + "bias"])
        albert_body_backward(dlast, body_cache, grads)

        self.last_stats = stats
        return float(loss), grads
