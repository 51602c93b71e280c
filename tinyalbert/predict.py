"""Fill-mask and sentence-order prediction, from Python and from the command line.

    python -m tinyalbert.predict "The man went to the [MASK] to buy some milk."
    python -m tinyalbert.predict --top-k 3 --json "Paris is the [MASK] of France."
    python -m tinyalbert.predict --sop "He opened the door." "Then he walked in."
    python -m tinyalbert.predict --file sentences.txt      # one input per line ('-' reads stdin)
    python -m tinyalbert.predict --depth 6 "Paris is the [MASK] of France."   # the shared layer 6 times
    python -m tinyalbert.predict --lens "Paris is the [MASK] of France."      # the top-k after every application

`fill_mask` returns what the transformers fill-mask pipeline returns: for one
[MASK] a list of {"score", "token", "token_str", "sequence"}, for several
[MASK]s a list of such lists (each mask scored on its own, the others left as [MASK]).
`logit_lens` returns one such result per depth: the MLM head read from every hidden state.
"""
from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .cli import CommandErrors, OneLineParser
from .nn.encoder import check_depth
from .nn.losses import log_softmax
from .tuning import tune_process

if TYPE_CHECKING:
    from .nn.model import Albert

BUNDLED_MODEL_NAME = "tinyalbert-mini.h5"


class PredictError(ValueError):
    """Bad input for prediction; the message names the problem."""


# The kernels one forward pass (inference) runs.  Their on-disk Numba cache decides whether the first
# forward compiles (tens of seconds) or loads machine code (well under a second).  (transpose_add_bias is
# not listed: batches of more than linear.SKINNY_ROWS tokens never run it.)
_FORWARD_KERNELS = (("kernels", "add_bias_"), ("layernorm", "_layernorm_forward_kernel"),
                    ("softmax", "_shifted_scores_kernel"), ("softmax", "_normalize_rows_kernel"),
                    ("activations", "_bias_gelu_inner_kernel"), ("activations", "_gelu_from_tanh_kernel"))


def bundled_model_path() -> Path:
    """The small ALBERT installed with the package; `tinyalbert.load(bundled_model_path())` opens it.

    Its model card (size, training data, measurements) is weights/README.md in the repository.
    """
    return Path(__file__).resolve().parent / "data" / BUNDLED_MODEL_NAME


def default_weights_path() -> Path:
    """$TINYALBERT_WEIGHTS if set, else weights/albert-xxlarge-v2.h5 if it exists, else the bundled model."""
    env = os.environ.get("TINYALBERT_WEIGHTS")
    if env:
        return Path(env)
    package_dir = Path(__file__).resolve().parent
    for candidate in (Path.cwd() / "weights" / "albert-xxlarge-v2.h5",
                      package_dir.parent / "weights" / "albert-xxlarge-v2.h5"):
        if candidate.exists():
            return candidate
    return bundled_model_path()


def _encode_checked(model, text: str) -> list[int]:
    tok = model.tokenizer
    if tok is None:
        raise PredictError("these weights have no embedded vocabulary (spiece.model); convert them again with it")
    if not text.strip():
        raise PredictError("the input text is empty")
    _check_unicode(text)
    ids = tok.encode(text)
    limit = model.config.max_position_embeddings
    if len(ids) > limit:
        raise PredictError(f"the input is {len(ids)} tokens long, more than the model's maximum of {limit}: "
                           f"{text[:40]!r}...")
    return ids


def _check_unicode(text: str) -> None:
    """tokenizer.check_unicode as a PredictError: a text with lone surrogates (bytes that were not UTF-8)."""
    from .tokenizer import check_unicode

    try:
        check_unicode(text)
    except ValueError as e:
        raise PredictError(str(e)) from None


def _predict_masks(model, ids: list[int], logits: np.ndarray, top_k: int) -> list:
    tok = model.tokenizer
    ids_arr = np.asarray(ids)
    mask_positions = np.nonzero(ids_arr == tok.mask_id)[0]
    probs = np.exp(log_softmax(logits[mask_positions].astype(np.float64)))
    top_k = min(top_k, probs.shape[-1])
    single = len(mask_positions) == 1
    results = []
    for row, position in zip(probs, mask_positions, strict=True):
        best = np.argsort(-row, kind="stable")[:top_k]
        options = []
        for token in best:
            filled = ids_arr.copy()
            filled[position] = token
            filled = filled[filled != tok.pad_id]
            options.append({"score": float(row[token]), "token": int(token),
                            "token_str": tok.decode([int(token)], skip_special_tokens=False),
                            "sequence": tok.decode(filled.tolist(), skip_special_tokens=single)})
        results.append(options)
    return results[0] if single else results


def _encode_for_fill_mask(model, texts: Sequence[str]) -> list[list[int]]:
    """Ids of every text, after checking each one (PredictError naming the first bad one)."""
    if isinstance(texts, str):
        raise PredictError("fill_mask_batch takes a list of texts; use fill_mask for one text")
    encoded = []
    for text in texts:
        ids = _encode_checked(model, text)
        if model.tokenizer.mask_id not in ids:
            raise PredictError(f"no [MASK] token in the input: {text!r}")
        encoded.append(ids)
    return encoded


def _fill_mask_encoded(model, encoded: list[list[int]], top_k: int, batch_size: int, progress: bool,
                       depth: int | None = None, lens: bool = False) -> list:
    """One fill-mask result per text; with lens, per text a list of results, one per hidden state."""
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))   # similar lengths pad less
    predictions: list[list] = [[] for _ in encoded]
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if progress and len(batches) > 1:
        from tqdm import tqdm
        batches = tqdm(batches, desc="predicting", unit="batch", file=sys.stderr)
    for batch in batches:
        T = max(len(encoded[i]) for i in batch)
        input_ids = np.full((len(batch), T), model.tokenizer.pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(batch), T), dtype=np.int64)
        for row, i in enumerate(batch):
            input_ids[row, :len(encoded[i])] = encoded[i]
            attention_mask[row, :len(encoded[i])] = 1
        out = model.forward(input_ids, attention_mask=attention_mask, depth=depth)
        # the lens reads every hidden state through the MLM head, one at a time (each is (B, T, V));
        # the last of them is computed exactly as out.mlm_logits
        readouts = (model.mlm_head(hidden) for hidden in out.hidden_states) if lens else [out.mlm_logits]
        for logits in readouts:
            for row, i in enumerate(batch):
                predictions[i].append(_predict_masks(model, encoded[i], logits[row, :len(encoded[i])], top_k))
    return predictions if lens else [per_text[0] for per_text in predictions]


def _check_top_k_and_batch(top_k: int, batch_size: int) -> None:
    if top_k < 1:
        raise PredictError(f"top_k must be at least 1, got {top_k}")
    if batch_size < 1:
        raise PredictError(f"batch_size must be at least 1, got {batch_size}")


def _check_depth(depth: int | None) -> None:
    try:
        check_depth(depth)
    except ValueError as e:
        raise PredictError(str(e)) from None


def fill_mask_batch(model: Albert, texts: Sequence[str], top_k: int = 5, batch_size: int = 8,
                    progress: bool = False, depth: int | None = None) -> list:
    """fill_mask for several texts, run in padded batches.  Returns one result per text.

    Padding never changes a result: padded keys are masked out of attention, and each text's
    predictions are read from its own (unpadded) positions.
    """
    _check_top_k_and_batch(top_k, batch_size)
    _check_depth(depth)
    return _fill_mask_encoded(model, _encode_for_fill_mask(model, texts), top_k, batch_size, progress, depth)


def fill_mask(model: Albert, text: str, top_k: int = 5, depth: int | None = None) -> list:
    """Top-k completions for each [MASK] in text, in the shape of the transformers fill-mask pipeline.

    depth: apply the shared layer this many times instead of the model's L (an integer >= 1).
    """
    return fill_mask_batch(model, [text], top_k=top_k, depth=depth)[0]


def logit_lens(model: Albert, text: str, top_k: int = 5, depth: int | None = None) -> list:
    """The logit lens: fill_mask's result read from every hidden state, not only the last one.

    Returns N+1 fill-mask results (N = depth, default the model's L).  Element i is the MLM head applied
    to hidden_states[i]: i = 0 reads the projected embeddings, before any layer; i = 1..N read the output
    of the i-th application of the shared layer.  The last element is fill_mask(model, text, top_k, depth).
    """
    _check_top_k_and_batch(top_k, batch_size=1)
    _check_depth(depth)
    return _fill_mask_encoded(model, _encode_for_fill_mask(model, [text]), top_k, 1, False, depth, lens=True)[0]


def _encode_for_sop(model, first: str, second: str) -> tuple[list[int], list[int]]:
    if not model.has_sop_head:
        raise PredictError("these weights have no sentence-order (SOP) head: the published hub checkpoints "
                           "(AlbertForMaskedLM) do not include one; use a checkpoint converted from "
                           "AlbertForPreTraining")
    if model.tokenizer is None:
        raise PredictError("these weights have no embedded vocabulary (spiece.model); convert them again with it")
    if not first.strip() or not second.strip():
        raise PredictError("sentence-order prediction needs two non-empty sentences")
    _check_unicode(first)
    _check_unicode(second)
    ids, types = model.tokenizer.encode_pair(first, second)
    if len(ids) > model.config.max_position_embeddings:
        raise PredictError(f"the sentence pair is {len(ids)} tokens long, more than the model's maximum of "
                           f"{model.config.max_position_embeddings}")
    return ids, types


def _sentence_order_encoded(model, ids: list[int], types: list[int], depth: int | None = None) -> dict[str, float]:
    out = model.forward(np.asarray([ids]), token_type_ids=np.asarray([types]), depth=depth)
    p = np.exp(log_softmax(out.sop_logits[0].astype(np.float64)))
    return {"original_order": float(p[0]), "swapped": float(p[1])}


def sentence_order(model: Albert, first: str, second: str, depth: int | None = None) -> dict[str, float]:
    """Probabilities that `second` follows `first` (label 0, original order) or precedes it (label 1, swapped).

    depth: apply the shared layer this many times instead of the model's L (an integer >= 1).
    """
    _check_depth(depth)
    return _sentence_order_encoded(model, *_encode_for_sop(model, first, second), depth)


def _numba_cache_is_cold() -> bool:
    """True when the forward kernels are not in Numba's on-disk cache, so the first forward compiles them.

    Reads each kernel's cache index the way Numba does (numba.core.caching.IndexDataCacheFile,
    numba 0.59-0.68): an index that is missing, written by another Numba version, or stale (its
    source file changed since) counts as cold.  Honours $NUMBA_CACHE_DIR like Numba.  Any other
    cache layout (a future Numba) gives False: better no note than a wrong one.
    """
    import importlib

    try:
        for module_name, kernel_name in _FORWARD_KERNELS:
            kernel = getattr(importlib.import_module(f"{__package__}.nn.{module_name}"), kernel_name)
            cache_file = kernel._cache._cache_file
            if not os.path.exists(cache_file._index_path) or not cache_file._load_index():
                return True
        return False
    except Exception:       # AttributeError (another cache layout), unreadable index, ...: say nothing
        return False


def _input_header(text: str, show_tokens: bool, model, depth: int | None) -> list[str]:
    lines = [f"input: {text}"]
    if show_tokens:
        ids = model.tokenizer.encode(text)
        pieces = model.tokenizer.convert_ids_to_tokens(ids)
        lines.append("tokens: " + " ".join(f"{p}({i})" for p, i in zip(pieces, ids, strict=True)))
    if depth is not None:
        lines.append(f"depth: the shared layer applied {depth} times (this model's own depth: "
                     f"{model.config.num_hidden_layers})")
    return lines


def _per_mask(result: list) -> list[list[dict]]:
    """A fill-mask result as one option list per [MASK] (one mask gives a flat list)."""
    return [result] if result and isinstance(result[0], dict) else result


def _format_results(text: str, result: list, show_tokens: bool, model, depth: int | None = None) -> str:
    lines = _input_header(text, show_tokens, model, depth)
    per_mask = _per_mask(result)
    for m, options in enumerate(per_mask):
        if len(per_mask) > 1:
            lines.append(f"[MASK] #{m + 1}:")
        for o in options:
            lines.append(f"  {o['score']:.4f}  {o['token']:>6}  {o['token_str']:<15}  {o['sequence']}")
    return "\n".join(lines)


def _format_lens(text: str, lens: list, show_tokens: bool, model, depth: int | None = None) -> str:
    """The logit lens as one table per [MASK]: a row per depth, a column per rank, cells `token score`."""
    lines = _input_header(text, show_tokens, model, depth)
    lines.append("logit lens, the MLM head after each application "
                 "(depth 0: the projected embeddings, before any layer)")
    per_depth = [_per_mask(result) for result in lens]           # [depth][mask][rank]
    masks = len(per_depth[0])
    for m in range(masks):
        if masks > 1:
            lines.append(f"[MASK] #{m + 1}:")
        cells = [[f"{o['token_str'] if o['token_str'].strip() else repr(o['token_str'])} {o['score']:.4f}"
                  for o in by_mask[m]] for by_mask in per_depth]
        header = [f"top {rank + 1}" for rank in range(len(cells[0]))]
        widths = [max(len(column_cell) for column_cell in column) for column in zip(header, *cells, strict=True)]
        lines.append("  depth  " + "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip())
        for d, row in enumerate(cells):
            lines.append(f"  {d:>5}  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def _read_lines(stream, where: str) -> list[str]:
    """The non-blank lines of a binary stream read as UTF-8 (a byte-order mark is dropped); PredictError
    naming `where` if it is not UTF-8.  Decoded here, not by sys.stdin: under the C locale Python reads
    stdin with surrogateescape, which turns bad bytes into lone surrogates instead of an error."""
    text = io.TextIOWrapper(stream, encoding="utf-8-sig")
    try:
        return [line.rstrip("\r\n") for line in text if line.strip()]
    except UnicodeDecodeError as e:
        raise PredictError(f"{where} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    finally:
        text.detach()       # leave `stream` open: closing the wrapper would close it (and stdin with it)


def _resolve_weights(arg: str | None) -> Path:
    """--weights, else default_weights_path(); a missing default gets a message saying how to get weights."""
    if arg is not None:
        if not arg.strip():
            raise PredictError("--weights is empty; give the path of a weights file (.h5)")
        return Path(arg)
    path = default_weights_path()
    if not os.environ.get("TINYALBERT_WEIGHTS") and not path.exists():
        raise PredictError(f"no weights file: pass --weights FILE.h5, set $TINYALBERT_WEIGHTS, or convert a "
                           f"checkpoint to weights/albert-xxlarge-v2.h5 (python -m tinyalbert.convert --help); "
                           f"the bundled model {path} is not installed either")
    return path


def main(argv: list[str] | None = None) -> int:
    tune_process(training=False)
    parser = OneLineParser(prog="python -m tinyalbert.predict",
                           description="Fill in [MASK] tokens (or score sentence order) with ALBERT.")
    parser.add_argument("texts", nargs="*", help="input texts, each with at least one [MASK]")
    parser.add_argument("--file", help="read inputs from this file, one per line ('-' for stdin)")
    parser.add_argument("--top-k", type=int, default=5, help="completions per [MASK] (default 5)")
    parser.add_argument("--json", action="store_true",
                        help="print the fill-mask pipeline's JSON instead of a table (one input: its result; "
                             "several: a list of results)")
    parser.add_argument("--weights", help="weights file (.h5); default: $TINYALBERT_WEIGHTS, else "
                                          "weights/albert-xxlarge-v2.h5 if present, else the bundled model")
    parser.add_argument("--sop", nargs=2, metavar=("FIRST", "SECOND"),
                        help="sentence-order prediction for two sentences")
    parser.add_argument("--show-tokens", action="store_true", help="also print the SentencePiece pieces and ids")
    parser.add_argument("--batch-size", type=int, default=8, help="inputs per forward pass (default 8)")
    parser.add_argument("--depth", type=int, metavar="N",
                        help="apply the shared layer N times (N >= 1) instead of the model's own number L: "
                             "the weights are shared, so any depth runs, although the model was trained at L. "
                             "With several layer groups, application i uses group int(i / (N / G)). "
                             "Applies to --sop too")
    parser.add_argument("--lens", action="store_true",
                        help="logit lens: the top-k for each [MASK] after every application of the shared layer "
                             "(depth 0: the projected embeddings, before any layer), as a table with one row "
                             "per depth; with --json, a list of fill-mask results whose element i is depth i")
    args = parser.parse_args(argv)

    from .weights import WeightsError, load

    texts = list(args.texts)
    with CommandErrors((PredictError, WeightsError, OSError)) as status:
        _check_top_k_and_batch(args.top_k, args.batch_size)
        _check_depth(args.depth)
        if args.file:
            if args.file == "-":
                texts += _read_lines(sys.stdin.buffer, "standard input")
            else:
                with open(args.file, "rb") as stream:
                    texts += _read_lines(stream, args.file)
        if not texts and not args.sop:
            if not sys.stdin.isatty():
                texts = _read_lines(sys.stdin.buffer, "standard input")
            if not texts:
                raise PredictError("no input: give a text with [MASK], --file, or --sop FIRST SECOND")
        if args.lens and not texts:
            raise PredictError("--lens reads the masked-LM head at every depth: give a text with [MASK] "
                               "(it does not apply to --sop)")
        model = load(_resolve_weights(args.weights))
        # Check every input before computing anything: a bad one fails fast, with one line.
        sop_inputs = _encode_for_sop(model, *args.sop) if args.sop else None
        encoded = _encode_for_fill_mask(model, texts) if texts else []
        if _numba_cache_is_cold():
            print("note: first run, compiling the Numba kernels (cached for next time)...", file=sys.stderr)
        if sop_inputs is not None:
            result = _sentence_order_encoded(model, *sop_inputs, args.depth)
            if args.json:
                print(json.dumps(result, indent=2))
            else:
                print(f"P(original order) = {result['original_order']:.4f}   P(swapped) = {result['swapped']:.4f}")
        if texts:
            results = _fill_mask_encoded(model, encoded, args.top_k, args.batch_size, progress=True,
                                         depth=args.depth, lens=args.lens)
            if args.json:
                print(json.dumps(results if len(results) > 1 else results[0], indent=2, ensure_ascii=False))
            else:
                formatter = _format_lens if args.lens else _format_results
                print("\n\n".join(formatter(t, r, args.show_tokens, model, args.depth)
                                   for t, r in zip(texts, results, strict=True)))
    return status.exit_code


if __name__ == "__main__":
    sys.exit(main())
