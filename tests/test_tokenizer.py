"""tinyalbert.tokenizer.Tokenizer against the reference slow AlbertTokenizer (transformers 4.57.6).

The genuine ALBERT vocabulary is bundled with the package (tinyalbert/data/30k-clean.model, ALBERT_VOCAB).
"""
import io
import random

import numpy as np
import pytest
import sentencepiece as spm
from transformers import AlbertTokenizer

from tinyalbert.tokenizer import ALBERT_VOCAB, Tokenizer

# Building blocks for random strings. Each group targets one rule of the tokenizer.
FRAGMENTS = [
    # plain words, mixed case, long words
    "hello", "World", "THE", "tokenizer", "ALBERT", "McDonald", "iPhone",
    "antidisestablishmentarianism", "Pneumonoultramicroscopicsilicovolcanoconiosis", "aaaaaaaaaaaaaaaaaaaaaa",
    # accents, precomposed and combining, and compatibility characters
    "café", "naïve", "über", "Ångström", "niño", "ÉCOLE", "e\u0301", "A\u030a", "n\u0303o", "\u0301",
    "ﬁne", "Ⅻ", "x²", "①", "ｆｕｌｌ", "¨", "İstanbul", "straße",
    # Greek capital sigma: lowercased one character at a time, never to the final form
    "ΟΔΟΣ", "Σ", "ΣΑΣ",
    # digits with commas
    "1,000", "9,", "a9,b", "9,9", "1,2,3,", "12,", "3.14", "2024", "٣,", "１，０００", "x1,", "1,a",
    # LaTeX-style quotes and other quotes
    "``", "''", "``quoted''", "'", "\"", "don't", "it's",
    # punctuation
    "(", ")", "(a)", ".", ",", "!", "?", ";", ":", "-", "–", "—", "...", "[", "]", "<", ">", "[x]", "<b>",
    # emoji, CJK and other scripts
    "😀", "👍🏽", "中文", "日本語", "한국어", "привет", "مرحبا", "ไทย",
    # special tokens, in the right case and in other cases
    "[CLS]", "[SEP]", "[MASK]", "<pad>", "<unk>", "[mask]", "[Mask]", "<PAD>", "<Unk>", "[CLS", "MASK]",
    "x[MASK]y", "the [MASK].", "[CLS]hello[SEP]", "[MASK],", "([MASK])", "[MASK][MASK]", "<pad><unk>",
]
SEPARATORS = [" ", " ", " ", "", "  ", "\t", "\n", " \n ", "\u3000", "\u00a0", "\r\n"]

# Hand-picked cases that must always be in the test.
FIXED = [
    "", " ", "   \t\n ", "Hello, World!", "1,000 people and 9, not a9,b", "``Hello'' she said",
    "x[MASK]y", "the [MASK].", "[CLS]hello[SEP]", "<pad>", "<unk>", "<PAD> and <UnK>", "a  [MASK]  b",
    "\t[MASK]\n", "[MASK]", "ΟΔΟΣ ΣΑΣ", "x¨ [MASK]", "café naïve Ångström niño", "e\u0301e\u0301",
    "😀 emoji 中文 text", "(parenthesised) text", "9,9,9,", "word, 12, 3,4,", "[SEP][SEP]",
]


def random_text(rng: random.Random) -> str:
    n = rng.randint(1, 12)
    out = []
    for _ in range(n):
        out.append(rng.choice(FRAGMENTS))
        out.append(rng.choice(SEPARATORS))
    text = "".join(out)
    if rng.random() < 0.3:  # leading whitespace
        text = rng.choice(SEPARATORS) + text
    return text


@pytest.fixture(scope="module")
def ref():
    return AlbertTokenizer(vocab_file=str(ALBERT_VOCAB))


@pytest.fixture(scope="module")
def tok():
    return Tokenizer(ALBERT_VOCAB)


@pytest.fixture(scope="module")
def texts():
    rng = random.Random(1234)
    return FIXED + [random_text(rng) for _ in range(400)]


def test_special_ids_and_vocab(tok, ref):
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id) == (0, 1, 2, 3, 4)
    assert tok.vocab_size == ref.vocab_size == 30000
    for name in ["pad", "unk", "cls", "sep", "mask"]:
        assert getattr(tok, f"{name}_id") == getattr(ref, f"{name}_token_id")
    for i in [0, 1, 2, 3, 4, 5, 13, 14, 1000, 29999]:
        piece = tok.id_to_piece(i)
        assert piece == ref.convert_ids_to_tokens(i)
        assert tok.piece_to_id(piece) == i
    assert tok.piece_to_id("no-such-piece-xyz") == tok.unk_id
    assert tok.convert_ids_to_tokens([2, 48, 3]) == ref.convert_ids_to_tokens([2, 48, 3])
    # The fixture's known answer: "This is a test" -> 48 25 21 1289.
    assert tok.encode("This is a test", add_special_tokens=False) == [48, 25, 21, 1289]
    with pytest.raises(ValueError):
        tok.id_to_piece(30000)


def test_tokenize_and_encode_match_reference(tok, ref, texts):
    for text in texts:
        assert tok.tokenize(text) == ref.tokenize(text), repr(text)
        assert tok.encode(text) == ref.encode(text), repr(text)
        assert tok.encode(text, add_special_tokens=False) == ref.encode(text, add_special_tokens=False), repr(text)


def test_known_behaviours(tok):
    # Digits and commas: the comma is its own piece; the word start stays with the number.
    assert tok.tokenize("9, a9,b") == ["▁9", ",", "▁a", "9", ",", "b"]
    # [MASK] eats the space before it; the text after it is tokenized on its own.
    assert tok.tokenize("the [MASK].") == ["▁the", "[MASK]", "▁", "."]
    # Special tokens are only recognised in their exact spelling, except that the
    # lowercasing turns <PAD> into <pad> before the special tokens are looked for.
    assert tok.tokenize("[mask] <PAD>")[-1] == "<pad>"
    assert "[MASK]" not in tok.tokenize("[mask]")
    # Capital sigma is lowercased on its own, so it never becomes the final form.
    assert tok.tokenize("ΟΔΟΣ") == ["▁", "οδοσ"]


def test_encode_pair_matches_reference(tok, ref, texts):
    rng = random.Random(99)
    for _ in range(150):
        a, b = rng.choice(texts), rng.choice(texts)
        want = ref(a, b)
        ids, types = tok.encode_pair(a, b)
        assert ids == want["input_ids"], (a, b)
        assert types == want["token_type_ids"], (a, b)


def test_truncation_matches_reference(tok, ref, texts):
    rng = random.Random(7)
    long_texts = [t for t in texts if len(ref.tokenize(t)) >= 4]
    for _ in range(120):
        a, b = rng.choice(long_texts), rng.choice(texts)
        m = rng.randint(3, 30)
        assert tok.encode(a, max_length=m, truncation=True) == ref.encode(a, max_length=m, truncation=True)
        assert (tok.encode(a, add_special_tokens=False, max_length=m, truncation=True)
                == ref.encode(a, add_special_tokens=False, max_length=m, truncation=True))
        want = ref(a, b, max_length=m, truncation=True)
        ids, types = tok.encode_pair(a, b, max_length=m, truncation=True)
        assert ids == want["input_ids"], (a, b, m)
        assert types == want["token_type_ids"], (a, b, m)
        assert len(ids) <= m
    # Without truncation=True, max_length does not cut (as in the reference).
    a = long_texts[0]
    assert tok.encode(a, max_length=3) == ref.encode(a)
    # Where the reference silently gives up (it cannot remove every text token),
    # we still fit the budget, or say why not.
    assert tok.encode(a, max_length=2, truncation=True) == [tok.cls_id, tok.sep_id]
    with pytest.raises(ValueError):
        tok.encode(a, max_length=1, truncation=True)
    with pytest.raises(ValueError):
        tok.encode_pair(a, a, max_length=2, truncation=True)


def test_decode_matches_reference(tok, ref, texts):
    rng = random.Random(5)
    for text in texts[:150]:
        ids = ref.encode(text)
        for skip in (True, False):
            assert tok.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip), text
    # Random id sequences, special ids included.
    for _ in range(100):
        ids = [rng.choice([0, 1, 2, 3, 4, rng.randrange(30000)]) for _ in range(rng.randint(0, 12))]
        for skip in (True, False):
            assert tok.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip), ids
    assert tok.decode(np.array([2, 48, 25, 3])) == "this is"
    assert tok.decode(48) == ref.decode(48)


def test_batch_encode(tok, ref, texts):
    batch = texts[:40]
    ids, mask = tok.batch_encode(batch, max_length=24)
    want = ref(batch, padding=True, truncation=True, max_length=24)
    assert ids.dtype == np.int64 and ids.shape == mask.shape
    np.testing.assert_array_equal(ids, np.array(want["input_ids"]))
    np.testing.assert_array_equal(mask, np.array(want["attention_mask"]))
    assert (ids[mask == 0] == tok.pad_id).all()
    ids, mask = tok.batch_encode(["a", "a b c"])
    assert ids.shape == (2, 5) and mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]


def test_model_bytes_and_errors(tok, tmp_path):
    data = tok.model_bytes
    assert data == ALBERT_VOCAB.read_bytes()
    from_bytes = Tokenizer(data)
    assert from_bytes.encode("Hello, [MASK] world 1,000") == tok.encode("Hello, [MASK] world 1,000")
    assert Tokenizer(str(ALBERT_VOCAB)).vocab_size == tok.vocab_size

    missing = tmp_path / "nope.model"
    with pytest.raises(ValueError, match="nope.model"):
        Tokenizer(missing)
    junk = tmp_path / "junk.model"
    junk.write_bytes(b"this is not a sentencepiece model")
    with pytest.raises(ValueError, match="junk.model"):
        Tokenizer(junk)
    with pytest.raises(ValueError):
        Tokenizer(b"garbage")
    with pytest.raises(ValueError):
        Tokenizer(b"")


def _train_small_model(**ids) -> bytes:
    rng = random.Random(3)
    lines = [random_text(rng) for _ in range(300)] + ["the quick brown fox, 1,000 times"] * 20
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=out, vocab_size=150, model_type="unigram",
        hard_vocab_limit=False, minloglevel=2, **ids)
    return out.getvalue()


def test_works_with_another_vocabulary(tmp_path):
    data = _train_small_model(pad_id=0, unk_id=1, bos_id=-1, eos_id=-1,
                              control_symbols=["[CLS]", "[SEP]", "[MASK]"])
    path = tmp_path / "small.model"
    path.write_bytes(data)
    small, ref_small = Tokenizer(data), AlbertTokenizer(vocab_file=str(path))
    assert small.vocab_size == ref_small.vocab_size < 30000
    rng = random.Random(11)
    for text in FIXED + [random_text(rng) for _ in range(60)]:
        ids = ref_small.encode(text)
        assert small.tokenize(text) == ref_small.tokenize(text), repr(text)
        assert small.encode(text) == ids, repr(text)
        assert small.decode(ids) == ref_small.decode(ids, skip_special_tokens=True)

    # A model without ALBERT's special pieces at ids 0-4 is refused.
    with pytest.raises(ValueError, match="0-4"):
        Tokenizer(_train_small_model())
