"""`python -m tinyalbert.export`: a folder transformers loads, with the same outputs, that converts back exactly.

- round trip: convert(export(x)) holds every tensor of x bit for bit, in x's dtype (the bundled model,
  a small random float32 model, and, marked slow, a random xxlarge-v2 in float32 and float16);
- parity: transformers 4.57.6 loads the folder with no missing or unexpected key and gives tinyalbert's
  MLM, SOP and classifier logits to 1e-5 relative (float32), and its tokenizer gives tinyalbert's ids;
- the file format, atomic replacement, bad input; the Trainer example (examples/continue_in_transformers.py).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import tinyalbert
from tinyalbert import export as export_module
from tinyalbert.classifier import AlbertClassifier, load_classifier, save_classifier
from tinyalbert.convert import convert, read_safetensors
from tinyalbert.nn.config import AlbertConfig
from tinyalbert.nn.gradcheck import rel_error
from tinyalbert.nn.params import SOP_HEAD_KEYS, init_params
from tinyalbert.tokenizer import ALBERT_VOCAB
from tinyalbert.weights import load_params, save

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_ROOT = str(Path(tinyalbert.__file__).resolve().parent.parent)
BUNDLED = tinyalbert.bundled_model_path()
PARITY = 1e-5
README_SENTENCES = ["The man went to the [MASK] to buy some milk.", "Paris is the [MASK] of France.",
                    "The [MASK] sat on the [MASK].", "Héllo   world, 9,000 [MASK]!", "Hello I'm a [MASK] model."]
SENTENCE_PAIR = ("He opened the door.", "Then he walked in.")


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal dtype, shape and bytes (NaN and -0.0 included, unlike ==)."""
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def assert_round_trip(original: Path, exported: Path, back: Path) -> None:
    """convert(exported) -> back holds original's config and every tensor bit for bit, in its stored dtype."""
    config, params, spiece, attrs = load_params(original, dtype=None)
    convert(exported, back, dtype=attrs["dtype"], progress=False)
    config_back, params_back, spiece_back, attrs_back = load_params(back, dtype=None)
    assert config_back == config
    assert spiece_back == spiece
    assert attrs_back["has_sop_head"] == attrs["has_sop_head"]
    assert list(params_back) == list(params)
    different = [name for name in params if not same_bits(params[name], params_back[name])]
    assert not different, f"tensors changed in the round trip: {different}"


def pair_batch(tokenizer, texts, pair):
    """Padded (input_ids, token_type_ids, attention_mask): the texts one by one, then the sentence pair."""
    rows = [(tokenizer.encode(t), None) for t in texts] + [tokenizer.encode_pair(*pair)]
    width = max(len(ids) for ids, _ in rows)
    input_ids = np.zeros((len(rows), width), np.int64)
    token_types = np.zeros_like(input_ids)
    mask = np.zeros_like(input_ids)
    for i, (ids, types) in enumerate(rows):
        input_ids[i, :len(ids)] = ids
        mask[i, :len(ids)] = 1
        if types is not None:
            token_types[i, :len(types)] = types
    return input_ids, token_types, mask


def torch_inputs(input_ids, token_types, mask):
    import torch

    return {"input_ids": torch.from_numpy(input_ids), "token_type_ids": torch.from_numpy(token_types),
            "attention_mask": torch.from_numpy(mask)}


@pytest.fixture(scope="module")
def bundled_export(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "bundled"
    tinyalbert.export(BUNDLED, out, progress=False)
    return out


# ---------------------------------------------------------------------------------------------------
# the folder
# ---------------------------------------------------------------------------------------------------
def test_folder_holds_the_four_files(bundled_export):
    assert sorted(os.listdir(bundled_export)) == ["config.json", "model.safetensors", "spiece.model",
                                                  "tokenizer_config.json"]
    config = json.loads((bundled_export / "config.json").read_text())
    model = tinyalbert.load(BUNDLED)
    assert config["model_type"] == "albert" and config["architectures"] == ["AlbertForPreTraining"]
    for field, value in model.config.to_dict().items():
        if field != "architectures":
            assert config[field] == value, field
    assert (bundled_export / "spiece.model").read_bytes() == model.tokenizer.model_bytes


def test_config_drops_what_was_true_of_another_model():
    """A model converted back from transformers carries its old dtype and labels in config.extra: not exported."""
    config = AlbertConfig.from_dict({"hidden_size": 64, "num_attention_heads": 4, "dtype": "bfloat16",
                                     "id2label": {"0": "a", "1": "b"}, "architectures": ["AlbertForMaskedLM"]})
    written = export_module.transformers_config(config, "AlbertForPreTraining", dtype=np.dtype("float32"))
    assert written["architectures"] == ["AlbertForPreTraining"] and written["torch_dtype"] == "float32"
    assert "dtype" not in written and "id2label" not in written


def test_safetensors_layout(bundled_export):
    """8-byte length, JSON with {"format": "pt"}, data 8-byte aligned, tensors back to back, no tied decoder."""
    raw = (bundled_export / "model.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + header_len])
    assert header.pop("__metadata__") == {"format": "pt"}
    assert (8 + header_len) % 8 == 0
    assert not any(name.startswith("predictions.decoder") for name in header)
    spans = sorted(tuple(entry["data_offsets"]) for entry in header.values())
    assert spans[0][0] == 0 and spans[-1][1] == len(raw) - 8 - header_len
    assert all(end == next_begin for (_, end), (next_begin, _) in zip(spans[:-1], spans[1:], strict=True))   # no gaps
    _, params, _, _ = load_params(BUNDLED, dtype=None)
    tensors = read_safetensors(str(bundled_export / "model.safetensors"))
    assert list(tensors) == list(params)
    assert all(same_bits(np.asarray(tensors[name]), params[name]) for name in params)


def test_safetensors_package_reads_it(bundled_export):
    """The reference reader agrees with ours (safetensors is a test dependency, not a runtime one)."""
    from safetensors.numpy import load_file

    _, params, _, _ = load_params(BUNDLED, dtype=None)
    loaded = load_file(str(bundled_export / "model.safetensors"))
    assert loaded.keys() == params.keys()
    assert all(same_bits(loaded[name], params[name]) for name in params)


# ---------------------------------------------------------------------------------------------------
# round trip
# ---------------------------------------------------------------------------------------------------
def test_round_trip_bundled_model_is_bit_identical(bundled_export, tmp_path):
    assert_round_trip(BUNDLED, bundled_export, tmp_path / "back.h5")


@pytest.mark.parametrize("sop_head", [True, False], ids=["pretraining", "masked-lm"])
def test_round_trip_small_random_float32(tmp_path, sop_head):
    config = AlbertConfig(vocab_size=30000, hidden_size=64, num_attention_heads=4, intermediate_size=128,
                          num_hidden_layers=2, num_hidden_groups=2, inner_group_num=2)
    params = init_params(config, seed=3, sop_head=sop_head)
    save(tmp_path / "x.h5", config, params, spiece_model_bytes=ALBERT_VOCAB.read_bytes())
    tinyalbert.export(tmp_path / "x.h5", tmp_path / "exported", progress=False)
    assert_round_trip(tmp_path / "x.h5", tmp_path / "exported", tmp_path / "back.h5")


@pytest.mark.slow
def test_round_trip_xxlarge_float32_and_float16(tmp_path):
    """A random albert-xxlarge-v2 (223 M parameters; 0.9 GB in float32) survives export and convert, bit for bit."""
    config = AlbertConfig()
    params = init_params(config, seed=0)
    vocab = ALBERT_VOCAB.read_bytes()
    for dtype in ("float32", "float16"):
        start = time.perf_counter()
        save(tmp_path / f"{dtype}.h5", config, params, spiece_model_bytes=vocab, dtype=dtype)
        tinyalbert.export(tmp_path / f"{dtype}.h5", tmp_path / f"{dtype}-exported", progress=False)
        assert_round_trip(tmp_path / f"{dtype}.h5", tmp_path / f"{dtype}-exported", tmp_path / f"{dtype}-back.h5")
        print(f"xxlarge {dtype}: save + export + convert + compare in {time.perf_counter() - start:.1f} s")
        for path in tmp_path.glob(f"{dtype}*"):     # free the disk before the next dtype
            if path.is_dir():
                for inner in path.iterdir():
                    inner.unlink()
                path.rmdir()
            else:
                path.unlink()


# ---------------------------------------------------------------------------------------------------
# parity with transformers
# ---------------------------------------------------------------------------------------------------
def test_pretraining_parity_with_transformers(bundled_export):
    import torch
    from transformers import AutoModelForPreTraining

    reference, info = AutoModelForPreTraining.from_pretrained(bundled_export, output_loading_info=True)
    assert type(reference).__name__ == "AlbertForPreTraining"
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and info["mismatched_keys"] == []
    reference.eval()
    model = tinyalbert.load(BUNDLED)
    input_ids, token_types, mask = pair_batch(model.tokenizer, README_SENTENCES, SENTENCE_PAIR)
    ours = model.forward(input_ids, token_types, mask)
    with torch.no_grad():
        theirs = reference(**torch_inputs(input_ids, token_types, mask))
    keep = mask.astype(bool)                    # padded positions are not compared (neither side uses them)
    mlm_error = rel_error(ours.mlm_logits[keep], theirs.prediction_logits.numpy()[keep])
    sop_error = rel_error(ours.sop_logits, theirs.sop_logits.numpy())
    print(f"AlbertForPreTraining: MLM logits {mlm_error:.2e}, SOP logits {sop_error:.2e} (max relative)")
    assert mlm_error <= PARITY and sop_error <= PARITY


def test_masked_lm_export_loads_as_automodel_for_masked_lm(tmp_path):
    import torch
    from transformers import AutoModelForMaskedLM

    config, params, spiece, _ = load_params(BUNDLED, dtype=np.float32)
    mlm_only = {name: value for name, value in params.items() if name not in SOP_HEAD_KEYS}
    save(tmp_path / "mlm.h5", config, mlm_only, spiece_model_bytes=spiece)
    tinyalbert.export(tmp_path / "mlm.h5", tmp_path / "exported", progress=False)
    assert json.loads((tmp_path / "exported" / "config.json").read_text())["architectures"] == ["AlbertForMaskedLM"]
    reference, info = AutoModelForMaskedLM.from_pretrained(tmp_path / "exported", output_loading_info=True)
    assert type(reference).__name__ == "AlbertForMaskedLM"
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    model = tinyalbert.load(tmp_path / "mlm.h5")
    input_ids, mask = model.tokenizer.batch_encode(README_SENTENCES)
    ours = model.forward(input_ids, attention_mask=mask).mlm_logits
    with torch.no_grad():
        theirs = reference(input_ids=torch.from_numpy(input_ids), attention_mask=torch.from_numpy(mask)).logits
    error = rel_error(ours[mask.astype(bool)], theirs.numpy()[mask.astype(bool)])
    print(f"AlbertForMaskedLM: MLM logits {error:.2e} (max relative)")
    assert error <= PARITY


def test_classifier_exports_as_sequence_classification(tmp_path):
    import torch
    from transformers import AutoModelForSequenceClassification

    labels = ["negative", "neutral", "positive"]
    classifier = AlbertClassifier.from_pretrained(tinyalbert.load(BUNDLED), labels, seed=5)
    save_classifier(tmp_path / "clf.h5", classifier)
    tinyalbert.export(tmp_path / "clf.h5", tmp_path / "exported", progress=False)
    config = json.loads((tmp_path / "exported" / "config.json").read_text())
    assert config["architectures"] == ["AlbertForSequenceClassification"]
    reference, info = AutoModelForSequenceClassification.from_pretrained(tmp_path / "exported",
                                                                         output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    assert reference.config.id2label == dict(enumerate(labels))
    assert reference.config.label2id == {name: i for i, name in enumerate(labels)}
    reference.eval()
    classifier = load_classifier(tmp_path / "clf.h5")
    input_ids, mask = classifier.encode(README_SENTENCES)
    ours = classifier.forward(input_ids, attention_mask=mask)
    with torch.no_grad():
        theirs = reference(input_ids=torch.from_numpy(input_ids), attention_mask=torch.from_numpy(mask)).logits
    error = rel_error(ours, theirs.numpy())
    print(f"AlbertForSequenceClassification: logits {error:.2e} (max relative)")
    assert error <= PARITY


def test_tokenizer_gives_tinyalberts_ids(bundled_export):
    """AutoTokenizer gives AlbertTokenizerFast (AlbertTokenizer with use_fast=False) configured as ALBERT's.

    The slow one is the reference tinyalbert.Tokenizer copies, quirks included: every id agrees.  The fast
    one differs from the slow one *inside transformers* on text right after a special token ("[MASK]." gets
    a lone "▁" piece from the slow tokenizer only); wherever transformers' two agree, tinyalbert agrees too.
    """
    from transformers import AutoTokenizer

    tokenizer = tinyalbert.load(BUNDLED).tokenizer
    slow = AutoTokenizer.from_pretrained(bundled_export, use_fast=False)
    fast = AutoTokenizer.from_pretrained(bundled_export)
    assert type(slow).__name__ == "AlbertTokenizer" and type(fast).__name__ == "AlbertTokenizerFast"
    assert slow.do_lower_case and not slow.keep_accents and slow.remove_space
    agreeing = 0
    for text in README_SENTENCES + list(SENTENCE_PAIR):
        ours = tokenizer.encode(text)
        assert slow(text)["input_ids"] == ours, text
        if fast(text)["input_ids"] == slow(text)["input_ids"]:
            agreeing += 1
    assert agreeing >= len(README_SENTENCES)        # all but the quirk's sentence
    ours_ids, ours_types = tokenizer.encode_pair(*SENTENCE_PAIR)
    theirs = slow(*SENTENCE_PAIR)
    assert theirs["input_ids"] == ours_ids and theirs["token_type_ids"] == ours_types
    assert slow.mask_token_id == tokenizer.mask_id and slow.pad_token_id == tokenizer.pad_id


# ---------------------------------------------------------------------------------------------------
# writes and bad input
# ---------------------------------------------------------------------------------------------------
def test_existing_folder_is_refused_then_replaced_whole(tmp_path, bundled_export):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(export_module.ExportError, match="not empty"):
        tinyalbert.export(BUNDLED, out, progress=False)
    assert os.listdir(out) == ["old.txt"]
    tinyalbert.export(BUNDLED, out, overwrite=True, progress=False)
    assert sorted(os.listdir(out)) == sorted(os.listdir(bundled_export))
    assert [p.name for p in tmp_path.iterdir()] == ["out"]        # no temporary or old folder left


def test_failed_export_leaves_nothing(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(export_module, "write_safetensors", broken)
    with pytest.raises(OSError, match="disk full"):
        tinyalbert.export(BUNDLED, tmp_path / "out", progress=False)
    assert list(tmp_path.iterdir()) == []


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = PACKAGE_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "tinyalbert.export", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_cli_writes_the_folder(tmp_path):
    result = run_cli(str(BUNDLED), str(tmp_path / "out"), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout and (tmp_path / "out" / "model.safetensors").is_file()


@pytest.mark.parametrize("case", ["missing", "not-hdf5", "foreign-hdf5", "no-vocabulary", "out-is-a-file",
                                  "parent-is-a-file"])
def test_bad_input_is_one_line_and_nonzero(tmp_path, case):
    import h5py

    model, out = tmp_path / "model.h5", tmp_path / "out"
    if case == "not-hdf5":
        model.write_text("hello")
    elif case == "foreign-hdf5":
        with h5py.File(model, "w") as f:
            f["x"] = np.zeros(3)
    elif case == "no-vocabulary":
        config, params, _, _ = load_params(BUNDLED, dtype=None)
        save(model, config, params)
    elif case == "out-is-a-file":
        model, out = BUNDLED, tmp_path / "out.txt"
        out.write_text("a file")
    elif case == "parent-is-a-file":
        (tmp_path / "parent.txt").write_text("a file")
        model, out = BUNDLED, tmp_path / "parent.txt" / "out"
    result = run_cli(str(model), str(out), "--no-progress")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    assert not out.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) in ([], ["model.h5"], ["out.txt"], ["parent.txt"])


def test_missing_parent_folders_are_created(tmp_path):
    tinyalbert.export(BUNDLED, tmp_path / "exported" / "mini", progress=False)
    assert (tmp_path / "exported" / "mini" / "model.safetensors").is_file()


# ---------------------------------------------------------------------------------------------------
# the example: a few Trainer steps on the exported model, then back to tinyalbert
# ---------------------------------------------------------------------------------------------------
def test_continue_in_transformers_example_runs(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = PACKAGE_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["CUDA_VISIBLE_DEVICES"] = ""
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "continue_in_transformers.py"),
                             "--work-dir", str(tmp_path), "--steps", "3"],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "loaded back in tinyalbert" in result.stdout
    model = tinyalbert.load(tmp_path / "continued.h5")
    original = tinyalbert.load(BUNDLED)
    assert model.config == original.config
    word_embeddings = "albert.embeddings.word_embeddings.weight"
    assert not np.array_equal(model.params[word_embeddings], original.params[word_embeddings])   # it trained
