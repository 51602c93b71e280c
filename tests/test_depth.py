"""Depth at inference and the logit lens (issue 16, part 2), on the bundled model and a tiny random one.

ALBERT applies one shared layer L times, so `Albert.forward(..., depth=N)` may apply it N times instead.
What is checked:
- depth=None and depth=L are the default computation, bitwise, and hidden_states[i] is the shared layer
  applied i times to hidden_states[0] (bitwise: the same kernels on the same arrays);
- another depth gives N+1 hidden states, shares the first min(N, L)+1 with the default run, and changes
  the output;
- with several layer groups, depth N runs what a model configured with num_hidden_layers = N runs;
- `logit_lens` row i is the MLM head applied to hidden_states[i] (recomputed here from nn.heads), and
  its last row is fill_mask's result;
- `python -m tinyalbert.predict --depth/--lens` in text and --json form, and one-line errors.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tinyalbert
from tinyalbert import Albert, AlbertConfig, init_params
from tinyalbert.nn.heads import mlm_head_forward
from tinyalbert.nn.layer import albert_layer_forward
from tinyalbert.nn.params import EMB, MLM, layer_prefix, sub
from tinyalbert.nn.softmax import additive_key_mask
from tinyalbert.predict import PredictError, fill_mask, logit_lens, sentence_order

PACKAGE_ROOT = str(Path(tinyalbert.__file__).resolve().parent.parent)
BUNDLED = str(tinyalbert.bundled_model_path())
ONE_MASK = "The man went to the [MASK] to buy some milk."
TWO_MASKS = "The [MASK] sat on the [MASK]."
# Scores computed in another process may differ by BLAS rounding (see test_predict.py's CLI_SCORE_TOL).
CLI_SCORE_TOL = 1e-6
BAD_DEPTHS = [0, -2, 2.5, 3.0, "3", True]


@pytest.fixture(scope="module")
def model() -> Albert:
    m = tinyalbert.load(BUNDLED)
    fill_mask(m, ONE_MASK)          # compiles (and caches on disk) the kernels the CLI runs below
    return m


@pytest.fixture(scope="module")
def batch(model):
    """Two texts, the second padded: (input_ids, attention_mask), each (2, T)."""
    return model.tokenizer.batch_encode([ONE_MASK, TWO_MASKS])


def assert_same_forward(got, want) -> None:
    """Every output of two ForwardOutputs bitwise equal."""
    assert len(got.hidden_states) == len(want.hidden_states)
    for g, w in zip(got.hidden_states, want.hidden_states, strict=True):
        np.testing.assert_array_equal(g, w)
    np.testing.assert_array_equal(got.mlm_logits, want.mlm_logits)
    for name in ("sop_logits", "pooled"):
        g, w = getattr(got, name), getattr(want, name)
        assert (g is None) == (w is None), name
        if w is not None:
            np.testing.assert_array_equal(g, w)


# ------------------------------------------------------------------------------------------------
# the engine
# ------------------------------------------------------------------------------------------------
def test_depth_L_is_the_default_bitwise(model, batch):
    input_ids, attention_mask = batch
    default = model.forward(input_ids, attention_mask=attention_mask)
    L = model.config.num_hidden_layers
    assert len(default.hidden_states) == L + 1
    assert_same_forward(model.forward(input_ids, attention_mask=attention_mask, depth=L), default)
    assert_same_forward(model.forward(input_ids, attention_mask=attention_mask, depth=np.int64(L)), default)


@pytest.mark.parametrize("depth", [1, 2, 5])
def test_hidden_state_i_is_the_shared_layer_applied_i_times(model, batch, depth):
    input_ids, attention_mask = batch
    out = model.forward(input_ids, attention_mask=attention_mask, depth=depth)
    assert len(out.hidden_states) == depth + 1
    c = model.config
    key_mask = additive_key_mask(attention_mask, model.dtype)
    shared_layer = sub(model.params, layer_prefix(0, 0))
    h = out.hidden_states[0]
    for i in range(1, depth + 1):
        h, _, _ = albert_layer_forward(h, key_mask, shared_layer, c.num_attention_heads, c.layer_norm_eps,
                                       c.hidden_act)
        np.testing.assert_array_equal(out.hidden_states[i], h)


@pytest.mark.parametrize("depth", [1, 2, 6])
def test_other_depths_change_the_output(model, batch, depth):
    input_ids, attention_mask = batch
    default = model.forward(input_ids, attention_mask=attention_mask)
    out = model.forward(input_ids, attention_mask=attention_mask, depth=depth, output_attentions=True)
    L = model.config.num_hidden_layers
    assert len(out.hidden_states) == depth + 1 and len(out.attentions) == depth
    for i in range(min(depth, L) + 1):                 # the common prefix is the same computation
        np.testing.assert_array_equal(out.hidden_states[i], default.hidden_states[i])
    assert out.mlm_logits.shape == default.mlm_logits.shape
    assert np.abs(out.mlm_logits - default.mlm_logits).max() > 1e-2
    assert np.abs(out.sop_logits - default.sop_logits).max() > 1e-4
    np.testing.assert_array_equal(out.mlm_logits, model.mlm_head(out.hidden_states[-1]))


def grouped_config(num_hidden_layers: int) -> AlbertConfig:
    return AlbertConfig(vocab_size=60, embedding_size=8, hidden_size=16, num_attention_heads=2,
                        intermediate_size=20, num_hidden_layers=num_hidden_layers, num_hidden_groups=2,
                        inner_group_num=2, max_position_embeddings=16, initializer_range=0.5)


def test_group_schedule_at_another_depth():
    """int(i / (N / G)): the reference's rule with num_hidden_layers = N."""
    config = grouped_config(4)
    assert [config.group_of_application(i) for i in range(4)] == [0, 0, 1, 1]
    assert [config.group_of_application(i, depth=4) for i in range(4)] == [0, 0, 1, 1]
    assert [config.group_of_application(i, depth=2) for i in range(2)] == [0, 1]
    assert [config.group_of_application(i, depth=3) for i in range(3)] == [0, 0, 1]
    assert [config.group_of_application(i, depth=1) for i in range(1)] == [0]
    assert [config.group_of_application(i, depth=6) for i in range(6)] == [0, 0, 0, 1, 1, 1]


@pytest.mark.parametrize("depth", [2, 6])
def test_several_groups_at_depth_N_run_the_model_configured_with_N(depth):
    """Two groups of two inner layers each: depth=N gives what num_hidden_layers=N gives, bitwise."""
    params = init_params(grouped_config(4), seed=5)
    rng = np.random.default_rng(0)
    input_ids = rng.integers(0, 60, size=(2, 7))
    attention_mask = np.array([[1] * 7, [1] * 5 + [0] * 2])
    got = Albert(grouped_config(4), params).forward(input_ids, attention_mask=attention_mask, depth=depth,
                                                    output_attentions=True)
    want = Albert(grouped_config(depth), params).forward(input_ids, attention_mask=attention_mask,
                                                         output_attentions=True)
    assert_same_forward(got, want)
    assert len(got.attentions) == depth * 2
    for g, w in zip(got.attentions, want.attentions, strict=True):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("depth", BAD_DEPTHS)
def test_bad_depth_is_a_one_line_error(model, batch, depth):
    input_ids, attention_mask = batch
    with pytest.raises(ValueError, match="depth") as error:
        model.forward(input_ids, attention_mask=attention_mask, depth=depth)
    assert "\n" not in str(error.value)
    for call in (lambda: fill_mask(model, ONE_MASK, depth=depth), lambda: logit_lens(model, ONE_MASK, depth=depth),
                 lambda: sentence_order(model, "He opened the door.", "Then he walked in.", depth=depth)):
        with pytest.raises(PredictError, match="depth") as error:
            call()
        assert "\n" not in str(error.value)


# ------------------------------------------------------------------------------------------------
# fill_mask, sentence_order and logit_lens
# ------------------------------------------------------------------------------------------------
def test_fill_mask_and_sentence_order_at_depth_L_are_the_default(model):
    L = model.config.num_hidden_layers
    assert fill_mask(model, TWO_MASKS, depth=L) == fill_mask(model, TWO_MASKS)
    pair = ("He opened the door.", "Then he walked in.")
    assert sentence_order(model, *pair, depth=L) == sentence_order(model, *pair)
    assert sentence_order(model, *pair, depth=1) != sentence_order(model, *pair)


@pytest.mark.parametrize("depth", [None, 1, 5])
@pytest.mark.parametrize("text", [ONE_MASK, TWO_MASKS])
def test_lens_last_row_is_fill_mask(model, text, depth):
    lens = logit_lens(model, text, top_k=4, depth=depth)
    assert len(lens) == (depth or model.config.num_hidden_layers) + 1
    assert lens[-1] == fill_mask(model, text, top_k=4, depth=depth)


def probabilities(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    return np.exp(shifted) / np.exp(shifted).sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("depth", [None, 5])
def test_lens_row_i_is_the_mlm_head_on_hidden_state_i(model, depth):
    """Recomputed from nn.heads, not through Albert.mlm_head or the predict module."""
    top_k = 6
    ids = model.tokenizer.encode(TWO_MASKS)
    mask_positions = [t for t, token in enumerate(ids) if token == model.tokenizer.mask_id]
    out = model.forward(np.array([ids]), depth=depth)
    lens = logit_lens(model, TWO_MASKS, top_k=top_k, depth=depth)
    assert len(lens) == len(out.hidden_states)
    c, p = model.config, model.params
    for i, (hidden, row) in enumerate(zip(out.hidden_states, lens, strict=True)):
        logits, _ = mlm_head_forward(hidden[0], sub(p, MLM), p[EMB + "word_embeddings.weight"], c.layer_norm_eps,
                                     c.hidden_act)
        assert len(row) == len(mask_positions)          # two masks: one option list per mask
        for position, options in zip(mask_positions, row, strict=True):
            probs = probabilities(logits[position])
            best = np.argsort(-probs, kind="stable")[:top_k]
            assert [o["token"] for o in options] == best.tolist(), f"depth {i}"
            np.testing.assert_allclose([o["score"] for o in options], probs[best], rtol=1e-12)


# ------------------------------------------------------------------------------------------------
# the command line
# ------------------------------------------------------------------------------------------------
def run_predict(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = PACKAGE_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "tinyalbert.predict", "--weights", BUNDLED, *args], input="",
                          capture_output=True, text=True, env=env, timeout=300, check=False)


def assert_ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr
    return result.stdout


def assert_same_results(got: list, want: list) -> None:
    """Two lists of fill-mask results: same tokens and strings, scores within CLI_SCORE_TOL."""
    assert [(o["token"], o["token_str"], o["sequence"]) for o in flatten(got)] == \
        [(o["token"], o["token_str"], o["sequence"]) for o in flatten(want)]
    np.testing.assert_allclose([o["score"] for o in flatten(got)], [o["score"] for o in flatten(want)],
                               rtol=0, atol=CLI_SCORE_TOL)


def flatten(nested) -> list[dict]:
    return [nested] if isinstance(nested, dict) else [o for item in nested for o in flatten(item)]


def test_cli_depth_L_equals_the_default(model):
    L = model.config.num_hidden_layers
    default = assert_ok(run_predict("--json", TWO_MASKS))
    assert assert_ok(run_predict("--json", "--depth", str(L), TWO_MASKS)) == default
    assert_same_results(json.loads(default), fill_mask(model, TWO_MASKS))


def test_cli_depth_text_and_json(model):
    out = assert_ok(run_predict("--depth", "5", "--top-k", "3", ONE_MASK))
    lines = out.splitlines()
    assert lines[0] == f"input: {ONE_MASK}"
    assert lines[1].startswith("depth: ") and " 5 times" in lines[1]
    want = fill_mask(model, ONE_MASK, top_k=3, depth=5)
    assert [int(line.split()[1]) for line in lines[2:]] == [o["token"] for o in want]
    assert_same_results(json.loads(assert_ok(run_predict("--depth", "5", "--top-k", "3", "--json", ONE_MASK))),
                        want)


def test_cli_lens_json_is_logit_lens(model):
    out = assert_ok(run_predict("--lens", "--json", "--depth", "4", "--top-k", "3", TWO_MASKS))
    got = json.loads(out)
    want = logit_lens(model, TWO_MASKS, top_k=3, depth=4)
    assert len(got) == 5
    assert_same_results(got, want)
    # several inputs: a list per input
    both = json.loads(assert_ok(run_predict("--lens", "--json", "--top-k", "2", ONE_MASK, TWO_MASKS)))
    assert len(both) == 2
    assert_same_results(both[0], logit_lens(model, ONE_MASK, top_k=2))
    assert_same_results(both[1], logit_lens(model, TWO_MASKS, top_k=2))


def lens_rows(lines: list[str]) -> list[list[str]]:
    """The table rows (depth first) of the lines of one mask's lens table."""
    return [line.split() for line in lines if line.startswith("  ") and line.split()[0].isdigit()]


def test_cli_lens_table(model):
    top_k = 3
    out = assert_ok(run_predict("--lens", "--top-k", str(top_k), ONE_MASK, TWO_MASKS))
    first, second = out.split("\n\n")
    want = logit_lens(model, ONE_MASK, top_k=top_k)
    assert first.splitlines()[0] == f"input: {ONE_MASK}"
    assert "depth 0: the projected embeddings" in first
    rows = lens_rows(first.splitlines())
    assert [int(row[0]) for row in rows] == list(range(model.config.num_hidden_layers + 1))
    for row, options in zip(rows, want, strict=True):
        # cells: token_str score, token_str score, ...; the pieces here are single words
        assert row[1::2] == [o["token_str"] for o in options]
        assert [float(s) for s in row[2::2]] == pytest.approx([o["score"] for o in options], abs=6e-5)
    # two masks: one table per mask
    assert "[MASK] #1:" in second and "[MASK] #2:" in second
    tables = second.split("[MASK] #2:")
    want_two = logit_lens(model, TWO_MASKS, top_k=top_k)
    for m, table in enumerate(tables):
        rows = lens_rows(table.splitlines())
        assert [row[1::2] for row in rows] == [[o["token_str"] for o in per_depth[m]] for per_depth in want_two]


@pytest.mark.parametrize("args, needles", [
    (["--depth", "0", ONE_MASK], ["depth", "at least 1", "0"]),
    (["--depth", "-3", ONE_MASK], ["depth", "at least 1", "-3"]),
    (["--depth", "2.5", ONE_MASK], ["--depth", "2.5"]),
    (["--depth", "two", ONE_MASK], ["--depth", "two"]),
    (["--lens", "--sop", "He opened the door.", "Then he walked in."], ["--lens", "[MASK]"]),
])
def test_cli_bad_depth_or_lens(args, needles):
    result = run_predict(*args)
    assert result.returncode == 2, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert result.stdout == ""
