"""Solutions to the exercises of notebook 5.  Run: python notebooks/solutions/05_mlm_and_sop.py"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))      # notebooks/, for nbsetup
import nbsetup  # noqa: E402

sys.path.insert(0, str(nbsetup.ROOT / "weights"))                 # for plateau_curves
import numpy as np  # noqa: E402
from plateau_curves import attention_entropy  # noqa: E402

from tinyalbert import Albert, init_params  # noqa: E402
from tinyalbert.data import (  # noqa: E402
    _ngram_cdfs,
    candidate_units,
    read_documents,
    sample_ngram_spans,
    split_sentences,
    word_start_table,
)
from tinyalbert.nn.params import fan_in_init, layer_prefix  # noqa: E402


def exercise_1() -> None:
    """p(n) ∝ 1/n for n up to 2 and up to 4."""
    for longest in (2, 4):
        weights = 1 / np.arange(1, longest + 1)
        mine = weights / weights.sum()
        theirs = np.diff(np.concatenate([[0.0], _ngram_cdfs(longest)[-1]]))
        print(f"max_ngram = {longest}: p(n) = {np.round(mine, 4)}  (from _ngram_cdfs: {np.round(theirs, 4)})")
        assert np.allclose(mine, theirs)


def exercise_2() -> None:
    """Span lengths on stretches of about 120 tokens come close to 1/n."""
    model = nbsetup.load_model()
    tok = model.tokenizer
    special = (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id, tok.mask_id)
    word_start = word_start_table(tok)
    stretches, current = [], [tok.cls_id]
    for doc in read_documents(nbsetup.CORPUS / "tinystories" / "tinystories_000.txt"):
        for sentence in (s for p in doc for s in split_sentences(p)):
            current += tok.encode(sentence, add_special_tokens=False)
            if len(current) >= 119:
                stretches.append(np.array(current[:119] + [tok.sep_id]))
                current = [tok.cls_id]
        if len(stretches) >= 200:
            break
    rng = np.random.default_rng(0)
    counts = np.zeros(3)
    for _ in range(5):
        for x in stretches:
            starts, ends = candidate_units(x, np.isin(x, special), word_start)
            for _, n in sample_ngram_spans(ends - starts, min(20, max(1, round(0.15 * len(x)))), rng, max_ngram=3):
                counts[n - 1] += 1
    target = (1 / np.arange(1, 4)) / (1 / np.arange(1, 4)).sum()
    print(f"{len(stretches)} stretches of {len(stretches[0])} tokens (budget 18): measured "
          f"{np.round(counts / counts.sum(), 3)} against 1/n {np.round(target, 3)}")


def exercise_3() -> None:
    """At N(0, 0.02) the attention scores start far smaller than with fan-in weights, and attention is uniform."""
    model = nbsetup.load_model()
    tok, config = model.tokenizer, model.config
    sentences = nbsetup.corpus_sentences("tinystories", 8, tok, seed=3)
    ids, mask = tok.batch_encode(sentences)
    batch = {"input_ids": ids, "token_type_ids": np.zeros_like(ids), "attention_mask": mask}
    H, heads = config.hidden_size, config.num_attention_heads
    d = H // heads
    # The embeddings leave LayerNorm with entries of scale 1; the projection E -> H (also N(0, σ)) gives h_0
    # entries of std σ√E; q = h_0 W_q^T then has entries of std σ√E · σ√H, and so has k; a score
    # q·k/√d sums d such products: std (σ√E · σ√H)².  Fan-in weights keep every scale at 1.
    E = config.embedding_size
    predicted = (0.02 * np.sqrt(E) * 0.02 * np.sqrt(H)) ** 2
    print(f"predicted score std: N(0, 0.02): (0.02·√{E} · 0.02·√{H})² = {predicted:.4f}; fan-in: 1; "
          f"ratio {1 / predicted:.0f}")
    for name in ("N(0, 0.02)", "fan-in"):
        params = init_params(config, seed=0)
        if name == "fan-in":
            fan_in_init(params, seed=1)
        fresh = Albert(config, params)
        h0 = fresh.forward(ids, attention_mask=mask).hidden_states[0]
        prefix = layer_prefix(0, 0) + "attention."
        q = h0 @ params[prefix + "query.weight"].T + params[prefix + "query.bias"]
        k = h0 @ params[prefix + "key.weight"].T + params[prefix + "key.bias"]
        B, T, _ = q.shape
        q, k = (a.reshape(B, T, heads, d).transpose(0, 2, 1, 3) for a in (q, k))
        scores = (q @ k.transpose(0, 1, 3, 2)) / np.sqrt(d)
        real = (mask[:, None, :, None] * mask[:, None, None, :]).astype(bool).repeat(heads, 1)
        entropy, uniform = attention_entropy(fresh, [batch])
        print(f"{name:>11}: std of the first application's scores {scores[real].std():.3f}; "
              f"attention entropy / uniform by application {np.round(np.array(entropy) / uniform, 3)}")


if __name__ == "__main__":
    for exercise in (exercise_1, exercise_2, exercise_3):
        print(f"--- {exercise.__name__}: {exercise.__doc__.splitlines()[0]}")
        exercise()
