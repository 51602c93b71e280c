"""Pretraining data: plain text -> batches for masked-LM + sentence-order prediction (SOP).

The recipe is that of google-research/albert `create_pretraining_data.py`:

1. Text.  A source is a folder (or files) of UTF-8 text.  A document is a run of
   non-empty lines ended by a blank line (or a whole file, `one_doc_per_file`);
   each line is a paragraph, split into sentences by `split_sentences`.
2. Cache.  Each source is tokenized once into a flat on-disk cache, memory-mapped
   afterwards, so the corpus never sits in memory as Python objects:
       tokens.bin             (N,)   uint16 token ids of every sentence, end to end
       sentence_offsets.npy   (S+1,) int64  sentence s = tokens[so[s]:so[s+1]]
       document_offsets.npy   (D+1,) int64  document d = sentences do[d]..do[d+1]-1
       document_positions.npy (D,)   int64  where document d stands in its file (0, 1, ...)
   The folder name carries a hash of the tokenizer and of the files' contents.
3. Pairs.  An example takes consecutive sentences from one document until they
   reach a target length (max_seq_length - 3, or with probability short_seq_prob
   a random length in [2, max_seq_length - 3]), cuts them into segments A and B
   at a random sentence boundary, swaps them with probability 0.5 (SOP label 1
   = swapped, 0 = original order) and trims the longer segment, one token at a
   time from a random end, until [CLS] A [SEP] B [SEP] fits.
   With pair_task="nsp" the pair is BERT's next-sentence prediction instead:
   A is the chunk's first sentences, and B is either the rest of the chunk
   (label 0, "is next") or, with probability 0.5, a run of sentences from
   another document of the same split, its source drawn by the sources'
   weights as BERT draws from its whole corpus (label 1, "random").  So for
   both tasks label 0 means "B follows A in the text".
4. Masking.  n-gram masking of whole words: about 15 % of the tokens
   (num_to_predict = min(20, max(1, round(0.15 T)))) in spans of n <= 3 words,
   p(n) ∝ 1/n; each chosen token becomes [MASK] (80 %), a random token (10 %)
   or stays (10 %).  mlm_labels hold the original id there and -100 elsewhere.

Departures from the original, all deliberate: examples are drawn at random
(start sentence uniform within a source, source by weight) instead of walking
every document in order, so that any batch can be rebuilt from (seed, step);
a chunk always has at least two sentences, so an SOP pair's B never comes
from another document (the original borrows a random document's text for
one-sentence chunks); a random replacement token is never one of the five special pieces;
and a word never continues across [SEP].

Batches are dicts of int64 arrays: input_ids, token_type_ids, attention_mask,
mlm_labels (B, T) and sop_labels (B,), padded with 0 to max_seq_length.
sop_labels holds the pair task's label, NSP's with pair_task="nsp" (the
model's one two-way head serves either task).
"""
from __future__ import annotations

import argparse
import bisect
import functools
import hashlib
import inspect
import json
import os
import re
import sys
import time
import zlib
from array import array
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from .files import atomic_output_dir

# A 2.5 MB sample of the bundled model's training corpus, installed with the package: one folder per
# source, in the format of step 1 above.  What it holds and its licences: tinyalbert/data/corpus/PROVENANCE.md.
SAMPLE_CORPUS = Path(__file__).resolve().parent / "data" / "corpus"
CACHE_VERSION = 2  # bump when the cache layout or the sentence splitter changes
# Sources whose files hold the same texts in parallel: document k of every file is one article, rewritten
# (OneStopEnglish: each file one reading level).  A split must keep an article's rewrites together.
PARALLEL_SOURCES = frozenset({"onestopenglish"})
SPLITS = {"train": 0, "heldout": 1}
PAIR_TASKS = ("sop", "nsp")  # sentence-order prediction (ALBERT) or next-sentence prediction (BERT)

# ----------------------------------------------------------------------------- text


def list_text_files(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """The files behind `paths`: a file is taken as is, a folder gives its *.txt files (recursively), sorted."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(q for q in p.rglob("*.txt") if q.is_file()))
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")
    return files


def read_documents(path: str | os.PathLike, one_doc_per_file: bool = False) -> Iterator[list[str]]:
    """Yield the documents of one file, each a list of paragraphs (its non-empty lines, stripped).

    Documents are separated by blank lines, or the whole file is one document.
    Reads line by line, so only one document is in memory at a time.
    """
    doc: list[str] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                doc.append(line)
            elif doc and not one_doc_per_file:
                yield doc
                doc = []
    if doc:
        yield doc


# Words whose final "." does not end a sentence.  Lowercase, inner dots kept ("e.g").
ABBREVIATIONS = frozenset(
    "mr mrs ms messrs mme mlle dr st prof sr jr mt ft gen col lt capt cmdr sgt rev gov sen rep hon "
    "e.g i.e cf vs viz u.s u.k".split())
# ... and these only when a number follows ("No. 5", "Jan. 12", "p. 3").
NUMBER_ABBREVIATIONS = frozenset(
    "no nos vol vols p pp fig figs ch art jan feb mar apr jun jul aug sep sept oct nov dec".split())
_OPENERS = "\"'“‘([«"
# end punctuation, then closing quotes/brackets, then the whitespace before the next sentence
_SENTENCE_END = re.compile(r"([.!?]+)([\"'”’)\]»]*)\s+")


def split_sentences(paragraph: str) -> list[str]:
    """Split a paragraph into sentences with a few rules.

    A sentence ends at '.', '!' or '?' (or a run like '?!' or '...'), plus any
    closing quotes or brackets, when whitespace follows and the next sentence
    starts (after optional opening quotes/brackets) with an uppercase letter or
    a digit.  So `"Ouch!" she said.` stays one sentence.  A single '.' does not
    end a sentence after a known abbreviation (Mr. Dr. St. e.g. ...), after a
    single capital initial (J. K. Rowling), or after No./Jan./p. ... when a
    number follows.
    """
    text = paragraph.strip()
    sentences: list[str] = []
    start = 0
    for m in _SENTENCE_END.finditer(text):
        nxt = m.end()
        j = nxt
        while j < len(text) and text[j] in _OPENERS:
            j += 1
        if j == len(text) or not (text[j].isupper() or text[j].isdigit()):
            continue
        if m.group(1) == ".":
            word_start = max(text.rfind(" ", 0, m.start()), text.rfind("\n", 0, m.start())) + 1
            word = text[word_start:m.start()].lstrip(_OPENERS)
            low = word.lower()
            if low in ABBREVIATIONS or (len(word) == 1 and word.isupper()):
                continue
            if low in NUMBER_ABBREVIATIONS and text[j].isdigit():
                continue
        sentences.append(text[start:m.end(2)])
        start = nxt
    if start < len(text):
        sentences.append(text[start:])
    return sentences


# ----------------------------------------------------------------------------- token cache


@dataclass
class Source:
    """One corpus: files and/or folders, a sampling weight and its document layout."""

    name: str
    paths: list[Path]
    weight: float = 1.0
    one_doc_per_file: bool = False
    parallel: bool = False  # document k of every file is the same text (see PARALLEL_SOURCES)

    @classmethod
    def parse(cls, spec: str | os.PathLike) -> "Source":
        """'path' or 'path:weight' -> Source named after the path's last component."""
        spec = os.fspath(spec)
        path, weight = spec, 1.0
        head, sep, tail = spec.rpartition(":")
        if sep and head and not Path(spec).exists():
            try:
                path, weight = head, float(tail)
            except ValueError:
                pass
        name = Path(path).name or "source"
        return cls(name=name, paths=[Path(path)], weight=weight, parallel=name in PARALLEL_SOURCES)


def default_cache_dir() -> Path:
    """$TINYALBERT_CACHE, else ~/.cache/tinyalbert/data."""
    return Path(os.environ.get("TINYALBERT_CACHE", Path.home() / ".cache" / "tinyalbert" / "data"))


def _tokenizer_fingerprint(tokenizer) -> bytes:
    """Hash of the SentencePiece model and of the tokenizer's code (a change in either re-tokenizes)."""
    h = hashlib.sha256(tokenizer.model_bytes)
    try:
        h.update(Path(inspect.getsourcefile(type(tokenizer))).read_bytes())
    except (TypeError, OSError):
        pass
    return h.digest()


def cache_key(files: Sequence[Path], tokenizer, one_doc_per_file: bool) -> str:
    """Hex digest over the cache version, the tokenizer, the layout flag and every file's name and contents."""
    h = hashlib.sha256(f"tinyalbert-data-v{CACHE_VERSION}|{int(one_doc_per_file)}".encode())
    h.update(_tokenizer_fingerprint(tokenizer))
    for path in files:
        h.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            h.update(hashlib.file_digest(f, "sha256").digest())
    return h.hexdigest()


@dataclass
class TokenCache:
    """A tokenized source, memory-mapped: see the module docstring for the three arrays."""

    path: Path
    tokens: np.ndarray            # (N,) uint16 or int32
    sentence_offsets: np.ndarray  # (S+1,) int64, into tokens
    document_offsets: np.ndarray  # (D+1,) int64, into sentences
    document_positions: np.ndarray  # (D,) int64, each document's place in its file
    meta: dict = field(default_factory=dict)

    @property
    def num_documents(self) -> int:
        return len(self.document_offsets) - 1

    @property
    def num_sentences(self) -> int:
        return len(self.sentence_offsets) - 1

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)

    def sentence(self, s: int) -> np.ndarray:
        """Token ids of sentence s."""
        return self.tokens[self.sentence_offsets[s]:self.sentence_offsets[s + 1]]

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TokenCache":
        path = Path(path)
        meta = json.loads((path / "meta.json").read_text())
        n = meta["num_tokens"]
        dtype = np.dtype(meta["dtype"])
        # np.memmap refuses empty files
        tokens = np.memmap(path / "tokens.bin", dtype=dtype, mode="r", shape=(n,)) if n else np.zeros(0, dtype)
        return cls(path, tokens, np.load(path / "sentence_offsets.npy", mmap_mode="r"),
                   np.load(path / "document_offsets.npy", mmap_mode="r"),
                   np.load(path / "document_positions.npy", mmap_mode="r"), meta)


def build_token_cache(source: Source, tokenizer, cache_dir: str | os.PathLike | None = None,
                      progress: bool = True) -> TokenCache:
    """Tokenize `source` once (sentence by sentence, with tokenizer.encode) into `cache_dir`; reuse it afterwards.

    The cache is written to a temporary folder and renamed into place, so an
    interrupted run never leaves a half-written cache behind.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    files = list_text_files(source.paths)
    if not files:
        raise FileNotFoundError(f"source {source.name!r}: no .txt files in {[str(p) for p in source.paths]}")
    key = cache_key(files, tokenizer, source.one_doc_per_file)
    final = cache_dir / f"{source.name}-{key[:16]}"
    if (final / "meta.json").is_file():
        return TokenCache.load(final)

    cache_dir.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_output_dir(final) as tmp:
            _write_token_cache(Path(tmp), source, files, key, tokenizer, progress)
    except OSError:  # another process finished the same cache first: keep theirs
        if not (final / "meta.json").is_file():
            raise
    return TokenCache.load(final)


def _write_token_cache(tmp: Path, source: Source, files: list[Path], key: str, tokenizer, progress: bool) -> None:
    """Tokenize `files` into the (new, empty) cache folder `tmp`: tokens.bin, offsets, positions, meta.json."""
    from tqdm import tqdm

    dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 2 ** 16 else np.int32)
    sentence_ends = array("q")  # token offset after each sentence
    document_ends = array("q")  # sentence count after each document
    document_positions = array("q")  # each kept document's place in its file, empty documents counted
    n_tokens = 0
    encode = tokenizer.encode
    total = sum(p.stat().st_size for p in files)
    with open(tmp / "tokens.bin", "wb") as out, \
            tqdm(total=total, unit="B", unit_scale=True, desc=f"tokenizing {source.name}",
                 disable=not progress, mininterval=1.0) as bar:
        for path in files:
            counted = 0
            for position, doc in enumerate(read_documents(path, source.one_doc_per_file)):
                n_sent_before = len(sentence_ends)
                for paragraph in doc:
                    for sentence in split_sentences(paragraph):
                        ids = encode(sentence, add_special_tokens=False)
                        if ids:
                            out.write(np.asarray(ids, dtype=dtype).tobytes())
                            n_tokens += len(ids)
                            sentence_ends.append(n_tokens)
                    n_bytes = len(paragraph.encode("utf-8")) + 1
                    counted += n_bytes
                    bar.update(n_bytes)
                if len(sentence_ends) > n_sent_before:
                    document_ends.append(len(sentence_ends))
                    document_positions.append(position)
            bar.update(max(0, path.stat().st_size - counted))  # blank lines and stripped spaces
    np.save(tmp / "sentence_offsets.npy", np.concatenate([[0], np.frombuffer(sentence_ends, np.int64)]))
    np.save(tmp / "document_offsets.npy", np.concatenate([[0], np.frombuffer(document_ends, np.int64)]))
    np.save(tmp / "document_positions.npy", np.frombuffer(document_positions, np.int64))
    meta = {"source": source.name, "key": key, "dtype": dtype.name, "num_tokens": n_tokens,
            "num_sentences": len(sentence_ends), "num_documents": len(document_ends),
            "one_doc_per_file": source.one_doc_per_file, "files": [str(p) for p in files],
            "cache_version": CACHE_VERSION}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))


def document_groups(cache: TokenCache, parallel: bool) -> np.ndarray:
    """(D,) int64: documents with the same number must fall on the same side of a split.

    Every document is its own group, except in a parallel source, where document k of every file is one
    article at another reading level: those rewrites share the group k.
    """
    if parallel:
        return np.asarray(cache.document_positions, dtype=np.int64)
    return np.arange(cache.num_documents, dtype=np.int64)


def heldout_documents(groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """(D,) bool: the documents of a fixed random set of round(fraction G) of the G groups (at least 1, never
    all) kept out of training.  groups (D,) from document_groups; with one group per document this is
    round(fraction D) documents."""
    groups = np.asarray(groups)
    labels, group_of_document = np.unique(groups, return_inverse=True)
    mask = np.zeros(len(groups), dtype=bool)
    if fraction <= 0 or len(labels) < 2:
        return mask
    k = min(len(labels) - 1, max(1, round(fraction * len(labels))))
    chosen = np.zeros(len(labels), dtype=bool)
    chosen[np.random.default_rng(seed).permutation(len(labels))[:k]] = True
    return chosen[group_of_document]


def eligible_starts(cache: TokenCache, documents: np.ndarray) -> np.ndarray:
    """Sentence ids that may start a chunk: in a selected document (bool (D,)) and not its last sentence."""
    do = np.asarray(cache.document_offsets)
    per_doc = np.diff(do)
    doc_of_sentence = np.repeat(np.arange(cache.num_documents), per_doc)
    is_last = np.zeros(cache.num_sentences, dtype=bool)
    is_last[do[1:][per_doc > 0] - 1] = True
    return np.flatnonzero(documents[doc_of_sentence] & ~is_last)


# ----------------------------------------------------------------------------- sentence pairs


def truncate_seq_pair(a: np.ndarray, b: np.ndarray, max_num_tokens: int,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Drop tokens until len(a) + len(b) <= max_num_tokens.

    Each step removes one token from the longer segment (b on a tie), from its
    front or its back with probability 1/2 each, as the original does.
    """
    excess = len(a) + len(b) - max_num_tokens
    if excess <= 0:
        return a, b
    from_front = rng.random(excess) < 0.5
    a_lo, a_hi, b_lo, b_hi = 0, len(a), 0, len(b)
    for front in from_front:
        if a_hi - a_lo > b_hi - b_lo:
            if front:
                a_lo += 1
            else:
                a_hi -= 1
        elif front:
            b_lo += 1
        else:
            b_hi -= 1
    return a[a_lo:a_hi], b[b_lo:b_hi]


def make_sentence_pair(chunk: Sequence[np.ndarray], rng: np.random.Generator,
                       max_num_tokens: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Consecutive sentences (at least 2) -> (A, B, sop_label).

    A = sentences [0, a_end), B = the rest, a_end uniform in [1, len(chunk)-1];
    with probability 1/2 A and B are swapped and the label is 1.
    """
    if len(chunk) < 2:
        raise ValueError("a chunk needs at least two sentences")
    a_end = int(rng.integers(1, len(chunk)))
    a, b = np.concatenate(chunk[:a_end]), np.concatenate(chunk[a_end:])
    label = 0
    if rng.random() < 0.5:
        a, b, label = b, a, 1
    a, b = truncate_seq_pair(a, b, max_num_tokens, rng)
    return a, b, label


def make_next_sentence_pair(chunk: Sequence[np.ndarray], random_next: Callable[[int], Sequence[np.ndarray]],
                            rng: np.random.Generator, max_num_tokens: int,
                            target: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Consecutive sentences (at least 2) -> (A, B, nsp_label), BERT's next-sentence prediction.

    A = sentences [0, a_end), a_end uniform in [1, len(chunk)-1].  With probability 1/2
    B = random_next(max(1, target - len(A))), sentences of another document about that
    many tokens long, and the label is 1; otherwise B = the rest of the chunk, label 0.
    """
    if len(chunk) < 2:
        raise ValueError("a chunk needs at least two sentences")
    a_end = int(rng.integers(1, len(chunk)))
    a = np.concatenate(chunk[:a_end])
    if rng.random() < 0.5:
        b, label = np.concatenate(random_next(max(1, target - len(a)))), 1
    else:
        b, label = np.concatenate(chunk[a_end:]), 0
    a, b = truncate_seq_pair(a, b, max_num_tokens, rng)
    return a, b, label


# ----------------------------------------------------------------------------- masking

# ALBERT's rule for "this piece starts a word" (create_pretraining_data._is_start_piece_sp):
# a piece continues the previous word only if it has no "▁" and is made of a-z and ASCII
# punctuation (note: the original's set has no apostrophe, so "'s" starts a word).
_PUNCTUATION = frozenset('!"#$%&()*+,-./:;?@[\\]^_`{|}~')
_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyz")


def is_word_start_piece(piece: str) -> bool:
    """True if a SentencePiece piece begins a new word for whole-word masking."""
    if piece.startswith(("\u2581", "<")) or piece in _PUNCTUATION:
        return True
    return not all(c.lower() in _LETTERS or c in _PUNCTUATION for c in piece)


def word_start_table(tokenizer) -> np.ndarray:
    """(V,) bool: is_word_start_piece for every id of the vocabulary."""
    return np.array([is_word_start_piece(tokenizer.id_to_piece(i)) for i in range(tokenizer.vocab_size)])


def candidate_units(ids: np.ndarray, special: np.ndarray,
                    word_start: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Maskable units (whole words, or single tokens if word_start is None) as (starts, ends), ends exclusive.

    ids, special: (T,).  Special positions belong to no unit; a piece that does
    not start a word joins the unit just before it (never across a special).
    """
    cand = ~special
    prev_cand = np.concatenate([[False], cand[:-1]])
    new = cand & ~prev_cand
    new |= cand if word_start is None else cand & word_start[ids]
    starts = np.flatnonzero(new)
    lengths = np.bincount(np.cumsum(new)[cand] - 1, minlength=len(starts))
    return starts, starts + lengths


@functools.lru_cache(maxsize=None)
def _ngram_cdfs(max_ngram: int) -> tuple[tuple[float, ...], ...]:
    """cdfs[k-1]: cumulative p(n) ∝ 1/n over n = 1..k (used when only k n-grams fit before the end)."""
    p = 1.0 / np.arange(1, max_ngram + 1)
    return tuple(tuple(np.cumsum(p[:k]) / p[:k].sum()) for k in range(1, max_ngram + 1))


def sample_ngram_spans(unit_lengths: np.ndarray, num_to_predict: int, rng: np.random.Generator,
                       max_ngram: int = 3) -> list[tuple[int, int]]:
    """Choose spans of whole units to mask; returns (first_unit, n) in the order chosen.

    Visit the units in random order; at unit u draw n in 1..min(max_ngram, units left)
    with p(n) ∝ 1/n; shorten n while the span would overshoot num_to_predict
    tokens; skip the span if it still does, or if it overlaps an earlier span.
    Stop once num_to_predict tokens are chosen.
    """
    n_units = len(unit_lengths)
    cum = [0] + np.cumsum(unit_lengths).tolist()  # tokens in units u..u+n-1 = cum[u+n] - cum[u]
    cdfs = _ngram_cdfs(max_ngram)
    # plain Python lists: this loop runs per unit, where numpy's per-call overhead dominates
    covered = [False] * n_units
    draws = rng.random(n_units).tolist()
    count = 0
    spans: list[tuple[int, int]] = []
    # one draw per unit, so the two have the same length; strict=False only because the loop may stop early
    for u, r in zip(rng.permutation(n_units).tolist(), draws, strict=False):
        if count >= num_to_predict:
            break
        cdf = cdfs[min(max_ngram, n_units - u) - 1]
        n = 1 + min(bisect.bisect_right(cdf, r), len(cdf) - 1)
        while n > 1 and count + cum[u + n] - cum[u] > num_to_predict:
            n -= 1
        size = cum[u + n] - cum[u]
        if count + size > num_to_predict or any(covered[u:u + n]):
            continue
        covered[u:u + n] = [True] * n
        count += size
        spans.append((u, n))
    return spans


def mask_tokens(ids: np.ndarray, rng: np.random.Generator, *, special_ids: Sequence[int], mask_id: int,
                vocab_size: int, word_start: np.ndarray | None = None, masked_lm_prob: float = 0.15,
                max_predictions: int = 20, max_ngram: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """n-gram masking of one sequence.  ids: (T,) -> (masked ids (T,), labels (T,) with -100 where not predicted).

    num_to_predict = min(max_predictions, max(1, round(T * masked_lm_prob))),
    T counting [CLS] and [SEP] as the original does.  Tokens in special_ids are
    never chosen.  Each chosen token: [MASK] with p 0.8, a random non-special
    token with p 0.1, unchanged with p 0.1.
    """
    ids = np.asarray(ids)
    out = ids.astype(np.int64)  # a copy
    labels = np.full(len(ids), -100, dtype=np.int64)
    if masked_lm_prob <= 0:
        return out, labels
    starts, ends = candidate_units(ids, np.isin(ids, special_ids), word_start)
    num_to_predict = min(max_predictions, max(1, int(round(len(ids) * masked_lm_prob))))
    spans = sample_ngram_spans(ends - starts, num_to_predict, rng, max_ngram)
    if not spans:
        return out, labels
    positions = np.concatenate([np.arange(starts[u], ends[u + n - 1]) for u, n in spans])
    positions = positions[~np.isin(ids[positions], special_ids)]  # a span can straddle a [SEP]
    labels[positions] = ids[positions]
    r = rng.random(len(positions))
    out[positions[r < 0.8]] = mask_id
    random_pos = positions[r >= 0.9]
    low = max(special_ids) + 1  # ALBERT's specials are ids 0-4: draw from the ordinary pieces
    out[random_pos] = rng.integers(low, vocab_size, size=len(random_pos))
    return out, labels


# ----------------------------------------------------------------------------- batches


class PretrainingData:
    """Sources -> cached tokens -> deterministic, random-access batches of MLM + SOP (or NSP) examples.

    batch(step, batch_size, split) depends only on (seed, split, step), so a
    resumed run asks for the same batches again by step number.  split is
    "train" or "heldout"; the held-out documents (heldout_fraction of each
    source, chosen by split_seed) never appear in training batches.  In a
    parallel source (OneStopEnglish) whole articles are held out, every
    reading level together, so no rewrite of a held-out article is trained on.

    Each example picks a source with probability ∝ weight (× its token count
    with weight_by_size=True), then a start sentence uniformly among that
    source's sentences that have a successor in their document.  pair_task
    "nsp" draws the random second segments from the other documents of the
    same split (any source), so held-out text never meets training text.
    """

    def __init__(self, sources: Sequence[Source | str | os.PathLike], tokenizer,
                 cache_dir: str | os.PathLike | None = None, *, max_seq_length: int = 128,
                 masked_lm_prob: float = 0.15, max_predictions_per_seq: int = 20, short_seq_prob: float = 0.1,
                 max_ngram: int = 3, whole_word_mask: bool = True, heldout_fraction: float = 0.01,
                 split_seed: int = 12345, seed: int = 0, weight_by_size: bool = False, progress: bool = True,
                 pair_task: str = "sop"):
        if isinstance(tokenizer, (str, os.PathLike, bytes)):
            from .tokenizer import Tokenizer
            tokenizer = Tokenizer(tokenizer)
        if max_seq_length < 5:
            raise ValueError("max_seq_length must be at least 5 ([CLS] a [SEP] b [SEP])")
        if pair_task not in PAIR_TASKS:
            raise ValueError(f"pair_task must be one of {list(PAIR_TASKS)}, not {pair_task!r}")
        self.pair_task = pair_task
        self.tokenizer = tokenizer
        self.sources = [s if isinstance(s, Source) else Source.parse(s) for s in sources]
        if len({s.name for s in self.sources}) != len(self.sources):
            raise ValueError(f"source names must differ: {[s.name for s in self.sources]}")
        self.caches = [build_token_cache(s, tokenizer, cache_dir, progress) for s in self.sources]
        self.max_seq_length = max_seq_length
        self.masked_lm_prob = masked_lm_prob
        self.max_predictions_per_seq = max_predictions_per_seq
        self.short_seq_prob = short_seq_prob
        self.max_ngram = max_ngram
        self.seed = seed
        self.word_start = word_start_table(tokenizer) if whole_word_mask else None
        self.special_ids = (tokenizer.pad_id, tokenizer.unk_id, tokenizer.cls_id, tokenizer.sep_id,
                            tokenizer.mask_id)

        self.heldout = [heldout_documents(document_groups(c, s.parallel), heldout_fraction,
                                          split_seed + zlib.crc32(s.name.encode()))
                        for s, c in zip(self.sources, self.caches, strict=True)]
        self.starts = {split: [eligible_starts(c, held if split == "heldout" else ~held)
                               for c, held in zip(self.caches, self.heldout, strict=True)] for split in SPLITS}
        self.source_probs = {}
        for split in SPLITS:
            w = np.array([s.weight for s in self.sources], dtype=np.float64)
            if weight_by_size:
                w *= [c.num_tokens for c in self.caches]
            w[[len(st) == 0 for st in self.starts[split]]] = 0.0
            self.source_probs[split] = w / w.sum() if w.sum() > 0 else w
        if pair_task == "nsp":
            for split in SPLITS:
                documents = sum(len(np.unique(self._document_of(cache, starts)))
                                for cache, starts, p in zip(self.caches, self.starts[split], self.source_probs[split],
                                                            strict=True) if p > 0)
                if documents == 1:
                    raise ValueError(f"the {split!r} split has one document with two sentences: next-sentence "
                                     "prediction needs another one")

    def _draw_source(self, rng: np.random.Generator, split: str) -> int:
        """A source index, drawn by the split's source probabilities."""
        probs = self.source_probs[split]
        if probs.sum() == 0:
            raise ValueError(f"no document with two sentences in the {split!r} split")
        return min(int(np.searchsorted(np.cumsum(probs), rng.random() * probs.sum(), side="right")), len(probs) - 1)

    @staticmethod
    def _document_of(cache: TokenCache, sentences: np.ndarray | int) -> np.ndarray:
        """The document index of each sentence id."""
        return np.searchsorted(cache.document_offsets, sentences, side="right") - 1

    @staticmethod
    def _sentences(cache: TokenCache, first: int, target: int, min_sentences: int) -> list[np.ndarray]:
        """Consecutive sentences from `first`, until they hold `target` tokens and at least
        `min_sentences` sentences, or their document ends."""
        so = cache.sentence_offsets
        doc_end = int(cache.document_offsets[PretrainingData._document_of(cache, first) + 1])
        sentences, length, i = [], 0, first
        while i < doc_end and (len(sentences) < min_sentences or length < target):
            sentences.append(np.asarray(cache.tokens[so[i]:so[i + 1]]))
            length += len(sentences[-1])
            i += 1
        return sentences

    # -- one example

    def example(self, rng: np.random.Generator, split: str = "train") -> dict[str, np.ndarray]:
        """One unpadded example: input_ids, token_type_ids, mlm_labels (T,), sop_label (the pair task's label)
        and source (ints)."""
        s = self._draw_source(rng, split)
        cache, starts = self.caches[s], self.starts[split][s]
        max_num_tokens = self.max_seq_length - 3
        target = max_num_tokens
        if rng.random() < self.short_seq_prob:
            target = int(rng.integers(2, max_num_tokens + 1))

        first = int(starts[rng.integers(len(starts))])
        chunk = self._sentences(cache, first, target, min_sentences=2)
        if self.pair_task == "sop":
            a, b, sop = make_sentence_pair(chunk, rng, max_num_tokens)
        else:
            document = (s, self._document_of(cache, first))

            def random_next(length: int) -> list[np.ndarray]:
                while True:     # the constructor made sure that another document exists
                    other_source = self._draw_source(rng, split)
                    other_starts = self.starts[split][other_source]
                    other = int(other_starts[rng.integers(len(other_starts))])
                    if (other_source, self._document_of(self.caches[other_source], other)) != document:
                        return self._sentences(self.caches[other_source], other, length, min_sentences=1)

            a, b, sop = make_next_sentence_pair(chunk, random_next, rng, max_num_tokens, target)

        tok = self.tokenizer
        ids = np.concatenate([[tok.cls_id], a, [tok.sep_id], b, [tok.sep_id]]).astype(np.int64)
        token_type = np.zeros(len(ids), dtype=np.int64)
        token_type[len(a) + 2:] = 1
        masked, labels = mask_tokens(ids, rng, special_ids=self.special_ids, mask_id=tok.mask_id,
                                     vocab_size=tok.vocab_size, word_start=self.word_start,
                                     masked_lm_prob=self.masked_lm_prob,
                                     max_predictions=self.max_predictions_per_seq, max_ngram=self.max_ngram)
        return {"input_ids": masked, "token_type_ids": token_type, "mlm_labels": labels, "sop_label": sop,
                "source": s}

    # -- batches

    def batch(self, step: int, batch_size: int, split: str = "train") -> dict[str, np.ndarray]:
        """Batch number `step` of `split`.

        input_ids, token_type_ids, attention_mask, mlm_labels: (B, T) int64; sop_labels: (B,) int64.
        """
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, not {split!r}")
        rng = np.random.default_rng([self.seed, SPLITS[split], step])
        B, T = batch_size, self.max_seq_length
        out = {"input_ids": np.zeros((B, T), np.int64), "token_type_ids": np.zeros((B, T), np.int64),
               "attention_mask": np.zeros((B, T), np.int64), "mlm_labels": np.full((B, T), -100, np.int64),
               "sop_labels": np.zeros(B, np.int64)}
        for r in range(B):
            ex = self.example(rng, split)
            n = len(ex["input_ids"])
            out["input_ids"][r, :n] = ex["input_ids"]
            out["token_type_ids"][r, :n] = ex["token_type_ids"]
            out["attention_mask"][r, :n] = 1
            out["mlm_labels"][r, :n] = ex["mlm_labels"]
            out["sop_labels"][r] = ex["sop_label"]
        return out

    def batches(self, batch_size: int, start: int = 0, stop: int | None = None,
                split: str = "train") -> Iterator[dict[str, np.ndarray]]:
        """batch(step) for step = start, start+1, ... (forever if stop is None)."""
        step = start
        while stop is None or step < stop:
            yield self.batch(step, batch_size, split)
            step += 1

    def summary(self) -> str:
        """One line per source: documents, sentences, tokens, held-out documents, sampling probability."""
        lines = []
        for i, (s, c, held) in enumerate(zip(self.sources, self.caches, self.heldout, strict=True)):
            lines.append(f"{s.name:>16}: {c.num_documents:7d} docs {c.num_sentences:9d} sentences "
                         f"{c.num_tokens:11d} tokens  held out {int(held.sum()):5d} docs  "
                         f"p(train)={self.source_probs['train'][i]:.3f}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    """python -m tinyalbert.data SOURCE[:WEIGHT] ... --vocab MODEL: build the caches, show examples, time batches."""
    ap = argparse.ArgumentParser(prog="python -m tinyalbert.data", description=main.__doc__)
    ap.add_argument("sources", nargs="+", help="folder or file, optionally with :weight (default 1)")
    ap.add_argument("--vocab", required=True, help="SentencePiece .model file")
    ap.add_argument("--cache-dir", default=None, help=f"default: {default_cache_dir()}")
    ap.add_argument("--max-seq-length", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--benchmark", type=int, default=20, help="number of batches to time")
    ap.add_argument("--show", type=int, default=2, help="number of examples to print")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weight-by-size", action="store_true",
                    help="sample a source with probability ∝ weight × its size (default: ∝ weight)")
    args = ap.parse_args(argv)
    for spec in args.sources:
        if not Path(Source.parse(spec).paths[0]).exists():
            print(f"error: no such file or folder: {Source.parse(spec).paths[0]}", file=sys.stderr)
            return 2
    if not Path(args.vocab).is_file():
        print(f"error: no such vocabulary file: {args.vocab}", file=sys.stderr)
        return 2
    from .tokenizer import Tokenizer
    tok = Tokenizer(args.vocab)
    data = PretrainingData(args.sources, tok, args.cache_dir, max_seq_length=args.max_seq_length, seed=args.seed,
                           weight_by_size=args.weight_by_size)
    print(data.summary())
    b = data.batch(0, max(args.show, 1))
    for r in range(args.show):
        n = int(b["attention_mask"][r].sum())
        print(f"\nsop_label={b['sop_labels'][r]}  {tok.decode(b['input_ids'][r, :n], skip_special_tokens=False)}")
    t0 = time.perf_counter()
    n_tokens = 0
    for batch in data.batches(args.batch_size, start=1, stop=1 + args.benchmark):
        n_tokens += int(batch["attention_mask"].sum())
    dt = time.perf_counter() - t0
    n_ex = args.batch_size * args.benchmark
    print(f"\n{n_ex} examples in {dt:.2f} s: {n_ex / dt:.0f} examples/s, {n_tokens / dt:.0f} tokens/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
