"""Held-out metrics and fill-mask examples for the model card (weights/README.md).

    python weights/evaluate_mini.py weights/tinyalbert-mini.h5 --corpus DIR [--batches 64] [--cache-dir DIR]

--corpus is the folder the recipe trained on: the full corpus for the model card's figures (it is not
in this repository), or tinyalbert/data/corpus, the sample of it that is.

Measures, on the held-out documents of the training sources (the same split and
source mix as the recipe, weights/train_mini.sh), OneStopEnglish apart (see SEEN_IN_TRAINING):
  - MLM top-1 accuracy, against the baseline of always predicting the token most
    frequent among the masked positions of training batches;
  - SOP accuracy, against the 50 % of guessing;
  - how much attention goes to the adjacent tokens, against uniform attention (the sign that a
    model has left the bag-of-words plateau);
and prints fill-mask completions for ten everyday sentences.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from tinyalbert.data import PretrainingData
from tinyalbert.files import atomic_output
from tinyalbert.predict import fill_mask
from tinyalbert.pretrain import heldout_totals
from tinyalbert.weights import load

ROOT = Path(__file__).resolve().parents[1]


# The bundled model was trained while pretraining still held out OneStopEnglish document by document, so
# every held-out article had its other reading levels in training (pretraining now holds out whole
# articles).  No OneStopEnglish text is unseen by this model: it is measured apart, as text whose rewrites
# were trained on, and left out of the held-out figures.
SEEN_IN_TRAINING = "onestopenglish"


def recipe_sources(corpus: Path) -> list[str]:
    """The recipe's `folder:share` list (weights/mini-sources.txt), each folder inside `corpus`, made absolute."""
    lines = (ROOT / "weights" / "mini-sources.txt").read_text().splitlines()
    specs = [line.strip().rsplit(":", 1) for line in lines if line.strip() and not line.startswith("#")]
    return [f"{(corpus / folder).resolve()}:{share}" for folder, share in specs]


def score(model, data: PretrainingData, batches: int, frequent_token: int) -> dict:
    """Loss, MLM top-1 and its most-frequent-token baseline, SOP accuracy, over `batches` held-out batches of 32."""
    totals = heldout_totals(model, data, batches, 32)
    totals["mlm_base"] = 0
    for i in range(batches):
        labels = data.batch(i, 32, split="heldout")["mlm_labels"]
        totals["mlm_base"] += int((labels[labels != -100] == frequent_token).sum())
    return {"heldout_loss": totals["loss"] / batches, "mlm_top1": totals["mlm_correct"] / totals["mlm_count"],
            "mlm_baseline_most_frequent": totals["mlm_base"] / totals["mlm_count"],
            "mlm_positions": int(totals["mlm_count"]), "sop_accuracy": totals["sop_correct"] / totals["sop_count"],
            "sop_examples": int(totals["sop_count"])}


SENTENCES = [
    "The man went to the [MASK] to buy some milk.",
    "She drank a cup of [MASK] before going to work.",
    "It was raining, so he took his [MASK] with him.",
    "The children played in the [MASK] after school.",
    "My mother cooked [MASK] for dinner.",
    "The dog was [MASK] at the cat.",
    "He opened the [MASK] and walked into the room.",
    "They went to the beach to swim in the [MASK].",
    "The president of the united [MASK] gave a speech.",
    "Once upon a [MASK], there was a little girl.",
]
BIAS_PROBES = ["The man worked as a [MASK].", "The woman worked as a [MASK]."]


def adjacent_attention(probs: np.ndarray) -> np.ndarray:
    """(B, NH, T, T) attention probabilities -> (B, NH, T): what query t pays keys t - 1 and t + 1 together.
    Padded keys get no attention, so a query at the edge of the real tokens counts its one neighbour."""
    paid = np.zeros(probs.shape[:3], dtype=probs.dtype)
    paid[..., :-1] += np.diagonal(probs, offset=1, axis1=2, axis2=3)     # key t + 1
    paid[..., 1:] += np.diagonal(probs, offset=-1, axis1=2, axis2=3)     # key t - 1
    return paid


def neighbour_attention(model, batch: dict[str, np.ndarray]) -> list[float]:
    """Attention paid to the two adjacent tokens, as a multiple of what uniform attention pays them.

    One figure per application of the shared layer, averaged over heads and over the real (unpadded)
    query positions of the batch.  1.0 means no preference for neighbours: the attention of a model
    still on the bag-of-words plateau.
    """
    out = model.forward(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
                        output_attentions=True)
    mask = batch["attention_mask"].astype(bool)
    lengths = mask.sum(1)
    figures = []
    for probs in out.attentions:                                       # (B, NH, T, T)
        paid = (adjacent_attention(probs) * mask[:, None]).sum((1, 2))   # per sequence, over real queries
        uniform = 2 * (lengths - 1) / lengths * probs.shape[1]         # per sequence, summed over heads
        figures.append(float((paid / uniform).mean()))
    return figures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("weights")
    ap.add_argument("--corpus", type=Path, required=True,
                    help="the corpus folder the recipe trained on (one sub-folder per source)")
    ap.add_argument("--batches", type=int, default=64, help="held-out batches of 32 to score")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args(argv)

    model = load(args.weights)
    sources = recipe_sources(args.corpus)
    unseen = [spec for spec in sources if Path(spec.rsplit(":", 1)[0]).name != SEEN_IN_TRAINING]
    seen = [spec for spec in sources if spec not in unseen]
    data = PretrainingData(unseen, model.tokenizer, cache_dir=args.cache_dir, max_seq_length=128, seed=0,
                           progress=False)
    # the baseline's token: the most frequent label in training batches the model never scores here
    counts: Counter = Counter()
    for step in range(200):
        labels = data.batch(10_000_000 + step, 32)["mlm_labels"]
        counts.update(labels[labels != -100].tolist())
    frequent_token, _ = counts.most_common(1)[0]

    figures = score(model, data, args.batches, frequent_token)
    figures.update(most_frequent_token=model.tokenizer.id_to_piece(frequent_token), sop_baseline=0.5,
                   sources=[Path(spec.rsplit(":", 1)[0]).name for spec in unseen],
                   neighbour_attention_per_application=[
                       round(x, 2) for x in neighbour_attention(model, data.batch(0, 32, split="heldout"))])
    if seen:
        seen_data = PretrainingData(seen, model.tokenizer, cache_dir=args.cache_dir, max_seq_length=128, seed=0,
                                    progress=False)
        figures[f"{SEEN_IN_TRAINING}_rewrites_seen_in_training"] = score(model, seen_data, args.batches // 4,
                                                                         frequent_token)
    print(json.dumps(figures, indent=2))
    if args.json:
        with atomic_output(args.json) as tmp:
            Path(tmp).write_text(json.dumps(figures, indent=2) + "\n")
    print("\n| input | top 3 (probability) |\n|---|---|")
    for text in SENTENCES + BIAS_PROBES:
        top = fill_mask(model, text, top_k=3)
        cells = ", ".join(f"{o['token_str']} ({o['score']:.2f})" for o in top)
        print(f"| {text} | {cells} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
