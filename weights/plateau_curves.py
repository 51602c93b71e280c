"""Log the uniform-attention plateau for notebook 5: two ways to start the same small ALBERT, same batches.

    python weights/plateau_curves.py --arm reference --out weights/plateau/reference.json
    python weights/plateau_curves.py --arm grown --out weights/plateau/grown.json

(The committed logs in weights/plateau/ were made with --steps 2500 --grow-at 1000 and stopped by hand,
the reference at step 900 and the grown arm at step 1,400, to keep the study short on a shared machine;
each log's "recipe" records its command and its records end where it stopped.)

* reference: ALBERT's own initialisation (every weight matrix N(0, 0.02)), the shared layer applied
  --layers times from the first step;
* grown: fan-in weights N(0, 1/fan_in) and sinusoidal starting positions (pretrain's --weight-init
  fan-in --position-init sinusoid), the layer applied once until --grow-at, then the same layer applied
  --layers times with a fresh optimizer and schedule (pretrain's --init-from with --num-layers), as in
  weights/train_mini.sh.

Both arms train on the corpus sample installed with the package, with the bundled model's vocabulary,
on batch number `step` of the same PretrainingData, so they see exactly the same tokens.  Every
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

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("NUMBA_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402  (after the thread settings, which must precede the BLAS import)
from evaluate_mini import recipe_sources  # noqa: E402  (beside this script: the bundled model's source mix)

from tinyalbert import Albert, AlbertConfig, init_params  # noqa: E402
from tinyalbert.data import SAMPLE_CORPUS, PretrainingData  # noqa: E402
from tinyalbert.files import atomic_output  # noqa: E402
from tinyalbert.nn.params import EMB, fan_in_init, sinusoidal_positions  # noqa: E402
from tinyalbert.optim import clip_grad_norm, linear_schedule  # noqa: E402
from tinyalbert.predict import bundled_model_path  # noqa: E402
from tinyalbert.pretrain import evaluate, make_optimizer  # noqa: E402
from tinyalbert.weights import load  # noqa: E402


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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arm", choices=("reference", "grown"), required=True)
    ap.add_argument("--out", type=Path, required=True, help="the JSON log to write")
    ap.add_argument("--corpus", type=Path, default=SAMPLE_CORPUS)
    ap.add_argument("--steps", type=int, default=2500)
    ap.add_argument("--grow-at", type=int, default=1000, help="grown arm: step at which the depth grows")
    ap.add_argument("--layers", type=int, default=3, help="applications of the shared layer (grown: after growing)")
    ap.add_argument("--embedding-size", type=int, default=64)
    ap.add_argument("--hidden-size", type=int, default=128)
    ap.add_argument("--num-heads", type=int, default=2)
    ap.add_argument("--intermediate-size", type=int, default=512)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--eval-batches", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    model_file = load(bundled_model_path())
    tokenizer = model_file.tokenizer
    del model_file
    sources = recipe_sources(args.corpus)
    data = PretrainingData(sources, tokenizer, max_seq_length=args.seq_len, seed=args.seed, heldout_fraction=0.05,
                           progress=False)
    heldout = [data.batch(i, args.batch_size, split="heldout") for i in range(args.eval_batches)]

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
                  "settings": {k: v for k, v in vars(args).items() if k not in ("out", "corpus")},
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

    return 0


if __name__ == "__main__":
    sys.exit(main())
