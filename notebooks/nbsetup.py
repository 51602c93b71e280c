"""Common set-up for the teaching notebooks: where the repository, the data and the weights are.

Every notebook starts with `import nbsetup`.  It finds the repository root (the folder holding
`tinyalbert/`), puts it on sys.path so that `import tinyalbert` works without installing, calls
`tinyalbert.tune_process()` (the notebooks train and differentiate, so their kernel process gets the settings
the training programs use: idle OpenMP threads sleep, malloc keeps freed memory; importing tinyalbert alone
changes neither), and names the files the notebooks read:

    ROOT        the repository root
    VOCAB_30K   the genuine ALBERT vocabulary, installed with the package (tinyalbert.tokenizer.ALBERT_VOCAB)
    CORPUS      the 2.5 MB corpus sample installed with the package (tinyalbert.data.SAMPLE_CORPUS): whole
                stories and articles, and the openings of books, from each source of the bundled model's corpus
    XXLARGE     weights/albert-xxlarge-v2.h5, present only if you converted it (see README.md)
    weights_path()  the model the notebooks study: $TINYALBERT_WEIGHTS if set, else the bundled small model
    one_thread()    a context manager for gradient checks (many calls on tiny arrays): one BLAS and Numba thread
    notebook_namespace(name)  a notebook's variables, from running its code cells (for the exercise solutions)
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path


def _find_root() -> Path:
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "tinyalbert" / "__init__.py").is_file():
            return folder
    raise RuntimeError(f"cannot find the tinyalbert repository above {here}; start Jupyter inside the repository")


ROOT = _find_root()
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tinyalbert import tune_process  # noqa: E402  (importable once ROOT is on sys.path)
from tinyalbert.data import SAMPLE_CORPUS  # noqa: E402
from tinyalbert.tokenizer import ALBERT_VOCAB  # noqa: E402
from tinyalbert.tuning import one_thread  # noqa: E402, F401  (the notebooks call nbsetup.one_thread)

tune_process()      # before the first kernel starts Numba's OpenMP threads

VOCAB_30K = ALBERT_VOCAB
CORPUS = SAMPLE_CORPUS
XXLARGE = ROOT / "weights" / "albert-xxlarge-v2.h5"


def weights_path() -> Path:
    """$TINYALBERT_WEIGHTS if set, else tinyalbert.predict.default_weights_path().

    default_weights_path() prefers weights/albert-xxlarge-v2.h5 when that file exists, because it
    serves fill-mask from the command line.  The notebooks train and differentiate their model many
    times, which takes hours at xxlarge size, so here the small bundled model is used instead; the
    notebooks that look at xxlarge load XXLARGE themselves.
    """
    env = os.environ.get("TINYALBERT_WEIGHTS")
    if env:
        return Path(env)
    from tinyalbert.predict import BUNDLED_MODEL_NAME, default_weights_path

    path = default_weights_path()
    if path.resolve() == XXLARGE.resolve():
        path = ROOT / "tinyalbert" / "data" / BUNDLED_MODEL_NAME
    return path


def load_model(dtype=None):
    """The model of weights_path() as a tinyalbert Albert (float32 unless dtype says float64)."""
    import numpy as np

    from tinyalbert.weights import load

    path = weights_path()
    if not path.exists():
        raise FileNotFoundError(f"no weights at {path}: set TINYALBERT_WEIGHTS to a tinyalbert .h5 file "
                                "(python -m tinyalbert.pretrain writes one)")
    return load(path, dtype=np.float32 if dtype is None else dtype)


def describe(model) -> str:
    """One line: the model's shape, e.g. for the top of a notebook's output."""
    c = model.config
    n = sum(int(p.size) for p in model.params.values())
    return (f"{weights_path().name}: V={c.vocab_size} E={c.embedding_size} H={c.hidden_size} "
            f"NH={c.num_attention_heads} I={c.intermediate_size} L={c.num_hidden_layers} applications of one shared "
            f"layer, {n:,} parameters")

def corpus_sentences(source: str, n: int, tokenizer=None, min_tokens: int = 8, max_tokens: int = 40,
                     seed: int = 0, max_documents: int = 300) -> list[str]:
    """n sentences from the first documents of one corpus source, in a seeded random order.

    Only sentences of min_tokens..max_tokens tokens ([CLS] and [SEP] included) are kept, counted
    with `tokenizer` (or in words when it is None).  Reads at most max_documents documents.
    """
    import numpy as np

    from tinyalbert.data import read_documents, split_sentences

    found: list[str] = []
    seen = 0
    for path in sorted((CORPUS / source).glob("*.txt")):
        for doc in read_documents(path):
            for paragraph in doc:
                for s in split_sentences(paragraph):
                    size = len(tokenizer.encode(s)) if tokenizer is not None else len(s.split())
                    if min_tokens <= size <= max_tokens:
                        found.append(s)
            seen += 1
            if seen >= max_documents or len(found) >= 20 * n:
                break
        if seen >= max_documents or len(found) >= 20 * n:
            break
    order = np.random.default_rng(seed).permutation(len(found))
    return [found[i] for i in order[:n]]


def masked_batch(tokenizer, sentences, seed: int = 0, max_length: int = 64):
    """Sentences -> (input_ids, attention_mask, mlm_labels), each (B, T), masked as in pretraining.

    Uses tinyalbert.data.mask_tokens (whole-word n-gram masking, 80/10/10); labels are -100 where
    nothing is predicted.  Padded on the right to the longest sentence.
    """
    import numpy as np

    from tinyalbert.data import mask_tokens, word_start_table

    word_start = word_start_table(tokenizer)
    rng = np.random.default_rng(seed)
    special = (tokenizer.pad_id, tokenizer.unk_id, tokenizer.cls_id, tokenizer.sep_id, tokenizer.mask_id)
    rows = []
    for s in sentences:
        ids = np.array(tokenizer.encode(s, max_length=max_length, truncation=True))
        rows.append(mask_tokens(ids, rng, special_ids=special, mask_id=tokenizer.mask_id,
                                vocab_size=tokenizer.vocab_size, word_start=word_start))
    T = max(len(r[0]) for r in rows)
    input_ids = np.full((len(rows), T), tokenizer.pad_id, dtype=np.int64)
    attention_mask = np.zeros((len(rows), T), dtype=np.int64)
    labels = np.full((len(rows), T), -100, dtype=np.int64)
    for i, (ids, lab) in enumerate(rows):
        input_ids[i, :len(ids)] = ids
        attention_mask[i, :len(ids)] = 1
        labels[i, :len(ids)] = lab
    return input_ids, attention_mask, labels


def notebook_namespace(name: str, stop_at: str | None = None) -> dict:
    """Run the code cells of notebooks/<name> without Jupyter and return the variables they define.

    The exercise solutions (notebooks/solutions/) build on a notebook's functions and data this way
    instead of copying them.  Magic lines (%matplotlib) are skipped and figures go to a non-interactive
    backend, and what the cells print is not shown.  With stop_at, the cells before the first one whose
    source contains that text are run.
    """
    import io

    import matplotlib
    import nbformat

    matplotlib.use("Agg")
    namespace: dict = {"__name__": f"notebook {name}"}
    for cell in nbformat.read(ROOT / "notebooks" / name, as_version=4).cells:
        if cell.cell_type != "code":
            continue
        if stop_at is not None and stop_at in cell.source:
            break
        source = "\n".join(line for line in cell.source.splitlines() if not line.lstrip().startswith("%"))
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(source, f"{name}, cell {cell.get('id', '?')}", "exec"), namespace)
    return namespace
