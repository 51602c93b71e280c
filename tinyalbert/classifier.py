"""Sequence classification with ALBERT: the pooler, dropout and one linear layer to K classes.

This is the head of the reference `AlbertForSequenceClassification`, on top of the same
embeddings and encoder as pretraining (model.py):

    h_L    = Encoder(Embeddings(ids))                (B, T, H)   every parameter of the pretrained model
    pooled = tanh(h_L[:, 0] Wp^T + bp)               (B, H)      albert.pooler.*  (reused from pretraining)
    kept   = pooled * keep / (1 - p)                 (B, H)      dropout, training only; keep ~ Bernoulli(1 - p)
    logits = kept Wc^T + bc                          (B, K)      classifier.weight (K, H), classifier.bias (K,)
    loss   = mean over the batch of CE(logits, labels)  (labels -100 are ignored)

In training the body also applies the config's hidden and attention-probability dropout
(nn/dropout.py), as in pretraining.

Backward (each line reverses one line above):

    d kept       = d logits Wc          dWc += d logits^T kept          dbc += sum of d logits over rows
    d pooled     = d kept * keep / (1 - p)
    d h_L[:, 0]  = pooler'(d pooled)    (heads.pooler_backward; every other position gets zero)

The MLM and SOP heads play no part: a classifier has no `predictions.*` or `sop_classifier.*`
tensors.  `AlbertClassifier.from_pretrained(model, labels)` copies the pretrained embeddings,
encoder and pooler, and draws a fresh `classifier` layer.  Parameter names follow the reference,
so `classifier.weight` is (K, H) and `classifier.bias` is (K,).

A trained classifier is stored in its own HDF5 file (`save_classifier` / `load_classifier`): the
weights format of weights.py accepts only the pretraining tensor set.
"""
from __future__ import annotations

import datetime
import json
import os
from typing import Any, Sequence

import numpy as np

from .files import atomic_output
from .nn.body import albert_body_backward, albert_body_forward, prepare_inputs
from .nn.config import AlbertConfig
from .nn.dropout import Dropout, check_rate, dropout_backward, dropout_forward
from .nn.heads import pooler_backward, pooler_forward
from .nn.linear import linear_backward, linear_forward
from .nn.losses import IGNORE_INDEX, check_labels, cross_entropy_backward, cross_entropy_forward
from .nn.params import MLM, POOLER, SOP, Params, check_shapes, common_dtype, param_shapes, zero_grads

CLASSIFIER = "classifier."
FORMAT = "tinyalbert-classifier"
FORMAT_VERSION = 1


# ---------------------------------------------------------------------------------------------------
# the head: forward / backward pair
# ---------------------------------------------------------------------------------------------------
def classification_head_forward(hidden: np.ndarray, pooler_weight: np.ndarray, pooler_bias: np.ndarray,
                                weight: np.ndarray, bias: np.ndarray, dropout: float = 0.0,
                                rng: np.random.Generator | None = None) -> tuple[np.ndarray, tuple]:
    """hidden: (B, T, H)  ->  logits (B, K) = dropout(tanh(hidden[:, 0] Wp^T + bp)) Wc^T + bc.

    dropout: probability of zeroing each pooled feature (inverted dropout, nn/dropout.py: the kept ones
    are scaled by 1 / (1 - dropout), so nothing changes at inference, where dropout is 0).  rng draws
    the mask (None: a fresh Generator).
    """
    check_rate(dropout)
    pooled, pool_cache = pooler_forward(hidden, pooler_weight, pooler_bias)
    if dropout > 0.0 and rng is None:
        rng = np.random.default_rng()
    pooled, dropout_cache = dropout_forward(pooled, dropout, rng)
    logits, lin_cache = linear_forward(pooled, weight, bias)
    return logits, (pool_cache, dropout_cache, lin_cache)


def classification_head_backward(dlogits: np.ndarray, cache: tuple, dpooler_weight: np.ndarray,
                                 dpooler_bias: np.ndarray, dweight: np.ndarray, dbias: np.ndarray) -> np.ndarray:
    """dlogits: (B, K)  ->  dhidden: (B, T, H), zero except at the first token.

    Accumulates (+=) into the pooler's and the classifier's gradient arrays.
    """
    pool_cache, dropout_cache, lin_cache = cache
    dpooled = dropout_backward(linear_backward(dlogits, lin_cache, dweight, dbias), dropout_cache)
    return pooler_backward(dpooled, pool_cache, dpooler_weight, dpooler_bias)


# ---------------------------------------------------------------------------------------------------
# parameters
# ---------------------------------------------------------------------------------------------------
def classifier_param_shapes(config: AlbertConfig, num_labels: int) -> dict[str, tuple[int, ...]]:
    """Names and shapes of a classifier's tensors: embeddings, encoder, pooler, then `classifier.*`."""
    if int(num_labels) < 2:
        raise ValueError(f"a classifier needs at least 2 labels, got {num_labels}")
    shapes = {k: v for k, v in param_shapes(config, sop_head=True).items()
              if not (k.startswith(MLM) or k.startswith(SOP))}
    shapes[CLASSIFIER + "weight"] = (int(num_labels), config.hidden_size)
    shapes[CLASSIFIER + "bias"] = (int(num_labels),)
    return shapes


def check_classifier_params(config: AlbertConfig, params: Params, num_labels: int) -> None:
    """Raise ValueError naming every missing, unexpected or mis-shaped tensor."""
    check_shapes(classifier_param_shapes(config, num_labels), params)


def init_classifier_params(config: AlbertConfig, num_labels: int, seed: int = 0,
                           dtype: type = np.float32) -> Params:
    """Fresh parameters for every tensor, initialised like init_params: normal(0, 0.02), LayerNorm 1, bias 0."""
    from .nn.params import init_params

    classifier_names = classifier_param_shapes(config, num_labels)
    params = {k: v for k, v in init_params(config, seed=seed, dtype=dtype, sop_head=True).items()
              if k in classifier_names}
    dtype = np.dtype(dtype).type
    rng = np.random.default_rng(seed)
    params[CLASSIFIER + "weight"] = (rng.standard_normal((int(num_labels), config.hidden_size))
                                     * config.initializer_range).astype(dtype)
    params[CLASSIFIER + "bias"] = np.zeros(int(num_labels), dtype=dtype)
    check_classifier_params(config, params, num_labels)
    return params


# ---------------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------------
class AlbertClassifier:
    """ALBERT encoder + pooler + dropout + linear: K-way classification of a sequence (or a sequence pair).

    config: the encoder's AlbertConfig.  params: the tensors of `classifier_param_shapes(config, K)`,
    all float32 or all float64.  labels: the K class names (default "0" .. "K-1").
    tokenizer: a tinyalbert Tokenizer, needed only for the text methods (`encode`, `predict`).
    """

    def __init__(self, config: AlbertConfig, params: Params, labels: Sequence[str] | None = None,
                 tokenizer=None):
        if CLASSIFIER + "bias" not in params:
            raise ValueError(f"params have no {CLASSIFIER}bias: not a classifier's tensors")
        num_labels = int(params[CLASSIFIER + "bias"].shape[0])
        check_classifier_params(config, params, num_labels)
        dtype = common_dtype(params)
        labels = [str(i) for i in range(num_labels)] if labels is None else [str(x) for x in labels]
        if len(labels) != num_labels:
            raise ValueError(f"{len(labels)} label names for {num_labels} classes")
        if len(set(labels)) != len(labels):
            raise ValueError(f"label names must differ: {labels}")
        self.config = config
        self.params = params
        self.labels = labels
        self.tokenizer = tokenizer
        self.dtype = dtype
        self.last_stats: dict = {}

    @property
    def num_labels(self) -> int:
        return len(self.labels)

    @classmethod
    def from_pretrained(cls, model, labels: int | Sequence[str], seed: int = 0,
                        dtype: type | None = None) -> "AlbertClassifier":
        """A classifier whose encoder (and pooler, when the model has one) starts from `model`'s weights.

        model: a tinyalbert Albert (e.g. tinyalbert.weights.load(path)).  labels: K, or the K class names.
        The tensors are copied into ordinary writable arrays (a loaded model's are read-only memory maps),
        so fine-tuning never changes `model`.  A model without a pooler (the hub's AlbertForMaskedLM
        checkpoints) gets a freshly initialised one.  `classifier.*` is always new: normal(0, 0.02), bias 0.
        """
        names = [str(i) for i in range(int(labels))] if isinstance(labels, (int, np.integer)) else list(labels)
        dtype = np.dtype(dtype or model.dtype).type
        config = model.config
        rng = np.random.default_rng(seed)
        params = {}
        for name, shape in classifier_param_shapes(config, len(names)).items():
            if name in model.params:
                params[name] = np.array(model.params[name], dtype=dtype, copy=True)
            elif name.endswith("bias"):
                params[name] = np.zeros(shape, dtype=dtype)     # pooler bias of a model without one
            else:
                params[name] = (rng.standard_normal(shape) * config.initializer_range).astype(dtype)
        return cls(config, params, labels=names, tokenizer=model.tokenizer)

    # ---- forward --------------------------------------------------------------------------------------
    def forward(self, input_ids, token_type_ids=None, attention_mask=None) -> np.ndarray:
        """input_ids (B, T) -> logits (B, K).  Inference: no dropout, no caches kept."""
        ids, tt, mask = prepare_inputs(self.config, input_ids, token_type_ids, attention_mask)
        p = self.params
        hidden_states, _, _ = albert_body_forward(ids, tt, mask, p, self.config, keep_cache=False)
        logits, _ = classification_head_forward(hidden_states[-1], p[POOLER + "weight"], p[POOLER + "bias"],
                                                p[CLASSIFIER + "weight"], p[CLASSIFIER + "bias"])
        return logits

    # ---- forward + backward ---------------------------------------------------------------------------
    def loss_and_grads(self, input_ids, token_type_ids, attention_mask, labels, dropout: float = 0.0,
                       rng: np.random.Generator | None = None) -> tuple[float, Params]:
        """Mean cross-entropy over the batch and its gradient for every parameter (a fresh dict).

        labels: (B,) integers, a class in [0, K) or -100 (ignored, as by the reference's CrossEntropyLoss);
        checked before any work.  dropout: the classifier dropout for this step (the reference trains with
        config.classifier_dropout_prob = 0.1).  The body also drops out as the config's hidden_dropout_prob
        and attention_probs_dropout_prob say (nn/dropout.py).  rng draws every mask, the body's first.
        After the call, `last_stats` holds loss, correct and count (of the labelled examples).
        """
        ids, tt, mask = prepare_inputs(self.config, input_ids, token_type_ids, attention_mask)
        y = check_labels(labels, "labels", ids.shape[:1], self.num_labels)
        check_rate(dropout)
        p = self.params
        grads = zero_grads(p)

        hidden_states, _, body_cache = albert_body_forward(ids, tt, mask, p, self.config,
                                                           dropout=Dropout.for_training(self.config, rng))
        logits, head_cache = classification_head_forward(hidden_states[-1], p[POOLER + "weight"], p[POOLER + "bias"],
                                                         p[CLASSIFIER + "weight"], p[CLASSIFIER + "bias"],
                                                         dropout=dropout, rng=rng)
        loss, ce_cache = cross_entropy_forward(logits, y)

        dlast = classification_head_backward(cross_entropy_backward(ce_cache), head_cache, grads[POOLER + "weight"],
                                             grads[POOLER + "bias"], grads[CLASSIFIER + "weight"],
                                             grads[CLASSIFIER + "bias"])
        albert_body_backward(dlast, body_cache, grads)

        self.last_stats = {"loss": float(loss), "correct": int((logits.argmax(-1) == y).sum()),   # -100 never matches
                           "count": int((y != IGNORE_INDEX).sum())}
        return float(loss), grads

    # ---- text in, labels out --------------------------------------------------------------------------
    def encode(self, texts: Sequence[str], max_length: int = 128) -> tuple[np.ndarray, np.ndarray]:
        """Texts -> (input_ids, attention_mask) (B, T), [CLS] text [SEP], truncated to max_length, right-padded."""
        if self.tokenizer is None:
            raise ValueError("this classifier has no tokenizer; pass token ids to forward() instead")
        return self.tokenizer.batch_encode(list(texts), max_length=min(max_length, self.config.max_position_embeddings))

    def predict_proba(self, texts: Sequence[str], batch_size: int = 32, max_length: int = 128) -> np.ndarray:
        """(N, K) class probabilities for N texts."""
        out = []
        for i in range(0, len(texts), batch_size):
            ids, mask = self.encode(texts[i:i + batch_size], max_length)
            z = self.forward(ids, attention_mask=mask).astype(np.float64)
            z = np.exp(z - z.max(axis=-1, keepdims=True))
            out.append(z / z.sum(axis=-1, keepdims=True))
        return np.concatenate(out) if out else np.zeros((0, self.num_labels))

    def predict(self, texts: Sequence[str], batch_size: int = 32, max_length: int = 128) -> list[str]:
        """The most probable label name for each text."""
        return [self.labels[i] for i in self.predict_proba(texts, batch_size, max_length).argmax(-1)]


# ---------------------------------------------------------------------------------------------------
# the classifier's own file
# ---------------------------------------------------------------------------------------------------
def save_classifier(path: str | os.PathLike, clf: AlbertClassifier, provenance: dict[str, Any] | None = None) -> str:
    """Write config, label names, every tensor and the tokenizer's SentencePiece model to one HDF5 file.

    Layout: root attrs format="tinyalbert-classifier", format_version, config_json, labels_json,
    provenance_json, created; one dataset per tensor under /params/<name>; /spiece_model (uint8) if the
    classifier has a tokenizer.  Written to a temporary file in the same folder and renamed into place,
    so `path` is always either the old file or the complete new one.
    """
    import h5py

    path = os.fspath(path)
    with atomic_output(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = np.int64(FORMAT_VERSION)
            f.attrs["config_json"] = clf.config.to_json_string()
            f.attrs["labels_json"] = json.dumps(clf.labels)
            f.attrs["provenance_json"] = json.dumps(provenance or {}, sort_keys=True)
            f.attrs["created"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            for name in classifier_param_shapes(clf.config, clf.num_labels):
                f.create_dataset(f"params/{name}", data=np.ascontiguousarray(clf.params[name]))
            if clf.tokenizer is not None:
                f.create_dataset("spiece_model", data=np.frombuffer(clf.tokenizer.model_bytes, dtype=np.uint8))
    return path


def load_classifier(path: str | os.PathLike, dtype: type = np.float32) -> AlbertClassifier:
    """Read a file written by save_classifier (WeightsError, one line, if it is missing or not one)."""
    import h5py

    from .weights import WeightsError

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WeightsError(f"classifier file not found: {path}")
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != FORMAT:
                raise WeightsError(f"{path} is not a tinyalbert classifier file (format {f.attrs.get('format')!r})")
            if int(f.attrs.get("format_version", -1)) != FORMAT_VERSION:
                raise WeightsError(f"{path} has classifier format_version {f.attrs.get('format_version')}, "
                                   f"this tinyalbert reads {FORMAT_VERSION}")
            config = AlbertConfig.from_json_string(f.attrs["config_json"])
            labels = json.loads(f.attrs["labels_json"])
            params = {name: np.asarray(f["params"][name][()], dtype=dtype) for name in f["params"]}
            spiece = f["spiece_model"][()].tobytes() if "spiece_model" in f else None
    except WeightsError:
        raise
    except (OSError, KeyError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise WeightsError(f"cannot read classifier {path}: {msg}") from None
    tokenizer = None
    if spiece is not None:
        from .tokenizer import Tokenizer
        tokenizer = Tokenizer(spiece)
    try:
        return AlbertClassifier(config, params, labels=labels, tokenizer=tokenizer)
    except ValueError as e:
        raise WeightsError(f"{path}: {e}") from None
