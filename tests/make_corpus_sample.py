"""Build the corpus sample that ships with the package (tinyalbert/data/corpus/) from the full corpus.

Run by a developer, not by the tests (they read the sample this wrote, which is committed):

    python tests/make_corpus_sample.py path/to/full/corpus         # writes tinyalbert/data/corpus/

The full corpus (70 MB, five sources; see tinyalbert/data/corpus/PROVENANCE.md) is not in the
repository.  The sample keeps its layout and file format: one folder per source, files of the same
names, one paragraph per line, documents separated by one blank line.  It is drawn without any
randomness, so running this again on the same corpus gives the same bytes:

- TinyStories, Wikinews, Wikipedia: the first N whole documents of the files named in PLAN.
- OneStopEnglish: the first N articles of each of the three reading-level files.  Article k of every
  level file is the same text, so taking the same N from each keeps every article's three versions
  together (the fine-tuning task relies on that to keep an article on one side of its split).
- Gutenberg: each file there is one whole book, and whole books do not fit the budget.  Every book
  is cut to its opening: whole paragraphs, up to and including the first that brings the excerpt to
  GUTENBERG_EXCERPT_BYTES.  A book whose opening would be the whole book is left out (one is: its
  text is a single 124 KB line in the corpus).  MANIFEST.tsv keeps the rows of the books taken, with
  `bytes` giving each excerpt's size.

The script refuses to write a sample larger than BUDGET_BYTES, or one in which any file is a whole
copy of a corpus file.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import io
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tinyalbert.data import read_documents  # noqa: E402
from tinyalbert.files import atomic_output  # noqa: E402

OUT = ROOT / "tinyalbert" / "data" / "corpus"
# source folder -> {file name: how many leading documents to keep}
PLAN: dict[str, dict[str, int]] = {
    "tinystories": {"tinystories_000.txt": 400, "tinystories_001.txt": 300},
    "onestopenglish": {"onestop_advanced_000.txt": 30, "onestop_elementary_000.txt": 30,
                       "onestop_intermediate_000.txt": 30},
    "wikinews": {"wikinews_000.txt": 300, "wikinews_001.txt": 60},
    "wikipedia": {"wikipedia_000.txt": 80},
}
GUTENBERG_EXCERPT_BYTES = 6000
BUDGET_BYTES = 3_000_000


def leading_documents(path: Path, count: int) -> str:
    """The first `count` documents of a corpus file, in the corpus format."""
    documents = []
    for paragraphs in read_documents(path):
        documents.append("\n".join(paragraphs))
        if len(documents) == count:
            break
    if len(documents) < count:
        raise SystemExit(f"error: {path} holds {len(documents)} documents, fewer than the {count} asked for")
    return "\n\n".join(documents) + "\n"


def book_opening(path: Path, min_bytes: int) -> str:
    """A book's first paragraphs (one per line), stopping at the first that reaches min_bytes in all."""
    kept: list[str] = []
    size = 0
    for paragraphs in read_documents(path, one_doc_per_file=True):
        for paragraph in paragraphs:
            kept.append(paragraph)
            size += len(paragraph.encode("utf-8")) + 1
            if size >= min_bytes:
                break
    return "\n".join(kept) + "\n"


def gutenberg_manifest(path: Path, excerpt_sizes: dict[str, int]) -> str:
    """MANIFEST.tsv with every column kept and `bytes` set to each excerpt's size."""
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        fields = reader.fieldnames
        rows = list(reader)
    unknown = sorted(set(excerpt_sizes) - {r["file"] for r in rows})
    if unknown:
        raise SystemExit(f"error: {path} has no row for {', '.join(unknown)}")
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, delimiter="\t", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        if row["file"] in excerpt_sizes:
            writer.writerow({**row, "bytes": excerpt_sizes[row["file"]]})
    return out.getvalue()


def build_sample(corpus: Path) -> dict[str, str]:
    """Relative path in the sample -> its text."""
    sample: dict[str, str] = {}
    for source, files in PLAN.items():
        for name, count in files.items():
            sample[f"{source}/{name}"] = leading_documents(corpus / source / name, count)
    excerpt_sizes = {}
    for book in sorted((corpus / "gutenberg").glob("*.txt")):
        text = book_opening(book, GUTENBERG_EXCERPT_BYTES)
        if text.encode("utf-8") == book.read_bytes():
            print(f"left out {book.name}: its opening paragraph is the whole book")
            continue
        sample[f"gutenberg/{book.name}"] = text
        excerpt_sizes[book.name] = len(text.encode("utf-8"))
    sample["gutenberg/MANIFEST.tsv"] = gutenberg_manifest(corpus / "gutenberg" / "MANIFEST.tsv", excerpt_sizes)
    return sample


def check_sample(sample: dict[str, str], corpus: Path) -> None:
    """Refuse a sample over budget, or one holding a whole copy of any corpus file."""
    total = sum(len(text.encode("utf-8")) for text in sample.values())
    if total > BUDGET_BYTES:
        raise SystemExit(f"error: the sample is {total:,} bytes, over the budget of {BUDGET_BYTES:,}")
    whole_files = {hashlib.sha256(p.read_bytes()).hexdigest(): p for p in corpus.rglob("*") if p.is_file()}
    for name, text in sample.items():
        twin = whole_files.get(hashlib.sha256(text.encode("utf-8")).hexdigest())
        if twin is not None:
            raise SystemExit(f"error: {name} would be a whole copy of {twin}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("corpus", type=Path, help="the full corpus folder (one sub-folder per source)")
    ap.add_argument("--out", type=Path, default=OUT, help="where to write the sample (default: %(default)s)")
    args = ap.parse_args(argv)
    missing = [s for s in (*PLAN, "gutenberg") if not (args.corpus / s).is_dir()]
    if missing:
        raise SystemExit(f"error: {args.corpus} has no source folder {', '.join(missing)}")
    sample = build_sample(args.corpus)
    check_sample(sample, args.corpus)
    for source in (*PLAN, "gutenberg"):          # the sample replaces what was there; PROVENANCE.md stays
        shutil.rmtree(args.out / source, ignore_errors=True)
    for name, text in sample.items():
        target = args.out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(target) as tmp:
            Path(tmp).write_text(text, encoding="utf-8")
    print(f"{'source':<16}{'files':>6}{'documents':>11}{'bytes':>11}")
    for source in (*PLAN, "gutenberg"):
        texts = [t for n, t in sample.items() if n.startswith(source + "/") and n.endswith(".txt")]
        documents = len(texts) if source == "gutenberg" else sum(t.count("\n\n") + 1 for t in texts)
        size = sum(len(t.encode("utf-8")) for n, t in sample.items() if n.startswith(source + "/"))
        print(f"{source:<16}{len(texts):>6}{documents:>11}{size:>11,}")
    print(f"{'total':<16}{'':>17}{sum(len(t.encode('utf-8')) for t in sample.values()):>11,}  -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
