"""tinyalbert.data (and the vocabulary trainer): text reading, caching, SOP and NSP pairs, n-gram masking, batches."""
import math
import random

import numpy as np
import pytest

from tinyalbert import vocab
from tinyalbert.data import (
    PretrainingData,
    Source,
    TokenCache,
    build_token_cache,
    candidate_units,
    document_groups,
    heldout_documents,
    make_next_sentence_pair,
    make_sentence_pair,
    mask_tokens,
    read_documents,
    sample_ngram_spans,
    split_sentences,
    truncate_seq_pair,
)
from tinyalbert.tokenizer import ALBERT_VOCAB, Tokenizer

SPECIAL = (0, 1, 2, 3, 4)
CLS, SEP, MASK = 2, 3, 4

WORDS = ("cat dog girl boy mom park shop milk ball tree house river kaleidoscope photosynthesis "
         "unbelievably marmalade hippopotamus went saw found liked wanted big small red happy "
         "quickly slowly").split()


def fake_sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(3, 14))]
    return " ".join(words).capitalize() + rng.choice([".", ".", ".", "!", "?"])


def fake_paragraph(rng):
    return " ".join(fake_sentence(rng) for _ in range(rng.randint(1, 4)))


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer(ALBERT_VOCAB)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Two sources: 'stories' (blank-line separated documents in 2 files) and 'books' (one document per file)."""
    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    (root / "stories").mkdir()
    for f in range(2):
        docs = ["\n".join(fake_paragraph(rng) for _ in range(rng.randint(1, 6))) for _ in range(40)]
        (root / "stories" / f"s{f}.txt").write_text("\n\n".join(docs) + "\n")
    (root / "books").mkdir()
    for f in range(3):
        (root / "books" / f"b{f}.txt").write_text("\n".join(fake_paragraph(rng) for _ in range(80)) + "\n")
    (root / "books" / "MANIFEST.tsv").write_text("not text\n")
    return root


@pytest.fixture(scope="module")
def data(corpus, tokenizer, tmp_path_factory):
    sources = [Source("stories", [corpus / "stories"], weight=3.0), Source("books", [corpus / "books"], weight=1.0)]
    return PretrainingData(sources, tokenizer, tmp_path_factory.mktemp("cache"), max_seq_length=64,
                           heldout_fraction=0.1, seed=7, progress=False)


# ----------------------------------------------------------------------------- text


def test_split_sentences():
    assert split_sentences('"Ouch!" she said. "The water is hot!" Tom came.') == \
        ['"Ouch!" she said.', '"The water is hot!"', "Tom came."]
    assert split_sentences("Mr. Smith met Dr. J. K. Rowling in St. Ives, e.g. on Jan. 5. He left at No. 10.") == \
        ["Mr. Smith met Dr. J. K. Rowling in St. Ives, e.g. on Jan. 5.", "He left at No. 10."]
    assert split_sentences("Wait... What?! (It rained.) 1999 was dry.") == \
        ["Wait...", "What?!", "(It rained.)", "1999 was dry."]
    assert split_sentences("no end here") == ["no end here"]


def test_read_documents(tmp_path):
    p = tmp_path / "x.txt"
    p.write_text("a b.\nc d.\n\n\ne f.\n")
    assert list(read_documents(p)) == [["a b.", "c d."], ["e f."]]
    assert list(read_documents(p, one_doc_per_file=True)) == [["a b.", "c d.", "e f."]]


# ----------------------------------------------------------------------------- cache


def test_cache_matches_tokenizer_and_is_reused(data, corpus, tokenizer, tmp_path):
    cache = data.caches[0]
    assert cache.num_documents == 80 and cache.tokens.dtype == np.uint16
    # document 0 = first document of s0.txt, sentence by sentence
    first_doc = next(read_documents(corpus / "stories" / "s0.txt"))
    sentences = [s for para in first_doc for s in split_sentences(para)]
    assert cache.document_offsets[1] == len(sentences)
    for i, s in enumerate(sentences):
        assert cache.sentence(i).tolist() == tokenizer.encode(s, add_special_tokens=False)
    books = data.caches[1]
    assert books.num_documents == 3  # one per .txt file; MANIFEST.tsv ignored
    again = build_token_cache(data.sources[0], tokenizer, cache.path.parent, progress=False)
    assert again.path == cache.path and isinstance(again, TokenCache)
    assert not list(cache.path.parent.glob("*.tmp-*"))


def test_heldout_documents_never_in_training(data):
    for cache, held, starts in zip(data.caches, data.heldout, data.starts["train"], strict=True):
        assert 1 <= held.sum() < cache.num_documents
        docs = np.searchsorted(cache.document_offsets, starts, side="right") - 1
        assert not held[docs].any()
        hdocs = np.searchsorted(cache.document_offsets, data.starts["heldout"][data.caches.index(cache)],
                                side="right") - 1
        assert held[hdocs].all()
    b = data.batch(0, 4, split="heldout")
    assert b["input_ids"].shape == (4, 64)


def test_heldout_split_keeps_an_articles_rewrites_together(tokenizer, tmp_path):
    """A parallel source (document k of every file is one article at another reading level) is held out by
    article: every level of a held-out article is held out, and no level of a training article is."""
    rng = random.Random(1)
    folder = tmp_path / "onestopenglish"
    folder.mkdir()
    articles = 30
    for level in ("elementary", "intermediate", "advanced"):
        docs = ["\n".join(fake_paragraph(rng) for _ in range(3)) for _ in range(articles)]
        (folder / f"onestop_{level}_000.txt").write_text("\n\n".join(docs) + "\n")
    source = Source.parse(str(folder))
    assert source.parallel and not Source.parse(str(tmp_path)).parallel
    data = PretrainingData([source], tokenizer, tmp_path / "cache", max_seq_length=64, heldout_fraction=0.2,
                           progress=False)
    cache, held = data.caches[0], data.heldout[0]
    positions = np.asarray(cache.document_positions)
    assert positions.tolist() == 3 * list(range(articles))
    held_articles = set(positions[held].tolist())
    assert len(held_articles) == round(0.2 * articles)
    assert held.sum() == 3 * len(held_articles)           # all three levels of each held-out article
    assert not held_articles & set(positions[~held].tolist())


def test_heldout_documents_one_group_per_document_is_a_document_split():
    groups = np.arange(50)
    held = heldout_documents(groups, 0.1, seed=3)
    assert held.sum() == 5
    assert (heldout_documents(groups, 0.1, seed=3) == held).all()
    assert not heldout_documents(groups, 0.0, seed=3).any()
    assert heldout_documents(np.zeros(4, np.int64), 0.5, seed=3).sum() == 0  # one group: nothing can be held out
    assert heldout_documents(np.array([0, 1]), 0.9, seed=3).sum() == 1       # never all


def test_document_groups(data):
    cache = data.caches[0]
    assert (document_groups(cache, parallel=False) == np.arange(cache.num_documents)).all()
    assert document_groups(cache, parallel=True).max() < cache.num_documents


# ----------------------------------------------------------------------------- pairs


def test_sentence_pair_order_and_label():
    rng = np.random.default_rng(0)
    chunk = [np.arange(0, 5), np.arange(5, 12), np.arange(12, 20)]
    labels = []
    for _ in range(2000):
        a, b, label = make_sentence_pair(chunk, rng, max_num_tokens=100)
        assert len(a) + len(b) == 20 and len(a) in (5, 8, 12, 15)  # cut at a sentence boundary
        assert (a.max() < b.min()) if label == 0 else (a.min() > b.max())
        labels.append(label)
    assert abs(np.mean(labels) - 0.5) < 4 * math.sqrt(0.25 / 2000)


def test_next_sentence_pair_continuation_or_another_document():
    rng = np.random.default_rng(0)
    chunk = [np.arange(0, 5), np.arange(5, 12), np.arange(12, 20)]
    asked = []

    def random_next(length):          # "another document": ids from 1000 on, about `length` of them
        asked.append(length)
        return [np.arange(1000, 1000 + length)]

    labels = []
    for _ in range(2000):
        a, b, label = make_next_sentence_pair(chunk, random_next, rng, max_num_tokens=100, target=30)
        assert len(a) in (5, 12) and np.array_equal(a, np.arange(len(a)))   # A: the chunk's first sentences
        if label == 0:
            assert np.array_equal(b, np.arange(len(a), 20))                 # B: the rest of the chunk, in order
        else:
            assert b.min() >= 1000 and len(b) == asked[-1] == 30 - len(a)   # B: the other document's text
        labels.append(label)
    assert abs(np.mean(labels) - 0.5) < 4 * math.sqrt(0.25 / 2000)
    assert len(asked) == sum(labels)
    a, b, _ = make_next_sentence_pair(chunk, random_next, rng, max_num_tokens=10, target=30)
    assert len(a) + len(b) <= 10                                            # trimmed like an SOP pair
    with pytest.raises(ValueError, match="two sentences"):
        make_next_sentence_pair(chunk[:1], random_next, rng, 100, 30)


def test_truncate_seq_pair():
    rng = np.random.default_rng(1)
    fronts = backs = 0
    for _ in range(200):
        a, b = truncate_seq_pair(np.arange(50), np.arange(100, 110), 30, rng)
        assert len(a) + len(b) == 30 and len(a) == 20 and len(b) == 10  # only the longer one is cut
        assert np.array_equal(a, np.arange(a[0], a[0] + 20))           # a contiguous slice
        fronts += a[0] > 0
        backs += a[-1] < 49
    assert fronts > 150 and backs > 150  # cut from both ends
    a, b = truncate_seq_pair(np.arange(7), np.arange(7), 4, rng)
    assert len(a) == 2 and len(b) == 2


# ----------------------------------------------------------------------------- masking


def random_sequences(n, rng):
    for _ in range(n):
        la, lb = rng.integers(1, 80, size=2)
        yield np.concatenate([[CLS], rng.integers(5, 30000, la), [SEP], rng.integers(5, 30000, lb), [SEP]])


def test_masking_statistics():
    rng = np.random.default_rng(2)
    n_pred = n_candidates = n_mask = n_kept = n_random = 0
    for ids in random_sequences(3000, rng):
        out, labels = mask_tokens(ids, rng, special_ids=SPECIAL, mask_id=MASK, vocab_size=30000)
        T = len(ids)
        chosen = labels != -100
        budget = min(20, max(1, round(0.15 * T)))
        assert 1 <= chosen.sum() <= budget
        assert not chosen[np.isin(ids, SPECIAL)].any()           # [CLS]/[SEP] never predicted ...
        assert np.array_equal(out[np.isin(ids, SPECIAL)], ids[np.isin(ids, SPECIAL)])  # ... nor changed
        assert np.array_equal(labels[chosen], ids[chosen])
        assert np.array_equal(out[~chosen], ids[~chosen])
        if budget < 20:  # the cap does not bind: ~15 % of the tokens
            n_pred += chosen.sum()
            n_candidates += T
        n_mask += (out[chosen] == MASK).sum()
        n_kept += (out[chosen] == ids[chosen]).sum()
        n_random += ((out[chosen] != MASK) & (out[chosen] != ids[chosen])).sum()
        assert (out[chosen][out[chosen] != MASK] >= 5).all()       # random tokens are ordinary pieces
    assert 0.14 < n_pred / n_candidates < 0.152
    total = n_mask + n_kept + n_random
    for count, p in ((n_mask, 0.8), (n_kept, 0.1), (n_random, 0.1)):
        assert abs(count / total - p) < 4 * math.sqrt(p * (1 - p) / total), (count, total, p)


def test_cap_of_20_predictions():
    rng = np.random.default_rng(3)
    ids = np.concatenate([[CLS], rng.integers(5, 30000, 300), [SEP], rng.integers(5, 30000, 200), [SEP]])
    for _ in range(50):
        _, labels = mask_tokens(ids, rng, special_ids=SPECIAL, mask_id=MASK, vocab_size=30000)
        assert (labels != -100).sum() == 20


def test_ngram_length_distribution():
    """p(n) ∝ 1/n for n <= 3: 6/11, 3/11, 2/11.

    The first span of a sequence is never shortened (budget 20 >= 3) nor rejected
    (nothing is covered yet); it is only cut when it starts within 2 units of the
    end, so those are left out.  Later spans are biased towards short n by the
    overlap rule, so for all spans only the ordering is checked.
    """
    rng = np.random.default_rng(4)
    first = np.zeros(4)
    every = np.zeros(4)
    for _ in range(6000):
        spans = sample_ngram_spans(np.ones(100, dtype=np.int64), 20, rng)
        assert 0 < sum(n for _, n in spans) <= 20
        u, n = spans[0]
        if u < 98:
            first[n] += 1
        for _, n in spans:
            every[n] += 1
    total = first.sum()
    for n, p in ((1, 6 / 11), (2, 3 / 11), (3, 2 / 11)):
        assert abs(first[n] / total - p) < 4 * math.sqrt(p * (1 - p) / total), (n, first)
    assert every[1] > every[2] > every[3] > 0


def test_spans_are_whole_words(tokenizer):
    from tinyalbert.data import word_start_table
    ws = word_start_table(tokenizer)
    assert ws[tokenizer.piece_to_id("\u2581the")] and ws[tokenizer.piece_to_id(".")]
    text = "the hippopotamus ate unbelievably photosynthesis marmalade near the kaleidoscope"
    ids = np.array([CLS] + tokenizer.encode(text, add_special_tokens=False) + [SEP])
    starts, ends = candidate_units(ids, np.isin(ids, SPECIAL), ws)
    assert len(starts) == len(text.split()) and (ends - starts).max() > 1
    rng = np.random.default_rng(5)
    for _ in range(300):
        _, labels = mask_tokens(ids, rng, special_ids=SPECIAL, mask_id=MASK, vocab_size=30000, word_start=ws,
                                masked_lm_prob=0.3)
        chosen = labels != -100
        for s, e in zip(starts, ends, strict=True):
            assert chosen[s:e].all() or not chosen[s:e].any()  # a word is masked whole or not at all


# ----------------------------------------------------------------------------- batches


def check_batch(b, T):
    B = len(b["sop_labels"])
    for k in ("input_ids", "token_type_ids", "attention_mask", "mlm_labels"):
        assert b[k].shape == (B, T) and b[k].dtype == np.int64, k
    assert b["sop_labels"].dtype == np.int64 and set(np.unique(b["sop_labels"])) <= {0, 1}
    for r in range(B):
        n = int(b["attention_mask"][r].sum())
        assert 5 <= n <= T and b["attention_mask"][r, :n].all()
        ids, tt, lab = b["input_ids"][r], b["token_type_ids"][r], b["mlm_labels"][r]
        assert (ids[n:] == 0).all() and (tt[n:] == 0).all() and (lab[n:] == -100).all()
        seps = np.flatnonzero(ids[:n] == SEP)
        assert ids[0] == CLS and len(seps) == 2 and seps[1] == n - 1 and seps[0] >= 2
        assert (tt[:seps[0] + 1] == 0).all() and (tt[seps[0] + 1:n] == 1).all()
        assert (lab[[0, seps[0], n - 1]] == -100).all()
        assert 1 <= (lab != -100).sum() <= min(20, round(0.15 * n))


def test_batches(data):
    for step in range(3):
        check_batch(data.batch(step, 16), 64)


def test_determinism(data, corpus, tokenizer):
    b1, b2 = data.batch(5, 8), data.batch(5, 8)
    assert all(np.array_equal(b1[k], b2[k]) for k in b1)
    assert not np.array_equal(data.batch(6, 8)["input_ids"], b1["input_ids"])
    same = PretrainingData(data.sources, tokenizer, data.caches[0].path.parent, max_seq_length=64,
                           heldout_fraction=0.1, seed=7, progress=False)
    b3 = same.batch(5, 8)
    assert all(np.array_equal(b1[k], b3[k]) for k in b1)
    other = PretrainingData(data.sources, tokenizer, data.caches[0].path.parent, max_seq_length=64,
                            heldout_fraction=0.1, seed=8, progress=False)
    assert not np.array_equal(other.batch(5, 8)["input_ids"], b1["input_ids"])


def test_sop_balance_and_source_weights(data):
    rng = np.random.default_rng(9)
    n = 1500
    examples = [data.example(rng) for _ in range(n)]
    sop = np.mean([e["sop_label"] for e in examples])
    assert abs(sop - 0.5) < 4 * math.sqrt(0.25 / n)
    from_stories = np.mean([e["source"] == 0 for e in examples])  # weights 3 : 1
    assert abs(from_stories - 0.75) < 4 * math.sqrt(0.75 * 0.25 / n)
    lengths = np.array([len(e["input_ids"]) for e in examples])
    assert lengths.max() <= 64
    assert 0.03 < np.mean(lengths < 40) < 0.3  # short_seq_prob 0.1 gives some short examples


NAMES = ("otter", "badger", "falcon", "walrus", "beaver", "heron", "lizard", "panda", "salmon", "turtle")


def test_nsp_batches_pair_a_document_with_itself_or_another(tmp_path, tokenizer):
    """Each document names one animal in every sentence: label 0 pairs share it, label 1 pairs do not."""
    docs = ["\n".join(f"The {name} ran far. The {name} ate a plum. Then the {name} slept." for _ in range(2))
            for name in NAMES]
    (tmp_path / "zoo").mkdir()
    (tmp_path / "zoo" / "zoo.txt").write_text("\n\n".join(docs) + "\n")
    data = PretrainingData([tmp_path / "zoo"], tokenizer, tmp_path / "cache", max_seq_length=64, masked_lm_prob=0,
                           heldout_fraction=0.2, seed=3, progress=False, pair_task="nsp")
    held_out_names = {name for name, held in zip(NAMES, data.heldout[0], strict=True) if held}
    labels = []
    for split in ("train", "heldout"):
        b = data.batch(0, 64, split)
        for ids, types, label in zip(b["input_ids"], b["token_type_ids"], b["sop_labels"], strict=True):
            text_a = tokenizer.decode(ids[types == 0])
            text_b = tokenizer.decode(ids[(types == 1) & (ids != SEP)])
            names_a = {n for n in NAMES if n in text_a}
            names_b = {n for n in NAMES if n in text_b}
            assert len(names_a) == 1 and len(names_b) <= 1
            assert (names_a | names_b <= held_out_names) if split == "heldout" else not names_a & held_out_names
            if names_b:           # B may be trimmed to a few tokens without the name
                assert (names_a == names_b) == (label == 0), (text_a, text_b, label)
            labels.append(label)
    assert 0.3 < np.mean(labels) < 0.7


def test_pair_task_checks(tmp_path, data, tokenizer):
    with pytest.raises(ValueError, match="pair_task"):
        PretrainingData(data.sources, tokenizer, data.caches[0].path.parent, pair_task="order")
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "a.txt").write_text("The cat sat. The dog ran.\n\nThe hen slept. The cow ate.\n")
    with pytest.raises(ValueError, match="another one"):   # one document per split: no other to pair with
        PretrainingData([tmp_path / "one"], tokenizer, tmp_path / "cache", heldout_fraction=0.5, progress=False,
                        pair_task="nsp")
    sop = PretrainingData(data.sources, tokenizer, data.caches[0].path.parent, max_seq_length=64,
                          heldout_fraction=0.1, seed=7, progress=False, pair_task="sop")
    b1, b2 = data.batch(4, 8), sop.batch(4, 8)      # "sop" is the default
    assert all(np.array_equal(b1[k], b2[k]) for k in b1)


# ----------------------------------------------------------------------------- vocabulary trainer


def test_vocab_cli_missing_input(tmp_path, capsys):
    assert vocab.main([str(tmp_path / "nope"), "-o", str(tmp_path / "v.model")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not found" in err
    assert not (tmp_path / "v.model").exists()


def test_train_vocab_special_pieces(corpus, tmp_path):
    import sentencepiece as spm
    out = vocab.train_vocab([corpus], tmp_path / "v.model", vocab_size=60, progress=False)
    sp = spm.SentencePieceProcessor(model_file=str(out))
    assert [sp.id_to_piece(i) for i in range(13)] == ["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]",
                                                     "(", ")", '"', "-", ".", "\u2013", "\u00a3", "\u20ac"]
    assert [sp.is_control(i) for i in range(5)] == [True, False, True, True, True] and sp.is_unknown(1)
    assert sp.get_piece_size() == 60
    assert all(p == p.lower() for p in (sp.id_to_piece(i) for i in range(13, 60)))  # trained on lowercased text
