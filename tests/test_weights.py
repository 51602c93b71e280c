"""tinyalbert.weights: the HDF5 weights file (save, load_params, load, python -m tinyalbert.weights)."""
from __future__ import annotations

import mmap
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import tinyalbert
from tinyalbert import weights
from tinyalbert.nn.config import AlbertConfig
from tinyalbert.nn.params import init_params, param_shapes
from tinyalbert.tokenizer import ALBERT_VOCAB
from tinyalbert.weights import WeightsError

PACKAGE_ROOT = str(Path(tinyalbert.__file__).parent.parent)


def tiny_config(**kw) -> AlbertConfig:
    base = dict(vocab_size=30000, embedding_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=32, max_position_embeddings=24)
    base.update(kw)
    return AlbertConfig(**base)


@pytest.fixture(scope="module")
def spiece_bytes() -> bytes:
    return ALBERT_VOCAB.read_bytes()


@pytest.fixture
def saved(tmp_path, spiece_bytes):
    """A float32 weights file with SOP head and vocabulary; returns (path, config, params)."""
    config = tiny_config()
    params = init_params(config, seed=1, sop_head=True)
    path = tmp_path / "tiny.h5"
    weights.save(path, config, params, spiece_model_bytes=spiece_bytes, provenance={"made_by": "test"})
    return path, config, params


def run_cli(module: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = PACKAGE_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env,
                          timeout=120)


def mmap_root(arr: np.ndarray):
    """Follow .base to the object that owns the memory."""
    base = arr
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    return base


# ------------------------------------------------------------------------------------------------
# round trips
# ------------------------------------------------------------------------------------------------
def test_round_trip_float32(saved, spiece_bytes):
    path, config, params = saved
    config2, params2, spiece2, attrs = weights.load_params(path)
    assert config2 == config
    assert list(params2) == list(param_shapes(config, sop_head=True))  # reference order
    for name, value in params.items():
        assert params2[name].dtype == np.float32
        assert np.array_equal(params2[name], value), name
    assert spiece2 == spiece_bytes
    assert attrs["format"] == "tinyalbert-weights" and attrs["format_version"] == 1
    assert attrs["has_sop_head"] is True and attrs["dtype"] == "float32"
    assert attrs["tinyalbert_version"] == tinyalbert.__version__
    assert '"made_by": "test"' in attrs["provenance_json"]
    assert attrs["created"][:2] == "20" and "T" in attrs["created"]


def test_round_trip_without_sop_head_or_vocab(tmp_path):
    config = tiny_config(num_hidden_groups=2, inner_group_num=2)
    params = init_params(config, seed=2, sop_head=False)
    path = weights.save(tmp_path / "mlm.h5", config, params)
    config2, params2, spiece, attrs = weights.load_params(path)
    assert spiece is None and attrs["has_sop_head"] is False
    assert set(params2) == set(params)
    assert all(np.array_equal(params2[k], params[k]) for k in params)


def test_float16_file_is_half_size_and_computes_in_float32(tmp_path, saved):
    _, config, params = saved
    p32 = weights.save(tmp_path / "f32.h5", config, params)
    p16 = weights.save(tmp_path / "f16.h5", config, params, dtype="float16")
    data32 = sum(v.nbytes for v in params.values())
    assert os.path.getsize(p32) - os.path.getsize(p16) > 0.45 * data32
    _, stored, _, attrs = weights.load_params(p16, dtype=None)
    assert attrs["dtype"] == "float16"
    assert all(v.dtype == np.float16 for v in stored.values())
    _, computed, _, _ = weights.load_params(p16, dtype=np.float32)
    for name, value in params.items():
        assert computed[name].dtype == np.float32
        assert np.array_equal(computed[name], value.astype(np.float16).astype(np.float32)), name


def test_save_keeps_float64_params_and_loads_them_as_asked(tmp_path):
    config = tiny_config()
    params = init_params(config, dtype=np.float64, sop_head=False)
    path = weights.save(tmp_path / "f64.h5", config, params)
    _, p64, _, attrs = weights.load_params(path, dtype=None)
    assert attrs["dtype"] == "float64" and all(v.dtype == np.float64 for v in p64.values())
    _, p32, _, _ = weights.load_params(path)  # default: as stored
    assert all(v.dtype == np.float64 for v in p32.values())
    _, p32, _, _ = weights.load_params(path, dtype=np.float32)
    assert all(v.dtype == np.float32 for v in p32.values())


def test_load_returns_model_with_tokenizer(saved):
    path, config, params = saved
    model = weights.load(path)
    assert model.config == config
    assert model.has_sop_head is True
    assert model.tokenizer is not None
    assert model.tokenizer.encode("This is a test") == [2, 48, 25, 21, 1289, 3]
    assert all(model.params[k].dtype == np.float32 for k in params)
    assert all(np.array_equal(model.params[k], params[k]) for k in params)
    # the kernels accept the read-only memory-mapped params as they are
    from tinyalbert.nn.model import Albert

    ids = np.array([[2, 48, 25, 21, 1289, 3]])
    expected = Albert(config, {k: np.array(v) for k, v in params.items()}).forward(ids)
    got = model.forward(ids)
    assert np.array_equal(got.mlm_logits, expected.mlm_logits)
    assert np.array_equal(got.sop_logits, expected.sop_logits)


def test_load_float16_file_gives_float32_model(tmp_path, saved):
    _, config, params = saved
    path = weights.save(tmp_path / "half.h5", config, params, dtype=np.float16)
    model = weights.load(path)
    assert {v.dtype for v in model.params.values()} == {np.dtype(np.float32)}
    assert model.tokenizer is None
    with pytest.raises(WeightsError, match="float32 or float64"):
        weights.load(path, dtype=np.float16)


# ------------------------------------------------------------------------------------------------
# layout and memory mapping
# ------------------------------------------------------------------------------------------------
def test_datasets_are_contiguous_uncompressed_and_aligned(saved):
    path, config, params = saved
    with h5py.File(path, "r") as f:
        assert set(f["params"]) == set(params)
        for name, dset in f["params"].items():
            assert dset.chunks is None and dset.compression is None, name
            assert dset.id.get_offset() % weights.ALIGNMENT == 0, name
        assert f["spiece_model"].dtype == np.uint8


def test_params_are_views_of_one_read_only_memmap(saved):
    path, _, params = saved
    _, loaded, _, _ = weights.load_params(path, dtype=np.float32)
    roots = {id(mmap_root(v)) for v in loaded.values()}
    assert len(roots) == 1
    root = mmap_root(next(iter(loaded.values())))
    assert isinstance(root, mmap.mmap)
    for name, value in loaded.items():
        assert isinstance(value, np.memmap), name
        assert not value.flags.writeable
        assert value.flags.aligned and value.flags.c_contiguous
    with pytest.raises(ValueError):
        loaded["predictions.bias"][0] = 1.0


def test_mmap_false_gives_writable_in_memory_arrays(saved):
    path, _, params = saved
    _, loaded, _, _ = weights.load_params(path, mmap=False)
    for name, value in loaded.items():
        assert not isinstance(value, np.memmap) and value.flags.writeable, name
        assert np.array_equal(value, params[name])


# ------------------------------------------------------------------------------------------------
# atomic writes
# ------------------------------------------------------------------------------------------------
class Exploding:
    """A tensor whose data cannot be produced: save fails half-way through the file."""

    def __init__(self, shape, dtype=np.float32):
        self.shape, self.dtype = shape, np.dtype(dtype)

    def __array__(self, dtype=None, copy=None):
        raise RuntimeError("disk on fire")


def test_save_leaves_no_temp_file(saved):
    path, _, _ = saved
    assert os.listdir(path.parent) == [path.name]


def test_failed_save_keeps_old_file_and_removes_temp(saved):
    path, config, params = saved
    before = path.read_bytes()
    broken = dict(params)
    names = list(param_shapes(config, sop_head=True))
    victim = names[len(names) // 2]  # several tensors are already written when this one fails
    broken[victim] = Exploding(params[victim].shape)
    with pytest.raises(RuntimeError, match="disk on fire"):
        weights.save(path, config, broken)
    assert os.listdir(path.parent) == [path.name]
    assert path.read_bytes() == before
    _, loaded, _, _ = weights.load_params(path)
    assert np.array_equal(loaded[victim], params[victim])


def test_failed_first_save_leaves_nothing(tmp_path, saved):
    _, config, params = saved
    broken = dict(params, **{"predictions.bias": Exploding(params["predictions.bias"].shape)})
    with pytest.raises(RuntimeError):
        weights.save(tmp_path / "new.h5", config, broken)
    assert not any(p.name != "tiny.h5" for p in tmp_path.iterdir())


def test_save_refuses_bad_params(tmp_path, saved):
    _, config, params = saved
    bad = dict(params)
    bad["predictions.bias"] = np.zeros(7, np.float32)
    with pytest.raises(WeightsError, match=r"predictions\.bias has shape \(7,\), expected \(30000,\)"):
        weights.save(tmp_path / "bad.h5", config, bad)
    with pytest.raises(WeightsError, match="int8"):
        weights.save(tmp_path / "bad.h5", config, params, dtype=np.int8)
    assert not (tmp_path / "bad.h5").exists()


# ------------------------------------------------------------------------------------------------
# bad input files
# ------------------------------------------------------------------------------------------------
def one_line_error(path, **kw) -> str:
    with pytest.raises(WeightsError) as info:
        weights.load_params(path, **kw)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_file(tmp_path):
    path = tmp_path / "nope.h5"
    assert one_line_error(path) == f"weights file not found: {path}"


def test_not_hdf5(tmp_path):
    path = tmp_path / "notes.h5"
    path.write_text("this is not a weights file\n" * 10)
    assert one_line_error(path) == f"{path} is not an HDF5 file"


@pytest.mark.parametrize("fraction", [0.95, 0.6, 0.2, 0.01])
def test_truncated(saved, fraction):
    path, _, _ = saved
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * fraction)])
    message = one_line_error(path)
    assert str(path) in message and "truncated" in message


def test_truncated_data_detected_from_offsets(saved, monkeypatch):
    """Even if HDF5 itself did not notice, a tensor reaching past the end of the file is refused."""
    path, _, _ = saved
    real_getsize = os.path.getsize
    monkeypatch.setattr(os.path, "getsize", lambda p: real_getsize(p) // 2)
    message = one_line_error(path)
    assert "truncated" in message and "tensor" in message


def test_wrong_format_version(saved):
    path, _, _ = saved
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = np.int64(2)
    message = one_line_error(path)
    assert "format_version 2" in message and "format_version 1" in message


def test_not_a_tinyalbert_file(tmp_path):
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.arange(3)
    message = one_line_error(path)
    assert "not a tinyalbert weights file" in message and "tinyalbert-weights" in message


@pytest.mark.parametrize("name, shape", [("predictions.dense.weight", (8, 15)),
                                         ("albert.embeddings.word_embeddings.weight", (29999, 8))])
def test_wrong_tensor_shape(saved, name, shape):
    path, config, params = saved
    expected = params[name].shape
    with h5py.File(path, "r+") as f:
        del f["params"][name]
        f["params"].create_dataset(name, shape=shape, dtype=np.float32)
    message = one_line_error(path)
    assert f"tensor {name} has shape {shape}, expected {expected}" in message


def test_missing_and_unexpected_tensor(saved):
    path, _, _ = saved
    with h5py.File(path, "r+") as f:
        del f["params"]["predictions.bias"]
        f["params"].create_dataset("predictions.extra", shape=(3,), dtype=np.float32)
    message = one_line_error(path)
    assert "missing tensors: predictions.bias" in message and "unexpected tensors: predictions.extra" in message


def test_bad_dtype_in_file(saved):
    path, _, params = saved
    with h5py.File(path, "r+") as f:
        del f["params"]["predictions.bias"]
        f["params"].create_dataset("predictions.bias", data=np.zeros(params["predictions.bias"].shape, np.int32))
    assert "predictions.bias has dtype int32" in one_line_error(path)


def test_load_reports_missing_file_too(tmp_path):
    with pytest.raises(WeightsError, match="weights file not found"):
        weights.load(tmp_path / "missing.h5")


# ------------------------------------------------------------------------------------------------
# python -m tinyalbert.weights
# ------------------------------------------------------------------------------------------------
def test_cli_describes_a_good_file(saved):
    path, _, _ = saved
    result = run_cli("tinyalbert.weights", str(path))
    assert result.returncode == 0, result.stderr
    assert "format_version 1" in result.stdout and "SOP head: yes" in result.stdout


@pytest.mark.parametrize("problem", ["missing", "not_hdf5", "truncated"])
def test_cli_errors_are_one_line(tmp_path, saved, problem):
    path, _, _ = saved
    if problem == "missing":
        target = tmp_path / "missing.h5"
    elif problem == "not_hdf5":
        target = tmp_path / "text.h5"
        target.write_text("hello")
    else:
        target = path
        target.write_bytes(path.read_bytes()[:5000])
    result = run_cli("tinyalbert.weights", str(target))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
