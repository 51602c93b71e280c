"""tinyalbert.predict: fill-mask and sentence order, against transformers, and its command line.

A tiny random AlbertForMaskedLM and AlbertForPreTraining (the genuine 30000-piece vocabulary,
E=16, H=32, 2 heads, I=37, 2 layers, float32) are saved with save_pretrained next to the genuine
spiece.model and converted with tinyalbert.convert.  Our fill_mask must then give what the
transformers fill-mask pipeline gives with the slow AlbertTokenizer: the same token ids in the
same order, the same token_str and sequence strings, scores within 1e-5.

The random model is shaped so that the comparison means something (see `_shape_head`): the
default init (std 0.02) gives an almost flat distribution over 30000 pieces (every score ~3e-5,
the same top tokens for every input), and special tokens would never be predicted, so the
pipeline's special-token handling (padding removal, skip_special_tokens) would go untested.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import transformers
from transformers import AlbertTokenizer

import tinyalbert
from tinyalbert import predict, weights
from tinyalbert.convert import convert
from tinyalbert.predict import PredictError, fill_mask, fill_mask_batch, sentence_order
from tinyalbert.tokenizer import ALBERT_VOCAB

PACKAGE_ROOT = str(Path(tinyalbert.__file__).resolve().parent.parent)
SCORE_TOL = 1e-5
# The CLI runs in another process, whose BLAS may use another thread count than this one (a test that
# limits threads in-process, or OpenBLAS picking a single-thread path for small products); float32
# products then round differently by a few ulps, which moves a score by ~1e-7.  The CLI checks below
# compare the same batches, so anything beyond rounding (a wrong batch, a wrong text) is far larger.
CLI_SCORE_TOL = 1e-6
COLD_NOTE = "note: first run, compiling"

transformers.logging.set_verbosity_error()

SENTENCES = [
    "The man went to the [MASK] to buy some milk.",
    "Paris is the [MASK] of France.",
    "The [MASK] sat on the [MASK].",                       # two masks: a list of lists
    "Héllo   wörld, 9,000 people [MASK] here!",            # accents, runs of spaces, digit + comma
    "[MASK]",
    "[MASK] [MASK] [MASK] and then some more words after them.",
    "``Quoted'' text, then a [MASK] at the end",
]


# ------------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------------
def tiny_config() -> transformers.AlbertConfig:
    # initializer_range 0.2 (not 0.02): hidden states, and so the predictions, then depend on the context.
    return transformers.AlbertConfig(vocab_size=30000, embedding_size=16, hidden_size=32, num_attention_heads=2,
                                     intermediate_size=37, num_hidden_layers=2, initializer_range=0.2)


def _shape_head(model: torch.nn.Module) -> None:
    """Spread the MLM logits and let special tokens compete with words.

    Scaling the MLM head's LayerNorm weight by 4 spreads the logits (top scores ~0.03-0.1 instead of
    ~4e-4); the bias of <pad>, <unk>, [CLS], [SEP], [MASK] is raised so that they show up among the
    top predictions of some inputs (the padding filter and skip_special_tokens then matter).
    """
    with torch.no_grad():
        model.predictions.LayerNorm.weight.mul_(4.0)
        model.predictions.bias[:5] += torch.tensor([11.7, 8.0, 5.0, 2.0, 12.0])


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """HF models (eval mode), their checkpoint dirs, and the converted tinyalbert weights files."""
    root = tmp_path_factory.mktemp("predict")
    out = {"root": root}
    for kind, cls in (("mlm", transformers.AlbertForMaskedLM), ("pretraining", transformers.AlbertForPreTraining)):
        torch.manual_seed(0)
        model = cls(tiny_config()).eval()
        _shape_head(model)
        d = root / f"hf-{kind}"
        model.save_pretrained(d, safe_serialization=True)
        shutil.copy(ALBERT_VOCAB, d / "spiece.model")
        h5 = root / f"{kind}.h5"
        convert(d, h5, progress=False)
        out[kind] = model
        out[f"{kind}_dir"] = d
        out[f"{kind}_h5"] = h5
    out["ref_tok"] = AlbertTokenizer(vocab_file=str(ALBERT_VOCAB))
    out["pipe"] = transformers.pipeline("fill-mask", model=out["mlm"], tokenizer=out["ref_tok"], framework="pt",
                                        device="cpu")
    return out


@pytest.fixture(scope="module")
def model(ckpt):
    m = weights.load(ckpt["mlm_h5"])
    fill_mask(m, SENTENCES[0])          # compiles (and caches on disk) the kernels the CLI runs below
    return m


@pytest.fixture(scope="module")
def pt_model(ckpt):
    return weights.load(ckpt["pretraining_h5"])


def run_predict(*args: str, stdin: str | None = None, env_extra: dict | None = None, env_drop=(),
                module: str = "tinyalbert.predict", timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = PACKAGE_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    for name in env_drop:
        env.pop(name, None)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", module, *args], input=stdin if stdin is not None else "",
                          capture_output=True, text=True, env=env, timeout=timeout)


def assert_ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr
    return result.stdout


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle.lower() in lines[0].lower(), lines[0]
    assert result.stdout == "", result.stdout
    return lines[0]


def per_mask(result: list) -> list[list[dict]]:
    """A fill-mask result as a list of per-mask option lists (one mask gives a flat list)."""
    return [result] if result and isinstance(result[0], dict) else result


def assert_same_predictions(got, want, score_tol: float = SCORE_TOL) -> float:
    """Same shape, ids in order, token_str and sequence; scores within score_tol.  Returns max |score diff|."""
    assert type(got) is type(want) is list and len(got) == len(want)
    single = isinstance(want[0], dict)
    assert isinstance(got[0], dict) == single, "single-mask results are a flat list, several masks a list of lists"
    worst = 0.0
    for g_opts, w_opts in zip(per_mask(got), per_mask(want), strict=True):
        assert [o["token"] for o in g_opts] == [o["token"] for o in w_opts]
        for g, w in zip(g_opts, w_opts, strict=True):
            assert set(g) == {"score", "token", "token_str", "sequence"}
            assert type(g["score"]) is float and type(g["token"]) is int
            assert g["token_str"] == w["token_str"], (g, w)
            assert g["sequence"] == w["sequence"], (g, w)
            worst = max(worst, abs(g["score"] - w["score"]))
    assert worst <= score_tol, worst
    return worst


# ------------------------------------------------------------------------------------------------
# fill_mask against the transformers pipeline
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("top_k", [5, 12])
def test_fill_mask_matches_pipeline(ckpt, model, top_k):
    worst = 0.0
    predicted = set()
    for text in SENTENCES:
        want = ckpt["pipe"](text, top_k=top_k)
        got = fill_mask(model, text, top_k=top_k)
        worst = max(worst, assert_same_predictions(got, want))
        predicted |= {o["token"] for opts in per_mask(got) for o in opts}
    print(f"\nfill_mask vs pipeline (top_k={top_k}): max |score difference| {worst:.2e}")
    if top_k == 12:
        # The comparison covered special tokens: <pad> (dropped from the sequence like padding), <unk>, [MASK].
        assert {0, 1, 4} <= predicted, sorted(predicted)[:10]


def test_fill_mask_result_shape(model):
    one = fill_mask(model, "The man went to the [MASK].")
    assert isinstance(one, list) and len(one) == 5 and all(isinstance(o, dict) for o in one)
    two = fill_mask(model, "The [MASK] went to the [MASK].", top_k=3)
    assert len(two) == 2 and all(isinstance(opts, list) and len(opts) == 3 for opts in two)
    # the other mask stays in the sequence as [MASK]; [CLS]/[SEP] are kept too, as the pipeline does
    assert all("[MASK]" in o["sequence"] and o["sequence"].startswith("[CLS]") for opts in two for o in opts)
    # scores are probabilities, best first
    scores = [o["score"] for o in one]
    assert scores == sorted(scores, reverse=True) and 0 < scores[-1] <= scores[0] < 1
    json.dumps(two)                                 # plain Python types only


def test_fill_mask_batch_equals_one_at_a_time(model):
    texts = SENTENCES + ["A much longer input, so that the others are padded: it goes on and on and on for "
                         "quite a few more [MASK] than any of the other inputs do."]
    single = [fill_mask(model, t, top_k=7) for t in texts]
    for batch_size in (3, 8, 64):
        batched = fill_mask_batch(model, texts, top_k=7, batch_size=batch_size)
        assert len(batched) == len(texts)
        for got, want in zip(batched, single, strict=True):
            assert_same_predictions(got, want, score_tol=1e-6)

    # and the logits themselves: a padded row equals the same text run alone
    tok = model.tokenizer
    ids = [tok.encode(t) for t in texts[:3]]
    T = max(map(len, ids))
    input_ids = np.zeros((3, T), dtype=np.int64)
    mask = np.zeros((3, T), dtype=np.int64)
    for r, row in enumerate(ids):
        input_ids[r, :len(row)] = row
        mask[r, :len(row)] = 1
    padded = model.forward(input_ids, attention_mask=mask).mlm_logits
    for r, row in enumerate(ids):
        alone = model.forward(np.asarray([row])).mlm_logits[0]
        np.testing.assert_allclose(padded[r, :len(row)], alone, rtol=0, atol=1e-5 * np.abs(alone).max())


def test_fill_mask_rejects_bad_input(model):
    with pytest.raises(PredictError, match=r"no \[MASK\]"):
        fill_mask(model, "There is nothing to fill in here.")
    with pytest.raises(PredictError, match="empty"):
        fill_mask(model, "   ")
    with pytest.raises(PredictError, match="more than the model's maximum of 512"):
        fill_mask(model, "word " * 600 + "[MASK]")
    with pytest.raises(PredictError, match="top_k"):
        fill_mask(model, "The [MASK].", top_k=0)
    with pytest.raises(PredictError, match="list of texts"):
        fill_mask_batch(model, "The [MASK].")
    # exactly 512 tokens is allowed
    text = "word " * 507 + "[MASK]"
    assert len(model.tokenizer.encode(text)) <= 512
    assert len(fill_mask(model, text, top_k=1)) == 1


# ------------------------------------------------------------------------------------------------
# sentence order
# ------------------------------------------------------------------------------------------------
PAIR = ("He opened the door.", "Then he walked into the dark room.")


def reference_sop(ckpt, first: str, second: str) -> dict[str, float]:
    enc = ckpt["ref_tok"](first, second, return_tensors="pt")
    with torch.no_grad():
        logits = ckpt["pretraining"](**enc).sop_logits[0].double()
    p = torch.softmax(logits, -1).tolist()
    return {"original_order": p[0], "swapped": p[1]}


def test_sentence_order_matches_reference(ckpt, pt_model, model):
    for first, second in (PAIR, PAIR[::-1], ("Short.", "A second, longer sentence with 12,000 words in it.")):
        got, want = sentence_order(pt_model, first, second), reference_sop(ckpt, first, second)
        assert set(got) == {"original_order", "swapped"}
        assert abs(got["original_order"] + got["swapped"] - 1) < 1e-12
        assert abs(got["original_order"] - want["original_order"]) < SCORE_TOL, (got, want)
    with pytest.raises(PredictError, match="SOP"):
        sentence_order(model, *PAIR)
    with pytest.raises(PredictError, match="non-empty"):
        sentence_order(pt_model, "", "Something.")


# ------------------------------------------------------------------------------------------------
# the command line
# ------------------------------------------------------------------------------------------------
def table_rows(stdout: str) -> list[list[str]]:
    """The option rows of the table output: [score, token id, token_str, sequence...] split on whitespace."""
    return [line.split() for line in stdout.splitlines() if line.startswith("  ")]


def test_cli_table(ckpt, model):
    text = SENTENCES[0]
    out = assert_ok(run_predict("--weights", str(ckpt["mlm_h5"]), text))
    assert out.splitlines()[0] == f"input: {text}"
    rows = table_rows(out)
    want = fill_mask(model, text)
    assert [int(r[1]) for r in rows] == [o["token"] for o in want]
    assert [float(r[0]) for r in rows] == pytest.approx([o["score"] for o in want], abs=6e-5)
    for line, o in zip([l for l in out.splitlines() if l.startswith("  ")], want, strict=True):
        assert o["token_str"] in line and line.rstrip().endswith(o["sequence"])


def test_cli_top_k_and_two_masks(ckpt, model):
    text = SENTENCES[2]
    out = assert_ok(run_predict("--weights", str(ckpt["mlm_h5"]), "--top-k", "3", text))
    assert "[MASK] #1:" in out and "[MASK] #2:" in out
    rows = table_rows(out)
    want = fill_mask(model, text, top_k=3)
    assert [int(r[1]) for r in rows] == [o["token"] for opts in want for o in opts]


def test_cli_json_equals_fill_mask(ckpt, model):
    text = SENTENCES[3]
    out = assert_ok(run_predict("--weights", str(ckpt["mlm_h5"]), "--json", "--top-k", "4", text))
    assert_same_predictions(json.loads(out), fill_mask(model, text, top_k=4), score_tol=CLI_SCORE_TOL)


def test_cli_several_inputs(ckpt, model):
    texts = SENTENCES[:4]
    out = assert_ok(run_predict("--weights", str(ckpt["mlm_h5"]), "--json", *texts))
    got = json.loads(out)
    assert isinstance(got, list) and len(got) == len(texts)
    # the CLI batches its inputs (8 per forward), so the exact reference is the same batched call;
    # padded against unpadded is test_fill_mask_batch_equals_one_at_a_time's business
    for g, w in zip(got, fill_mask_batch(model, texts), strict=True):
        assert_same_predictions(g, w, score_tol=CLI_SCORE_TOL)
    table = assert_ok(run_predict("--weights", str(ckpt["mlm_h5"]), *texts))
    assert [l for l in table.splitlines() if l.startswith("input: ")] == [f"input: {t}" for t in texts]


def test_cli_file_and_stdin(ckpt, model, tmp_path):
    texts = [SENTENCES[0], SENTENCES[2], SENTENCES[3]]
    path = tmp_path / "inputs.txt"
    path.write_text(texts[0] + "\n\n" + texts[1] + "\r\n   \n" + texts[2], encoding="utf-8")   # blank lines skipped
    want = fill_mask_batch(model, texts)          # the CLI's own batching, see test_cli_several_inputs
    from_file = json.loads(assert_ok(run_predict("--weights", str(ckpt["mlm_h5"]), "--json", "--file", str(path))))
    from_stdin = json.loads(assert_ok(run_predict("--weights", str(ckpt["mlm_h5"]), "--json", "--file", "-",
                                                  stdin=path.read_text(encoding="utf-8"))))
    for got in (from_file, from_stdin):
        assert len(got) == len(texts)
        for g, w in zip(got, want, strict=True):
            assert_same_predictions(g, w, score_tol=CLI_SCORE_TOL)
    # --file adds to the texts given as arguments, after them
    both = json.loads(assert_ok(run_predict("--weights", str(ckpt["mlm_h5"]), "--json", SENTENCES[1],
                                            "--file", str(path))))
    assert len(both) == 4
    assert_same_predictions(both[0], fill_mask_batch(model, [SENTENCES[1]] + texts)[0], score_tol=CLI_SCORE_TOL)


def test_cli_show_tokens(ckpt, model):
    text = "Héllo wörld, the [MASK] costs 9,000 dollars."
    out = assert_ok(run_predict("--weights", str(ckpt["mlm_h5"]), "--show-tokens", text))
    line = next(l for l in out.splitlines() if l.startswith("tokens: "))
    ref = ckpt["ref_tok"]
    ids = ref(text)["input_ids"]
    assert line == "tokens: " + " ".join(f"{p}({i})" for p, i in zip(ref.convert_ids_to_tokens(ids), ids, strict=True))


def test_cli_sop(ckpt, pt_model):
    out = assert_ok(run_predict("--weights", str(ckpt["pretraining_h5"]), "--sop", *PAIR))
    want = reference_sop(ckpt, *PAIR)
    assert out.strip() == (f"P(original order) = {want['original_order']:.4f}   "
                           f"P(swapped) = {want['swapped']:.4f}")
    got = json.loads(assert_ok(run_predict("--weights", str(ckpt["pretraining_h5"]), "--sop", *PAIR, "--json")))
    assert got == pytest.approx(want, abs=SCORE_TOL)
    assert got == pytest.approx(sentence_order(pt_model, *PAIR), abs=1e-7)


def test_cli_sop_without_sop_head(ckpt):
    err = assert_one_line_error(run_predict("--weights", str(ckpt["mlm_h5"]), "--sop", *PAIR), "SOP", "head")
    assert "AlbertForPreTraining" in err


# ------------------------------------------------------------------------------------------------
# bad input: one line on stderr naming the problem, non-zero exit, no traceback
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, needles", [
    ("No mask in this sentence.", ["no [MASK]", "No mask in this sentence."]),
    ("word " * 600 + "[MASK]", ["tokens long", "maximum of 512"]),
    ("", ["empty"]),
])
def test_cli_bad_text(ckpt, model, text, needles):
    assert_one_line_error(run_predict("--weights", str(ckpt["mlm_h5"]), text), *needles)


def test_cli_bad_text_among_good_ones(ckpt, model):
    # the bad input is found before anything is computed, whatever its position
    assert_one_line_error(run_predict("--weights", str(ckpt["mlm_h5"]), SENTENCES[0], "nothing to fill"),
                          "no [MASK]", "nothing to fill")


def _broken_weights(kind: str, good: Path, d: Path) -> Path:
    path = d / f"{kind}.h5"
    if kind == "missing":
        return d / "does-not-exist.h5"
    if kind == "not-hdf5":
        path.write_text("this is not a weights file\n")
        return path
    shutil.copy(good, path)
    if kind == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[:len(data) // 2])
    elif kind == "truncated-tail":
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) - 100)
    elif kind == "wrong-version":
        with h5py.File(path, "r+") as f:
            f.attrs["format_version"] = np.int64(weights.FORMAT_VERSION + 1)
    elif kind == "wrong-shape":
        name = "albert.embeddings.word_embeddings.weight"
        with h5py.File(path, "r+") as f:
            del f[weights.PARAMS_GROUP][name]
            f[weights.PARAMS_GROUP].create_dataset(name, shape=(30000, 8), dtype="float32")
    elif kind == "not-tinyalbert":
        with h5py.File(path, "w") as f:
            f.create_dataset("x", data=np.zeros(3))
    return path


@pytest.mark.parametrize("kind, needles", [
    ("missing", ["not found", "does-not-exist.h5"]),
    ("not-hdf5", ["not an HDF5 file"]),
    ("truncated", ["truncated"]),
    ("truncated-tail", ["truncated"]),
    ("wrong-version", ["format_version 2", "reads format_version 1"]),
    ("wrong-shape", ["albert.embeddings.word_embeddings.weight", "shape (30000, 8)", "expected (30000, 16)"]),
    ("not-tinyalbert", ["not a tinyalbert weights file"]),
])
def test_cli_bad_weights(ckpt, tmp_path, kind, needles):
    path = _broken_weights(kind, ckpt["mlm_h5"], tmp_path)
    assert_one_line_error(run_predict("--weights", str(path), SENTENCES[0]), *needles)


@pytest.mark.parametrize("missing", ["config.json", "spiece.model"])
def test_convert_cli_missing_source_file(ckpt, tmp_path, missing):
    src = tmp_path / "src"
    shutil.copytree(ckpt["mlm_dir"], src)
    (src / missing).unlink()
    result = run_predict(str(src), str(tmp_path / "out.h5"), module="tinyalbert.convert")
    assert_one_line_error(result, f"missing {missing}")
    assert not (tmp_path / "out.h5").exists()


def test_cli_usage_errors(ckpt):
    assert_one_line_error(run_predict("--weights", str(ckpt["mlm_h5"]), "--top-k", "0", "The [MASK]."), "top_k")
    assert_one_line_error(run_predict("--weights", str(ckpt["mlm_h5"]), "--top-k", "many", "The [MASK]."),
                          "--top-k")
    assert_one_line_error(run_predict("--weights", str(ckpt["mlm_h5"]), "--file", "/no/such/file.txt"),
                          "/no/such/file.txt")
    assert_one_line_error(run_predict("--weights", str(ckpt["mlm_h5"])), "no input")


def test_cli_input_not_utf8(ckpt, tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("The caf\xe9 is [MASK].\n".encode("latin-1"))
    assert_one_line_error(run_predict("--weights", str(ckpt["mlm_h5"]), "--file", str(path)), str(path), "UTF-8")
    stdin = subprocess.run([sys.executable, "-m", "tinyalbert.predict", "--weights", str(ckpt["mlm_h5"]),
                            "--file", "-"], input=path.read_bytes(), capture_output=True,
                           env={**os.environ, "PYTHONPATH": PACKAGE_ROOT, "PYTHONIOENCODING": "utf-8"}, timeout=300)
    stdin = subprocess.CompletedProcess(stdin.args, stdin.returncode, stdin.stdout.decode(), stdin.stderr.decode())
    assert_one_line_error(stdin, "standard input", "UTF-8")


# ------------------------------------------------------------------------------------------------
# default weights, Numba cache note
# ------------------------------------------------------------------------------------------------
def test_default_weights_path_honours_env(ckpt, model, monkeypatch, tmp_path):
    monkeypatch.setenv("TINYALBERT_WEIGHTS", str(ckpt["mlm_h5"]))
    assert predict.default_weights_path() == Path(ckpt["mlm_h5"])
    monkeypatch.delenv("TINYALBERT_WEIGHTS")
    monkeypatch.chdir(tmp_path)
    assert predict.default_weights_path() != Path(ckpt["mlm_h5"])

    # the CLI without --weights uses $TINYALBERT_WEIGHTS
    out = assert_ok(run_predict("--json", SENTENCES[1], env_extra={"TINYALBERT_WEIGHTS": str(ckpt["mlm_h5"])}))
    assert_same_predictions(json.loads(out), fill_mask(model, SENTENCES[1]), score_tol=CLI_SCORE_TOL)
    missing = tmp_path / "nowhere.h5"
    assert_one_line_error(run_predict(SENTENCES[1], env_extra={"TINYALBERT_WEIGHTS": str(missing)}),
                          "not found", str(missing))


def test_cli_without_any_weights_says_how_to_get_them(tmp_path, monkeypatch):
    # No --weights, no $TINYALBERT_WEIGHTS, run from an empty directory.  If this checkout has
    # weights/albert-xxlarge-v2.h5 (or the bundled model) the CLI must use it; otherwise it must say
    # how to get weights.
    monkeypatch.delenv("TINYALBERT_WEIGHTS", raising=False)
    monkeypatch.chdir(tmp_path)
    default = predict.default_weights_path()
    env = {k: v for k, v in os.environ.items() if k != "TINYALBERT_WEIGHTS"}
    env["PYTHONPATH"] = PACKAGE_ROOT
    result = subprocess.run([sys.executable, "-m", "tinyalbert.predict", "nothing to fill"], input="",
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    if default.exists():
        assert_one_line_error(result, "no [MASK]")
    else:
        assert_one_line_error(result, "no weights file", "--weights", "$TINYALBERT_WEIGHTS", "tinyalbert.convert")


def test_numba_cache_check_matches_installed_numba(model):
    # the private attributes the check reads exist in this numba (else it would always say "warm")
    for module_name, kernel_name in predict._FORWARD_KERNELS:
        module = __import__(f"tinyalbert.nn.{module_name}", fromlist=[kernel_name])
        cache_file = getattr(module, kernel_name)._cache._cache_file
        assert os.path.exists(cache_file._index_path), cache_file._index_path
    assert predict._numba_cache_is_cold() is False      # `model` ran a forward: the cache is warm


@pytest.mark.slow      # compiles the forward kernels into an empty cache
def test_cli_notes_cold_numba_cache(ckpt, model, tmp_path):
    cache = tmp_path / "numba-cache"
    cache.mkdir()
    env = {"NUMBA_CACHE_DIR": str(cache)}
    cold = run_predict("--weights", str(ckpt["mlm_h5"]), "--json", SENTENCES[0], env_extra=env, timeout=600)
    assert cold.returncode == 0, cold.stderr
    lines = cold.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(COLD_NOTE), cold.stderr
    assert_same_predictions(json.loads(cold.stdout), fill_mask(model, SENTENCES[0]), score_tol=CLI_SCORE_TOL)
    assert any(cache.rglob("*.nbi")), "the run did not fill the cache"
    warm = run_predict("--weights", str(ckpt["mlm_h5"]), SENTENCES[0], env_extra=env)
    assert_ok(warm)                                      # no note the second time
    # an error is reported alone, without the note, even with a cold cache
    other = tmp_path / "other-cache"
    other.mkdir()
    assert_one_line_error(run_predict("--weights", str(ckpt["mlm_h5"]), "no mask here",
                                      env_extra={"NUMBA_CACHE_DIR": str(other)}), "no [MASK]")
