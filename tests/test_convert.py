"""tinyalbert.convert: Hugging Face checkpoints (safetensors / pytorch_model.bin) -> tinyalbert weights file.

Small transformers models are built here with a tiny config (the real 30000-piece vocabulary, so that
spiece.model and the embedding agree), saved with save_pretrained, and converted with the CLI.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

import tinyalbert
from tinyalbert import convert as conv
from tinyalbert import weights
from tinyalbert.tokenizer import ALBERT_VOCAB

PACKAGE_ROOT = str(Path(tinyalbert.__file__).parent.parent)
TIED = ("predictions.decoder.weight", "predictions.decoder.bias")

transformers.logging.set_verbosity_error()


def tiny_hf_config() -> transformers.AlbertConfig:
    return transformers.AlbertConfig(vocab_size=30000, embedding_size=8, hidden_size=16, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=32, max_position_embeddings=24,
                                     hidden_act="gelu_new")


def run_cli(*args: str, env_extra: dict | None = None, code: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = PACKAGE_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(env_extra or {})
    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "tinyalbert.convert", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


def assert_one_line_error(result: subprocess.CompletedProcess, code: int | None = None) -> str:
    assert result.returncode != 0, result.stdout
    if code is not None:
        assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def hf_state(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def write_safetensors(path: Path, tensors: dict[str, np.ndarray | tuple[str, tuple, bytes]]) -> None:
    """A minimal safetensors writer (header length, JSON header, raw little-endian bytes)."""
    codes = {np.dtype("float32"): "F32", np.dtype("float16"): "F16", np.dtype("float64"): "F64",
             np.dtype("int64"): "I64"}
    header, blobs, offset = {"__metadata__": {"format": "pt"}}, [], 0
    for name, value in tensors.items():
        if isinstance(value, tuple):
            code, shape, raw = value
        else:
            code, shape, raw = codes[value.dtype], value.shape, np.ascontiguousarray(value).tobytes()
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def checkpoint_dir(root: Path, name: str, config: transformers.AlbertConfig) -> Path:
    d = root / name
    d.mkdir()
    config.to_json_file(d / "config.json")
    shutil.copy(ALBERT_VOCAB, d / "spiece.model")
    return d


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Tiny AlbertForMaskedLM / AlbertForPreTraining / AlbertModel, saved as safetensors and as .bin."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("checkpoints")
    config = tiny_hf_config()
    out = {}
    for cls in (transformers.AlbertForMaskedLM, transformers.AlbertForPreTraining, transformers.AlbertModel):
        model = cls(config).eval()
        for fmt, safe in (("st", True), ("bin", False)):
            d = root / f"{cls.__name__}-{fmt}"
            model.save_pretrained(d, safe_serialization=safe)
            shutil.copy(ALBERT_VOCAB, d / "spiece.model")
            out[cls.__name__, fmt] = d
        out[cls.__name__] = hf_state(model)
    out["root"] = root
    out["config"] = config
    return out


def check_converted(path: Path, state: dict[str, np.ndarray], dtype=np.float32) -> None:
    config, params, spiece, attrs = weights.load_params(path, dtype=None)
    expected = {k: v for k, v in state.items() if k not in TIED}
    assert set(params) == set(expected)
    for name, value in expected.items():
        want = value.astype(dtype)
        assert params[name].dtype == dtype, name
        assert params[name].tobytes() == want.tobytes(), f"{name} is not bit-identical"
    assert spiece == ALBERT_VOCAB.read_bytes()
    assert config.hidden_size == 16 and config.vocab_size == 30000
    assert attrs["has_sop_head"] == ("sop_classifier.classifier.weight" in state)


# ------------------------------------------------------------------------------------------------
# good checkpoints, through the CLI
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["AlbertForMaskedLM", "AlbertForPreTraining"])
@pytest.mark.parametrize("fmt", ["st", "bin"])
def test_cli_converts_bit_identically(models, tmp_path, arch, fmt):
    out = tmp_path / "out.h5"
    result = run_cli(str(models[arch, fmt]), str(out))
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout and result.stderr == ""
    check_converted(out, models[arch])
    prov = json.loads(weights.load_params(out)[3]["provenance_json"])
    name = "model.safetensors" if fmt == "st" else "pytorch_model.bin"
    src = models[arch, fmt] / name
    import hashlib

    entry = next(e for e in prov["source_files"] if e["name"] == name)
    assert entry["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert prov["converter"] == f"tinyalbert.convert {tinyalbert.__version__}"
    assert prov["source_architectures"] == [arch]


def test_cli_float16_halves_the_file(models, tmp_path):
    src = models["AlbertForPreTraining", "st"]
    out32, out16 = tmp_path / "f32.h5", tmp_path / "f16.h5"
    conv.convert(src, out32)
    result = run_cli(str(src / "model.safetensors"), str(out16), "--dtype", "float16")  # a file as SRC
    assert result.returncode == 0, result.stderr
    check_converted(out16, models["AlbertForPreTraining"], dtype=np.float16)
    data = sum(v.nbytes for k, v in models["AlbertForPreTraining"].items() if k not in TIED)
    assert os.path.getsize(out32) - os.path.getsize(out16) > 0.45 * data
    model = weights.load(out16)
    assert model.params["predictions.bias"].dtype == np.float32


def test_converted_model_matches_transformers(models, tmp_path):
    """The converted weights give the reference's logits (one small forward, end to end)."""
    out = conv.convert(models["AlbertForPreTraining", "st"], tmp_path / "pt.h5")
    model = weights.load(out)
    ids = np.array([[2, 48, 25, 21, 1289, 3]])
    ref = transformers.AlbertForPreTraining.from_pretrained(models["AlbertForPreTraining", "st"]).eval()
    with torch.no_grad():
        expected = ref(torch.tensor(ids)).prediction_logits.numpy()
    got = model.forward(ids).mlm_logits
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_safetensors_needs_no_torch(models, tmp_path):
    """model.safetensors is read by tinyalbert's own reader, even with torch unimportable."""
    out = tmp_path / "nt.h5"
    code = ("import sys; sys.modules['torch'] = None\n"
            "from tinyalbert.convert import main\n"
            "rc = main(sys.argv[1:])\n"
            "assert sys.modules['torch'] is None\n"
            "sys.exit(rc)\n")
    result = run_cli(str(models["AlbertForMaskedLM", "st"]), str(out), code=code)
    assert result.returncode == 0, result.stderr
    check_converted(out, models["AlbertForMaskedLM"])


def test_bin_without_torch_is_a_clear_error(models, tmp_path):
    code = ("import sys; sys.modules['torch'] = None\n"
            "from tinyalbert.convert import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    result = run_cli(str(models["AlbertForMaskedLM", "bin"]), str(tmp_path / "x.h5"), code=code)
    line = assert_one_line_error(result)
    assert "needs torch" in line and "model.safetensors" in line


# ------------------------------------------------------------------------------------------------
# hand-written safetensors: other dtypes and older writers' extras
# ------------------------------------------------------------------------------------------------
def test_older_writer_extras_are_ignored(models, tmp_path):
    state = models["AlbertForMaskedLM"]
    tensors = dict(state)  # state_dict() includes the tied decoder duplicates
    assert all(k in tensors for k in TIED)
    tensors["albert.embeddings.position_ids"] = np.arange(24, dtype=np.int64)[None]
    tensors["albert.embeddings.token_type_ids"] = np.zeros((1, 24), dtype=np.int64)
    d = checkpoint_dir(tmp_path, "old", models["config"])
    write_safetensors(d / "model.safetensors", tensors)
    result = run_cli(str(d), str(tmp_path / "old.h5"))
    assert result.returncode == 0, result.stderr
    check_converted(tmp_path / "old.h5", state)
    prov = json.loads(weights.load_params(tmp_path / "old.h5")[3]["provenance_json"])
    assert set(prov["ignored_tensors"]) == set(TIED) | {"albert.embeddings.position_ids",
                                                        "albert.embeddings.token_type_ids"}


def test_untied_decoder_is_refused(models, tmp_path):
    tensors = dict(models["AlbertForMaskedLM"])
    tensors["predictions.decoder.weight"] = tensors["predictions.decoder.weight"] + 1
    d = checkpoint_dir(tmp_path, "untied", models["config"])
    write_safetensors(d / "model.safetensors", tensors)
    with pytest.raises(conv.ConvertError, match="predictions.decoder.weight differs"):
        conv.convert(d, tmp_path / "u.h5")


@pytest.mark.parametrize("code", ["F16", "BF16", "F64"])
def test_other_source_dtypes(models, tmp_path, code):
    state = {k: v for k, v in models["AlbertForPreTraining"].items() if k not in TIED}
    tensors, expected = {}, {}
    for name, value in state.items():
        t = torch.from_numpy(value)
        if code == "F16":
            stored = t.half()
            raw = stored.numpy().tobytes()
        elif code == "BF16":
            stored = t.bfloat16()
            raw = stored.view(torch.int16).numpy().tobytes()
        else:
            stored = t.double()
            raw = stored.numpy().tobytes()
        tensors[name] = (code, value.shape, raw)
        expected[name] = stored.float().numpy()
    d = checkpoint_dir(tmp_path, code, models["config"])
    write_safetensors(d / "model.safetensors", tensors)
    out = conv.convert(d, tmp_path / f"{code}.h5")
    check_converted(out, expected)


# ------------------------------------------------------------------------------------------------
# refusals
# ------------------------------------------------------------------------------------------------
def test_missing_unexpected_and_misshaped_tensors_are_listed(models, tmp_path):
    tensors = {k: v for k, v in models["AlbertForMaskedLM"].items() if k not in TIED}
    del tensors["predictions.dense.bias"]
    tensors["predictions.extra.weight"] = np.zeros((2, 2), np.float32)
    tensors["albert.embeddings.LayerNorm.weight"] = np.ones(9, np.float32)
    d = checkpoint_dir(tmp_path, "bad", models["config"])
    write_safetensors(d / "model.safetensors", tensors)
    line = assert_one_line_error(run_cli(str(d), str(tmp_path / "bad.h5")), code=1)
    assert "missing tensors: predictions.dense.bias" in line
    assert "unexpected tensors: predictions.extra.weight" in line
    assert "tensor albert.embeddings.LayerNorm.weight has shape (9,), expected (8,)" in line
    assert not (tmp_path / "bad.h5").exists()


def test_incomplete_sop_head_is_refused(models, tmp_path):
    tensors = {k: v for k, v in models["AlbertForPreTraining"].items() if k not in TIED}
    del tensors["sop_classifier.classifier.bias"]
    d = checkpoint_dir(tmp_path, "half-sop", models["config"])
    write_safetensors(d / "model.safetensors", tensors)
    with pytest.raises(conv.ConvertError, match="missing tensors: sop_classifier.classifier.bias"):
        conv.convert(d, tmp_path / "x.h5")


@pytest.mark.parametrize("fmt", ["st", "bin"])
def test_albert_model_without_mlm_head_is_refused(models, tmp_path, fmt):
    line = assert_one_line_error(run_cli(str(models["AlbertModel", fmt]), str(tmp_path / "enc.h5")), code=1)
    assert "AlbertModel" in line and "no MLM head" in line
    assert not (tmp_path / "enc.h5").exists()


@pytest.mark.parametrize("missing", ["config.json", "spiece.model"])
def test_missing_config_or_vocab(models, tmp_path, missing):
    d = tmp_path / "ckpt"
    shutil.copytree(models["AlbertForMaskedLM", "st"], d)
    (d / missing).unlink()
    line = assert_one_line_error(run_cli(str(d), str(tmp_path / "x.h5")), code=2)
    assert f"missing {missing}" in line and str(d / missing) in line


def test_missing_source_and_weights(tmp_path):
    line = assert_one_line_error(run_cli(str(tmp_path / "nowhere"), str(tmp_path / "x.h5")), code=2)
    assert "source not found" in line
    empty = tmp_path / "empty"
    empty.mkdir()
    line = assert_one_line_error(run_cli(str(empty), str(tmp_path / "x.h5")), code=2)
    assert "model.safetensors" in line and "pytorch_model.bin" in line


def test_vocab_size_mismatch_is_refused(models, tmp_path):
    d = tmp_path / "ckpt"
    shutil.copytree(models["AlbertForMaskedLM", "st"], d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["vocab_size"] = 32000
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(conv.ConvertError, match="30000 pieces but config.json says vocab_size=32000"):
        conv.convert(d, tmp_path / "x.h5")


def test_garbage_weights_file(models, tmp_path):
    d = tmp_path / "ckpt"
    shutil.copytree(models["AlbertForMaskedLM", "st"], d)
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])  # truncated
    line = assert_one_line_error(run_cli(str(d), str(tmp_path / "x.h5")))
    assert "truncated" in line
    (d / "model.safetensors").write_bytes(b"hello world, not a checkpoint")
    line = assert_one_line_error(run_cli(str(d), str(tmp_path / "x.h5")))
    assert "neither a safetensors file nor a PyTorch checkpoint" in line


def test_from_hub_offline_prints_manual_steps(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = run_cli("--from-hub", "albert/albert-xxlarge-v2", str(tmp_path / "dl"), str(tmp_path / "x.h5"),
                     env_extra=env)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ")
    assert "https://huggingface.co/albert/albert-xxlarge-v2/tree/main" in result.stderr
    for name in ("config.json", "spiece.model", "model.safetensors"):
        assert name in result.stderr
    assert str(tmp_path / "dl") in result.stderr


def test_usage_errors(tmp_path):
    result = run_cli(str(tmp_path))  # OUT.h5 missing
    assert_one_line_error(result)
    result = run_cli(str(tmp_path), str(tmp_path / "x.h5"), "--dtype", "int8")
    assert result.returncode != 0 and "Traceback" not in result.stderr
