"""Solutions to the exercises of notebook 1.  Run: python notebooks/solutions/01_tokenizer_and_embeddings.py"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))      # notebooks/, for nbsetup
import nbsetup  # noqa: E402
import numpy as np  # noqa: E402
import sentencepiece as spm  # noqa: E402

from tinyalbert import AlbertConfig, param_shapes  # noqa: E402
from tinyalbert.data import read_documents, split_sentences  # noqa: E402
from tinyalbert.nn.embeddings import embeddings_backward, embeddings_forward  # noqa: E402
from tinyalbert.nn.gradcheck import rel_error  # noqa: E402
from tinyalbert.nn.params import EMB, MAPPING, sub  # noqa: E402
from tinyalbert.tokenizer import Tokenizer  # noqa: E402


def exercise_1() -> None:
    """xxlarge's embedding parameters with E = 64 and 256, predicted and checked."""
    xxlarge = AlbertConfig.preset("xxlarge")
    V, H = xxlarge.vocab_size, xxlarge.hidden_size
    for E in (64, 256):
        predicted = V * E + E * H + H
        shapes = param_shapes(AlbertConfig.from_dict({**xxlarge.to_dict(), "embedding_size": E}))
        counted = sum(int(np.prod(shapes[name])) for name in (EMB + "word_embeddings.weight", MAPPING + "weight",
                                                               MAPPING + "bias"))
        print(f"E = {E:>3}: table + projection {predicted:,} (param_shapes: {counted:,}); "
              f"saving against V×H {V * H - predicted:,}")
        assert predicted == counted


def split_digit_commas(sp: spm.SentencePieceProcessor, pieces: list[str]) -> list[str]:
    """The digit-comma rule: a piece ending in digit + comma is encoded again without the comma, then the comma."""
    out = []
    for piece in pieces:
        if len(piece) > 1 and piece[-1] == "," and piece[-2].isdigit():
            again = sp.encode(piece[:-1].replace("\u2581", ""), out_type=str)
            if not piece.startswith("\u2581") and again[0].startswith("\u2581"):
                # the piece continued a word: drop the word-start mark that encoding it alone adds
                again = again[1:] if again[0] == "\u2581" else [again[0][1:]] + again[1:]
            out += again + [","]
        else:
            out.append(piece)
    return out


def exercise_2() -> None:
    """The digit-comma rule written on top of SentencePiece, against Tokenizer.tokenize on every Wikinews sentence."""
    tok = Tokenizer(nbsetup.VOCAB_30K)
    sp = spm.SentencePieceProcessor(model_file=str(nbsetup.VOCAB_30K))
    sentences = [s for doc in read_documents(nbsetup.CORPUS / "wikinews" / "wikinews_000.txt")
                 for paragraph in doc for s in split_sentences(paragraph)]
    changed = 0
    for s in sentences:
        plain = sp.encode(tok.preprocess(s), out_type=str)
        mine = split_digit_commas(sp, plain)
        assert mine == tok.tokenize(s), s
        changed += mine != plain
    print(f"{len(sentences):,} sentences agree with tok.tokenize; the rule changed {changed} of them")


def exercise_3() -> None:
    """The embeddings' backward (LayerNorm, then three scatter-adds) against embeddings_backward."""
    model = nbsetup.load_model(np.float64)
    p, eps = sub(model.params, EMB), model.config.layer_norm_eps
    ids, mask = model.tokenizer.batch_encode(["The the the cat sat.", "A dog, a cat and the cat again."])
    types = (np.arange(ids.shape[1]) >= 3).astype(np.int64)[None].repeat(2, 0)    # some token type 1 too
    x = p["word_embeddings.weight"][ids] + p["token_type_embeddings.weight"][types] + \
        p["position_embeddings.weight"][:ids.shape[1]]
    de = np.random.default_rng(0).standard_normal(x.shape[:-1] + (model.config.embedding_size,))
    # LayerNorm backward (notebook 3): dx = r (g - mean g - xhat mean(g xhat)), g = de * w
    mu = x.mean(-1, keepdims=True)
    r = 1 / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps)
    xhat = (x - mu) * r
    g = de * p["LayerNorm.weight"]
    dx = r * (g - g.mean(-1, keepdims=True) - xhat * (g * xhat).mean(-1, keepdims=True))
    mine = {name: np.zeros_like(value) for name, value in p.items()}
    np.add.at(mine["word_embeddings.weight"], ids, dx)            # a repeated id adds its rows up
    np.add.at(mine["token_type_embeddings.weight"], types, dx)
    mine["position_embeddings.weight"][:ids.shape[1]] = dx.sum(0)  # every row uses positions 0..T-1
    mine["LayerNorm.weight"], mine["LayerNorm.bias"] = (de * xhat).sum((0, 1)), de.sum((0, 1))
    _, cache = embeddings_forward(ids, types, p, eps)
    engine = {name: np.zeros_like(value) for name, value in p.items()}
    embeddings_backward(de, cache, engine, padding_idx=None)
    for name in p:
        error = rel_error(mine[name], engine[name])
        print(f"{name:>30}: relative error {error:.1e}")
        assert error < 1e-12


if __name__ == "__main__":
    for exercise in (exercise_1, exercise_2, exercise_3):
        print(f"--- {exercise.__name__}: {exercise.__doc__.splitlines()[0]}")
        exercise()
