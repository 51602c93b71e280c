"""The committed ablation study (weights/ablations/, python -m tinyalbert.ablations): its files are there and
agree with each other and with the study's definition, and its measuring code does what it says."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tinyalbert import ablations, pretrain
from tinyalbert.ablations import ARMS, KEPT_MODELS, RECIPE, RESULTS_FILE, RESULTS_FORMAT, SOURCES
from tinyalbert.nn.config import AlbertConfig
from tinyalbert.nn.params import init_params, param_shapes
from tinyalbert.tokenizer import ALBERT_VOCAB, Tokenizer
from tinyalbert.weights import load

RESULTS_DIR = ablations.DEFAULT_OUT


@pytest.fixture(scope="module")
def results() -> dict:
    return json.loads((RESULTS_DIR / RESULTS_FILE).read_text())


def test_results_describe_every_arm_and_seed(results):
    assert results["format"] == RESULTS_FORMAT and results["sources"] == list(SOURCES)
    assert results["recipe"] == RECIPE, "the committed results were made with another recipe than the code's"
    assert results["arms"] == [json.loads(json.dumps(ablations.asdict(arm))) for arm in ARMS]
    done = {(r["arm"], r["seed"]) for r in results["runs"]}
    assert done == {(arm.name, seed) for arm in ARMS for seed in arm.seeds}
    assert len(results["runs"]) == len(done)
    assert sorted({table for arm in ARMS for table in arm.tables}) == [3, 4, 5]
    assert 0 < results["wall_seconds"]


def test_every_run_is_its_arm_with_the_same_budget(results):
    arms = {arm.name: arm for arm in ARMS}
    budget = RECIPE["steps"] * RECIPE["batch_size"] * RECIPE["seq_len"]
    assert results["token_budget"] == budget
    for run in results["runs"]:
        arm, config = arms[run["arm"]], run["config"]
        assert run["token_budget"] == budget, run["arm"]
        assert (config["embedding_size"], config["num_hidden_groups"]) == (arm.embedding_size, arm.num_groups)
        assert (config["hidden_size"], config["num_attention_heads"], config["intermediate_size"],
                config["num_hidden_layers"]) == (RECIPE["hidden_size"], RECIPE["num_heads"],
                                                 RECIPE["intermediate_size"], RECIPE["num_layers"])
        expected = sum(int(np.prod(shape)) for shape in param_shapes(AlbertConfig(**config)).values())
        assert run["parameters"] == expected, run["arm"]
        assert run["curve"]["step"][-1] == RECIPE["steps"], f"{run['arm']} did not train to the end"
        assert run["train_seconds"] > 0


def test_figures_are_counts_over_the_evaluation(results):
    pairs = results["evaluation"]["pairs_per_task"]
    assert pairs >= 1024
    assert 0 < results["evaluation"]["commonest_token_mlm_accuracy"] < 0.5    # the MLM floor
    for run in results["runs"]:
        for task in ("sop", "nsp"):
            assert run[f"{task}_count"] == pairs
            correct = run[f"{task}_accuracy"] * pairs
            assert 0 <= run[f"{task}_accuracy"] <= 1 and abs(correct - round(correct)) < 1e-6
        assert run["mlm_count"] > 5 * pairs       # several masked tokens per sequence, over both tasks' batches
        correct = run["mlm_accuracy"] * run["mlm_count"]
        assert 0 <= run["mlm_accuracy"] <= 1 and abs(correct - round(correct)) < 1e-6
        curve = run["curve"]
        assert len(curve["step"]) == len(curve["mlm_accuracy"]) == len(curve["pair_accuracy"]) == len(curve["loss"])
    reference = results["reference"]
    # the same held-out batches for every model: the masking does not depend on the model
    assert len({r["mlm_count"] for r in results["runs"]} | {reference["mlm_count"]}) == 1
    assert reference["trained_on"] == "sop" and reference["sop_count"] == reference["nsp_count"] == pairs
    assert 0 <= reference["sop_accuracy"] <= 1 and 0 <= reference["nsp_accuracy"] <= 1


def test_kept_models_load_and_match_their_runs(results):
    runs = {f"{r['arm']}-s{r['seed']}": r for r in results["runs"]}
    total = sum(p.stat().st_size for p in RESULTS_DIR.iterdir())
    assert total < 8_000_000, f"weights/ablations holds {total:,} bytes; keep it to a few MB"
    assert sorted(p.name for p in RESULTS_DIR.glob("*.h5")) == sorted(f"{name}.h5" for name in KEPT_MODELS)
    for name in KEPT_MODELS:
        run = runs[name]
        model = load(RESULTS_DIR / run["file"])
        config = model.config.to_dict()
        assert {k: config[k] for k in run["config"]} == run["config"]
        assert sum(v.size for v in model.params.values()) == run["parameters"]
        assert model.has_sop_head
        figure = run["figure_1"]
        assert len(figure["l2_distance"]) == len(figure["cosine_similarity"]) == config["num_hidden_layers"]


def test_figure_1_measures_reproduce_from_the_committed_model(results):
    """The one figure cheap enough to recompute here: the layer transitions of the shared model."""
    run = next(r for r in results["runs"] if f"{r['arm']}-s{r['seed']}" == KEPT_MODELS[0])
    measured = ablations.layer_transitions(load(RESULTS_DIR / run["file"]), ablations.probe_texts())
    for key, values in measured.items():
        np.testing.assert_allclose(values, run["figure_1"][key], rtol=1e-4, err_msg=key)


# ---- the measuring code ------------------------------------------------------------------------------------
def test_pretrain_arguments_describe_the_arm(tmp_path):
    arm = next(a for a in ARMS if a.pair_task == "nsp")
    argv = ablations.pretrain_arguments(arm, 1, RECIPE, tmp_path, tmp_path / "v.model", tmp_path / "out", None)
    args = pretrain.parse_args(argv)
    assert (args.embedding_size, args.num_groups, args.pair_task, args.seed) == (arm.embedding_size,
                                                                                arm.num_groups, "nsp", 1)
    assert (args.hidden_size, args.steps, args.batch_size, args.seq_len, args.lr) == (
        RECIPE["hidden_size"], RECIPE["steps"], RECIPE["batch_size"], RECIPE["seq_len"], RECIPE["lr"])
    assert not args.resume and args.export_dtype == "float16"
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "checkpoint.h5").write_bytes(b"")          # a run stopped earlier: continue it
    argv = ablations.pretrain_arguments(arm, 1, RECIPE, tmp_path, tmp_path / "v.model", tmp_path / "out", None)
    assert pretrain.parse_args(argv).resume
    assert args.data == [f"{tmp_path / s.split(':')[0]}:{s.split(':')[1]}" for s in SOURCES]


def test_runs_in_order_puts_the_headline_first():
    order = [ablations.run_name(arm, seed) for arm, seed in ablations.runs_in_order()]
    assert order[:4] == ["base-s0", "nsp-s0", "base-s1", "nsp-s1"]
    assert sorted(order) == sorted(ablations.run_name(a, s) for a in ARMS for s in a.seeds)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random model of the study's shape but tiny, and held-out data of both tasks from a small corpus."""
    root = tmp_path_factory.mktemp("corpus")
    animals = ("otter", "badger", "falcon", "walrus", "beaver", "heron", "lizard", "panda")
    for source in ("tinystories", "wikinews", "wikipedia"):
        (root / source).mkdir()
        docs = [f"The {a} ran to the {source}. Then the {a} ate a plum. The {a} slept well. It was late."
                for a in animals]
        (root / source / "text.txt").write_text("\n\n".join(docs) + "\n")
    tokenizer = Tokenizer(ALBERT_VOCAB)
    config = AlbertConfig(vocab_size=tokenizer.vocab_size, embedding_size=8, hidden_size=16, num_attention_heads=2,
                          intermediate_size=24, num_hidden_layers=2, num_hidden_groups=2)
    from tinyalbert.nn.model import Albert

    model = Albert(config, init_params(config, seed=0), tokenizer=tokenizer)
    cache = tmp_path_factory.mktemp("cache")
    data = {task: ablations.heldout_data(root, tokenizer, task, 32, str(cache)) for task in ("sop", "nsp")}
    return model, data


def test_evaluation_is_deterministic_and_agrees_with_the_model(tiny):
    model, data = tiny
    first, second = (ablations.evaluate(model, data, pairs=16, batch_size=8) for _ in range(2))
    assert first == second
    assert first["sop_count"] == first["nsp_count"] == 16
    mlm_correct = mlm_count = 0
    for task in ("sop", "nsp"):                  # the same counts from the full forward's logits
        pair_correct = 0
        for i in range(2):
            batch = data[task].batch(i, 8, split="heldout")
            out = model.forward(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
            rows, cols = np.nonzero(batch["mlm_labels"] != -100)
            mlm_correct += int((out.mlm_logits[rows, cols].argmax(-1) == batch["mlm_labels"][rows, cols]).sum())
            mlm_count += rows.size
            pair_correct += int((out.sop_logits.argmax(-1) == batch["sop_labels"]).sum())
        assert first[f"{task}_accuracy"] == pair_correct / 16
    assert (first["mlm_accuracy"], first["mlm_count"]) == (mlm_correct / mlm_count, mlm_count)


def test_layer_transitions_measure_each_application(tiny):
    model, _ = tiny
    texts = ["The otter ran to the river.", "It was late, and the panda slept."]
    measured = ablations.layer_transitions(model, texts)
    ids, mask = model.tokenizer.batch_encode(texts, max_length=64)
    hidden = model.forward(ids, attention_mask=mask).hidden_states
    for i in range(2):                                      # token by token, padding left out
        pairs = [(hidden[i][b, t], hidden[i + 1][b, t]) for b, t in zip(*np.nonzero(mask), strict=True)]
        l2 = np.mean([np.linalg.norm(y - x) for x, y in pairs])
        cosine = np.mean([x @ y / np.linalg.norm(x) / np.linalg.norm(y) for x, y in pairs])
        assert measured["l2_distance"][i] == pytest.approx(l2, rel=1e-5)
        assert measured["cosine_similarity"][i] == pytest.approx(cosine, rel=1e-5)
    assert len(ablations.probe_texts()) >= 4


def test_bad_corpus_is_one_line_error(tmp_path, capsys):
    assert ablations.main(["--corpus", str(tmp_path), "--work", str(tmp_path / "w"), "--out",
                           str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "tinystories" in err and "\n" not in err


@pytest.mark.slow
def test_a_small_study_end_to_end_and_resumed(tmp_path, monkeypatch):
    """Two tiny arms through the whole pipeline; run again, nothing is retrained and the figures stay."""
    corpus = tmp_path / "corpus"
    for source in ("tinystories", "wikinews", "wikipedia"):
        (corpus / source).mkdir(parents=True)
        docs = [f"The {a} ran to the {source}. Then the {a} ate a plum. The {a} slept well. It was late."
                for a in ("otter", "badger", "falcon", "walrus", "beaver", "heron", "lizard", "panda")]
        (corpus / source / "text.txt").write_text("\n\n".join(docs) + "\n")
    monkeypatch.setattr(ablations, "ARMS", (
        ablations.Arm("shared", "all shared, SOP", (3, 4, 5), 8, 1, "sop", (0,)),
        ablations.Arm("split", "2 groups, NSP", (4, 5), 8, 2, "nsp", (0,))))
    monkeypatch.setattr(ablations, "KEPT_MODELS", ("split-s0",))
    monkeypatch.setattr(ablations, "RECIPE", {**RECIPE, "hidden_size": 16, "num_heads": 2, "intermediate_size": 24,
                                              "num_layers": 2, "seq_len": 32, "batch_size": 4, "warmup": 1})
    argv = ["--corpus", str(corpus), "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out"),
            "--steps", "2", "--eval-pairs", "32", "--cache-dir", str(tmp_path / "cache")]
    assert ablations.main(argv) == 0
    first = json.loads((tmp_path / "out" / RESULTS_FILE).read_text())
    assert [(r["arm"], r["config"]["num_hidden_groups"], r["token_budget"]) for r in first["runs"]] == [
        ("shared", 1, 2 * 4 * 32), ("split", 2, 2 * 4 * 32)]
    assert sorted(p.name for p in (tmp_path / "out").glob("*.h5")) == ["split-s0.h5"]
    assert load(tmp_path / "out" / "split-s0.h5").config.num_hidden_groups == 2
    assert "file" not in first["runs"][0] and len(first["runs"][1]["figure_1"]["l2_distance"]) == 2
    assert len(first["runs"][0]["figure_1"]["cosine_similarity"]) == 2
    model_time = (tmp_path / "work" / "split-s0" / "model.h5").stat().st_mtime_ns
    assert ablations.main(argv) == 0
    again = json.loads((tmp_path / "out" / RESULTS_FILE).read_text())
    assert (tmp_path / "work" / "split-s0" / "model.h5").stat().st_mtime_ns == model_time
    assert again["runs"] == first["runs"]
    assert again["wall_seconds"] > first["wall_seconds"]
    assert again["reference"]["sop_count"] == 32 and again["reference"]["trained_on"] == "sop"
