"""Train a SentencePiece unigram vocabulary the way ALBERT's 30k-clean.model was trained.

What 30k-clean.model holds (read from its model proto) and what this copies:
  ids 0-4   <pad> (control), <unk> (unknown), [CLS] [SEP] [MASK] (control)
  ids 5-12  user-defined symbols ( ) " - . – £ €  (always their own piece)
  then      the learned pieces; unigram model, nmt_nfkc normaliser,
            character_coverage 0.99995, max_sentence_length 4192, no bos/eos.
The training text gets ALBERT's preprocessing (`Tokenizer.preprocess`: collapse
whitespace, `` and '' -> ", NFKD and drop combining marks, lowercase), so the
vocabulary matches the text the tokenizer will feed it.

Sentences come from the same reader and splitter as the pretraining data
(`tinyalbert.data`).  At most `max_sentences` of them are used, a uniform
sample drawn in one streaming pass (reservoir sampling), which keeps training
to a few minutes on the full corpus.

    python -m tinyalbert.vocab tinyalbert/data/corpus -o vocab/8k.model --vocab-size 8000
"""
from __future__ import annotations

import argparse
import io
import os
import random
import sys
import time
from pathlib import Path
from typing import Sequence

from .data import list_text_files, read_documents, split_sentences
from .files import atomic_output
from .tokenizer import Tokenizer

CONTROL_SYMBOLS = ("[CLS]", "[SEP]", "[MASK]")
USER_DEFINED_SYMBOLS = ("(", ")", '"', "-", ".", "\u2013", "\u00a3", "\u20ac")  # ( ) " - . – £ €


def sample_sentences(paths: Sequence[str | os.PathLike], max_sentences: int, seed: int = 0,
                     progress: bool = True) -> tuple[list[str], int]:
    """A uniform random sample of at most max_sentences sentences from the files behind `paths`.

    Returns (sample, number of sentences seen).  Reservoir sampling (Vitter's
    algorithm R): sentence k (0-based) replaces a random slot with probability
    max_sentences / (k + 1).  Lines are read as in tinyalbert.data: one
    paragraph per line, split into sentences.  The sample is in file order.
    """
    from tqdm import tqdm

    files = list_text_files(paths)
    rng = random.Random(seed)
    reservoir: list[tuple[int, str]] = []  # (position in the stream, sentence), to restore file order
    seen = 0
    with tqdm(total=sum(f.stat().st_size for f in files), unit="B", unit_scale=True, desc="reading",
              disable=not progress, mininterval=1.0) as bar:
        for path in files:
            counted = 0
            for doc in read_documents(path):
                for paragraph in doc:
                    for sentence in split_sentences(paragraph):
                        if len(reservoir) < max_sentences:
                            reservoir.append((seen, sentence))
                        else:
                            j = rng.randrange(seen + 1)
                            if j < max_sentences:
                                reservoir[j] = (seen, sentence)
                        seen += 1
                    n_bytes = len(paragraph.encode("utf-8")) + 1
                    counted += n_bytes
                    bar.update(n_bytes)
            bar.update(max(0, path.stat().st_size - counted))  # blank lines and stripped spaces
    reservoir.sort()
    return [s for _, s in reservoir], seen


def train_vocab(inputs: Sequence[str | os.PathLike], output: str | os.PathLike, vocab_size: int = 8000,
                max_sentences: int = 300_000, seed: int = 0, character_coverage: float = 0.99995,
                num_threads: int = 2, progress: bool = True, verbose: bool = False) -> Path:
    """Train a unigram SentencePiece model on `inputs` (files or folders of .txt) and write it to `output`.

    The file is written to a temporary name and renamed, so `output` is either
    the old file or the complete new one.  Returns the output path.
    """
    import sentencepiece as spm

    output = Path(output)
    sentences, seen = sample_sentences(inputs, max_sentences, seed, progress)
    if not sentences:
        raise ValueError("no text found in the inputs")
    text = [Tokenizer.preprocess(s) for s in sentences]
    if progress:
        print(f"training on {len(text)} of {seen} sentences, vocab_size={vocab_size}", file=sys.stderr)

    spm.set_random_generator_seed(seed)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(text), model_writer=model,
            model_type="unigram", vocab_size=vocab_size, character_coverage=character_coverage,
            normalization_rule_name="nmt_nfkc",
            pad_id=0, unk_id=1, bos_id=-1, eos_id=-1, pad_piece="<pad>", unk_piece="<unk>",
            control_symbols=list(CONTROL_SYMBOLS), user_defined_symbols=list(USER_DEFINED_SYMBOLS),
            input_sentence_size=0, shuffle_input_sentence=False,  # already sampled above
            max_sentence_length=4192, num_threads=num_threads, minloglevel=0 if verbose else 2)
    except RuntimeError as e:
        raise ValueError(f"SentencePiece training failed: {str(e).strip().splitlines()[-1]}") from None

    data = model.getvalue()
    Tokenizer(data)  # checks <pad> <unk> [CLS] [SEP] [MASK] sit at ids 0-4
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(output) as tmp:
        Path(tmp).write_bytes(data)
    return output


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: python -m tinyalbert.vocab INPUT... -o OUT.model [--vocab-size N] ..."""
    ap = argparse.ArgumentParser(
        prog="python -m tinyalbert.vocab",
        description="Train an ALBERT-style SentencePiece unigram vocabulary (ids 0-4: <pad> <unk> [CLS] [SEP] "
                    "[MASK]) on lowercased plain text.")
    ap.add_argument("inputs", nargs="+", help="text files, or folders searched for *.txt")
    ap.add_argument("-o", "--output", required=True, help="path of the .model file to write")
    ap.add_argument("--vocab-size", type=int, default=8000)
    ap.add_argument("--max-sentences", type=int, default=300_000,
                    help="train on a random sample of at most this many sentences (default 300000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--character-coverage", type=float, default=0.99995)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quiet", action="store_true", help="no progress output")
    ap.add_argument("--verbose", action="store_true", help="show SentencePiece's own log")
    args = ap.parse_args(argv)

    for p in args.inputs:
        if not os.path.exists(p):
            print(f"error: input not found: {p}", file=sys.stderr)
            return 2
    if not list_text_files(args.inputs):
        print(f"error: no .txt files in {' '.join(args.inputs)}", file=sys.stderr)
        return 2
    if args.vocab_size < len(CONTROL_SYMBOLS) + len(USER_DEFINED_SYMBOLS) + 3:
        print(f"error: --vocab-size {args.vocab_size} is too small", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        out = train_vocab(args.inputs, args.output, args.vocab_size, args.max_sentences, args.seed,
                          args.character_coverage, args.threads, progress=not args.quiet, verbose=args.verbose)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    tok = Tokenizer(out)
    first = " ".join(tok.id_to_piece(i) for i in range(min(16, tok.vocab_size)))
    print(f"wrote {out} ({tok.vocab_size} pieces, {time.perf_counter() - t0:.0f} s): {first} ...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
