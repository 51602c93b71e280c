"""One side of a benchmark line in a process of its own, driven over pipes: `python .../worker.py SPEC_JSON`.

Run by its path, not with `-m`, which would import the tinyalbert package (and Numba) first: a torch worker
loads torch alone, so that its memory and import time are torch's.  SPEC_JSON: "side" ("tinyalbert" or
"torch"), "threads", "batch", "seq", and "path" (a weights file or transformers folder) or "config" (random
weights).  The worker answers {import_s, open_s} once the model is built, then one command per stdin line:
"prepare" (untimed: free the last step's gradients, collect garbage), "step" (a training step) or "forward";
another line or the end of input ends it.  Answers are stdout lines RESULT_PREFIX + JSON, each with the peak
RSS so far; on a failure the traceback's last line on stderr is what the parent reports.
"""
import gc
import json
import resource
import sys
import time

T_START = time.perf_counter()      # before numpy: the import time counts it, for both sides
import numpy as np  # noqa: E402

RESULT_PREFIX = "BENCH_RESULT "


def make_batch(batch: int, seq: int, vocab_size: int, seed: int = 0, mlm_fraction: float = 0.15) -> tuple:
    """Random (ids, token types, attention mask, MLM labels, SOP labels), int64, of shape (batch, seq) or (batch,).

    Ids avoid the first 5 (special) ids; token types are 0 in the first half of each sequence, 1 in the
    second; round(15 %) of each sequence's positions (at least 1) get an MLM label, the rest -100.
    """
    rng = np.random.default_rng(seed)
    low = min(5, vocab_size - 1)
    ids = rng.integers(low, vocab_size, size=(batch, seq), dtype=np.int64)
    types = np.zeros((batch, seq), dtype=np.int64)
    types[:, seq // 2:] = 1
    labels = np.full((batch, seq), -100, dtype=np.int64)
    n = max(1, int(round(mlm_fraction * seq)))
    for b in range(batch):
        labels[b, rng.choice(seq, size=n, replace=False)] = rng.integers(low, vocab_size, size=n)
    sop = rng.integers(0, 2, size=batch, dtype=np.int64)
    return ids, types, np.ones((batch, seq), dtype=np.int64), labels, sop


def limit_threads(n: int) -> None:
    """n threads for Numba and torch, where loaded (OpenBLAS takes OPENBLAS_NUM_THREADS, set before it loads)."""
    if "numba" in sys.modules:
        sys.modules["numba"].set_num_threads(min(n, sys.modules["numba"].config.NUMBA_NUM_THREADS))
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


def open_model(spec: dict) -> tuple[object, float]:
    """(the side's model, the time its library finished importing); from spec["path"] or random weights."""
    if spec["side"] == "tinyalbert":
        from tinyalbert import nn, tune_process, weights

        imported = time.perf_counter()
        tune_process(training=False)       # run_model adds malloc's setting at the first training step
        limit_threads(spec["threads"])
        if "path" in spec:
            return weights.load(spec["path"], mmap=spec.get("mmap", True)), imported
        config = nn.AlbertConfig.from_dict(spec["config"])
        return nn.Albert(config, nn.init_params(config, dtype=np.float32)), imported
    import torch
    import transformers

    model_class = getattr(transformers, spec.get("model_class", "AlbertForPreTraining"))   # imported lazily
    imported = time.perf_counter()
    transformers.logging.set_verbosity_error()
    limit_threads(spec["threads"])
    attention = {"attn_implementation": spec["attn"]} if "attn" in spec else {}
    if "path" in spec:
        return model_class.from_pretrained(spec["path"], **attention).eval(), imported
    torch.manual_seed(0)
    return model_class(transformers.AlbertConfig(**spec["config"], **attention)).eval(), imported


def run_model(side: str, model, batch: tuple, training: bool) -> tuple[float | None, object]:
    """A training step of MLM + SOP, or a forward: (the loss or None, what to keep alive until "prepare")."""
    if side == "tinyalbert" and training:
        from tinyalbert import tune_process

        tune_process()                     # idempotent: a flag test after the first step
        loss, grads = model.loss_and_grads(*batch)
        return float(loss), grads
    if side == "tinyalbert":
        return None, model.forward(*batch[:3])
    import torch

    names = ("input_ids", "token_type_ids", "attention_mask", "labels", "sentence_order_label")
    batch = [torch.from_numpy(a) for a in batch]    # views of the same arrays: microseconds
    if training:
        out = model(**dict(zip(names, batch, strict=True)))
        out.loss.backward()
        return float(out.loss.detach()), None      # torch keeps its gradients on the parameters
    with torch.inference_mode():
        return None, model(**dict(zip(names[:3], batch[:3], strict=True)))


def answer(**fields) -> None:
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024      # Linux counts KiB
    print(RESULT_PREFIX + json.dumps({**fields, "maxrss_mib": peak_rss}), flush=True)


def main(spec: dict) -> None:
    side = spec["side"]
    model, imported = open_model(spec)
    opened = time.perf_counter()
    batch = make_batch(spec["batch"], spec["seq"], model.config.vocab_size)
    gc.collect()
    gc.freeze()          # the imports' objects: a collection between steps then costs ms, not 0.3 s
    answer(import_s=imported - T_START, open_s=opened - imported)
    kept = None
    for command in sys.stdin:
        started = time.perf_counter()
        if command == "prepare\n":
            kept = None
            if side == "torch":
                model.zero_grad(set_to_none=True)
            gc.collect()
            answer()
        elif command in ("step\n", "forward\n"):
            gc.disable()                   # as timeit does: no collector pause inside a timed call
            loss, kept = run_model(side, model, batch, training=command == "step\n")
            gc.enable()
            answer(loss=loss, seconds=time.perf_counter() - started)
        else:
            break


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
