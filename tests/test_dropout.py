"""Dropout (nn/dropout.py): its statistics, where it is active, and that masks are reproducible.

The gradient checks with fixed masks live with the others: test_ops_numerical.py (tier 1, the op,
the attention block, the layer and the encoder), test_ops_torch.py (tier 2, the same and the whole
pretraining loss) and test_model_gradcheck.py (the whole model).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from test_model_gradcheck import (
    ATTENTION_MASK,
    INPUT_IDS,
    MLM_LABELS,
    SOP_LABELS,
    TOKEN_TYPE_IDS,
    randomised_params,
    tiny_config,
)
from test_pretrain import checkpoint_arrays, corpus, run  # noqa: F401  (corpus is a fixture)

from tinyalbert import Albert
from tinyalbert.classifier import AlbertClassifier
from tinyalbert.nn.dropout import DRAW_CHUNK, Dropout, draw_keep_mask, dropout_forward, step_generator

BATCH = (INPUT_IDS, TOKEN_TYPE_IDS, ATTENTION_MASK, MLM_LABELS, SOP_LABELS)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_keep_rate_and_scale(p, dtype):
    """A fraction 1 - p of the elements survives, each scaled by exactly 1/(1-p), so the mean is kept.

    N = 2^21 draws: the kept fraction has standard deviation sqrt(p (1-p) / N) (2.1e-4 at p = 0.1,
    3.5e-4 at 0.5); the bounds are 5 of them, which a correct mask misses once in 1.7 million runs.
    """
    n = 1 << 21
    x = np.ones((n // 1024, 1024), dtype=dtype)
    y, (keep, scale) = dropout_forward(x, p, np.random.default_rng(1))
    sigma = np.sqrt(p * (1 - p) / n)
    kept = np.count_nonzero(y) / n
    assert abs(kept - (1 - p)) < 5 * sigma
    assert np.array_equal(y != 0, keep)
    assert y.dtype == dtype and np.all(y[keep] == dtype(1 / (1 - p)))      # inverted: kept ones scaled
    assert abs(y.mean(dtype=np.float64) - 1.0) < 5 * sigma / (1 - p)       # E[y] = x
    # each element is dropped on its own: neighbours survive together as often as chance says (q^2).
    # Adjacent pairs overlap, so the count's variance has a covariance term for pairs sharing an element.
    q = 1 - p
    pairs = keep[:, 1:].size
    overlapping = keep[:, 2:].size
    both = np.count_nonzero(keep[:, 1:] & keep[:, :-1])
    variance = pairs * q**2 * (1 - q**2) + 2 * overlapping * (q**3 - q**4)
    assert abs(both - pairs * q**2) < 5 * np.sqrt(variance)


def test_masks_do_not_depend_on_chunking_or_dtype():
    """A mask bigger than one draw chunk is the one a single draw gives; float32 and float64 drop alike."""
    shape = (3, DRAW_CHUNK // 2 + 7)
    expected = np.random.default_rng(2).random(shape[0] * shape[1]).reshape(shape) >= 0.3
    assert np.array_equal(draw_keep_mask(np.random.default_rng(2), shape, 0.3), expected)
    y32, _ = dropout_forward(np.ones((4, 5), np.float32), 0.3, np.random.default_rng(3))
    y64, _ = dropout_forward(np.ones((4, 5), np.float64), 0.3, np.random.default_rng(3))
    assert np.array_equal(y32 != 0, y64 != 0)


def test_rates_are_checked():
    with pytest.raises(ValueError, match=r"hidden_dropout_prob must be in \[0, 1\), got 1.0"):
        Dropout.for_training(tiny_config(hidden_dropout_prob=1.0), None)
    with pytest.raises(ValueError, match=r"attention_probs_dropout_prob must be in \[0, 1\), got -0.1"):
        Dropout.for_training(tiny_config(attention_probs_dropout_prob=-0.1), None)


def dropout_model(hidden: float = 0.2, attention: float = 0.3, dtype=np.float64) -> Albert:
    config = tiny_config(hidden_dropout_prob=hidden, attention_probs_dropout_prob=attention)
    return Albert(config, randomised_params(config, seed=11, dtype=dtype))


def test_masks_are_reproducible_from_the_generator():
    model = dropout_model()
    loss_a, grads_a = model.loss_and_grads(*BATCH, rng=np.random.default_rng(5))
    loss_b, grads_b = model.loss_and_grads(*BATCH, rng=np.random.default_rng(5))
    assert loss_a == loss_b
    assert all(np.array_equal(grads_a[k], grads_b[k]) for k in grads_a)
    assert model.loss_and_grads(*BATCH, rng=np.random.default_rng(6))[0] != loss_a
    # the step generator is a function of (seed, step) alone
    assert step_generator(0, 3).random() == step_generator(0, 3).random() != step_generator(0, 4).random()


@pytest.mark.parametrize("where", ["hidden", "attention"])
def test_each_rate_acts_on_its_own(where):
    """hidden_dropout_prob alone and attention_probs_dropout_prob alone each change the training loss."""
    model = dropout_model(hidden=0.3 if where == "hidden" else 0.0, attention=0.3 if where == "attention" else 0.0)
    no_dropout = model.loss(*BATCH)[0]
    assert model.loss_and_grads(*BATCH, rng=np.random.default_rng(5))[0] != no_dropout


def test_rate_zero_draws_nothing_and_changes_nothing():
    """Both rates 0: the Generator is never touched, and loss and gradients are those without one."""
    config = tiny_config()
    model = Albert(config, randomised_params(config, seed=12))
    rng = np.random.default_rng(5)
    state = json.dumps(rng.bit_generator.state)
    loss, grads = model.loss_and_grads(*BATCH, rng=rng)
    assert json.dumps(rng.bit_generator.state) == state
    loss_none, grads_none = model.loss_and_grads(*BATCH)
    assert loss == loss_none and all(np.array_equal(grads[k], grads_none[k]) for k in grads)


def test_forward_is_deterministic_whatever_the_rates():
    """forward never drops anything: the same outputs with the rates as with rates 0, and call after call."""
    with_rates = dropout_model(hidden=0.5, attention=0.5)
    without = Albert(tiny_config(), with_rates.params)
    a = with_rates.forward(INPUT_IDS, TOKEN_TYPE_IDS, ATTENTION_MASK, output_attentions=True)
    with_rates.loss_and_grads(*BATCH, rng=np.random.default_rng(5))      # a training step in between
    b = with_rates.forward(INPUT_IDS, TOKEN_TYPE_IDS, ATTENTION_MASK, output_attentions=True)
    c = without.forward(INPUT_IDS, TOKEN_TYPE_IDS, ATTENTION_MASK, output_attentions=True)
    for out in (b, c):
        assert np.array_equal(a.mlm_logits, out.mlm_logits) and np.array_equal(a.sop_logits, out.sop_logits)
        assert all(np.array_equal(x, y) for x, y in zip(a.attentions, out.attentions, strict=True))


def test_classifier_body_drops_out_too():
    """The classifier's training loss applies the config's rates in the body; its forward does not."""
    model = dropout_model(hidden=0.3, attention=0.3)
    clf = AlbertClassifier.from_pretrained(model, 3, seed=1)
    labels = np.array([0, 2, 1])
    args = (INPUT_IDS, TOKEN_TYPE_IDS, ATTENTION_MASK, labels)
    losses = [clf.loss_and_grads(*args, dropout=0.0, rng=np.random.default_rng(seed))[0] for seed in (1, 1, 2)]
    assert losses[0] == losses[1] != losses[2]
    no_body_dropout = AlbertClassifier(tiny_config(), clf.params).loss_and_grads(*args, dropout=0.0)[0]
    assert no_body_dropout != losses[0]
    assert np.array_equal(clf.forward(*args[:3]), AlbertClassifier(tiny_config(), clf.params).forward(*args[:3]))


def test_pretraining_with_dropout_resumes_bitwise(tmp_path, corpus):  # noqa: F811  (the fixture)
    """pretrain draws each step's masks from (seed, step): a stopped and resumed run equals a straight one."""
    config = tmp_path / "config.json"
    tiny_config(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1).save_json(config)
    cache = tmp_path / "cache"
    assert run(tmp_path / "straight", corpus, cache, "--config", str(config)) == 0
    assert run(tmp_path / "stopped", corpus, cache, "--config", str(config), "--stop-after", "4") == 0
    assert run(tmp_path / "stopped", corpus, cache, "--config", str(config), "--resume") == 0
    a = checkpoint_arrays(tmp_path / "straight" / "checkpoint.h5")
    b = checkpoint_arrays(tmp_path / "stopped" / "checkpoint.h5")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    # and dropout was on: without it the same run ends elsewhere
    assert run(tmp_path / "plain", corpus, cache) == 0
    c = checkpoint_arrays(tmp_path / "plain" / "checkpoint.h5")
    assert not all(np.array_equal(a[k], c[k]) for k in a)
