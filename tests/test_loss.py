"""The pretraining and classification losses: their labels are checked up front, and the
forward-only `Albert.loss` equals `loss_and_grads`' loss without building its caches.

Labels follow the reference's CrossEntropyLoss(ignore_index=-100): -100 means "ignored" (no loss,
no count in the stats); any other label outside [0, C) is refused with a one-line ValueError that
names the tensor, its shape and the bad value, before the forward runs.
"""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from test_model_gradcheck import (
    ATTENTION_MASK,
    INPUT_IDS,
    MLM_LABELS,
    SOP_LABELS,
    TOKEN_TYPE_IDS,
    cross_entropy,
    randomised_params,
    tiny_config,
)

import tinyalbert.nn.model as model_module
from tinyalbert import Albert
from tinyalbert.classifier import AlbertClassifier
from tinyalbert.nn.params import SOP_HEAD_KEYS

INPUTS = (INPUT_IDS, TOKEN_TYPE_IDS, ATTENTION_MASK)


@pytest.fixture(scope="module")
def model() -> Albert:
    config = tiny_config()
    return Albert(config, randomised_params(config, seed=21))


@pytest.fixture
def no_forward(monkeypatch):
    """Fails the test if the body runs: a bad label must be refused before any work."""
    def refuse(*args, **kwargs):
        raise AssertionError("the forward ran before the labels were checked")
    monkeypatch.setattr(model_module, "albert_body_forward", refuse)


# ---- SOP labels ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sop_labels, message", [
    (np.array([0, -1, 1]), r"sop_labels \(shape \(3,\)\) holds -1 at \(1,\): a label is -100 \(ignored\) "
                           r"or a class in \[0, 2\)"),
    (np.array([0, 1, 2]), r"sop_labels \(shape \(3,\)\) holds 2 at \(2,\)"),
    (np.array([0, 1]), r"sop_labels has shape \(2,\), expected \(3,\)"),
    (np.array([0, 1, 1, 0]), r"sop_labels has shape \(4,\), expected \(3,\)"),
    (np.array([[0], [1], [1]]), r"sop_labels has shape \(3, 1\), expected \(3,\)"),
    (np.array([0.0, 1.0, 1.0]), r"sop_labels must be integers, got dtype float64 \(shape \(3,\)\)"),
], ids=["-1", "2", "too few", "too many", "column", "floats"])
def test_bad_sop_labels_are_refused_up_front(model, no_forward, sop_labels, message):
    with pytest.raises(ValueError, match=message):
        model.loss_and_grads(*INPUTS, MLM_LABELS, sop_labels)
    with pytest.raises(ValueError, match=message):
        model.loss(*INPUTS, MLM_LABELS, sop_labels)


def test_ignored_sop_label_is_neither_in_the_loss_nor_in_the_stats(model):
    sop_labels = np.array([1, -100, 0])
    loss, grads = model.loss_and_grads(*INPUTS, MLM_LABELS, sop_labels)
    stats = model.last_stats
    out = model.forward(*INPUTS)
    labelled = sop_labels != -100
    expected_sop = cross_entropy(out.sop_logits[labelled], sop_labels[labelled])
    assert stats["sop_count"] == 2
    assert stats["sop_correct"] == int((out.sop_logits.argmax(-1)[labelled] == sop_labels[labelled]).sum())
    assert abs(stats["sop_loss"] - expected_sop) <= 1e-12 * expected_sop
    assert abs(loss - stats["mlm_loss"] - stats["sop_loss"]) <= 1e-12 * loss
    # the ignored sequence changes nothing: with any other SOP label there, the loss would differ
    assert model.loss_and_grads(*INPUTS, MLM_LABELS, np.array([1, 0, 0]))[0] != loss


def test_all_sop_labels_ignored(model):
    """Every sequence -100: SOP loss 0 and no count (PyTorch would give nan), the SOP head gets no gradient."""
    loss, grads = model.loss_and_grads(*INPUTS, MLM_LABELS, np.full(3, -100))
    assert model.last_stats["sop_loss"] == 0.0 and model.last_stats["sop_count"] == 0
    assert model.last_stats["sop_correct"] == 0
    assert loss == model.last_stats["mlm_loss"]
    for name in SOP_HEAD_KEYS:
        assert not grads[name].any(), name


# ---- MLM labels ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mlm_labels, message", [
    (np.where(MLM_LABELS == 17, -1, MLM_LABELS), r"mlm_labels \(shape \(3, 8\)\) holds -1 at \(0, 1\)"),
    (np.where(MLM_LABELS == 99, 100, MLM_LABELS), r"mlm_labels \(shape \(3, 8\)\) holds 100 at \(2, 1\): "
                                                  r"a label is -100 \(ignored\) or a class in \[0, 100\)"),
    (MLM_LABELS.T, r"mlm_labels has shape \(8, 3\), expected \(3, 8\)"),
    (MLM_LABELS[:, :5], r"mlm_labels has shape \(3, 5\), expected \(3, 8\)"),
    (MLM_LABELS.astype(np.float32), r"mlm_labels must be integers, got dtype float32"),
], ids=["-1", "vocab size", "transposed", "too short", "floats"])
def test_bad_mlm_labels_are_refused_up_front(model, no_forward, mlm_labels, message):
    with pytest.raises(ValueError, match=message):
        model.loss_and_grads(*INPUTS, mlm_labels, SOP_LABELS)
    with pytest.raises(ValueError, match=message):
        model.loss(*INPUTS, mlm_labels, SOP_LABELS)


def test_one_sequence_may_be_one_dimensional(model):
    loss_1d = model.loss_and_grads(INPUT_IDS[0], TOKEN_TYPE_IDS[0], ATTENTION_MASK[0], MLM_LABELS[0], [0])[0]
    loss_2d = model.loss_and_grads(INPUT_IDS[:1], TOKEN_TYPE_IDS[:1], ATTENTION_MASK[:1], MLM_LABELS[:1], [0])[0]
    assert loss_1d == loss_2d


# ---- the classifier's labels -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def classifier(model) -> AlbertClassifier:
    return AlbertClassifier.from_pretrained(model, 3, seed=2)


@pytest.mark.parametrize("labels, message", [
    (np.array([0, -1, 2]), r"labels \(shape \(3,\)\) holds -1 at \(1,\): a label is -100 \(ignored\) or a class "
                           r"in \[0, 3\)"),
    (np.array([0, 3, 2]), r"labels \(shape \(3,\)\) holds 3 at \(1,\)"),
    (np.array([0, 1]), r"labels has shape \(2,\), expected \(3,\)"),
    (np.array([0.0, 1.0, 2.0]), r"labels must be integers, got dtype float64"),
], ids=["-1", "K", "too few", "floats"])
def test_bad_classifier_labels_are_refused_up_front(classifier, monkeypatch, labels, message):
    import tinyalbert.classifier as classifier_module

    def refuse(*args, **kwargs):
        raise AssertionError("the forward ran before the labels were checked")
    monkeypatch.setattr(classifier_module, "albert_body_forward", refuse)
    with pytest.raises(ValueError, match=message):
        classifier.loss_and_grads(*INPUTS, labels)


def test_ignored_classifier_label_is_not_counted(classifier):
    loss, _ = classifier.loss_and_grads(*INPUTS, np.array([2, -100, 0]))
    assert classifier.last_stats["count"] == 2
    logits = classifier.forward(*INPUTS)
    expected = cross_entropy(logits[[0, 2]], np.array([2, 0]))
    assert abs(loss - expected) <= 1e-12 * expected
    assert classifier.last_stats["correct"] == int((logits[[0, 2]].argmax(-1) == [2, 0]).sum())


# ---- the forward-only loss -------------------------------------------------------------------------------

def test_forward_only_loss_equals_the_training_loss(model):
    loss, _ = model.loss_and_grads(*INPUTS, MLM_LABELS, SOP_LABELS)
    stats = dict(model.last_stats)
    eval_loss, eval_stats = model.loss(*INPUTS, MLM_LABELS, SOP_LABELS)
    assert eval_loss == loss
    assert eval_stats == stats and model.last_stats == stats
    # MLM only
    assert model.loss(*INPUTS, MLM_LABELS)[0] == model.loss_and_grads(*INPUTS, MLM_LABELS)[0]


def test_forward_only_loss_never_drops_out():
    config = tiny_config(hidden_dropout_prob=0.5, attention_probs_dropout_prob=0.5)
    params = randomised_params(config, seed=22)
    with_rates, without = Albert(config, params), Albert(tiny_config(), params)
    assert with_rates.loss(*INPUTS, MLM_LABELS, SOP_LABELS) == without.loss(*INPUTS, MLM_LABELS, SOP_LABELS)
    assert with_rates.loss(*INPUTS, MLM_LABELS, SOP_LABELS)[0] == without.loss_and_grads(*INPUTS, MLM_LABELS,
                                                                                          SOP_LABELS)[0]


def test_forward_only_loss_keeps_no_caches(monkeypatch):
    """No layer cache is built, and the peak memory is a fraction of loss_and_grads'.

    Sequences of 128 tokens through 12 applications of a layer with I = 256: loss_and_grads keeps
    every application's attention probabilities (B, NH, T, T) and FFN activations (B, T, I), which
    dwarf the parameters; the forward-only loss holds one application's at a time.
    """
    config = tiny_config(num_hidden_layers=12, intermediate_size=256, hidden_size=32, max_position_embeddings=128)
    model = Albert(config, randomised_params(config, seed=23))
    rng = np.random.default_rng(24)
    ids = rng.integers(4, 100, (4, 128))
    labels = np.where(rng.random((4, 128)) < 0.15, ids, -100)
    batch = (ids, None, None, labels, np.array([0, 1, 1, 0]))

    built = []
    real_body_forward = model_module.albert_body_forward

    def spy(*args, **kwargs):
        hidden_states, attentions, cache = real_body_forward(*args, **kwargs)
        built.append(len(cache[1][1]))           # the encoder's layer caches
        return hidden_states, attentions, cache
    monkeypatch.setattr(model_module, "albert_body_forward", spy)

    def peak(f) -> int:
        tracemalloc.start()
        try:
            f()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    model.loss(*batch)      # once before measuring: first-call allocations (Numba dispatch) are not the loss's
    training_peak = peak(lambda: model.loss_and_grads(*batch))
    eval_peak = peak(lambda: model.loss(*batch))
    assert built == [0, 12, 0]
    assert eval_peak < 0.3 * training_peak, (eval_peak, training_peak)     # measured: ~0.2
