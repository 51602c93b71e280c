"""ALBERT's tokenizer: a SentencePiece unigram model plus a little text clean-up.

Turning text into ids happens in four steps:

1. Lowercase the text, character by character, leaving the special tokens
   ([CLS], [SEP], [MASK], <pad>, <unk>) as they are.
2. Cut the text at every special token. A special token gives its own id; the
   text between two special tokens is tokenized on its own.
3. Clean each piece of text (`preprocess`): collapse runs of whitespace, turn
   `` and '' into ", strip accents, lowercase.
4. Run SentencePiece on the cleaned text, then split a digit from a comma
   that follows it ("9," becomes "9" and ",").

Every step copies the reference slow `AlbertTokenizer` of transformers 4.57.6,
quirks included, so this class gives the same ids as the one the published
checkpoints were used with; the tests compare the two. Neither this module nor
the model imports transformers or torch. The package imports them in two places
only, lazily, on optional paths: `tinyalbert.convert` imports torch to read a
pytorch_model.bin, and `tinyalbert.bench` imports torch and transformers for its
PyTorch side.

The SentencePiece model can come from a file or from its raw bytes. Weight
files store the bytes, so a checkpoint carries its own vocabulary.
"""
from __future__ import annotations

import os
import unicodedata
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import sentencepiece as spm

# The genuine ALBERT vocabulary (30k-clean.model), installed with the package so that tests,
# notebooks and users all find it; its provenance and licence: tinyalbert/data/PROVENANCE.md.
ALBERT_VOCAB = Path(__file__).resolve().parent / "data" / "30k-clean.model"

# SentencePiece marks the start of a word with this character (U+2581), not a space.
WORD_START = "\u2581"

# The five special pieces, at the ids every ALBERT vocabulary gives them.
SPECIAL_PIECES = ("<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]")

# Special tokens that eat the whitespace before them. Only [MASK] does, so that
# "the [MASK]" behaves like "the word".  (None of them eats whitespace after it.)
EATS_SPACE_BEFORE = frozenset({"[MASK]"})


def check_unicode(text: str) -> None:
    """ValueError (one line) if `text` holds a lone surrogate: Python's stand-in for a byte that was not
    UTF-8 (read with surrogateescape, or in a command-line argument).  SentencePiece, and the reference
    tokenizer with it, fails on one with a C++ cast error instead."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"the text holds a lone surrogate ({text[e.start]!r} at character {e.start}), which "
                         f"stands for a byte that was not UTF-8: it is not Unicode text and cannot be tokenized: "
                         f"{text[:40]!r}") from None


class Tokenizer:
    """SentencePiece + ALBERT preprocessing; same ids as the reference `AlbertTokenizer`.

    Args:
        spiece_model_path_or_bytes: the path of a SentencePiece `.model` file,
            or the file's contents as `bytes`. The model must have the pieces
            <pad> <unk> [CLS] [SEP] [MASK] at ids 0 to 4.
    """

    def __init__(self, spiece_model_path_or_bytes: str | os.PathLike | bytes):
        source = spiece_model_path_or_bytes
        if isinstance(source, (bytes, bytearray, memoryview)):
            model_bytes = bytes(source)
            where = "the SentencePiece model bytes"
        elif isinstance(source, (str, os.PathLike)):
            path = os.fspath(source)
            where = f"SentencePiece model file {path!r}"
            try:
                with open(path, "rb") as f:
                    model_bytes = f.read()
            except OSError as e:
                raise ValueError(f"cannot read {where}: {e}") from None
        else:
            raise TypeError("Tokenizer() takes a path or the model's bytes, "
                            f"not {type(source).__name__}")

        if not model_bytes:
            raise ValueError(f"{where} is empty, not a SentencePiece model")
        try:
            sp = spm.SentencePieceProcessor(model_proto=model_bytes)
        except Exception as e:  # sentencepiece raises RuntimeError/OSError on bad protos
            raise ValueError(f"{where} is not a valid SentencePiece model: {e}") from None

        # Check the special pieces: the model, the reference and this class all
        # rely on these ids.
        if len(sp) < len(SPECIAL_PIECES):
            raise ValueError(f"{where} has only {len(sp)} pieces")
        found = tuple(sp.id_to_piece(i) for i in range(len(SPECIAL_PIECES)))
        if found != SPECIAL_PIECES:
            raise ValueError(f"{where} has pieces {found} at ids 0-4; "
                             f"ALBERT needs {SPECIAL_PIECES}")
        if sp.unk_id() != 1:
            raise ValueError(f"{where} uses id {sp.unk_id()} for unknown pieces; ALBERT needs 1")

        self._sp = sp
        self._model_bytes = model_bytes
        self.pad_id, self.unk_id, self.cls_id, self.sep_id, self.mask_id = range(5)
        assert self.piece_to_id("[MASK]") == 4
        self.special_tokens = SPECIAL_PIECES
        self._special_token_to_id = {p: i for i, p in enumerate(SPECIAL_PIECES)}
        # Longest first, so that a special token that starts another one cannot hide it.
        self._specials_longest_first = sorted(SPECIAL_PIECES, key=len, reverse=True)

    # ------------------------------------------------------------------ vocabulary

    @property
    def vocab_size(self) -> int:
        """Number of pieces in the SentencePiece model (30000 for ALBERT)."""
        return len(self._sp)

    @property
    def model_bytes(self) -> bytes:
        """The serialized SentencePiece model, e.g. to store next to the weights."""
        return self._model_bytes

    def id_to_piece(self, i: int) -> str:
        return self._sp.id_to_piece(self._check_id(i))

    def piece_to_id(self, piece: str) -> int:
        """Id of a piece; an unknown piece gives `unk_id`."""
        return self._sp.piece_to_id(piece)

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
        return [self.id_to_piece(i) for i in ids]

    def convert_tokens_to_ids(self, pieces: Iterable[str]) -> list[int]:
        return [self.piece_to_id(p) for p in pieces]

    def _check_id(self, i) -> int:
        i = int(i)
        if not 0 <= i < self.vocab_size:
            raise ValueError(f"token id {i} is outside the vocabulary (0..{self.vocab_size - 1})")
        return i

    # ------------------------------------------------------------------ text -> pieces

    def _special_at(self, text: str, pos: int) -> str | None:
        """The special token that starts at text[pos], if any."""
        for tok in self._specials_longest_first:
            if text.startswith(tok, pos):
                return tok
        return None

    def _lowercase_outside_specials(self, text: str) -> str:
        """Lowercase every character except those of special tokens.

        Lowercasing one character at a time (not the whole string) is what the
        reference does, and it matters: Python lowercases a word-final capital
        sigma to "ς" only when it sees the whole word, but to "σ" on its own.
        """
        out = []
        pos = 0
        while pos < len(text):
            tok = self._special_at(text, pos)
            if tok is not None:
                out.append(tok)
                pos += len(tok)
            else:
                out.append(text[pos].lower())
                pos += 1
        return "".join(out)

    def _split_on_specials(self, text: str) -> list[str]:
        """Cut text into special tokens and the stretches of text between them.

        The leftmost special token wins. The five ALBERT specials cannot
        overlap (each starts with "[" or "<" and contains no other "[" or "<"),
        so this simple scan cuts where the reference's trie does.
        """
        parts = []
        start = pos = 0
        while pos < len(text):
            tok = self._special_at(text, pos)
            if tok is None:
                pos += 1
                continue
            if pos > start:
                parts.append(text[start:pos])
            parts.append(tok)
            pos += len(tok)
            start = pos
        if start < len(text):
            parts.append(text[start:])
        return parts

    @staticmethod
    def preprocess(text: str) -> str:
        """ALBERT's text clean-up, applied to each stretch of text between special tokens."""
        text = " ".join(text.split())  # collapse (and trim) all whitespace
        text = text.replace("``", '"').replace("''", '"')  # LaTeX-style quotes
        # Strip accents: NFKD splits "é" into "e" + a combining acute, which we drop.
        text = unicodedata.normalize("NFKD", text)
        text = "".join(c for c in text if not unicodedata.combining(c))
        return text.lower()

    def _tokenize_text(self, text: str) -> list[str]:
        """Pieces of a stretch of text that holds no special token."""
        pieces = []
        for piece in self._sp.encode(self.preprocess(text), out_type=str):
            # BERT's rule for numbers: "9," must not be one piece, so that "9,9"
            # reads as 9 , 9. Re-encode the piece without its comma and put the
            # comma on its own.
            if len(piece) > 1 and piece[-1] == "," and piece[-2].isdigit():
                sub = self._sp.encode(piece[:-1].replace(WORD_START, ""), out_type=str)
                # Re-encoding adds a word-start mark. Keep it only if the
                # original piece started a word.
                if not piece.startswith(WORD_START) and sub[0].startswith(WORD_START):
                    if sub[0] == WORD_START:
                        sub = sub[1:]
                    else:
                        sub[0] = sub[0][1:]
                pieces.extend(sub)
                pieces.append(",")
            else:
                pieces.append(piece)
        return pieces

    def tokenize(self, text: str) -> list[str]:
        """Split text into SentencePiece pieces; special tokens stay whole."""
        if not isinstance(text, str):
            raise TypeError(f"tokenize() takes a str, not {type(text).__name__}")
        check_unicode(text)
        parts = self._split_on_specials(self._lowercase_outside_specials(text))
        # [MASK] swallows the whitespace in front of it. (The reference does this;
        # the ids never show it, since `preprocess` trims that whitespace anyway.)
        for i, part in enumerate(parts):
            if part in EATS_SPACE_BEFORE and i > 0:
                parts[i - 1] = parts[i - 1].rstrip()
        pieces = []
        for part in parts:
            if part in self._special_token_to_id:
                pieces.append(part)
            elif part:
                pieces.extend(self._tokenize_text(part))
        return pieces

    # ------------------------------------------------------------------ text -> ids

    def _ids(self, text: str) -> list[int]:
        return self.convert_tokens_to_ids(self.tokenize(text))

    def encode(self, text: str, add_special_tokens: bool = True,
               max_length: int | None = None, truncation: bool = False) -> list[int]:
        """Ids of `text`, as [CLS] text [SEP] (or just the text's ids).

        With `truncation=True` and a `max_length`, the text's ids are cut at
        the end so the whole sequence fits in max_length.
        """
        ids = self._ids(text)
        if truncation and max_length is not None:
            n_special = 2 if add_special_tokens else 0
            if max_length < n_special:
                raise ValueError(f"max_length={max_length} leaves no room for the "
                                 f"{n_special} special tokens")
            ids = ids[:max_length - n_special]
        if add_special_tokens:
            return [self.cls_id] + ids + [self.sep_id]
        return ids

    def encode_pair(self, text_a: str, text_b: str, max_length: int | None = None,
                    truncation: bool = False) -> tuple[list[int], list[int]]:
        """[CLS] A [SEP] B [SEP] and its token types (0 for [CLS] A [SEP], 1 for B [SEP]).

        Truncation ('longest_first') removes tokens from the end of whichever
        text is longer, one at a time; on a tie it takes from B.
        """
        a, b = self._ids(text_a), self._ids(text_b)
        if truncation and max_length is not None:
            if max_length < 3:
                raise ValueError(f"max_length={max_length} leaves no room for the 3 special tokens")
            budget = max_length - 3
            # Shorten the longer text down to the shorter one, then share what
            # is left to remove, B taking the odd one. This equals removing one
            # token at a time from the longer text (from B on a tie).
            excess = len(a) + len(b) - budget
            if excess > 0:
                gap = min(abs(len(a) - len(b)), excess)
                rest = excess - gap
                cut_a = rest // 2 + (gap if len(a) > len(b) else 0)
                cut_b = rest - rest // 2 + (gap if len(a) <= len(b) else 0)
                a, b = a[:len(a) - cut_a], b[:len(b) - cut_b]
        input_ids = [self.cls_id] + a + [self.sep_id] + b + [self.sep_id]
        token_type_ids = [0] * (len(a) + 2) + [1] * (len(b) + 1)
        return input_ids, token_type_ids

    def batch_encode(self, texts: Sequence[str], max_length: int = 512) -> tuple[np.ndarray, np.ndarray]:
        """Encode several texts ([CLS] x [SEP], truncated to max_length) into padded arrays.

        Returns (input_ids, attention_mask), both int64 of shape (B, T) with T
        the longest encoded text; shorter rows are padded on the right with
        pad_id and have attention_mask 0 there.
        """
        if isinstance(texts, str):
            raise TypeError("batch_encode() takes a list of texts; use encode() for one text")
        rows = [self.encode(t, max_length=max_length, truncation=True) for t in texts]
        width = max((len(r) for r in rows), default=0)
        input_ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, row in enumerate(rows):
            input_ids[i, :len(row)] = row
            attention_mask[i, :len(row)] = 1
        return input_ids, attention_mask

    # ------------------------------------------------------------------ ids -> text

    def decode(self, ids: Iterable[int] | int, skip_special_tokens: bool = True) -> str:
        """Text of a list of ids, as the reference's `decode` gives it.

        Runs of ordinary pieces go through SentencePiece's decoder (which turns
        word-start marks back into spaces). Special tokens are dropped, or,
        with skip_special_tokens=False, written out with a space before the
        first of a run of them. Note that <unk> is a special token too.
        """
        if isinstance(ids, (int, np.integer)):
            ids = [ids]
        out = []
        run: list[str] = []  # ordinary pieces not decoded yet
        prev_special = False
        for i in ids:
            i = self._check_id(i)
            if i < len(SPECIAL_PIECES):
                if skip_special_tokens:
                    continue
                if not prev_special:
                    out.append(" ")
                out.append(self._sp.decode_pieces(run))
                out.append(SPECIAL_PIECES[i])
                run = []
                prev_special = True
            else:
                run.append(self._sp.id_to_piece(i))
                prev_special = False
        out.append(self._sp.decode_pieces(run))
        return "".join(out).strip()

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size})"
