"""The classification head (classifier.py) and the fine-tuning script (finetune.py).

- the head's backward against float64 central differences (with and without dropout), and the whole
  AlbertClassifier's gradient for every parameter on a tiny config;
- a few fine-tuning steps lower the loss on a tiny task;
- the built-in source task never puts one document (or Gutenberg author) on both sides;
- the command line: a full run on a tiny model, and one-line errors with exit status 2 for bad input.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tinyalbert import AlbertConfig, init_params
from tinyalbert.classifier import (
    AlbertClassifier,
    classification_head_backward,
    classification_head_forward,
    classifier_param_shapes,
    init_classifier_params,
    load_classifier,
    save_classifier,
)
from tinyalbert.data import SAMPLE_CORPUS
from tinyalbert.finetune import build_source_task, evaluate, fine_tune, main, pad_batch
from tinyalbert.nn.gradcheck import numerical_gradient, numerical_gradient_of_output, rel_error
from tinyalbert.nn.model import Albert
from tinyalbert.tokenizer import ALBERT_VOCAB
from tinyalbert.weights import save

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.usefixtures("one_numba_thread")


def tiny_config(**kw) -> AlbertConfig:
    base = dict(vocab_size=30, embedding_size=6, hidden_size=8, num_attention_heads=2, intermediate_size=12,
                num_hidden_layers=2, max_position_embeddings=16)
    base.update(kw)
    return AlbertConfig(**base)


# ---- gradients -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_head_backward_matches_central_differences(dropout):
    rng = np.random.default_rng(0)
    B, T, H, K = 3, 4, 6, 5
    hidden = rng.standard_normal((B, T, H))
    tensors = {"pooler_weight": rng.standard_normal((H, H)) * 0.5, "pooler_bias": rng.standard_normal(H) * 0.1,
               "weight": rng.standard_normal((K, H)), "bias": rng.standard_normal(K)}
    dout = rng.standard_normal((B, K))

    def forward():   # the same dropout mask on every call: a fixed seed
        return classification_head_forward(hidden, **tensors, dropout=dropout, rng=np.random.default_rng(7))[0]

    _, cache = classification_head_forward(hidden, **tensors, dropout=dropout, rng=np.random.default_rng(7))
    grads = {k: np.zeros_like(v) for k, v in tensors.items()}
    dhidden = classification_head_backward(dout, cache, grads["pooler_weight"], grads["pooler_bias"],
                                           grads["weight"], grads["bias"])
    assert dhidden.shape == hidden.shape and not dhidden[:, 1:].any()     # only the first token is used
    assert rel_error(dhidden, numerical_gradient_of_output(forward, hidden, dout)) <= 1e-7
    for name, value in tensors.items():
        assert rel_error(grads[name], numerical_gradient_of_output(forward, value, dout)) <= 1e-7, name


def test_dropout_zeroes_features_and_keeps_the_mean():
    rng = np.random.default_rng(1)
    hidden = rng.standard_normal((4000, 1, 3))
    eye, zero = np.eye(3), np.zeros(3)
    plain, _ = classification_head_forward(hidden, eye, zero, eye, zero)
    dropped, _ = classification_head_forward(hidden, eye, zero, eye, zero, dropout=0.5, rng=rng)
    assert 0.45 < np.mean(dropped == 0) < 0.55
    assert abs(dropped.mean() - plain.mean()) < 0.05
    with pytest.raises(ValueError, match="dropout"):
        classification_head_forward(hidden, eye, zero, eye, zero, dropout=1.0)


def test_classifier_gradient_of_every_parameter():
    config = tiny_config()
    rng = np.random.default_rng(2)
    params = init_classifier_params(config, 3, seed=1, dtype=np.float64)
    for name in params:       # move away from the symmetric initial point (LayerNorm 1, biases 0)
        params[name] = params[name] + 0.3 * rng.standard_normal(params[name].shape)
    clf = AlbertClassifier(config, params)
    ids = rng.integers(0, config.vocab_size, (2, 5))
    ids[0, 1] = 0                              # a real token with the padding id
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    types = np.array([[0, 0, 1, 1, 1], [0, 0, 0, 0, 0]])
    labels = np.array([2, 0])

    def loss():
        return clf.loss_and_grads(ids, types, mask, labels, dropout=0.2, rng=np.random.default_rng(3))[0]

    _, grads = clf.loss_and_grads(ids, types, mask, labels, dropout=0.2, rng=np.random.default_rng(3))
    assert grads.keys() == params.keys()
    for name, value in params.items():
        numeric = numerical_gradient(loss, value)
        if name == "albert.embeddings.word_embeddings.weight":
            # nn.Embedding(padding_idx=0): the padding row gets no gradient even where id 0 is a real
            # token, as in the reference; there is no tied decoder here to add anything to it
            assert not grads[name][config.pad_token_id].any()
            grads[name][config.pad_token_id] = numeric[config.pad_token_id] = 0.0
        if name.endswith("attention.key.bias"):     # exactly 0: compare on the key weight's scale
            scale = np.abs(grads[name.replace("bias", "weight")]).max()
            assert np.abs(grads[name] - numeric).max() / scale <= 1e-6, name
        else:
            assert rel_error(grads[name], numeric) <= 1e-6, name


def test_parameter_names_follow_the_reference():
    config = tiny_config()
    shapes = classifier_param_shapes(config, 4)
    assert shapes["classifier.weight"] == (4, 8) and shapes["classifier.bias"] == (4,)
    assert "albert.pooler.weight" in shapes
    assert not any(k.startswith(("predictions.", "sop_classifier.")) for k in shapes)
    with pytest.raises(ValueError, match="at least 2"):
        classifier_param_shapes(config, 1)


def test_from_pretrained_copies_the_encoder_and_leaves_the_model_alone():
    config = tiny_config()
    model = Albert(config, init_params(config, seed=4))
    before = {k: v.copy() for k, v in model.params.items()}
    clf = AlbertClassifier.from_pretrained(model, ["neg", "pos"], seed=0)
    assert clf.labels == ["neg", "pos"] and clf.num_labels == 2
    for name in clf.params:
        if name in model.params:
            np.testing.assert_array_equal(clf.params[name], model.params[name])
            assert not np.shares_memory(clf.params[name], model.params[name])
    for value in clf.params.values():
        value += 1.0
    for name, value in model.params.items():
        np.testing.assert_array_equal(value, before[name])
    # a masked-LM-only model (no pooler) gets a fresh pooler
    mlm_only = Albert(config, init_params(config, seed=4, sop_head=False))
    clf2 = AlbertClassifier.from_pretrained(mlm_only, 3)
    assert clf2.params["albert.pooler.weight"].shape == (8, 8) and clf2.labels == ["0", "1", "2"]


# ---- training ------------------------------------------------------------------------------------------
def test_a_few_steps_of_fine_tuning_lower_the_loss():
    config = tiny_config(vocab_size=12)
    clf = AlbertClassifier(config, init_classifier_params(config, 2, seed=0))
    rng = np.random.default_rng(5)
    rows, labels = [], []
    for _ in range(48):     # class = which of two marker tokens (5 or 6) follows [CLS]
        y = int(rng.integers(2))
        rows.append([2, 5 + y] + rng.integers(7, 12, int(rng.integers(2, 6))).tolist() + [3])
        labels.append(y)
    labels = np.array(labels)
    before = evaluate(clf, rows, labels)["loss"]
    history = fine_tune(clf, rows, labels, epochs=10, batch_size=8, lr=3e-2, dropout=0.0, progress=False)
    after = evaluate(clf, rows, labels)
    assert len(history) == 60 and history[-1]["lr"] < history[6]["lr"]
    assert after["loss"] < 0.5 * before, (before, after["loss"])
    assert after["accuracy"] >= 0.9
    assert after["confusion"].sum() == len(rows)


def test_pad_batch():
    ids, mask = pad_batch([[2, 9, 3], [2, 3]])
    np.testing.assert_array_equal(ids, [[2, 9, 3], [2, 3, 0]])
    np.testing.assert_array_equal(mask, [[1, 1, 1], [1, 1, 0]])


def test_save_and_load_round_trip(tmp_path):
    from tinyalbert.tokenizer import Tokenizer

    config = tiny_config(vocab_size=30000)
    model = Albert(config, init_params(config, seed=0), tokenizer=Tokenizer(ALBERT_VOCAB))
    clf = AlbertClassifier.from_pretrained(model, ["a", "b", "c"])
    path = save_classifier(tmp_path / "clf.h5", clf, provenance={"test": True})
    again = load_classifier(path)
    assert again.labels == ["a", "b", "c"] and again.tokenizer.vocab_size == 30000
    ids, mask = clf.encode(["A short sentence.", "Another, slightly longer sentence here."])
    np.testing.assert_array_equal(again.forward(ids, attention_mask=mask), clf.forward(ids, attention_mask=mask))
    assert again.predict(["A short sentence."])[0] in ("a", "b", "c")
    assert not list(tmp_path.glob(".*tmp"))          # no temporary file left behind


def test_source_task_is_split_by_document():
    train, test = build_source_task(SAMPLE_CORPUS, ["tinystories", "gutenberg", "onestopenglish"], train_per_class=40,
                                    test_per_class=20, seed=3)
    assert train.label_names == test.label_names == ["tinystories", "gutenberg", "onestopenglish"]
    assert set(train.documents).isdisjoint(test.documents)
    assert set(train.texts).isdisjoint(test.texts)
    assert all(n == 40 for n in train.counts().values())
    assert all(0 < n <= 20 for n in test.counts().values())
    # OneStopEnglish: an article (any level) is on one side only; Gutenberg: an author is on one side only
    def articles(d):
        return {doc.split("#")[1] for doc in d.documents if doc.startswith("onestopenglish")}
    assert articles(train).isdisjoint(articles(test))
    from tinyalbert.finetune import _authors
    authors = _authors(SAMPLE_CORPUS / "gutenberg")

    def writers(d):
        return {authors[doc.split("/")[1].split("#")[0] + ".txt"] for doc in d.documents if doc.startswith("gutenberg")}
    assert writers(train).isdisjoint(writers(test))


# ---- command line --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    config = tiny_config(vocab_size=30000, max_position_embeddings=64)
    path = tmp_path_factory.mktemp("weights") / "tiny.h5"
    save(path, config, init_params(config, seed=0), spiece_model_bytes=ALBERT_VOCAB.read_bytes())
    return path


def write_tsv(path: Path, n: int = 24) -> Path:
    rows = []
    for i in range(n):
        rows.append(f"the cat sat on mat number {i}\tcats" if i % 2 else f"the stock market fell {i} points\tmoney")
    path.write_text("text\tlabel\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def test_cli_fine_tunes_a_tsv_and_saves(tmp_path, tiny_weights, capsys):
    train = write_tsv(tmp_path / "train.tsv")
    out = tmp_path / "clf.h5"
    code = main(["--weights", str(tiny_weights), "--train", str(train), "--out", str(out), "--epochs", "2",
                 "--batch-size", "4", "--lr", "1e-3", "--threads", "1", "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and "predicted" in printed
    clf = load_classifier(out)
    assert clf.labels == ["cats", "money"]


def test_cli_source_task_on_the_corpus(tmp_path, tiny_weights):
    out = tmp_path / "src.h5"
    assert main(["--weights", str(tiny_weights), "--out", str(out), "--train-per-class", "8", "--test-per-class",
                 "4", "--max-steps", "2", "--batch-size", "4", "--quiet"]) == 0
    assert load_classifier(out).labels == ["tinystories", "wikinews", "gutenberg"]


@pytest.mark.parametrize("case", ["missing-train", "no-tab", "one-label", "unknown-test-label", "empty", "out-is-dir",
                                  "bad-lr", "missing-weights", "unknown-source", "bad-option", "test-without-train",
                                  "bad-threads", "bad-csv"])
def test_cli_bad_input_is_one_line_and_exit_2(case, tmp_path, tiny_weights, capsys):
    good = write_tsv(tmp_path / "good.tsv")
    args = ["--weights", str(tiny_weights), "--out", str(tmp_path / "x.h5"), "--quiet", "--max-steps", "1"]
    if case == "missing-train":
        args += ["--train", str(tmp_path / "nope.tsv")]
    elif case == "no-tab":
        (tmp_path / "bad.tsv").write_text("hello\tpos\nno tab on this line\n", encoding="utf-8")
        args += ["--train", str(tmp_path / "bad.tsv")]
    elif case == "one-label":
        (tmp_path / "one.tsv").write_text("a b c\tpos\nd e f\tpos\n", encoding="utf-8")
        args += ["--train", str(tmp_path / "one.tsv")]
    elif case == "unknown-test-label":
        (tmp_path / "test.tsv").write_text("a b c\tweather\n", encoding="utf-8")
        args += ["--train", str(good), "--test", str(tmp_path / "test.tsv")]
    elif case == "empty":
        (tmp_path / "empty.tsv").write_text("\n\n", encoding="utf-8")
        args += ["--train", str(tmp_path / "empty.tsv")]
    elif case == "out-is-dir":
        args = ["--weights", str(tiny_weights), "--out", str(tmp_path), "--train", str(good)]
    elif case == "bad-lr":
        args += ["--train", str(good), "--lr", "-1"]
    elif case == "missing-weights":
        args = ["--weights", str(tmp_path / "none.h5"), "--out", str(tmp_path / "x.h5"), "--train", str(good)]
    elif case == "unknown-source":
        args += ["--sources", "tinystories", "klingon"]
    elif case == "bad-option":
        args += ["--epochs", "many"]
    elif case == "test-without-train":
        args += ["--test", str(good)]
    elif case == "bad-threads":
        args += ["--train", str(good), "--threads", "0"]
    elif case == "bad-csv":
        (tmp_path / "bad.csv").write_text("text,label\nhello,pos\ntoo,many,columns\n", encoding="utf-8")
        args += ["--train", str(tmp_path / "bad.csv")]
    with pytest.raises(SystemExit) if case == "bad-option" else _no_exit() as raised:
        code = main(args)
    if case == "bad-option":
        code = raised.value.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert not (tmp_path / "x.h5").exists()


class _no_exit:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
