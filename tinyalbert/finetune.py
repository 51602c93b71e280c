"""Fine-tune ALBERT for sequence classification: `python -m tinyalbert.finetune`.

    python -m tinyalbert.finetune --out runs/which-source.h5
        the built-in task: which corpus does a sentence come from (tinystories, wikinews or gutenberg)?
    python -m tinyalbert.finetune --train train.tsv --test test.tsv --out runs/my-classifier.h5
        your own data: one example per line, text<TAB>label (or a .csv file with the columns text,label)

The pretrained encoder and pooler are copied from a tinyalbert weights file (--weights; by default
$TINYALBERT_WEIGHTS, else the bundled small model), a new `classifier` layer is added
(classifier.py), and every parameter is trained with AdamW, a linear warm-up and decay, and
gradient clipping.  After training the script reports accuracy on the test split, against the
majority-class baseline, and writes the classifier atomically (classifier.save_classifier).

The built-in task is split by DOCUMENT: every story, article or book goes wholly to the training
side or wholly to the test side, never both.  Splitting sentences at random would put sentences
of the same story on both sides, and the test would partly measure how well the model remembers
names and topics of documents it has already seen.  Two sources need more than that:
OneStopEnglish has each article at three reading levels (the three versions count as one
document), and Gutenberg has a few books twice (a "Part 1" beside the complete book), so its books
are split by author.  Finally, any test sentence that also occurs among the training sentences is
dropped.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .cli import CommandErrors, OneLineParser
from .data import PARALLEL_SOURCES
from .tuning import limit_threads, tune_process

DEFAULT_SOURCES = ("tinystories", "wikinews", "gutenberg")


class FinetuneError(ValueError):
    """Bad input for fine-tuning; the message is one line naming the problem."""


# ---------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------
@dataclass
class LabelledTexts:
    """Texts with integer labels; label_names[i] names class i.  documents: where each text came from."""

    texts: list[str]
    labels: np.ndarray                      # (N,) int64
    label_names: list[str]
    documents: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.texts)

    def counts(self) -> dict[str, int]:
        return {name: int((self.labels == i).sum()) for i, name in enumerate(self.label_names)}


def default_corpus_dir() -> Path:
    """$TINYALBERT_CORPUS, else the corpus sample installed with the package (tinyalbert.data.SAMPLE_CORPUS)."""
    from .data import SAMPLE_CORPUS

    env = os.environ.get("TINYALBERT_CORPUS")
    return Path(env) if env else SAMPLE_CORPUS


def default_weights() -> Path:
    """$TINYALBERT_WEIGHTS, else the bundled small model (never the xxlarge file: far too slow to fine-tune here)."""
    env = os.environ.get("TINYALBERT_WEIGHTS")
    if env:
        return Path(env)
    from .predict import BUNDLED_MODEL_NAME
    return Path(__file__).resolve().parent / "data" / BUNDLED_MODEL_NAME


def _candidate_sentences(paragraphs: list[str], rng: np.random.Generator, per_doc: int, min_words: int,
                         max_words: int) -> list[str]:
    """Up to per_doc distinct sentences of min_words..max_words words, from random paragraphs of one document."""
    from .data import split_sentences

    found: list[str] = []
    for k in rng.permutation(len(paragraphs))[:2 * per_doc]:
        found.extend(s for s in split_sentences(paragraphs[k]) if min_words <= len(s.split()) <= max_words)
    found = list(dict.fromkeys(found))          # a sentence repeated in a document counts once
    return [found[i] for i in rng.permutation(len(found))[:per_doc]]


def _read_source(folder: Path, name: str, num_documents: int, rng: np.random.Generator, per_doc: int,
                 min_words: int, max_words: int) -> list[tuple[str, str, list[str]]]:
    """(document id, group id, sentences) for about num_documents documents of one source.

    Files are visited in random order and read document by document until enough documents have
    sentences; a Gutenberg file is one book, so one document.  The group id is what the train/test
    split keeps together: the document itself; for parallel sources its position in the file; and
    for a folder with a MANIFEST.tsv (Gutenberg) the author, because some books are there twice
    (a "Part 1" beside the complete book) and an author's books share names and places.
    """
    from .data import read_documents

    files = sorted(folder.glob("*.txt"))
    if not files:
        raise FinetuneError(f"no .txt files in {folder}")
    authors = _authors(folder)
    docs = []
    for f in (files[i] for i in rng.permutation(len(files))):
        for k, paragraphs in enumerate(read_documents(f)):
            sentences = _candidate_sentences(paragraphs, rng, per_doc, min_words, max_words)
            if sentences:
                if name in PARALLEL_SOURCES:
                    group = f"{name}#{k}"
                elif f.name in authors:
                    group = f"{name}/author:{authors[f.name]}"
                else:
                    group = f"{name}/{f.stem}#{k}"
                docs.append((f"{name}/{f.stem}#{k}", group, sentences))
            if len(docs) >= num_documents and name not in PARALLEL_SOURCES:
                return docs
        if name in PARALLEL_SOURCES and len(docs) >= num_documents:
            break   # keep whole files, so that every level of an article is in
    return docs


def _authors(folder: Path) -> dict[str, str]:
    """file name -> author key from the folder's MANIFEST.tsv (columns `file` and `source_path_in_repo`,
    whose first component is one folder per author), or {} when there is none."""
    manifest = folder / "MANIFEST.tsv"
    if not manifest.is_file():
        return {}
    with open(manifest, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    return {r["file"]: r["source_path_in_repo"].split("/")[0] for r in rows
            if r.get("file") and r.get("source_path_in_repo")}


def _round_robin(docs: list[tuple[str, str, list[str]]], n: int,
                 rng: np.random.Generator) -> list[tuple[str, str]]:
    """n (sentence, document id) pairs taken one per document in turn, so documents contribute evenly."""
    order = [docs[i] for i in rng.permutation(len(docs))]
    picked: list[tuple[str, str]] = []
    depth = 0
    while len(picked) < n:
        added = False
        for doc_id, _, sentences in order:
            if depth < len(sentences):
                picked.append((sentences[depth], doc_id))
                added = True
                if len(picked) == n:
                    break
        if not added:
            break
        depth += 1
    return picked


def build_source_task(corpus_dir: str | os.PathLike | None = None, sources: Sequence[str] = DEFAULT_SOURCES,
                      train_per_class: int = 200, test_per_class: int = 100, test_fraction: float = 0.25,
                      documents_per_source: int = 60, sentences_per_document: int = 8, min_words: int = 6,
                      max_words: int = 40, seed: int = 0) -> tuple[LabelledTexts, LabelledTexts]:
    """The "which source is this sentence from?" task, split by document: (train, test).

    For each source, about documents_per_source documents are read; test_fraction of them (by group,
    see PARALLEL_SOURCES) go to the test side.  Each side then takes its sentences one per document in
    turn, up to train_per_class / test_per_class per class (fewer when the documents run out).
    """
    corpus = Path(corpus_dir) if corpus_dir is not None else default_corpus_dir()
    if not corpus.is_dir():
        raise FinetuneError(f"corpus folder not found: {corpus} (set --corpus or $TINYALBERT_CORPUS)")
    if len(sources) < 2:
        raise FinetuneError(f"the source task needs at least 2 sources, got {list(sources)}")
    if len(set(sources)) != len(sources):
        raise FinetuneError(f"sources must differ: {list(sources)}")
    if not 0.0 < test_fraction < 1.0:
        raise FinetuneError(f"test fraction must be between 0 and 1, got {test_fraction}")
    sides: dict[str, tuple[list, list, list]] = {"train": ([], [], []), "test": ([], [], [])}
    for label, name in enumerate(sources):
        folder = corpus / name
        if not folder.is_dir():
            known = sorted(p.name for p in corpus.iterdir() if p.is_dir())
            raise FinetuneError(f"no source {name!r} in {corpus} (found: {', '.join(known)})")
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        docs = _read_source(folder, name, documents_per_source, rng, sentences_per_document, min_words, max_words)
        groups = sorted({g for _, g, _ in docs})
        if len(groups) < 2:
            raise FinetuneError(f"source {name!r} has fewer than 2 usable documents")
        n_test = min(len(groups) - 1, max(1, round(test_fraction * len(groups))))
        test_groups = {groups[i] for i in rng.permutation(len(groups))[:n_test]}
        for side, wanted in (("train", train_per_class), ("test", test_per_class)):
            chosen = [d for d in docs if (d[1] in test_groups) == (side == "test")]
            texts, labels, documents = sides[side]
            for sentence, doc_id in _round_robin(chosen, wanted, rng):
                texts.append(sentence)
                labels.append(label)
                documents.append(doc_id)
    # Last guard against leaks: a sentence that also occurs on the training side (boilerplate lines,
    # a book present twice) is dropped from the test side.
    seen = set(sides["train"][0])
    keep = [i for i, t in enumerate(sides["test"][0]) if t not in seen]
    sides["test"] = tuple([col[i] for i in keep] for col in sides["test"])
    out = []
    for side in ("train", "test"):
        texts, labels, documents = sides[side]
        order = np.random.default_rng([seed, len(side)]).permutation(len(texts))   # mix the classes
        out.append(LabelledTexts([texts[i] for i in order], np.asarray(labels, np.int64)[order], list(sources),
                                 [documents[i] for i in order]))
    return out[0], out[1]


def read_labelled_file(path: str | os.PathLike,
                       label_names: Sequence[str] | None = None) -> LabelledTexts:
    """Read text<TAB>label lines (or a .csv with columns text,label; a header row text,label is skipped).

    label_names: the known classes (for a test file: those of the training file); None collects them
    from this file, sorted.  Raises FinetuneError naming the file and line of the first problem.
    """
    path = Path(path)
    if not path.is_file():
        raise FinetuneError(f"no such file: {path}")
    rows: list[tuple[str, str]] = []
    try:
        with open(path, encoding="utf-8", newline="") as f:
            if path.suffix.lower() == ".csv":
                for n, row in enumerate(csv.reader(f), start=1):
                    if not row or not any(c.strip() for c in row):
                        continue
                    if len(row) != 2:
                        raise FinetuneError(f"{path}:{n}: expected 2 columns (text,label), found {len(row)}")
                    rows.append((row[0].strip(), row[1].strip()))
            else:
                for n, line in enumerate(f, start=1):
                    line = line.rstrip("\r\n")
                    if not line.strip():
                        continue
                    if "\t" not in line:
                        raise FinetuneError(f"{path}:{n}: no tab: each line must be text<TAB>label")
                    text, label = line.rsplit("\t", 1)
                    rows.append((text.strip(), label.strip()))
    except UnicodeDecodeError as e:
        raise FinetuneError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    if rows and rows[0][0].lower() == "text" and rows[0][1].lower() == "label":
        rows = rows[1:]
    for n, (text, label) in enumerate(rows, start=1):
        if not text or not label:
            raise FinetuneError(f"{path}: example {n} has an empty {'text' if not text else 'label'}")
    if not rows:
        raise FinetuneError(f"{path} holds no examples")
    names = sorted({label for _, label in rows}) if label_names is None else list(label_names)
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted({label for _, label in rows if label not in index})
    if unknown:
        raise FinetuneError(f"{path}: label(s) {', '.join(map(repr, unknown[:5]))} do not occur in the training data")
    return LabelledTexts([t for t, _ in rows], np.asarray([index[lab] for _, lab in rows], np.int64), names,
                         [f"{path.name}:{i + 1}" for i in range(len(rows))])


def split_examples(data: LabelledTexts, test_fraction: float, seed: int = 0) -> tuple[LabelledTexts, LabelledTexts]:
    """A random split by example (use a separate --test file if examples share documents)."""
    if not 0.0 < test_fraction < 1.0:
        raise FinetuneError(f"--test-fraction must be between 0 and 1, got {test_fraction}")
    order = np.random.default_rng(seed).permutation(len(data))
    n_test = int(round(test_fraction * len(data)))
    if n_test < 1 or n_test >= len(data):
        raise FinetuneError(f"{len(data)} examples are too few to hold out {test_fraction:.0%} for testing")

    def take(idx):
        return LabelledTexts([data.texts[i] for i in idx], data.labels[idx], data.label_names,
                             [data.documents[i] for i in idx] if data.documents else [])
    return take(order[n_test:]), take(order[:n_test])


# ---------------------------------------------------------------------------------------------------
# batches, training, evaluation
# ---------------------------------------------------------------------------------------------------
def encode_texts(tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """[CLS] text [SEP] ids for every text, truncated to max_length tokens."""
    return [tokenizer.encode(t, max_length=max_length, truncation=True) for t in texts]


def pad_batch(rows: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Id lists -> (input_ids, attention_mask), (B, T) int64, right-padded to the longest row."""
    T = max(len(r) for r in rows)
    ids = np.full((len(rows), T), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), T), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = r
        mask[i, :len(r)] = 1
    return ids, mask


def evaluate(clf, rows: Sequence[Sequence[int]], labels: np.ndarray, batch_size: int = 32) -> dict:
    """Accuracy, mean loss, the (K, K) confusion matrix (row = true class) and the predictions."""
    labels = np.asarray(labels)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))     # similar lengths pad less
    preds = np.zeros(len(rows), dtype=np.int64)
    losses = np.zeros(len(rows))
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        ids, mask = pad_batch([rows[i] for i in idx], clf.tokenizer.pad_id if clf.tokenizer else 0)
        z = clf.forward(ids, attention_mask=mask).astype(np.float64)
        z -= z.max(axis=-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
        preds[idx] = logp.argmax(-1)
        losses[idx] = -logp[np.arange(len(idx)), labels[idx]]
    K = clf.num_labels
    confusion = np.zeros((K, K), dtype=np.int64)
    np.add.at(confusion, (labels, preds), 1)
    return {"accuracy": float((preds == labels).mean()) if len(rows) else float("nan"),
            "loss": float(losses.mean()) if len(rows) else float("nan"), "confusion": confusion,
            "predictions": preds}


def fine_tune(clf, rows: Sequence[Sequence[int]], labels: np.ndarray, *, epochs: float = 3.0,
              batch_size: int = 16, lr: float = 2e-4, weight_decay: float = 0.01, warmup_fraction: float = 0.1,
              clip: float = 1.0, dropout: float = 0.1, seed: int = 0, max_steps: int | None = None,
              progress: bool = True, on_step: Callable[[dict], None] | None = None) -> list[dict]:
    """Train every parameter of `clf` in place; returns one record per step (step, loss, acc, lr, grad_norm).

    Each epoch visits the training examples in a new random order, batch_size at a time.  AdamW with
    weight decay (none on LayerNorm and biases), lr warmed up linearly over warmup_fraction of the
    steps and then decayed linearly to 0, global gradient norm clipped to `clip`.  Each step's dropout
    masks (the classifier's, and the body's if the config has hidden or attention dropout) come from
    (seed, step) alone.
    """
    from tqdm import tqdm

    from .nn.dropout import step_generator
    from .optim import AdamW, clip_grad_norm, linear_schedule

    labels = np.asarray(labels, dtype=np.int64)
    if len(rows) == 0:
        raise FinetuneError("no training examples")
    rng = np.random.default_rng(seed)
    steps_per_epoch = math.ceil(len(rows) / batch_size)
    total = max(1, int(round(epochs * steps_per_epoch)))
    if max_steps is not None:
        total = min(total, max_steps)
    warmup = int(round(warmup_fraction * total))
    optimizer = AdamW(clf.params, lr=lr, weight_decay=weight_decay)
    pad_id = clf.tokenizer.pad_id if clf.tokenizer else 0
    history: list[dict] = []
    bar = tqdm(total=total, desc="fine-tuning", unit="step", disable=not progress, dynamic_ncols=True,
               file=sys.stderr)
    order = np.zeros(0, dtype=np.int64)
    for step in range(total):
        if len(order) == 0:
            order = rng.permutation(len(rows))
        idx, order = order[:batch_size], order[batch_size:]
        ids, mask = pad_batch([rows[i] for i in idx], pad_id)
        loss, grads = clf.loss_and_grads(ids, None, mask, labels[idx], dropout=dropout, rng=step_generator(seed, step))
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss became {loss} at step {step}; lower --lr")
        grad_norm = clip_grad_norm(grads, clip)
        step_lr = linear_schedule(step, lr, warmup, total)
        optimizer.step(grads, lr=step_lr)
        s = clf.last_stats
        record = {"step": step + 1, "epoch": (step + 1) / steps_per_epoch, "loss": loss,
                  "acc": s["correct"] / max(1, s["count"]), "lr": step_lr, "grad_norm": grad_norm}
        history.append(record)
        if on_step is not None:
            on_step(record)
        recent = history[-10:]
        bar.set_postfix(loss=f"{np.mean([r['loss'] for r in recent]):.3f}",
                        acc=f"{np.mean([r['acc'] for r in recent]):.2f}")
        bar.update(1)
    bar.close()
    return history


def confusion_table(confusion: np.ndarray, names: Sequence[str]) -> str:
    """The confusion matrix as text: rows are the true class, columns the predicted one."""
    width = max(8, *(len(n) for n in names))
    lines = [" " * width + " " + " ".join(f"{n[:width]:>{width}}" for n in names) + "   <- predicted"]
    for name, row in zip(names, confusion, strict=True):
        lines.append(f"{name:>{width}} " + " ".join(f"{v:>{width}d}" for v in row))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = OneLineParser(prog="python -m tinyalbert.finetune", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="where to write the fine-tuned classifier (.h5)")
    p.add_argument("--weights", help="pretrained tinyalbert weights (default: $TINYALBERT_WEIGHTS, else the "
                                     "bundled small model)")
    data = p.add_argument_group("data: your own file, or the built-in source task (the default)")
    data.add_argument("--train", help="labelled examples: text<TAB>label per line, or a .csv with text,label")
    data.add_argument("--test", help="test examples in the same format (default: hold out --test-fraction)")
    data.add_argument("--test-fraction", type=float, default=0.2,
                      help="with --train and no --test: fraction of examples held out, a random split by line "
                           "(default %(default)s)")
    data.add_argument("--corpus", help="corpus folder for the source task, one sub-folder per source (default: "
                                       "$TINYALBERT_CORPUS, else the sample installed with the package)")
    data.add_argument("--sources", nargs="+", default=list(DEFAULT_SOURCES),
                      help="source task: the corpus sub-folders to tell apart (default: %(default)s)")
    data.add_argument("--train-per-class", type=int, default=200,
                      help="source task: training sentences per source (default %(default)s)")
    data.add_argument("--test-per-class", type=int, default=100,
                      help="source task: test sentences per source (default %(default)s)")
    train = p.add_argument_group("training")
    train.add_argument("--epochs", type=float, default=3.0, help="passes over the training data (default %(default)s)")
    train.add_argument("--max-steps", type=int, help="stop after this many steps")
    train.add_argument("--batch-size", type=int, default=16, help="examples per step (default %(default)s)")
    train.add_argument("--lr", type=float, default=2e-4, help="peak learning rate of AdamW (default %(default)s)")
    train.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (default %(default)s)")
    train.add_argument("--warmup", type=float, default=0.1,
                       help="fraction of the steps spent warming up (default %(default)s)")
    train.add_argument("--clip", type=float, default=1.0, help="global gradient-norm clip (default %(default)s)")
    train.add_argument("--dropout", type=float, default=None,
                       help="classifier dropout (default: the config's classifier_dropout_prob)")
    train.add_argument("--max-length", type=int, default=64,
                       help="tokens per example, [CLS] and [SEP] included (default %(default)s)")
    train.add_argument("--seed", type=int, default=0,
                       help="data split, initialisation and batch order (default %(default)s)")
    train.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                       help="compute dtype (default %(default)s)")
    train.add_argument("--threads", type=int, help="Numba and BLAS threads (default: all cores; for a small model "
                                                   "on a busy machine, 1 is often much faster)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def _check_args(args: argparse.Namespace) -> None:
    positive = {"--epochs": args.epochs, "--batch-size": args.batch_size, "--lr": args.lr,
                "--max-length": args.max_length, "--train-per-class": args.train_per_class,
                "--test-per-class": args.test_per_class}
    if args.max_steps is not None:
        positive["--max-steps"] = args.max_steps
    if args.threads is not None:
        positive["--threads"] = args.threads
    for name, value in positive.items():
        if not value > 0:
            raise FinetuneError(f"{name} must be positive, got {value}")
    if args.max_length < 3:
        raise FinetuneError(f"--max-length must be at least 3 ([CLS] a token [SEP]), got {args.max_length}")
    if args.dropout is not None and not 0.0 <= args.dropout < 1.0:
        raise FinetuneError(f"--dropout must be in [0, 1), got {args.dropout}")
    if not 0.0 <= args.warmup < 1.0:
        raise FinetuneError(f"--warmup must be a fraction in [0, 1), got {args.warmup}")
    if args.test and not args.train:
        raise FinetuneError("--test needs --train (the source task makes its own test split)")
    out = Path(args.out)
    if out.is_dir():
        raise FinetuneError(f"--out {out} is a folder; give a file name such as {out / 'classifier.h5'}")
    if not out.resolve().parent.is_dir():
        raise FinetuneError(f"the folder of --out does not exist: {out.resolve().parent}")


def load_data(args: argparse.Namespace) -> tuple[LabelledTexts, LabelledTexts, str]:
    """(train, test, a one-line description of the data) from the arguments."""
    if args.train:
        train = read_labelled_file(args.train)
        if len(train.label_names) < 2:
            raise FinetuneError(f"{args.train}: every example has the label {train.label_names[0]!r}; "
                                "a classifier needs at least 2 labels")
        if args.test:
            test = read_labelled_file(args.test, train.label_names)
            return train, test, f"{args.train} ({len(train)} examples) / {args.test} ({len(test)} examples)"
        train, test = split_examples(train, args.test_fraction, args.seed)
        return train, test, f"{args.train}, split at random by line: {len(train)} train / {len(test)} test"
    train, test = build_source_task(args.corpus, args.sources, args.train_per_class, args.test_per_class,
                                    seed=args.seed)
    n_docs = {side: len(set(d.documents)) for side, d in (("train", train), ("test", test))}
    return train, test, (f"source task {'/'.join(args.sources)}: {len(train)} train sentences from {n_docs['train']} "
                         f"documents, {len(test)} test sentences from {n_docs['test']} other documents")


def run(args: argparse.Namespace) -> dict:
    """Everything `main` does, returning the results (and raising FinetuneError / WeightsError on bad input)."""
    from .classifier import AlbertClassifier, save_classifier
    from .weights import load

    _check_args(args)
    weights = Path(args.weights) if args.weights else default_weights()
    if not weights.exists():
        raise FinetuneError(f"no weights file {weights}: pass --weights FILE.h5 or set $TINYALBERT_WEIGHTS")
    train, test, description = load_data(args)
    model = load(weights, dtype=np.dtype(args.dtype).type)
    if model.tokenizer is None:
        raise FinetuneError(f"{weights} has no embedded vocabulary (spiece.model); convert it again with one")
    print(f"data: {description}", file=sys.stderr)
    print(f"model: {weights} (H={model.config.hidden_size}, L={model.config.num_hidden_layers}, "
          f"V={model.config.vocab_size}); classes: {', '.join(train.label_names)}", file=sys.stderr)
    clf = AlbertClassifier.from_pretrained(model, train.label_names, seed=args.seed)
    max_length = min(args.max_length, model.config.max_position_embeddings)
    train_rows = encode_texts(clf.tokenizer, train.texts, max_length)
    test_rows = encode_texts(clf.tokenizer, test.texts, max_length)
    dropout = model.config.classifier_dropout_prob if args.dropout is None else args.dropout
    t0 = time.perf_counter()
    history = fine_tune(clf, train_rows, train.labels, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                        weight_decay=args.weight_decay, warmup_fraction=args.warmup, clip=args.clip,
                        dropout=dropout, seed=args.seed, max_steps=args.max_steps, progress=not args.quiet)
    seconds = time.perf_counter() - t0
    result = evaluate(clf, test_rows, test.labels)
    majority = int(np.bincount(train.labels, minlength=clf.num_labels).argmax())
    baseline = float((test.labels == majority).mean())
    print(f"trained {len(history)} steps in {seconds:.0f} s; final training loss "
          f"{np.mean([r['loss'] for r in history[-10:]]):.3f}", file=sys.stderr)
    print(f"test accuracy {result['accuracy']:.3f} on {len(test)} examples "
          f"(always answering {train.label_names[majority]!r}: {baseline:.3f}); test loss {result['loss']:.3f}")
    print(confusion_table(result["confusion"], clf.labels))
    provenance = {"trained_by": "python -m tinyalbert.finetune", "pretrained": str(weights), "data": description,
                  "arguments": {k: v for k, v in vars(args).items()}, "test_accuracy": result["accuracy"],
                  "steps": len(history)}
    save_classifier(args.out, clf, provenance=provenance)
    print(f"wrote {args.out}", file=sys.stderr)
    return {"classifier": clf, "history": history, "test": result, "baseline": baseline}


def main(argv: list[str] | None = None) -> int:
    tune_process()
    args = parse_args(argv)
    from .weights import WeightsError

    with CommandErrors((FinetuneError, WeightsError, OSError)) as status, \
            limit_threads(args.threads if args.threads and args.threads > 0 else None):
        run(args)
    return status.exit_code


if __name__ == "__main__":
    sys.exit(main())
