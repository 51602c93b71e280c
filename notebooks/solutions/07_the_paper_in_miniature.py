"""Solutions to the exercises of notebooks/07_the_paper_in_miniature.ipynb.

Run from anywhere: python notebooks/solutions/07_the_paper_in_miniature.py
"""
from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))      # notebooks/, for nbsetup
import nbsetup  # noqa: E402

from tinyalbert import ablations  # noqa: E402
from tinyalbert.weights import load  # noqa: E402

STUDY = nbsetup.ROOT / "weights" / "ablations"
results = json.loads((STUDY / "results.json").read_text())
recipe = results["recipe"]
arms = {arm["name"]: arm for arm in results["arms"]}


# ---- 1. Count before you look ---------------------------------------------------------------------------
def parameters(E: int, G: int, V: int = 8000, H: int = 64, I: int = 256, P: int = 512) -> int:
    """ALBERT for pretraining with G layer groups.

    embeddings: V E (words) + P E (positions) + 2 E (token types) + 2 E (LayerNorm)
    projection E -> H: E H + H
    one layer: 4 (H H + H) attention + 2 H LayerNorm + (H I + I) + (I H + H) feed-forward + 2 H LayerNorm
    pooler H H + H; SOP head 2 H + 2; MLM head: H E + E (dense) + 2 E (LayerNorm) + V (bias; the decoder
    weight is the word embedding)
    """
    embeddings = V * E + P * E + 2 * E + 2 * E
    projection = E * H + H
    layer = 4 * (H * H + H) + 2 * H + (H * I + I) + (I * H + H) + 2 * H
    heads = (H * H + H) + (2 * H + 2) + (H * E + E + 2 * E + V)
    return embeddings + projection + G * layer + heads


H, I = recipe["hidden_size"], recipe["intermediate_size"]
for run in results["runs"]:
    config = run["config"]
    predicted = parameters(config["embedding_size"], config["num_hidden_groups"], config["vocab_size"], H, I)
    assert predicted == run["parameters"], (run["arm"], predicted, run["parameters"])
print("1. the formula gives every run's count exactly")
print(f"   one more layer group: {parameters(64, 2, H=H, I=I) - parameters(64, 1, H=H, I=I):,} parameters")
print(f"   E = 32 -> 64: {parameters(64, 1, H=H, I=I) - parameters(32, 1, H=H, I=I):,} parameters "
      f"(V + P + 2 + 2 + H + H + 3 = {8000 + 512 + 4 + 2 * H + 3} per unit of E, times 32)")


# ---- 2. Noise or effect? -----------------------------------------------------------------------------------
def accuracy(arm: str) -> tuple[float, int]:
    """An arm's MLM accuracy and count (its first seed)."""
    run = next(r for r in results["runs"] if r["arm"] == arm)
    return run["mlm_accuracy"], run["mlm_count"]


print("\n2. MLM accuracy differences (points) against two standard errors")
compared = [a for a in arms if 3 in arms[a]["tables"] or 4 in arms[a]["tables"]]
for first, second in itertools.combinations(compared, 2):
    (p1, n1), (p2, n2) = accuracy(first), accuracy(second)
    error = np.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    verdict = "beyond noise" if abs(p1 - p2) > 2 * error else "within noise"
    print(f"   {first:>10} - {second:<10} {100 * (p1 - p2):+6.2f}  (2 SE = {200 * error:.2f})  {verdict}")
for arm in arms:
    values = [100 * r["mlm_accuracy"] for r in results["runs"] if r["arm"] == arm]
    if len(values) > 1:
        print(f"   seeds of {arm}: {', '.join(f'{v:.2f}' for v in values)} "
              f"(spread {max(values) - min(values):.2f} points)")
print("   When the seed spread is larger than the evaluation's standard error, a one-seed arm's difference "
      "must beat the seed spread, not just the standard error.")


# ---- 3. Beyond the trained depth ---------------------------------------------------------------------------
shared = next(r for r in results["runs"] if f"{r['arm']}-s{r['seed']}" == results["kept_models"][0])
model = load(STUDY / shared["file"])
texts = ablations.probe_texts()
ids, mask = model.tokenizer.batch_encode(texts, max_length=64)
hidden = model.forward(ids, attention_mask=mask, depth=12).hidden_states
real = mask.astype(bool)
print(f"\n3. {shared['arm']} applied 12 times (trained with {shared['config']['num_hidden_layers']})")
for i in range(12):
    x, y = hidden[i][real].astype(np.float64), hidden[i + 1][real].astype(np.float64)
    l2 = np.linalg.norm(y - x, axis=-1).mean()
    cosine = ((x * y).sum(-1) / np.linalg.norm(x, axis=-1) / np.linalg.norm(y, axis=-1)).mean()
    angle = np.degrees(np.arccos(cosine))
    print(f"   application {i + 1:2d}: L2 {l2:6.2f}   cosine {cosine:.3f}   angle {angle:5.1f}°")
trained = ablations.layer_transitions(model, texts)
assert np.allclose(trained["l2_distance"][:4],
                   [np.linalg.norm((hidden[i + 1][real] - hidden[i][real]).astype(np.float64), axis=-1).mean()
                    for i in range(4)], rtol=1e-5)
sentence = "once upon a time, there was a little [MASK] who lived in a small house."
one_ids = np.array([model.tokenizer.encode(sentence)])
where = int(np.flatnonzero(one_ids[0] == model.tokenizer.mask_id)[0])
for depth in (4, 12):
    logits = model.forward(one_ids, depth=depth).mlm_logits[0, where]
    print(f"   depth {depth:2d}: [MASK] -> {model.tokenizer.convert_ids_to_tokens(np.argsort(-logits)[:5].tolist())}")
