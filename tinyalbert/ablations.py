"""The ALBERT paper's ablations in miniature: `python -m tinyalbert.ablations --corpus DIR`.

Three of the paper's tables, each shrunk to models that train in minutes on one CPU core:

    Table 3  embedding size E (16, 32, 64 = H) with every layer shared
    Table 4  cross-layer sharing: one layer group (all shared), 2 groups, L groups (nothing shared)
    Table 5  the sentence-pair task: next-sentence prediction (NSP, BERT) against sentence order (SOP, ALBERT)

Every arm is the same recipe (RECIPE below: H = 64, 2 heads, feed-forward 256, L = 4 applications,
sequences of 64 tokens, batches of 16, AdamW, fan-in initialisation and sinusoidal starting positions,
which leave the uniform-attention plateau soonest; see weights/README.md) with one thing changed, the
same number of steps (so the same token budget) and the same seeds.  The baseline arm (E = 64, all
shared, SOP) is one point of all three tables.  Each run is a `python -m tinyalbert.pretrain`
subprocess on one thread; `--jobs` of them run side by side.

Every trained model is then measured forward-only, deterministically, on the held-out documents
(the same fixed batches for every model): masked-LM top-1 accuracy, and the accuracy of its two-way
head on SOP pairs and on NSP pairs, whichever task it was trained on (label 0 means "B follows A" in
both, so the one head answers either question).  The bundled model, trained with SOP on about 25 times
the budget, is measured on the same batches as a reference.

The study is resumable: a finished run (its model.h5) or evaluation (eval.json) is never redone, and
an interrupted run continues from its checkpoint (pretrain --resume) with bitwise the same result.
It writes into OUT (weights/ablations by default): results.json (the recipe, every run's figures and
training curve) and, in float16, the models the notebook 07_the_paper_in_miniature needs.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .cli import CommandErrors, OneLineParser
from .data import SAMPLE_CORPUS
from .files import atomic_output
from .tuning import one_thread

REPOSITORY = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPOSITORY / "weights" / "ablations"
RESULTS_FILE = "results.json"
RESULTS_FORMAT = "tinyalbert-ablations-1"

# Sources, folders of the corpus, with their share of examples.  OneStopEnglish is left out: its parallel
# rewrites of one article are separate documents, so a document-level held-out split leaks between them.
SOURCES = ("tinystories:0.5", "wikinews:0.3", "wikipedia:0.2")

# What every arm shares: the options of python -m tinyalbert.pretrain.
RECIPE: dict[str, Any] = {
    "hidden_size": 64, "num_heads": 2, "intermediate_size": 256, "num_layers": 4, "seq_len": 64,
    "batch_size": 16, "steps": 3000, "warmup": 150, "lr": 2e-3, "optimizer": "adamw", "weight_decay": 0.01,
    "clip": 1.0, "weight_init": "fan-in", "position_init": "sinusoid",
}
EVAL_PAIRS = 2048     # held-out sentence pairs per task: a standard error of about 1.1 points at 50 %
EVAL_BATCH = 32
EVAL_SEED = 0         # the held-out batches' seed: the same examples for every model


@dataclass(frozen=True)
class Arm:
    """One configuration of the study: the recipe with these three settings."""

    name: str
    description: str
    tables: tuple[int, ...]        # the paper's tables it belongs to
    embedding_size: int
    num_groups: int
    pair_task: str
    seeds: tuple[int, ...]


ARMS = (
    Arm("base", "E = 64, all layers shared, SOP (the baseline of every table)", (3, 4, 5), 64, 1, "sop", (0, 1)),
    Arm("nsp", "E = 64, all layers shared, NSP", (5,), 64, 1, "nsp", (0, 1)),
    Arm("not-shared", "E = 64, no sharing (4 groups for 4 applications), SOP", (4,), 64, 4, "sop", (0, 1)),
    Arm("e16", "E = 16, all layers shared, SOP", (3,), 16, 1, "sop", (0, 1)),
    Arm("groups-2", "E = 64, 2 groups (applications 1-2 share one layer, 3-4 another), SOP", (4,), 64, 2,
        "sop", (0, 1)),
    Arm("e32", "E = 32, all layers shared, SOP", (3,), 32, 1, "sop", (0, 1)),
)
# the models the notebook reads (Figure 1: shared against not shared); the others stay in the work folder
KEPT_MODELS = ("base-s0", "not-shared-s0")


def run_name(arm: Arm, seed: int) -> str:
    return f"{arm.name}-s{seed}"


def runs_in_order() -> list[tuple[Arm, int]]:
    """Every (arm, seed), first seeds first, so that an early stop still leaves one run of every arm,
    except that the headline comparison (base against NSP) gets its second seeds right after its first."""
    first = [(arm, arm.seeds[0]) for arm in ARMS]
    headline = [(arm, s) for arm in ARMS if arm.name in ("base", "nsp") for s in arm.seeds[1:]]
    rest = [(arm, s) for arm in ARMS if arm.name not in ("base", "nsp") for s in arm.seeds[1:]]
    return first[:2] + headline + first[2:] + rest


def token_budget(recipe: dict[str, Any]) -> int:
    """Token positions every run trains on: steps x batch x sequence length (padding included)."""
    return recipe["steps"] * recipe["batch_size"] * recipe["seq_len"]


def source_specs(corpus: Path) -> list[str]:
    return [f"{corpus / spec.rsplit(':', 1)[0]}:{spec.rsplit(':', 1)[1]}" for spec in SOURCES]


def pretrain_arguments(arm: Arm, seed: int, recipe: dict[str, Any], corpus: Path, vocab: Path, out: Path,
                       cache_dir: str | None) -> list[str]:
    """The command line of one run of python -m tinyalbert.pretrain: a new run, or with --resume the
    continuation of the checkpoint in `out`."""
    options = {**recipe, "embedding_size": arm.embedding_size, "num_groups": arm.num_groups,
               "pair_task": arm.pair_task, "seed": seed}
    resume = ["--resume"] if (out / "checkpoint.h5").is_file() else []
    argv = ["--out", str(out), "--vocab", str(vocab), "--data", *source_specs(corpus), *resume,
            "--log-every", "20", "--eval-every", "200", "--eval-batches", "8", "--checkpoint-every", "50",
            "--export-dtype", "float16"]
    for key, value in options.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    if cache_dir:
        argv += ["--cache-dir", cache_dir]
    return argv


# ---- evaluation ---------------------------------------------------------------------------------------
def heldout_data(corpus: Path, tokenizer, pair_task: str, seq_len: int, cache_dir: str | None = None):
    """The held-out side of the study's sources, with pairs for `pair_task`, batches fixed by EVAL_SEED."""
    from .data import PretrainingData

    return PretrainingData(source_specs(corpus), tokenizer, cache_dir, max_seq_length=seq_len, seed=EVAL_SEED,
                           pair_task=pair_task, progress=False)


def evaluate(model, data_by_task: dict[str, Any], pairs: int = EVAL_PAIRS,
             batch_size: int = EVAL_BATCH) -> dict[str, Any]:
    """Held-out accuracies of one model, forward only (Albert.loss): MLM over the masked positions of both
    tasks' batches, and each pair task's accuracy with counts.  Deterministic: the batches depend only on
    EVAL_SEED."""
    from .pretrain import heldout_totals

    mlm_correct = mlm_count = 0
    result: dict[str, Any] = {}
    for task, data in data_by_task.items():
        totals = heldout_totals(model, data, pairs // batch_size, batch_size)
        mlm_correct, mlm_count = mlm_correct + totals["mlm_correct"], mlm_count + totals["mlm_count"]
        result[f"{task}_accuracy"] = totals["sop_correct"] / totals["sop_count"]
        result[f"{task}_count"] = totals["sop_count"]
    result["mlm_accuracy"], result["mlm_count"] = mlm_correct / mlm_count, mlm_count
    return result


def commonest_token_accuracy(data_by_task: dict[str, Any], pairs: int = EVAL_PAIRS,
                             batch_size: int = EVAL_BATCH) -> tuple[int, float]:
    """The MLM floor: (the commonest masked token of the evaluation batches, the accuracy of always answering it)."""
    labels = np.concatenate([data.batch(i, batch_size, split="heldout")["mlm_labels"].ravel()
                             for data in data_by_task.values() for i in range(pairs // batch_size)])
    counts = np.bincount(labels[labels != -100])
    return int(counts.argmax()), float(counts.max() / counts.sum())


# ---- Figure 1 ---------------------------------------------------------------------------------------
def probe_texts(corpus: Path = SAMPLE_CORPUS, per_source: int = 4, min_words: int = 12) -> list[str]:
    """A fixed set of paragraphs to look inside the models with: the first `per_source` paragraphs of at
    least min_words words from each source folder of the bundled sample corpus, in sorted order."""
    from .data import list_text_files, read_documents

    texts = []
    for folder in sorted(p for p in corpus.iterdir() if p.is_dir()):
        found = []
        for path in list_text_files([folder]):
            for document in read_documents(path):
                found += [p for p in document if len(p.split()) >= min_words][:per_source - len(found)]
                if len(found) == per_source:
                    break
            if len(found) == per_source:
                break
        texts += found
    return texts


def layer_transitions(model, texts: Sequence[str], max_length: int = 64) -> dict[str, list[float]]:
    """The paper's Figure 1 measures, per layer application i = 1..N: the L2 distance ||h_i - h_(i-1)|| and
    the cosine similarity cos(h_(i-1), h_i) between its input and output, averaged over every real token
    of `texts` ([CLS] ... [SEP], at most max_length tokens each).  h_0 is the projected embedding."""
    ids, mask = model.tokenizer.batch_encode(list(texts), max_length=max_length)
    hidden_states = model.forward(ids, attention_mask=mask).hidden_states
    real = mask.astype(bool)
    l2, cosine = [], []
    for before, after in zip(hidden_states[:-1], hidden_states[1:], strict=True):
        x, y = before[real].astype(np.float64), after[real].astype(np.float64)   # (tokens, H)
        l2.append(float(np.linalg.norm(y - x, axis=-1).mean()))
        cosine.append(float(((x * y).sum(-1) / (np.linalg.norm(x, axis=-1) * np.linalg.norm(y, axis=-1))).mean()))
    return {"l2_distance": l2, "cosine_similarity": cosine}


# ---- the study ------------------------------------------------------------------------------------------
def training_curve(log_path: Path) -> dict[str, list]:
    """The training-time held-out evaluations (8 batches) and the mean training speed from a run's log.jsonl."""
    curve: dict[str, list] = {"step": [], "mlm_accuracy": [], "pair_accuracy": [], "loss": []}
    speeds = []
    for line in log_path.read_text().splitlines():
        record = json.loads(line)
        if "eval_loss" in record:
            curve["step"].append(record["step"])
            curve["mlm_accuracy"].append(round(record["eval_mlm_acc"], 4))
            curve["pair_accuracy"].append(round(record["eval_sop_acc"], 4))
            curve["loss"].append(round(record["eval_loss"], 4))
        if "tokens_per_s" in record:
            speeds.append(record["tokens_per_s"])
    curve["mean_tokens_per_s"] = [round(float(np.mean(speeds)), 1)] if speeds else []
    return curve


def describe_corpus(corpus: Path) -> str:
    """Which corpus a study used, without its machine's path: the bundled sample, or the size of its sources."""
    if corpus.resolve() == SAMPLE_CORPUS.resolve():
        return "the bundled sample, tinyalbert/data/corpus"
    from .data import list_text_files

    size = sum(f.stat().st_size for f in list_text_files([corpus / s.rsplit(":", 1)[0] for s in SOURCES]))
    return f"{size / 1e6:.1f} MB of text in the source folders (the full corpus of weights/README.md)"


def write_json(path: Path, value: Any) -> None:
    with atomic_output(path) as tmp:
        Path(tmp).write_text(json.dumps(value, indent=1) + "\n")


class Study:
    """The runs, their evaluation and the results file; every step skips what is already done."""

    def __init__(self, corpus: Path, work: Path, out: Path, jobs: int, recipe: dict[str, Any],
                 eval_pairs: int, cache_dir: str | None):
        self.corpus, self.work, self.out, self.jobs = corpus, work, out, jobs
        self.recipe, self.eval_pairs, self.cache_dir = recipe, eval_pairs, cache_dir
        self.vocab = work / "spiece.model"
        self._heldout: dict[str, Any] | None = None

    def prepare(self) -> None:
        """The bundled model's vocabulary (every arm uses it), and the token caches, built once up front so
        that parallel runs do not each tokenize the corpus."""
        from .tokenizer import Tokenizer
        from .weights import load_params

        self.work.mkdir(parents=True, exist_ok=True)
        if not self.vocab.is_file():
            _, _, spiece, _ = load_params(REPOSITORY / "tinyalbert" / "data" / "tinyalbert-mini.h5")
            with atomic_output(self.vocab) as tmp:
                Path(tmp).write_bytes(spiece)
        tokenizer = Tokenizer(self.vocab)
        self._heldout = {task: heldout_data(self.corpus, tokenizer, task, self.recipe["seq_len"], self.cache_dir)
                         for task in ("sop", "nsp")}

    def run_folder(self, arm: Arm, seed: int) -> Path:
        return self.work / run_name(arm, seed)

    def train_all(self) -> None:
        """Every run, `jobs` at a time, one thread each; each evaluated as soon as it ends."""
        pending = [(a, s) for a, s in runs_in_order() if not (self.run_folder(a, s) / "eval.json").is_file()]
        running: list[tuple[Arm, int, subprocess.Popen, float]] = []
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
               "MKL_NUM_THREADS": "1"}
        failed = []
        try:
            self._schedule(pending, running, env, failed)
        finally:     # stopped (Ctrl-C, SIGTERM): stop the runs too, keeping their time; they resume later
            for arm, seed, process, started in running:
                process.terminate()
                process.wait()
                self._add_wall_time(arm, seed, time.time() - started)
        if failed:
            raise RuntimeError(f"runs failed: {', '.join(failed)} (run the study again to resume them)")

    def _add_wall_time(self, arm: Arm, seed: int, seconds: float) -> None:
        """A run's training wall time sums every invocation that trained it."""
        wall = self.run_folder(arm, seed) / "wall_seconds.json"
        previous = json.loads(wall.read_text())["seconds"] if wall.is_file() else 0.0
        write_json(wall, {"seconds": previous + seconds})

    def _schedule(self, pending: list, running: list, env: dict[str, str], failed: list[str]) -> None:
        trained: list[tuple[Arm, int]] = []      # waiting for their evaluation
        while pending or running or trained:
            while pending and len(running) < self.jobs:
                arm, seed = pending.pop(0)
                folder = self.run_folder(arm, seed)
                folder.mkdir(parents=True, exist_ok=True)
                if (folder / "model.h5").is_file():       # trained earlier, not yet evaluated
                    trained.append((arm, seed))
                    continue
                argv = pretrain_arguments(arm, seed, self.recipe, self.corpus, self.vocab, folder, self.cache_dir)
                log = open(folder / "train.log", "a", encoding="utf-8")
                print(f"[{time.strftime('%H:%M:%S')}] start {run_name(arm, seed)}", flush=True)
                process = subprocess.Popen([sys.executable, "-m", "tinyalbert.pretrain", *argv], stdout=log,
                                           stderr=subprocess.STDOUT, env=env)
                log.close()
                running.append((arm, seed, process, time.time()))
            if trained:      # the freed slots are busy again: evaluate meanwhile
                self.finish(*trained.pop(0))
                continue
            time.sleep(5)
            for item in list(running):
                arm, seed, process, started = item
                if process.poll() is None:
                    continue
                running.remove(item)
                folder = self.run_folder(arm, seed)
                seconds = time.time() - started
                self._add_wall_time(arm, seed, seconds)
                if process.returncode:
                    print(f"[{time.strftime('%H:%M:%S')}] {run_name(arm, seed)} failed (exit "
                          f"{process.returncode}): see {folder / 'train.log'}", flush=True)
                    failed.append(run_name(arm, seed))
                    continue
                print(f"[{time.strftime('%H:%M:%S')}] {run_name(arm, seed)} trained in {seconds / 60:.1f} min",
                      flush=True)
                trained.append((arm, seed))

    def finish(self, arm: Arm, seed: int) -> None:
        """Evaluate a trained run (once) into its eval.json."""
        from .weights import load

        folder = self.run_folder(arm, seed)
        if (folder / "eval.json").is_file():
            return
        started = time.time()
        model = load(folder / "model.h5")
        with one_thread():
            result = evaluate(model, self._heldout, self.eval_pairs)
        result["eval_seconds"] = round(time.time() - started, 1)
        write_json(folder / "eval.json", result)
        print(f"[{time.strftime('%H:%M:%S')}] {run_name(arm, seed)}: MLM {result['mlm_accuracy']:.3f}, "
              f"SOP {result['sop_accuracy']:.3f}, NSP {result['nsp_accuracy']:.3f}", flush=True)

    def evaluate_reference(self) -> dict[str, Any]:
        """The bundled model (SOP-trained, with about 25 times the study's token budget) measured on the same
        held-out batches: what the SOP arms might reach with more training.  Once, into work/reference/."""
        from .predict import bundled_model_path
        from .weights import load

        folder = self.work / "reference"
        if not (folder / "eval.json").is_file():
            folder.mkdir(parents=True, exist_ok=True)
            started = time.time()
            with one_thread():
                result = evaluate(load(bundled_model_path()), self._heldout, self.eval_pairs)
            result["eval_seconds"] = round(time.time() - started, 1)
            write_json(folder / "eval.json", result)
        return json.loads((folder / "eval.json").read_text())

    def collect(self, wall_seconds: float) -> dict[str, Any]:
        """results.json and the kept models in OUT, from whatever runs have finished."""
        from .weights import load, load_params, save

        self.out.mkdir(parents=True, exist_ok=True)
        probe = probe_texts()
        commonest, floor = commonest_token_accuracy(self._heldout, self.eval_pairs)
        runs = []
        for arm, seed in runs_in_order():
            folder = self.run_folder(arm, seed)
            if not (folder / "eval.json").is_file():
                continue
            name = run_name(arm, seed)
            config, params, spiece, _ = load_params(folder / "model.h5")
            run = {"arm": arm.name, "seed": seed, "config": {k: config.to_dict()[k] for k in (
                       "embedding_size", "hidden_size", "num_attention_heads", "intermediate_size",
                       "num_hidden_layers", "num_hidden_groups", "vocab_size")},
                   "parameters": int(sum(v.size for v in params.values())), "token_budget": token_budget(self.recipe),
                   **json.loads((folder / "eval.json").read_text()),
                   "train_seconds": round(json.loads((folder / "wall_seconds.json").read_text())["seconds"], 1),
                   "curve": training_curve(folder / "log.jsonl")}
            if name in KEPT_MODELS:
                kept = self.out / f"{name}.h5"
                save(kept, config, params, spiece_model_bytes=spiece, dtype="float16",
                     provenance={"recipe": "python -m tinyalbert.ablations", "run": name})
                run["file"] = kept.relative_to(self.out).as_posix()
            run["figure_1"] = layer_transitions(load(folder / "model.h5"), probe)
            runs.append(run)
        results = {"format": RESULTS_FORMAT, "recipe": self.recipe, "token_budget": token_budget(self.recipe),
                   "sources": list(SOURCES), "corpus": describe_corpus(self.corpus),
                   "evaluation": {"pairs_per_task": self.eval_pairs, "batch_size": EVAL_BATCH, "seed": EVAL_SEED,
                                  "commonest_token": self._heldout["sop"].tokenizer.id_to_piece(commonest),
                                  "commonest_token_mlm_accuracy": floor,
                                  "split": "heldout (1 % of each source's documents, never trained on)"},
                   "arms": [asdict(arm) for arm in ARMS], "kept_models": list(KEPT_MODELS),
                   "figure_1_probe": {"texts": len(probe), "max_length": 64,
                                      "source": "tinyalbert.ablations.probe_texts() of the bundled sample corpus"},
                   "wall_seconds": round(wall_seconds, 1), "runs": runs}
        reference = self.work / "reference" / "eval.json"
        if reference.is_file():
            results["reference"] = {"model": "tinyalbert/data/tinyalbert-mini.h5", "trained_on": "sop",
                                    "token_budget": 18_800 * 32 * 128,    # steps x batch x length, weights/README.md
                                    "description": "the bundled model: E = 128, H = 256, one shared layer applied "
                                                   "3 times, 18,800 steps of 32 x 128 tokens (weights/README.md)",
                                    **json.loads(reference.read_text())}
        write_json(self.out / RESULTS_FILE, results)
        return results


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m tinyalbert.ablations", description=__doc__.split("\n\n")[0],
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--corpus", default=str(SAMPLE_CORPUS), help="corpus folder with one sub-folder per source "
                   f"({', '.join(s.split(':')[0] for s in SOURCES)}); the results in the repository come from the "
                   "full 70 MB corpus (weights/README.md), the default is the bundled sample")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="where results.json and the kept models go")
    p.add_argument("--work", default="runs/ablations", help="run folders (checkpoints, logs, every model)")
    p.add_argument("--jobs", type=int, default=2, help="runs trained side by side, one thread each")
    p.add_argument("--steps", type=int, default=RECIPE["steps"], help="training steps of every run (the same token "
                   "budget for every arm); fewer for a quick try")
    p.add_argument("--eval-pairs", type=int, default=EVAL_PAIRS, help="held-out pairs per task for every model")
    p.add_argument("--cache-dir", help="token cache folder (default: the data module's)")
    return p


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)     # `kill` stops the runs cleanly, as Ctrl-C does
    with CommandErrors((ValueError, FileNotFoundError, RuntimeError, OSError)) as status:
        corpus = Path(args.corpus)
        missing = [s.split(":")[0] for s in SOURCES if not (corpus / s.split(":")[0]).is_dir()]
        if missing:
            raise FileNotFoundError(f"{corpus} has no source folder {', '.join(missing)}")
        if args.jobs < 1 or args.steps < 1 or args.eval_pairs < EVAL_BATCH:
            raise ValueError(f"--jobs and --steps must be at least 1 and --eval-pairs at least {EVAL_BATCH}")
        recipe = {**RECIPE, "steps": args.steps}
        started = time.time()
        study = Study(corpus, Path(args.work), Path(args.out), args.jobs, recipe, args.eval_pairs, args.cache_dir)
        study.prepare()
        # the study's wall time sums every invocation of a resumed study
        clock = Path(args.work) / "wall_seconds.json"
        earlier = json.loads(clock.read_text())["seconds"] if clock.is_file() else 0.0
        try:
            study.train_all()
            study.evaluate_reference()
        finally:
            try:
                results = study.collect(earlier + time.time() - started)
                print(f"{len(results['runs'])} runs in {Path(args.out) / RESULTS_FILE}", flush=True)
            finally:     # after collect, so that the next invocation's figure includes this one's whole time
                write_json(clock, {"seconds": earlier + time.time() - started})
    return status.exit_code


if __name__ == "__main__":
    sys.exit(main())
