"""Log the uniform-attention plateau for notebook 5: two ways to start the same small ALBERT, same batches.

    python weights/plateau_curves.py --arm reference --corpus CORPUS --out weights/plateau/reference.json \
        --save-model runs/plateau/reference.h5
    python weights/plateau_curves.py --arm grown --corpus CORPUS --out weights/plateau/grown.json \
        --save-model runs/plateau/grown.h5
    python weights/plateau_curves.py --arm grown --pair-task nsp --corpus CORPUS --out weights/plateau/grown-nsp.json \
        --save-model runs/plateau/grown-nsp.h5
    python weights/plateau_curves.py --measure-final runs/plateau/grown.h5 --corpus CORPUS \
        --out weights/plateau/grown.json

(and --measure-final for each of the three saved models, which measures the float16 copy).  The committed
logs in weights/plateau/ were made by these commands with CORPUS the full 70 MB corpus (the sample in
tinyalbert/data/corpus is too small for 4,000 steps of 32 x 128 tokens), the three runs side by side on
a two-core machine, about 80 minutes; the models themselves are not kept.  grown-nsp is the grown arm
trained with BERT's next-sentence prediction instead of sentence order, for notebook 7.  The reference
and grown runs started before --pair-task existed (they trained SOP, its default, which their logs'
settings record), and the logs name the corpus and output paths as above rather than this machine's.
The model has the shape of the bundled model's first phase (weights/train_mini.sh): H = 256, E = 128,
4 heads, I = 1024, sequences of 128 tokens, batches of 32, AdamW at 1e-3.

* reference: ALBERT's own initialisation (every weight matrix N(0, 0.02)), the shared layer applied
  --layers times from the first step;
* grown: fan-in weights N(0, 1/fan_in) and sinusoidal starting positions (pretrain's --weight-init
  fan-in --position-init sinusoid), the layer applied once until --grow-at, then the same layer applied
  --layers times with a fresh optimizer and schedule (pretrain's --init-from with --num-layers), as in
  weights/train_mini.sh.

Both arms train on the bundled model's mix of sources (weights/mini-sources.txt) with its vocabulary, on
batch number `step` of the same PretrainingData, so they see exactly the same tokens.  Every
--log-every steps the log records the training MLM loss (mean over the window), the held-out MLM loss
and accuracy, and for every application of the layer the mean entropy of an attention row on the
held-out batches, with the entropy of uniform attention over the same rows beside it.  Each arm runs on
one thread; the two can run side by side.  Notebook 5 plots the two logs; they are not re-made in CI.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

if __name__ == "__main__":
    # one thread per arm, so that two arms run side by side; only when run, never on import (notebook 5
    # and the tests import attention_entropy), and before NumPy loads its BLAS, which reads them once
    for _name in ("OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(_name, "1")

import numpy as np  # noqa: E402  (after the thread settings, which must precede the BLAS import)
from evaluate_mini import adjacent_attention, recipe_sources  # noqa: E402  (beside this script)

from tinyalbert import Albert, AlbertConfig, init_params  # noqa: E402
from tinyalbert.data import SAMPLE_CORPUS, PretrainingData  # noqa: E402
from tinyalbert.files import atomic_output  # noqa: E402
from tinyalbert.nn.params import EMB, fan_in_init, sinusoidal_positions  # noqa: E402
from tinyalbert.optim import clip_grad_norm, linear_schedule  # noqa: E402
from tinyalbert.predict import bundled_model_path  # noqa: E402
from tinyalbert.pretrain import evaluate, make_optimizer  # noqa: E402
from tinyalbert.weights import load, save  # noqa: E402


def attention_entropy(model: Albert, batches: list[dict[str, np.ndarray]]) -> tuple[list[float], float]:
    """Mean entropy (nats) of an attention row at every application, and that of uniform attention.

    Averaged over heads and over the real (unpadded) queries of `batches`; a row over n real keys
    has entropy ln n when uniform, so the second figure is the mean of ln n over the same rows.
    """
    per_application: list[list[float]] = []
    uniform: list[float] = []
    for b in batches:
        out = model.forward(b["input_ids"], b["token_type_ids"], b["attention_mask"], output_attentions=True)
        real = b["attention_mask"].astype(bool)                                   # (B, T)
        lengths = real.sum(1)
        for i, probs in enumerate(out.attentions):                                # (B, NH, T, T)
            p = probs.astype(np.float64)
            row = -(p * np.log(np.where(p > 0, p, 1.0))).sum(-1)                  # (B, NH, T)
            if len(per_application) <= i:
                per_application.append([])
            per_application[i].append(float(row.transpose(0, 2, 1)[real].mean()))
        uniform.append(float(np.log(np.repeat(lengths, lengths)).mean()))
    return [float(np.mean(v)) for v in per_application], float(np.mean(uniform))


NOT_SETTINGS = ("out", "corpus", "save_model", "measure_final")   # where to read and write, not how to train


def attention_targets(model: Albert, batches: list[dict[str, np.ndarray]], special_ids: tuple[int, ...]) -> list[dict]:
    """Where attention goes, at every application: the mean share of a row (over heads and real queries)
    on the special tokens ([CLS], [SEP]), on the query's own token, and on its two neighbours, with the
    neighbours' share under uniform attention beside it.  Low entropy alone does not say that a model
    reads its context: a row can be sharp on [SEP]."""
    sums: list[np.ndarray] = []
    rows = 0
    for b in batches:
        out = model.forward(b["input_ids"], b["token_type_ids"], b["attention_mask"], output_attentions=True)
        real = b["attention_mask"].astype(bool)                                   # (B, T)
        special = np.isin(b["input_ids"], special_ids) & real
        lengths = real.sum(1, keepdims=True)
        position = np.arange(real.shape[1])[None, :]
        uniform_neighbours = ((position > 0).astype(float) + (position < lengths - 1)) / lengths   # (B, T)
        for i, probs in enumerate(out.attentions):                                # (B, NH, T, T)
            p = probs.astype(np.float64)
            per_query = np.stack([(p * special[:, None, None, :]).sum(-1), np.diagonal(p, axis1=2, axis2=3),
                                  adjacent_attention(p)], -1).mean(1)             # (B, T, 3), mean over heads
            found = np.concatenate([per_query[real].sum(0), [uniform_neighbours[real].sum()]])
            if len(sums) <= i:
                sums.append(np.zeros(4))
            sums[i] += found
        rows += int(real.sum())
    keys = ("special_tokens", "itself", "neighbours", "neighbours_if_uniform")
    return [dict(zip(keys, (v / rows).tolist(), strict=True)) for v in sums]


def measure_final(log_path: Path, model_path: Path, corpus: Path) -> dict:
    """Measure a saved model and add the figures to its log: "pair_tasks", MLM, SOP and NSP accuracy on the
    ablation study's held-out batches (`tinyalbert.ablations.evaluate`, 2,048 pairs per task, the same
    examples as every model of the study), so that notebook 7 can set models that left the plateau beside
    the study's Table 5; and "attention_targets", where attention goes on the log's own held-out batches."""
    from tinyalbert.ablations import RECIPE, evaluate, heldout_data

    model = load(model_path)
    tok = model.tokenizer
    log = json.loads(log_path.read_text())
    step = log["records"][-1]["step"]
    study = {task: heldout_data(corpus, tok, task, RECIPE["seq_len"]) for task in ("sop", "nsp")}
    log["pair_tasks"] = evaluate(model, study) | {"step": step}
    batches = heldout_batches(corpus, tok, log["settings"])
    log["attention_targets"] = {"step": step,
                                "applications": attention_targets(model, batches, (tok.cls_id, tok.sep_id))}
    with atomic_output(log_path) as tmp:
        Path(tmp).write_text(json.dumps(log, indent=1) + "\n")
    return {k: log[k] for k in ("pair_tasks", "attention_targets")}


def training_data(corpus: Path, tokenizer, settings: dict) -> PretrainingData:
    return PretrainingData(recipe_sources(corpus), tokenizer, max_seq_length=settings["seq_len"],
                           seed=settings["seed"], heldout_fraction=0.05, pair_task=settings["pair_task"],
                           progress=False)


def heldout_batches(corpus: Path, tokenizer, settings: dict, data: PretrainingData | None = None) -> list[dict]:
    if data is None:
        data = training_data(corpus, tokenizer, settings)
    return [data.batch(i, settings["batch_size"], split="heldout") for i in range(settings["eval_batches"])]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arm", choices=("reference", "grown"), help="the arm to train (required unless --measure-final)")
    ap.add_argument("--out", type=Path, required=True, help="the JSON log to write")
    ap.add_argument("--corpus", type=Path, default=SAMPLE_CORPUS)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--grow-at", type=int, default=3000, help="grown arm: step at which the depth grows")
    ap.add_argument("--layers", type=int, default=3, help="applications of the shared layer (grown: after growing)")
    ap.add_argument("--embedding-size", type=int, default=128)
    ap.add_argument("--hidden-size", type=int, default=256)
    ap.add_argument("--num-heads", type=int, default=4)
    ap.add_argument("--intermediate-size", type=int, default=1024)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--eval-batches", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pair-task", choices=("sop", "nsp"), default="sop",
                    help="the sentence-pair task trained beside MLM (nsp: B from another document, as in BERT)")
    ap.add_argument("--save-model", type=Path, help="also write the trained model here at the end (float16)")
    ap.add_argument("--measure-final", type=Path, metavar="MODEL",
                    help="instead of training: measure MODEL (as written by --save-model) on the ablation study's "
                         "held-out NSP and SOP pairs, and where its attention goes, and add both to the log --out")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    if args.measure_final:
        print(json.dumps(measure_final(args.out, args.measure_final, args.corpus)))
        return 0
    if args.arm is None:
        ap.error("--arm is required to train")

    model_file = load(bundled_model_path())
    tokenizer = model_file.tokenizer
    del model_file
    data = training_data(args.corpus, tokenizer, vars(args))
    heldout = heldout_batches(args.corpus, tokenizer, vars(args), data)

    first_depth = 1 if args.arm == "grown" else args.layers
    config = AlbertConfig(vocab_size=tokenizer.vocab_size, embedding_size=args.embedding_size,
                          hidden_size=args.hidden_size, num_attention_heads=args.num_heads,
                          intermediate_size=args.intermediate_size, num_hidden_layers=first_depth,
                          max_position_embeddings=args.seq_len)
    params = init_params(config, seed=args.seed)
    if args.arm == "grown":
        fan_in_init(params, seed=args.seed + 1)
        params[EMB + "position_embeddings.weight"] = sinusoidal_positions(
            config.max_position_embeddings, config.embedding_size, config.initializer_range)
    model = Albert(config, params)
    optimizer = make_optimizer("adamw", params, args.lr, 0.01)
    phase_start, phase_steps = 0, args.steps      # grown: phase 1 stops at --grow-at with the rate still high

    records: list[dict] = []
    window: list[float] = []
    start = time.perf_counter()

    def log(step: int) -> None:
        entropy, uniform = attention_entropy(model, heldout)
        held = evaluate(model, data, args.eval_batches, args.batch_size)
        records.append({"step": step, "depth": model.config.num_hidden_layers,
                        "train_mlm_loss": float(np.mean(window)) if window else None,
                        "heldout_mlm_loss": held["eval_mlm_loss"], "heldout_mlm_acc": held["eval_mlm_acc"],
                        "heldout_sop_acc": held["eval_sop_acc"], "attention_entropy": entropy,
                        "uniform_entropy": uniform, "seconds": round(time.perf_counter() - start, 1)})
        window.clear()
        print(json.dumps(records[-1]), file=sys.stderr, flush=True)
        result = {"arm": args.arm, "recipe": "python weights/plateau_curves.py " + " ".join(argv or sys.argv[1:]),
                  "settings": {k: v for k, v in vars(args).items() if k not in NOT_SETTINGS},
                  "records": records}
        with atomic_output(args.out) as tmp:          # rewritten at every record: a stopped run leaves its curve
            Path(tmp).write_text(json.dumps(result, indent=1) + "\n")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    log(0)
    for step in range(args.steps):
        if args.arm == "grown" and step == args.grow_at:
            # the same parameters fit any depth: apply the layer more often, with a new optimizer and schedule
            config = AlbertConfig.from_dict({**config.to_dict(), "num_hidden_layers": args.layers})
            model = Albert(config, params)
            optimizer = make_optimizer("adamw", params, args.lr, 0.01)
            phase_start, phase_steps = step, args.steps - step
        b = data.batch(step, args.batch_size)
        _, grads = model.loss_and_grads(b["input_ids"], b["token_type_ids"], b["attention_mask"], b["mlm_labels"],
                                        b["sop_labels"])
        window.append(model.last_stats["mlm_loss"])
        clip_grad_norm(grads, 1.0)
        optimizer.step(grads, lr=linear_schedule(step - phase_start, args.lr, args.warmup, phase_steps))
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            log(step + 1)

    if args.save_model:
        save(args.save_model, model.config, params, spiece_model_bytes=tokenizer.model_bytes, dtype="float16",
             provenance={"recipe": "python weights/plateau_curves.py " + " ".join(argv or sys.argv[1:])})
    return 0


if __name__ == "__main__":
    sys.exit(main())
