"""Attack: 10,000 random Unicode strings through tinyalbert's Tokenizer and the reference tokenizers.

The strings mix control characters, NUL, combining marks, emoji (with skin tones, ZWJ sequences and
flags), right-to-left text and direction marks, every kind of whitespace, very long runs of one
character, random code points from all of Unicode (surrogates excepted: a Python str that holds one
cannot be encoded), special tokens and ordinary words.  Our tokenizer must never raise, and must give
the same pieces and ids as the reference slow `AlbertTokenizer` (sentencepiece) for every string the
reference accepts.  Lone surrogates (what Python makes of bytes that are not UTF-8) are refused by
the reference with a C++ cast error from SentencePiece; ours raises a ValueError saying what they are.

The fast `AlbertTokenizerFast` (built offline from the same .model by transformers' converter) is not
a reference: it is a different implementation (the `tokenizers` normalizer, Metaspace pre-tokenizer
and Unigram model), and on these strings it disagrees with the slow one (and so with ours) on about
four strings in ten.  `FAST_DIFFERS` lists the causes, one minimal input each, checked below; the
random run counts how often the fast one agrees.
"""
from __future__ import annotations

import random

import pytest
from attack_tally import Tally
from transformers import AlbertTokenizer, AlbertTokenizerFast

from tinyalbert.tokenizer import ALBERT_VOCAB, Tokenizer

SEED = 14
COUNT = 10_000

# Where the fast tokenizer departs from the slow one, one minimal input per cause: (input, why).
FAST_DIFFERS = [
    ("\t", "whitespace only: the slow one trims it to nothing, the fast one keeps a lone word-start mark"),
    ("a\x1cb", "\\x1c-\\x1f and \\x0b are whitespace for Python's str.split (the slow one's clean-up), "
              "not for the fast normalizer, which joins 'ab'"),
    ("\x85", "NEL: whitespace for Python, an unknown character for the fast one"),
    ("...", "a text starting with punctuation: the slow one emits a lone word-start mark before it, the fast "
            "one does not"),
    ("a [SEP] b", "a special token between spaces: the fast one emits a word-start mark before it"),
    ("\u0e31", "a mark of combining class 0 (Thai MAI HAN-AKAT): the slow one's accent stripping keeps "
               "it (an unknown piece), the fast one's StripAccents drops every nonspacing mark"),
    ("1\ufe0f\u20e3", "keycap emoji: the slow one keeps the variation selector and the enclosing keycap as "
                      "an unknown piece, the fast one drops them"),
]

CONTROLS = [chr(c) for c in range(0x00, 0x20)] + ["\x7f"] + [chr(c) for c in range(0x80, 0xa0)]
COMBINING = [chr(c) for c in range(0x300, 0x370)] + ["\u0483", "\u0591", "\u05b0", "\u064b", "\u0670", "\u093c",
                                                      "\u0e31", "\u20d0", "\u20e3", "\ufe20", "\U0001d167"]
EMOJI = ["😀", "👍", "👍🏽", "👩‍👩‍👧‍👦", "🏳️‍🌈", "🇫🇷", "🇯🇵", "❤️", "🧑🏿‍🚀", "1️⃣", "©", "™", "🀄", "🫠"]
RTL = ["שלום", "עולם", "مرحبا", "بالعالم", "ܫܠܡܐ", "ދިވެހި", "\u200f", "\u200e", "\u202b", "\u202e", "\u202c",
       "\u2066", "\u2069", "\u061c", "٣,٤", "۱۲۳"]
WHITESPACE = [" ", "\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x1f", "\x85", "\xa0", "\u1680",
              "\u180e", "\u2000", "\u2001", "\u2002", "\u2003", "\u2004", "\u2005", "\u2006", "\u2007", "\u2008",
              "\u2009", "\u200a", "\u200b", "\u200c", "\u200d", "\u2028", "\u2029", "\u202f", "\u205f", "\u3000",
              "\ufeff"]
WORDS = ["the", "The", "MASK", "Hello", "world", "café", "naïve", "ΟΔΟΣ", "straße", "İstanbul", "ﬁ", "Ⅻ", "x²",
         "9,", "1,000", "12,", "``", "''", "\"", "'", "don't", "[", "]", "<", ">", "中文", "日本語", "한국어", "ไทย",
         "привет", "ｆｕｌｌ", "①", "...", "—", "-", "(", ")"]
SPECIALS = ["[MASK]", "[CLS]", "[SEP]", "<pad>", "<unk>", "[mask]", "[MASK", "MASK]", "<PAD>", "[[MASK]]"]


def random_code_point(rng: random.Random) -> str:
    """Any code point but a surrogate; mostly the BMP, where nearly every script lives."""
    while True:
        c = rng.randrange(0x10000) if rng.random() < 0.8 else rng.randrange(0x10000, 0x110000)
        if not 0xd800 <= c <= 0xdfff:
            return chr(c)


def random_piece(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.12:
        return rng.choice(CONTROLS)
    if kind < 0.22:
        return rng.choice(WORDS) + "".join(rng.choice(COMBINING) for _ in range(rng.randint(1, 4)))
    if kind < 0.32:
        return rng.choice(EMOJI)
    if kind < 0.42:
        return rng.choice(RTL)
    if kind < 0.54:
        return "".join(rng.choice(WHITESPACE) for _ in range(rng.randint(1, 3)))
    if kind < 0.70:
        return "".join(random_code_point(rng) for _ in range(rng.randint(1, 6)))
    if kind < 0.78:
        return rng.choice(SPECIALS)
    if kind < 0.80:
        return "\x00" * rng.randint(1, 5)
    return rng.choice(WORDS)


def random_string(rng: random.Random) -> str:
    if rng.random() < 0.01:   # a very long run of one thing (a few thousand characters)
        unit = rng.choice(["a", "9,", " ", "\x00", "😀", "\u0301", "[MASK]", "ab ", random_code_point(rng)])
        return rng.choice(WORDS) + unit * rng.randint(500, 3000) + rng.choice(WORDS)
    return "".join(random_piece(rng) for _ in range(rng.randint(0, 12)))


def strings() -> list[str]:
    rng = random.Random(SEED)
    return [random_string(rng) for _ in range(COUNT)]


@pytest.fixture(scope="module")
def ours():
    return Tokenizer(ALBERT_VOCAB)


@pytest.fixture(scope="module")
def slow():
    return AlbertTokenizer(vocab_file=str(ALBERT_VOCAB))


@pytest.fixture(scope="module")
def fast():
    return AlbertTokenizerFast(vocab_file=str(ALBERT_VOCAB))


def test_random_unicode_matches_slow_reference(ours, slow, fast):
    tally = Tally("tokenizer vs slow AlbertTokenizer")
    fast_tally = Tally("tokenizer vs fast AlbertTokenizerFast (not a reference)")
    failures = []
    for text in strings():
        try:
            fast_tally.add("same ids" if fast.encode(text) == ours.encode(text) else "different ids")
        except Exception:
            fast_tally.add("one of them raised")
        try:
            pieces, ids = ours.tokenize(text), ours.encode(text)
        except Exception as e:
            tally.add("FAILED: ours raised")
            failures.append(f"{text!r}: ours raised {type(e).__name__}: {e}")
            continue
        try:
            want_pieces, want_ids = slow.tokenize(text), slow.encode(text)
        except Exception:
            tally.add("reference refused, ours did not crash")
            continue
        if pieces == want_pieces and ids == want_ids:
            tally.add("same pieces and ids")
        else:
            tally.add("FAILED: different")
            failures.append(f"{text!r}: ours {pieces} {ids}, reference {want_pieces} {want_ids}")
    tally.report()
    fast_tally.report()
    assert tally.inputs == COUNT
    assert not failures, f"{len(failures)} disagreements:\n" + "\n".join(failures[:30])


@pytest.mark.parametrize("text, why", FAST_DIFFERS)
def test_where_the_fast_tokenizer_differs(ours, slow, fast, text, why):
    assert ours.encode(text) == slow.encode(text)
    assert fast.encode(text) != slow.encode(text), f"the fast tokenizer no longer differs here: {why}"


def test_lone_surrogates_are_refused_clearly(ours, slow):
    for text in ("caf\udce9 [MASK]", "\ud800", "a\udfffb"):
        with pytest.raises(ValueError, match="lone surrogate"):
            ours.encode(text)
        with pytest.raises(Exception):  # noqa: B017 - the reference's error is a RuntimeError from pybind11
            slow.encode(text)
