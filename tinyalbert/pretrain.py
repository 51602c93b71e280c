"""Pretrain ALBERT with masked-LM + sentence-order prediction: `python -m tinyalbert.pretrain`.

    python -m tinyalbert.pretrain --out runs/mini --vocab runs/mini/spiece.model \\
        --data tinyalbert/data/corpus/tinystories:3 tinyalbert/data/corpus/onestopenglish:2 \\
        --hidden-size 256 --num-heads 4 --num-layers 6 --steps 3000 --batch-size 32

One training step: batch(step) -> model.loss_and_grads -> clip the global norm ->
LAMB (or AdamW) update with warm-up then linear decay.  Batches and dropout masks
(when the config's rates are not 0) depend only on (seed, step), and every kernel
is deterministic, so a run stopped and resumed
from its checkpoint (`--resume`) ends with parameters bitwise equal to those of
an uninterrupted run, even when it was killed (tests/test_killed.py).  --resume
refuses arguments that differ from the checkpoint's, except those in
MAY_CHANGE_ON_RESUME, and compares --vocab and --data by content.

The run folder holds:
    checkpoint.h5   params, optimizer moments, step, config, arguments and fingerprints of the vocabulary
                    and the data (written atomically, like every file here)
    log.jsonl       one JSON record per logged step and per evaluation (appended; --resume drops the
                    records after the checkpoint's step, and a last line cut short by a crash)
    loss.png        the training and held-out loss curves
    model.h5        the final weights in tinyalbert's format, with the vocabulary (also at --export)
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .files import atomic_output
from .nn.config import AlbertConfig
from .nn.dropout import step_generator
from .nn.model import Albert
from .nn.params import (
    EMB,
    fan_in_init,
    has_sop_head,
    init_params,
    param_shapes,
    sinusoidal_positions,
    tie_query_key_init,
)
from .optim import AdamW, Lamb, clip_grad_norm, linear_schedule
from .tuning import tune_process

CHECKPOINT_FORMAT = "tinyalbert-checkpoint"
# Arguments that may differ between a run and its resumption: where the run lives and its caches, how
# often it reports or saves, and where (and in which storage dtype) it writes the final weights.  None of
# them changes a batch or a number the training computes.  --resume compares every other argument, so an
# option added later is checked unless it is added here.
MAY_CHANGE_ON_RESUME = frozenset({"out", "resume", "stop_after", "log_every", "eval_every", "checkpoint_every",
                                  "cache_dir", "export", "export_dtype"})


def build_config(args: argparse.Namespace, vocab_size: int) -> AlbertConfig:
    """The model config: a preset or JSON file, then the command-line overrides, with the vocabulary's size."""
    if args.config:
        base = AlbertConfig.from_name_or_file(args.config).to_dict()
    else:
        base = AlbertConfig(embedding_size=128, hidden_size=256, num_attention_heads=4, intermediate_size=1024,
                            num_hidden_layers=6).to_dict()
    overrides = {"embedding_size": args.embedding_size, "hidden_size": args.hidden_size,
                 "num_attention_heads": args.num_heads, "intermediate_size": args.intermediate_size,
                 "num_hidden_layers": args.num_layers, "num_hidden_groups": args.num_groups,
                 "initializer_range": args.init_std}
    base.update({k: v for k, v in overrides.items() if v is not None})
    base["vocab_size"] = vocab_size
    base["max_position_embeddings"] = max(base.get("max_position_embeddings", 512), args.seq_len)
    return AlbertConfig.from_dict(base)


def canonical_order(config: AlbertConfig, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The params in the reference's order.  HDF5 lists names alphabetically, and the global gradient
    norm adds the tensors in dict order: a resumed run must add them in the same order to stay bitwise exact."""
    return {name: params[name] for name in param_shapes(config, sop_head=has_sop_head(params))}


def make_optimizer(name: str, params: dict[str, np.ndarray], lr: float, weight_decay: float):
    if name == "lamb":
        return Lamb(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r} (lamb or adamw)")


# ---- checkpoints --------------------------------------------------------------------------------------
def save_checkpoint(path: Path, config: AlbertConfig, params: dict[str, np.ndarray], optimizer, step: int,
                    args: dict[str, Any], fingerprints: dict[str, Any]) -> None:
    """Everything needed to continue exactly: params, optimizer state, step, and the arguments and input
    fingerprints (run_fingerprints) a resumed run must match.  Temporary file, then rename."""
    with atomic_output(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["format"] = CHECKPOINT_FORMAT
        f.attrs["step"] = step
        f.attrs["config_json"] = config.to_json_string()
        f.attrs["args_json"] = json.dumps(args, sort_keys=True)
        f.attrs["fingerprints_json"] = json.dumps(fingerprints, sort_keys=True)
        for name, value in params.items():
            f.create_dataset(f"params/{name}", data=value)
        for name, value in optimizer.state_dict().items():
            f.create_dataset(f"optimizer/{name}", data=value)


def is_checkpoint(path: str | os.PathLike) -> bool:
    """True for a training checkpoint (checkpoint.h5), False for anything else (e.g. a weights file)."""
    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("format") == CHECKPOINT_FORMAT
    except OSError:
        return False


def load_checkpoint(path: Path) -> tuple[AlbertConfig, dict[str, np.ndarray], dict[str, Any], int, dict, dict]:
    """(config, params, optimizer state, step, arguments, fingerprints); a checkpoint written before
    fingerprints were saved has none ({})."""
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != CHECKPOINT_FORMAT:
                raise ValueError(f"{path} is not a tinyalbert training checkpoint")
            config = AlbertConfig.from_json_string(f.attrs["config_json"])
            params = {name: f["params"][name][()] for name in f["params"]}
            opt_state = {name: f["optimizer"][name][()] for name in f["optimizer"]}
            return (config, params, opt_state, int(f.attrs["step"]), json.loads(f.attrs["args_json"]),
                    json.loads(f.attrs.get("fingerprints_json", "{}")))
    except OSError as e:
        raise ValueError(f"cannot read checkpoint {path}: {e}") from None


# ---- resuming -----------------------------------------------------------------------------------------
def run_fingerprints(tokenizer, data) -> dict[str, Any]:
    """What --vocab and --data hold, as opposed to where: a file may move, its content may not change.
    The data's fingerprint is each source's token-cache key (a hash of its files' names and contents
    and of the vocabulary), with the source's name and weight, which also shape the batches."""
    return {"vocab": "sha256 " + hashlib.sha256(tokenizer.model_bytes).hexdigest()[:16],
            "data": [f"{source.name}:{source.weight:g}:{cache.meta['key'][:16]}"
                     for source, cache in zip(data.sources, data.caches, strict=True)]}


def resume_mismatches(args: argparse.Namespace, fingerprints: dict[str, Any], saved_args: dict[str, Any],
                      saved_fingerprints: dict[str, Any]) -> list[str]:
    """'--option NEW but the checkpoint was made with OLD' for every argument outside MAY_CHANGE_ON_RESUME
    that differs from the checkpoint's; fingerprinted arguments (--vocab, --data) are compared by content."""
    parser = build_parser()
    mismatches = []
    for key, value in sorted(vars(args).items()):
        if key in MAY_CHANGE_ON_RESUME:
            continue
        # a checkpoint written before an option existed ran with its default
        saved = saved_args.get(key, parser.get_default(key))
        flag = "--" + key.replace("_", "-")
        if key in fingerprints and key in saved_fingerprints:
            if fingerprints[key] != saved_fingerprints[key]:
                mismatches.append(f"{flag} {value!r} (content {fingerprints[key]}) but the checkpoint was made with "
                                  f"{saved!r} (content {saved_fingerprints[key]})")
        elif value != saved:
            mismatches.append(f"{flag} is {value!r} but the checkpoint was made with {saved!r}")
    return mismatches


def trim_log(log_path: Path, step: int) -> None:
    """Keep the log consistent with a checkpoint of `step`: drop the records written after it (the
    resumed run writes them again), and a last line cut short by a crash.  Rewritten atomically."""
    lines = log_path.read_text(encoding="utf-8", errors="replace").split("\n") if log_path.exists() else []
    kept = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            record_step = record["step"]
        except (json.JSONDecodeError, TypeError, KeyError):
            if number < len(lines) - 1:
                raise ValueError(f"{log_path} line {number} is not a JSON record: {line[:60]!r}") from None
            print(f"{log_path}: dropping its last line, cut short by a crash: {line[:60]!r}", file=sys.stderr)
            continue
        if record_step <= step:
            kept.append(line + "\n")
    with atomic_output(log_path) as tmp:
        Path(tmp).write_text("".join(kept), encoding="utf-8")


# ---- evaluation and plots -----------------------------------------------------------------------------
def heldout_totals(model: Albert, data, batches: int, batch_size: int) -> dict[str, float]:
    """The sums over `batches` fixed held-out batches (forward passes only, no dropout: `Albert.loss`) of
    the loss, its MLM and SOP parts, and the correct predictions and their counts."""
    totals = {"loss": 0.0, "mlm_loss": 0.0, "sop_loss": 0.0, "mlm_correct": 0, "mlm_count": 0, "sop_correct": 0,
              "sop_count": 0}
    for i in range(batches):
        b = data.batch(i, batch_size, split="heldout")
        loss, s = model.loss(b["input_ids"], b["token_type_ids"], b["attention_mask"], b["mlm_labels"],
                             b["sop_labels"] if model.has_sop_head else None)
        totals["loss"] += loss
        totals["mlm_loss"] += s["mlm_loss"]
        totals["sop_loss"] += s["sop_loss"] or 0.0
        for k in ("mlm_correct", "mlm_count", "sop_correct", "sop_count"):
            totals[k] += s[k]
    return totals


def evaluate(model: Albert, data, batches: int, batch_size: int) -> dict[str, float]:
    """Held-out loss, MLM top-1 accuracy and SOP accuracy over `batches` fixed held-out batches (heldout_totals)."""
    totals = heldout_totals(model, data, batches, batch_size)
    return {"eval_loss": totals["loss"] / batches, "eval_mlm_loss": totals["mlm_loss"] / batches,
            "eval_sop_loss": totals["sop_loss"] / batches,
            "eval_mlm_acc": totals["mlm_correct"] / max(1, totals["mlm_count"]),
            "eval_sop_acc": totals["sop_correct"] / max(1, totals["sop_count"])}


def plot_losses(log_path: Path, png_path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train, held = [], []
    with open(log_path, encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if "loss" in r:
                train.append((r["step"], r["loss"]))
            if "eval_loss" in r:
                held.append((r["step"], r["eval_loss"]))
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train, strict=True), lw=0.8, label="training loss (MLM + SOP)")
    if held:
        ax.plot(*zip(*held, strict=True), "o-", label="held-out loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_output(png_path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


# ---- the loop ------------------------------------------------------------------------------------------
def train(args: argparse.Namespace) -> dict[str, Any]:
    from tqdm import tqdm

    from .data import PretrainingData
    from .tokenizer import Tokenizer
    from .weights import save

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path = out / "checkpoint.h5", out / "log.jsonl"
    tokenizer = Tokenizer(args.vocab)
    dtype = np.dtype(args.dtype).type
    run_args = {k: v for k, v in vars(args).items() if k not in ("resume",)}
    if args.resume and not ckpt_path.exists():
        raise FileNotFoundError(f"--resume: there is no checkpoint to resume from ({ckpt_path} does not exist); "
                                "leave out --resume to start a new run")

    data = PretrainingData(args.data, tokenizer, cache_dir=args.cache_dir, max_seq_length=args.seq_len,
                           seed=args.seed, heldout_fraction=args.heldout_fraction, max_ngram=args.max_ngram,
                           whole_word_mask=args.mask_unit == "word", pair_task=args.pair_task)
    fingerprints = run_fingerprints(tokenizer, data)

    if args.resume:
        config, params, opt_state, start_step, saved_args, saved_fingerprints = load_checkpoint(ckpt_path)
        mismatches = resume_mismatches(args, fingerprints, saved_args, saved_fingerprints)
        if mismatches:
            raise ValueError(f"--resume: {ckpt_path} continues a run with other arguments: {'; '.join(mismatches)}")
        params = canonical_order(config, params)
        optimizer = make_optimizer(args.optimizer, params, args.lr, args.weight_decay)
        optimizer.load_state_dict(opt_state)
        print(f"resuming from step {start_step} of {args.steps}", file=sys.stderr)
        trim_log(log_path, start_step)
    else:
        if args.init_from:
            if is_checkpoint(args.init_from):
                config, params, *_ = load_checkpoint(Path(args.init_from))
            else:
                from .weights import load_params
                config, params, spiece, _ = load_params(args.init_from, dtype=dtype, mmap=False)
                if spiece is not None and spiece != tokenizer.model_bytes:
                    raise ValueError(f"--init-from {args.init_from} was trained with another vocabulary than --vocab")
            params = canonical_order(config, {k: np.array(v, dtype=dtype) for k, v in params.items()})
            if args.num_layers and args.num_layers != config.num_hidden_layers:
                # every application uses the same shared layer, so the parameters fit any depth
                print(f"--init-from: applying the shared layer {args.num_layers} times instead of "
                      f"{config.num_hidden_layers}", file=sys.stderr)
                config = AlbertConfig.from_dict({**config.to_dict(), "num_hidden_layers": args.num_layers})
        else:
            config = build_config(args, tokenizer.vocab_size)
            params = init_params(config, seed=args.seed, dtype=dtype)
            if args.weight_init == "fan-in":
                fan_in_init(params, seed=args.seed + 1)
            if args.position_init == "sinusoid":
                params[EMB + "position_embeddings.weight"] = sinusoidal_positions(
                    config.max_position_embeddings, config.embedding_size, config.initializer_range, dtype)
            if args.qk_init == "tied":
                tie_query_key_init(config, params)
        optimizer = make_optimizer(args.optimizer, params, args.lr, args.weight_decay)
        start_step = 0
        with atomic_output(log_path):
            pass                                  # a new, empty log
    model = Albert(config, params)

    print(data.summary(), file=sys.stderr)
    n_params = sum(p.size for p in params.values())
    print(f"model: {n_params:,} parameters, H={config.hidden_size} E={config.embedding_size} "
          f"L={config.num_hidden_layers} G={config.num_hidden_groups} NH={config.num_attention_heads} "
          f"I={config.intermediate_size} V={config.vocab_size}", file=sys.stderr)

    bar = tqdm(total=args.steps, initial=start_step, desc="pretraining", unit="step", dynamic_ncols=True)
    window: list[dict[str, float]] = []
    last = time.perf_counter()
    tokens_since = 0
    with open(log_path, "a", encoding="utf-8") as log:
        for step in range(start_step, args.steps):
            b = data.batch(step, args.batch_size)
            loss, grads = model.loss_and_grads(b["input_ids"], b["token_type_ids"], b["attention_mask"],
                                               b["mlm_labels"], b["sop_labels"], rng=step_generator(args.seed, step))
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss became {loss} at step {step}; lower --lr or raise --warmup")
            grad_norm = clip_grad_norm(grads, args.clip)
            lr = linear_schedule(step, args.lr, args.warmup, args.steps)
            optimizer.step(grads, lr=lr)
            s = model.last_stats
            tokens_since += int(b["attention_mask"].sum())
            window.append({"loss": loss, "mlm_acc": s["mlm_correct"] / max(1, s["mlm_count"]),
                           "sop_acc": s["sop_correct"] / max(1, s["sop_count"])})
            done = step + 1
            if done % args.log_every == 0 or done == args.steps:
                now = time.perf_counter()
                record = {"step": done, "lr": lr, "grad_norm": grad_norm,
                          **{k: float(np.mean([w[k] for w in window])) for k in window[0]},
                          "tokens_per_s": tokens_since / (now - last)}
                window, last, tokens_since = [], now, 0
                bar.set_postfix(loss=f"{record['loss']:.3f}", mlm=f"{record['mlm_acc']:.3f}",
                                sop=f"{record['sop_acc']:.2f}", tok_s=f"{record['tokens_per_s']:.0f}")
                log.write(json.dumps(record) + "\n")
                log.flush()
            if done % args.eval_every == 0 or done == args.steps:
                record = {"step": done, **evaluate(model, data, args.eval_batches, args.batch_size)}
                log.write(json.dumps(record) + "\n")
                log.flush()
                bar.write(f"step {done}: held-out loss {record['eval_loss']:.3f}, "
                          f"MLM acc {record['eval_mlm_acc']:.3f}, SOP acc {record['eval_sop_acc']:.3f}")
                plot_losses(log_path, out / "loss.png")
            if done % args.checkpoint_every == 0 or done == args.steps or done == args.stop_after:
                os.fsync(log.fileno())            # the log on disk reaches at least as far as the checkpoint
                save_checkpoint(ckpt_path, config, params, optimizer, done, run_args, fingerprints)
            bar.update(1)
            if done == args.stop_after:
                break
    bar.close()

    finished = start_step >= args.steps or done == args.steps
    if finished:
        provenance = {"trained_by": "python -m tinyalbert.pretrain", "arguments": run_args,
                      "data": [str(d) for d in args.data]}
        save(out / "model.h5", config, params, spiece_model_bytes=tokenizer.model_bytes, provenance=provenance,
             dtype=args.export_dtype)
        if args.export:
            save(args.export, config, params, spiece_model_bytes=tokenizer.model_bytes, provenance=provenance,
                 dtype=args.export_dtype)
    return {"config": config, "params": params, "finished": finished}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tinyalbert.pretrain", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="run folder (checkpoint, logs, plot, final model)")
    p.add_argument("--vocab", required=True, help="SentencePiece model (python -m tinyalbert.vocab makes one)")
    p.add_argument("--data", nargs="+", required=True, help="text folders or files, each optionally SOURCE:WEIGHT")
    p.add_argument("--config", help="preset name (base, large, xlarge, xxlarge) or a config.json")
    p.add_argument("--embedding-size", type=int)
    p.add_argument("--hidden-size", type=int)
    p.add_argument("--num-heads", type=int)
    p.add_argument("--intermediate-size", type=int)
    p.add_argument("--num-layers", type=int, help="applications of the shared layer")
    p.add_argument("--num-groups", type=int, help="layer groups, each its own weights (default 1: one layer shared "
                   "by every application; = --num-layers: no sharing); application i uses group int(i / (L / G))")
    p.add_argument("--init-std", type=float, help="standard deviation of the initial weights (the config's "
                   "initializer_range; ALBERT's 0.02 suits H=4096 and is small for a small model)")
    p.add_argument("--weight-init", choices=("normal", "fan-in"), default="normal",
                   help="initial weight matrices outside the embeddings: normal(0, init-std) as the reference, or "
                        "normal(0, 1/fan_in) (a small model leaves the uniform-attention plateau much sooner)")
    p.add_argument("--position-init", choices=("normal", "sinusoid"), default="normal",
                   help="initial position embeddings: normal(0, init-std) as the reference, or sines and cosines "
                        "of the same scale (still trained; helps a small model learn to attend to its neighbours)")
    p.add_argument("--qk-init", choices=("independent", "tied"), default="independent",
                   help="initial key weights: drawn independently as the reference, or equal to the query weights "
                        "(attention starts out favouring similar tokens; both are still trained)")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--max-ngram", type=int, default=3, help="longest masked span, in masking units (ALBERT: 3)")
    p.add_argument("--pair-task", choices=("sop", "nsp"), default="sop",
                   help="the sentence-pair task: ALBERT's sentence-order prediction, or BERT's next-sentence "
                        "prediction (B from another document half the time); the evaluation's SOP accuracy is "
                        "then NSP's")
    p.add_argument("--mask-unit", choices=("word", "piece"), default="word",
                   help="mask whole words (ALBERT) or single SentencePiece pieces")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--optimizer", choices=("lamb", "adamw"), default="lamb")
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--warmup", type=int, default=100, help="warm-up steps")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--clip", type=float, default=1.0, help="global gradient-norm clip")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--eval-batches", type=int, default=8)
    p.add_argument("--heldout-fraction", type=float, default=0.01)
    p.add_argument("--checkpoint-every", type=int, default=250)
    p.add_argument("--stop-after", type=int, default=None, help="stop (with a checkpoint) after this step")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.h5")
    p.add_argument("--init-from", help="start from the weights of a tinyalbert .h5 file or a training checkpoint.h5 "
                                       "(a new optimizer and schedule: a second phase of pretraining); the model and "
                                       "initialisation options are ignored except --num-layers, which may change "
                                       "how often the shared layer is applied")
    p.add_argument("--cache-dir", help="token cache folder (default: the data module's)")
    p.add_argument("--export", help="also write the final weights here")
    p.add_argument("--export-dtype", choices=("float32", "float16"), default="float32")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    tune_process()
    args = parse_args(argv)
    try:
        train(args)
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
