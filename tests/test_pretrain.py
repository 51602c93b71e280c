"""python -m tinyalbert.pretrain: a stopped and resumed run ends bitwise equal to an uninterrupted one."""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from tinyalbert import pretrain
from tinyalbert.nn.params import sinusoidal_positions
from tinyalbert.tokenizer import ALBERT_VOCAB
from tinyalbert.vocab import train_vocab
from tinyalbert.weights import load

SENTENCES = [
    "The cat sat on the mat.", "It was a sunny day in the park.", "Tom went to the shop to buy some milk.",
    "His mother gave him three coins.", "The shop was closed, so he walked home.", "A dog barked at the gate.",
    "Lily liked to paint pictures of the sea.", "She used blue and green for the waves.",
    "Her brother laughed at the small boat.", "Then he helped her draw a bigger one.",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    docs = []
    for _ in range(40):
        paragraphs = [" ".join(rng.choice(SENTENCES, size=3)) for _ in range(3)]
        docs.append("\n".join(paragraphs))
    (folder / "stories.txt").write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return folder


def run(out: Path, corpus: Path, cache: Path, *extra: str) -> int:
    args = ["--out", str(out), "--vocab", str(ALBERT_VOCAB), "--data", f"{corpus}:1", "--cache-dir", str(cache),
            "--embedding-size", "8", "--hidden-size", "16", "--num-heads", "2", "--intermediate-size", "24",
            "--num-layers", "3", "--seq-len", "32", "--steps", "6", "--batch-size", "4", "--warmup", "2",
            "--lr", "1e-2", "--log-every", "1", "--eval-every", "3", "--eval-batches", "1", "--checkpoint-every",
            "100", "--heldout-fraction", "0.2", *extra]
    return pretrain.main(args)


def checkpoint_arrays(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        out = {f"params/{k}": f["params"][k][()] for k in f["params"]}
        out.update({f"optimizer/{k}": f["optimizer"][k][()] for k in f["optimizer"]})
        out["step"] = np.array(f.attrs["step"])
    return out


def test_resume_is_bitwise_exact(tmp_path, corpus):
    cache = tmp_path / "cache"
    assert run(tmp_path / "straight", corpus, cache) == 0
    assert run(tmp_path / "stopped", corpus, cache, "--stop-after", "4") == 0
    assert checkpoint_arrays(tmp_path / "stopped" / "checkpoint.h5")["step"] == 4
    assert not (tmp_path / "stopped" / "model.h5").exists()
    assert run(tmp_path / "stopped", corpus, cache, "--resume") == 0

    a = checkpoint_arrays(tmp_path / "straight" / "checkpoint.h5")
    b = checkpoint_arrays(tmp_path / "stopped" / "checkpoint.h5")
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), f"{k} differs after resume"
    # the logs agree too (apart from timing)
    drop = ("tokens_per_s",)
    log_a = [{k: v for k, v in json.loads(x).items() if k not in drop}
             for x in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    log_b = [{k: v for k, v in json.loads(x).items() if k not in drop}
             for x in (tmp_path / "stopped" / "log.jsonl").read_text().splitlines()]
    assert log_a == log_b


def test_outputs_of_a_finished_run(tmp_path, corpus):
    out = tmp_path / "run"
    assert run(out, corpus, tmp_path / "cache", "--export", str(tmp_path / "exported.h5")) == 0
    assert (out / "loss.png").stat().st_size > 0
    records = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in records if "eval_loss" in r] == [3, 6]
    model = load(tmp_path / "exported.h5")
    assert model.has_sop_head and model.tokenizer is not None
    assert model.config.hidden_size == 16 and model.config.num_hidden_layers == 3


def test_resume_refuses_changed_arguments(tmp_path, corpus, capsys):
    assert run(tmp_path / "r", corpus, tmp_path / "cache", "--stop-after", "2") == 0
    log = (tmp_path / "r" / "log.jsonl").read_text()
    capsys.readouterr()
    assert run(tmp_path / "r", corpus, tmp_path / "cache", "--resume", "--lr", "5e-3", "--heldout-fraction", "0.3",
               "--dtype", "float64") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --resume"), err   # one line naming every difference
    for difference in ("--lr is 0.005 but the checkpoint was made with 0.01",
                       "--heldout-fraction is 0.3 but the checkpoint was made with 0.2",
                       "--dtype is 'float64' but the checkpoint was made with 'float32'"):
        assert difference in err
    assert (tmp_path / "r" / "log.jsonl").read_text() == log     # a refused resume changes nothing


def test_every_argument_is_compared_on_resume_unless_listed():
    """An option added later is compared by default: changing any argument outside MAY_CHANGE_ON_RESUME
    is named by the resume check."""
    parser = pretrain.build_parser()
    args = parser.parse_args(["--out", "o", "--vocab", "v.model", "--data", "d"])
    saved = {k: v for k, v in vars(args).items() if k != "resume"}
    fingerprints = {"vocab": "sha256 0", "data": ["d:1:0"]}
    assert pretrain.resume_mismatches(args, fingerprints, saved, fingerprints) == []
    for key, value in vars(args).items():
        changed = dict(saved, **{key: ["other"] if isinstance(value, list) else f"other {value}"})
        named = pretrain.resume_mismatches(args, fingerprints, changed, fingerprints)
        if key in pretrain.MAY_CHANGE_ON_RESUME or key in fingerprints:
            assert named == [], key
        else:
            assert len(named) == 1 and named[0].startswith(f"--{key.replace('_', '-')} "), (key, named)
    # --vocab and --data are compared by content: a moved file is fine, a changed one is not
    moved = dict(saved, vocab="elsewhere/v.model", data=["elsewhere/d"])
    assert pretrain.resume_mismatches(args, fingerprints, moved, fingerprints) == []
    for key, other in (("vocab", "sha256 1"), ("data", ["d:1:1"])):
        named = pretrain.resume_mismatches(args, fingerprints, saved, {**fingerprints, key: other})
        assert len(named) == 1 and named[0].startswith(f"--{key} ") and str(other) in named[0]


def test_resume_compares_the_vocabulary_and_the_data_by_content(tmp_path, corpus, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "stories.txt").write_bytes((corpus / "stories.txt").read_bytes())
    vocab = tmp_path / "spiece.model"
    vocab.write_bytes(ALBERT_VOCAB.read_bytes())
    out, cache = tmp_path / "r", tmp_path / "cache"
    assert run(out, data, cache, "--stop-after", "2", "--vocab", str(vocab)) == 0
    # the same content under other paths: resumes (and the options that may change, may).  The folder keeps
    # its name: a source is named after it, and the name seeds the choice of held-out documents
    moved = tmp_path / "elsewhere" / "data"
    moved.parent.mkdir()
    data.rename(moved)
    copy = tmp_path / "copy.model"
    copy.write_bytes(vocab.read_bytes())
    assert run(out, moved, cache, "--stop-after", "3", "--vocab", str(copy), "--resume", "--log-every", "2",
               "--cache-dir", str(tmp_path / "cache2"), "--checkpoint-every", "7") == 0
    # the same paths with other content: refused, naming both
    (moved / "stories.txt").write_text("A new first line.\n" + (moved / "stories.txt").read_text())
    train_vocab([moved], copy, vocab_size=60, progress=False)
    capsys.readouterr()
    assert run(out, moved, cache, "--vocab", str(copy), "--resume") == 2
    err = capsys.readouterr().err
    assert "--vocab" in err and "--data" in err, err


def test_resume_without_a_checkpoint_is_refused(tmp_path, corpus, capsys):
    out = tmp_path / "r"
    out.mkdir()
    (out / "log.jsonl").write_text('{"step": 1, "loss": 10.0}\n')
    assert run(out, corpus, tmp_path / "cache", "--resume") == 2
    err = capsys.readouterr().err
    assert str(out / "checkpoint.h5") in err and "--resume" in err
    assert (out / "log.jsonl").read_text() == '{"step": 1, "loss": 10.0}\n'    # the log is kept


def test_resume_drops_a_torn_last_log_line(tmp_path, corpus, capsys):
    cache = tmp_path / "cache"
    assert run(tmp_path / "straight", corpus, cache) == 0
    out = tmp_path / "torn"
    assert run(out, corpus, cache, "--stop-after", "4") == 0
    with open(out / "log.jsonl", "a", encoding="utf-8") as log:      # a crash in the middle of a record
        log.write('{"step": 5, "lr": 0.00')
    assert run(out, corpus, cache, "--resume") == 0
    assert "cut short" in capsys.readouterr().err
    drop = ("tokens_per_s",)
    logs = [[{k: v for k, v in json.loads(x).items() if k not in drop}
             for x in (folder / "log.jsonl").read_text().splitlines()] for folder in (tmp_path / "straight", out)]
    assert logs[0] == logs[1]
    # a broken line that is not the last is not a crash's doing: refused
    broken = len(logs[1]) + 1
    with open(out / "log.jsonl", "a", encoding="utf-8") as log:
        log.write("not json\n" + '{"step": 6}\n')
    with pytest.raises(ValueError, match=f"line {broken} is not a JSON record"):
        pretrain.trim_log(out / "log.jsonl", 6)


def frozen_run(out: Path, corpus: Path, cache: Path, *extra: str):
    """A run with learning rate and weight decay 0: its model.h5 holds the weights it started from."""
    assert run(out, corpus, cache, *extra, "--lr", "0", "--weight-decay", "0") == 0
    return load(out / "model.h5")


def second_phase(tmp_path: Path, corpus: Path, start_file: str, *extra: str):
    """Train a first run, start a frozen second phase from its `start_file`; both models, weights checked equal."""
    cache = tmp_path / "cache"
    assert run(tmp_path / "one", corpus, cache) == 0
    first = load(tmp_path / "one" / "model.h5")
    second = frozen_run(tmp_path / "two", corpus, cache, "--init-from", str(tmp_path / "one" / start_file), *extra)
    for k, v in first.params.items():
        assert np.array_equal(v, second.params[k]), k
    return first, second


def test_second_phase_starts_from_given_weights(tmp_path, corpus):
    _, second = second_phase(tmp_path, corpus, "model.h5", "--hidden-size", "32")
    assert second.config.hidden_size == 16          # the model options are ignored with --init-from


def test_sinusoidal_position_table():
    table = sinusoidal_positions(64, 10, std=0.02, dtype=np.float64)
    assert table.shape == (64, 10)
    gram = table @ table.T
    # P[i]·P[j] depends only on i - j, and a position is closest to itself
    for shift in (1, 5):
        assert np.allclose(np.diag(gram, shift), np.diag(gram, shift)[0])
    assert np.all(np.diag(gram, 1) < np.diag(gram)[0])
    assert abs(sinusoidal_positions(512, 128, std=0.02).std() - 0.02) < 0.003


def test_position_init_option(tmp_path, corpus):
    model = frozen_run(tmp_path / "sin", corpus, tmp_path / "cache", "--position-init", "sinusoid")
    table = model.params["albert.embeddings.position_embeddings.weight"]
    expected = sinusoidal_positions(table.shape[0], table.shape[1], model.config.initializer_range)
    assert np.array_equal(table, expected)


def test_tied_query_key_init(tmp_path, corpus):
    params = frozen_run(tmp_path / "tied", corpus, tmp_path / "cache", "--qk-init", "tied").params
    attention = "albert.encoder.albert_layer_groups.0.albert_layers.0.attention."
    assert np.array_equal(params[attention + "key.weight"], params[attention + "query.weight"])
    assert not np.array_equal(params[attention + "value.weight"], params[attention + "query.weight"])


def test_piece_masking_option(tmp_path, corpus):
    assert run(tmp_path / "piece", corpus, tmp_path / "cache", "--mask-unit", "piece", "--max-ngram", "1",
               "--stop-after", "2") == 0
    assert run(tmp_path / "piece", corpus, tmp_path / "cache", "--resume") == 2  # masking is part of the run
    assert run(tmp_path / "piece", corpus, tmp_path / "cache", "--resume", "--mask-unit", "piece",
               "--max-ngram", "1") == 0


def test_fan_in_weight_init(tmp_path, corpus):
    params = frozen_run(tmp_path / "fan", corpus, tmp_path / "cache", "--weight-init", "fan-in").params
    ffn_output = params["albert.encoder.albert_layer_groups.0.albert_layers.0.ffn_output.weight"]   # (16, 24)
    assert abs(ffn_output.std() * np.sqrt(24) - 1) < 0.25
    assert abs(params["albert.embeddings.word_embeddings.weight"].std() - 0.02) < 0.005  # embeddings keep init-std


def test_second_phase_can_apply_the_shared_layer_more_often(tmp_path, corpus):
    first, deeper = second_phase(tmp_path, corpus, "checkpoint.h5", "--num-layers", "5")
    assert first.config.num_hidden_layers == 3 and deeper.config.num_hidden_layers == 5


def test_layer_groups_option(tmp_path, corpus):
    model = frozen_run(tmp_path / "groups", corpus, tmp_path / "cache", "--num-groups", "3")
    assert model.config.num_hidden_groups == 3
    layers = {k.split(".albert_layers")[0] for k in model.params if ".albert_layer_groups." in k}
    assert layers == {f"albert.encoder.albert_layer_groups.{g}" for g in range(3)}     # one layer per group
    first, second = (model.params[f"albert.encoder.albert_layer_groups.{g}.albert_layers.0.ffn.weight"]
                     for g in (0, 1))
    assert not np.array_equal(first, second)                                          # each drawn on its own
    assert run(tmp_path / "bad", corpus, tmp_path / "cache", "--num-groups", "2") == 2  # 3 applications, 2 groups


def test_pair_task_option_and_resume_check(tmp_path, corpus, capsys):
    cache = tmp_path / "cache"
    assert run(tmp_path / "nsp", corpus, cache, "--pair-task", "nsp", "--stop-after", "3") == 0
    with h5py.File(tmp_path / "nsp" / "checkpoint.h5", "r") as f:
        args = json.loads(f.attrs["args_json"])
    assert args["pair_task"] == "nsp"
    capsys.readouterr()
    assert run(tmp_path / "nsp", corpus, cache, "--resume") == 2      # resumed as SOP: refused
    assert "--pair-task" in capsys.readouterr().err
    assert run(tmp_path / "nsp", corpus, cache, "--resume", "--pair-task", "nsp") == 0
    assert (tmp_path / "nsp" / "model.h5").is_file()
