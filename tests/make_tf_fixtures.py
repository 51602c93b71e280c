"""Build the TensorFlow-checkpoint fixtures of tests/test_tfcheckpoint.py.

Run by a developer, not by CI: it needs TensorFlow (which the tests themselves never import), torch
and transformers 4.57.6.  TensorFlow goes into a venv of its own that sees the system packages:

    python -m venv --system-site-packages /tmp/tfvenv
    /tmp/tfvenv/bin/pip install tensorflow-cpu==2.21.0
    /tmp/tfvenv/bin/python tests/make_tf_fixtures.py        # rewrites tests/fixtures/tf/

It writes a tiny ALBERT (E=8, H=16, 2 heads, I=32, 2 groups x 2 inner layers, 4 applications: transformers
runs inner_group_num > 1 only when L / G >= inner_group_num) with Google's variable names and random
values, plus Adam slots (adam_m, adam_v) for every variable and a global_step, the way
google-research/albert's training left them.  Its vocabulary is a 128-piece
SentencePiece model trained here on the bundled corpus, with <pad> <unk> [CLS] [SEP] [MASK] at ids 0-4
like the real 30k-clean.model, so that predict can tokenize with it.  Two layouts of the same values:

    tests/fixtures/tf/ckpt/    model.ckpt-12345.{index,data-00000-of-00001}, albert_config.json,
                               30k-clean.model                         (the released tar.gz)
    tests/fixtures/tf/hub/     variables/variables.{index,data-00000-of-00001} with names under
                               "module/", assets/albert_config.json, assets/30k-clean.model  (TF-Hub)

and the reference conversion, made by transformers' own `load_tf_weights_in_albert` from the ckpt
layout (checked to give the same tensors from the hub layout):

    tests/fixtures/tf/reference/  config.json (hidden_act "gelu_new": see docs/weights-format.md),
                                  model.safetensors (AlbertForPreTraining, without the tied decoder)
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "fixtures" / "tf"
CORPUS = HERE.parent / "tinyalbert" / "data" / "corpus"
SEED = 15
GLOBAL_STEP = 12345

GOOGLE_CONFIG = {  # the keys of a released albert_config.json, with tiny sizes
    "attention_probs_dropout_prob": 0, "hidden_act": "gelu", "hidden_dropout_prob": 0, "embedding_size": 8,
    "hidden_size": 16, "initializer_range": 0.02, "intermediate_size": 32, "max_position_embeddings": 32,
    "num_attention_heads": 2, "num_hidden_layers": 4, "num_hidden_groups": 2, "net_structure_type": 0,
    "gap_size": 0, "num_memory_blocks": 0, "inner_group_num": 2, "down_scale_factor": 1,
    "type_vocab_size": 2, "vocab_size": 128,
}


def train_spiece(directory: Path, vocab_size: int) -> Path:
    """A small unigram SentencePiece model with ALBERT's five special pieces at ids 0-4."""
    import sentencepiece as spm

    text = directory / "corpus.txt"
    lines = []
    for part in ("wikinews", "tinystories"):
        for path in sorted((CORPUS / part).glob("*.txt"))[:3]:
            lines += [line.strip().lower() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    text.write_text("\n".join(lines) + "\n", encoding="utf-8")
    prefix = directory / "30k-clean"
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(prefix), vocab_size=vocab_size,
                                   model_type="unigram", normalization_rule_name="identity",
                                   pad_id=0, unk_id=1, bos_id=-1, eos_id=-1,
                                   control_symbols=["[CLS]", "[SEP]", "[MASK]"], character_coverage=0.995,
                                   input_sentence_size=20000, shuffle_input_sentence=False, minloglevel=2)
    model = Path(str(prefix) + ".model")
    sp = spm.SentencePieceProcessor(model_file=str(model))
    assert [sp.id_to_piece(i) for i in range(5)] == ["<pad>", "<unk>", "[CLS]", "[SEP]", "[MASK]"]
    assert sp.get_piece_size() == vocab_size
    return model


def google_variables(cfg: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Every model variable of google-research/albert's AlbertModel + pretraining heads, random values."""
    V, E, H, I, P = (cfg["vocab_size"], cfg["embedding_size"], cfg["hidden_size"], cfg["intermediate_size"],
                     cfg["max_position_embeddings"])

    def dense(prefix: str, n_in: int, n_out: int) -> dict[str, np.ndarray]:
        return {f"{prefix}/kernel": rng.normal(0, 0.3, (n_in, n_out)),  # TF stores kernels [in, out]
                f"{prefix}/bias": rng.normal(0, 0.1, (n_out,))}

    def layer_norm(prefix: str, n: int) -> dict[str, np.ndarray]:
        return {f"{prefix}/gamma": 1 + rng.normal(0, 0.2, (n,)), f"{prefix}/beta": rng.normal(0, 0.1, (n,))}

    v: dict[str, np.ndarray] = {
        "bert/embeddings/word_embeddings": rng.normal(0, 0.5, (V, E)),
        "bert/embeddings/token_type_embeddings": rng.normal(0, 0.5, (cfg["type_vocab_size"], E)),
        "bert/embeddings/position_embeddings": rng.normal(0, 0.5, (P, E)),
        **layer_norm("bert/embeddings/LayerNorm", E),
        **dense("bert/encoder/embedding_hidden_mapping_in", E, H),
    }
    for g in range(cfg["num_hidden_groups"]):
        for j in range(cfg["inner_group_num"]):
            p = f"bert/encoder/transformer/group_{g}/inner_group_{j}"
            for name in ("query", "key", "value"):
                v.update(dense(f"{p}/attention_1/self/{name}", H, H))
            v.update(dense(f"{p}/attention_1/output/dense", H, H))
            v.update(layer_norm(f"{p}/LayerNorm", H))
            v.update(dense(f"{p}/ffn_1/intermediate/dense", H, I))
            v.update(dense(f"{p}/ffn_1/intermediate/output/dense", I, H))
            v.update(layer_norm(f"{p}/LayerNorm_1", H))
    v.update(dense("bert/pooler/dense", H, H))
    v.update(dense("cls/predictions/transform/dense", H, E))
    v.update(layer_norm("cls/predictions/transform/LayerNorm", E))
    v["cls/predictions/output_bias"] = rng.normal(0, 0.5, (V,))
    v["cls/seq_relationship/output_weights"] = rng.normal(0, 0.5, (2, H))  # stored [out, in]
    v["cls/seq_relationship/output_bias"] = rng.normal(0, 0.5, (2,))
    return {k: a.astype(np.float32) for k, a in v.items()}


def with_optimizer_state(model_vars: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    out = dict(model_vars)
    for name, a in model_vars.items():
        out[f"{name}/adam_m"] = rng.normal(0, 1e-3, a.shape).astype(np.float32)
        out[f"{name}/adam_v"] = np.abs(rng.normal(0, 1e-6, a.shape)).astype(np.float32)
    out["global_step"] = np.array(GLOBAL_STEP, dtype=np.int64)
    return out


def save_tf(values: dict[str, np.ndarray], prefix: Path) -> None:
    """Write `values` under their names with tf.compat.v1.train.Saver (a TF1 tensor bundle)."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        variables = {name: tf.compat.v1.Variable(a, name=f"v{i}") for i, (name, a) in enumerate(values.items())}
        saver = tf.compat.v1.train.Saver(var_list=variables)
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, str(prefix), write_meta_graph=False, write_state=False)


def reference_conversion(cfg: dict, prefix: Path) -> dict[str, np.ndarray]:
    """transformers' load_tf_weights_in_albert on the checkpoint; the state dict without tied duplicates."""
    import transformers
    from transformers.models.albert.modeling_albert import load_tf_weights_in_albert

    assert transformers.__version__ == "4.57.6", transformers.__version__
    model = transformers.AlbertForPreTraining(hf_config(cfg))
    load_tf_weights_in_albert(model, model.config, str(prefix))
    state = model.state_dict()
    return {k: t.detach().numpy().copy() for k, t in state.items() if not k.startswith("predictions.decoder.")}


def hf_config(cfg: dict):
    import transformers

    # Google's "gelu" is the tanh approximation, which transformers calls "gelu_new".
    fields = {k: v for k, v in cfg.items() if k not in ("net_structure_type", "gap_size", "num_memory_blocks",
                                                         "down_scale_factor")}
    fields["hidden_act"] = "gelu_new"
    return transformers.AlbertConfig(**fields, architectures=["AlbertForPreTraining"])


def main() -> int:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(SEED)
    model_vars = google_variables(GOOGLE_CONFIG, rng)
    values = with_optimizer_state(model_vars, rng)
    if OUT.exists():
        shutil.rmtree(OUT)
    ckpt, hub, ref = OUT / "ckpt", OUT / "hub", OUT / "reference"
    for d in (ckpt, hub / "variables", hub / "assets", ref):
        d.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        spiece = train_spiece(Path(tmp), GOOGLE_CONFIG["vocab_size"])
        for folder in (ckpt, hub / "assets"):
            shutil.copyfile(spiece, folder / "30k-clean.model")
            (folder / "albert_config.json").write_text(json.dumps(GOOGLE_CONFIG, indent=2) + "\n")

    save_tf(values, ckpt / f"model.ckpt-{GLOBAL_STEP}")
    save_tf({f"module/{k}": a for k, a in values.items()}, hub / "variables" / "variables")

    reference = reference_conversion(GOOGLE_CONFIG, ckpt / f"model.ckpt-{GLOBAL_STEP}")
    from_hub = reference_conversion(GOOGLE_CONFIG, hub / "variables" / "variables")
    assert reference.keys() == from_hub.keys()
    for k in reference:
        assert np.array_equal(reference[k], from_hub[k]), k
    save_file(reference, str(ref / "model.safetensors"), metadata={"format": "pt"})
    hf_config(GOOGLE_CONFIG).save_pretrained(ref)

    for path in sorted(OUT.rglob("*")):
        if path.is_file():
            print(f"{path.stat().st_size:>8}  {path.relative_to(HERE.parent)}")
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"{total:>8}  total")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
