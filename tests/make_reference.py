"""Build the tier-3 reference fixtures: the whole model, computed by transformers' own ALBERT.

Run by a developer, not by CI (it needs torch and transformers; the tests that read the
fixtures do not):

    python tests/make_reference.py            # writes tests/fixtures/reference_*.h5

It builds `transformers.AlbertForPreTraining` (eager attention, eval mode, every dropout 0) on
small configurations, overwrites *every* parameter with random values drawn by NumPy (far from
the default initialisation, so that LayerNorm gains and biases, the padding row of the word
embedding and every bias matter), runs one fixed padded batch forward with hidden states and
attention maps, takes loss = MLM cross-entropy + SOP cross-entropy (the model's own loss) and
back-propagates.  Three files:

    reference_small.h5       float64, 1 group x 1 inner layer, 3 applications
    reference_small_fp32.h5  the same model and batch in float32 (parameters = the float64 ones
                             rounded to float32); it also holds, under exact_fp64/ (every
                             output but the attention maps) and exact_fp64_grads/, the float64
                             results for those very float32 parameters, i.e. the "true" values
                             the float32 computations approximate
    reference_groups.h5      float64, 2 groups x 2 inner layers, 4 applications (T=10)

Layout of each file (h5py):
    attrs: config (transformers config JSON, all keys), dtype, seed, torch_version,
           transformers_version, numpy_version, description
    params/<name>    every state_dict tensor except the tied duplicates predictions.decoder.*
    inputs/          input_ids, token_type_ids, attention_mask, mlm_labels (B,T); sop_labels (B,)
    outputs/         hidden_states (L+1,B,T,H), attentions (n_attention_maps,B,NH,T,T),
                     mlm_logits (B,T,V), sop_logits (B,2), loss, mlm_loss, sop_loss (scalars)
    grads/<name>     d loss / d param for every name in params/ (torch adds the tied decoder's
                     weight gradient into word_embeddings.weight and its bias gradient into
                     predictions.bias)

Note on the attention maps: transformers runs *every inner layer of the group* at each of the
num_hidden_layers applications, so there are num_hidden_layers * inner_group_num attention maps
but only num_hidden_layers + 1 hidden states (one per group application).
"""
from __future__ import annotations

import os
import sys

import h5py
import numpy as np
import torch
import transformers
from transformers import AlbertConfig as HFAlbertConfig
from transformers import AlbertForPreTraining

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")

SMALL = dict(vocab_size=100, embedding_size=8, hidden_size=16, num_attention_heads=2, intermediate_size=37,
             num_hidden_layers=3, num_hidden_groups=1, inner_group_num=1, max_position_embeddings=32)
# Smaller dimensions for the grouped model, which has four distinct layers and eight attention maps
# (keeps the file under 200 KB); still E != H, I not a multiple of H, and 2 heads.
GROUPS = dict(vocab_size=64, embedding_size=6, hidden_size=8, num_attention_heads=2, intermediate_size=20,
              num_hidden_layers=4, num_hidden_groups=2, inner_group_num=2, max_position_embeddings=16)
COMMON = dict(type_vocab_size=2, hidden_act="gelu_new", layer_norm_eps=1e-12, hidden_dropout_prob=0.0,
              attention_probs_dropout_prob=0.0, classifier_dropout_prob=0.0, pad_token_id=0,
              position_embedding_type="absolute")


def make_config(dims: dict) -> HFAlbertConfig:
    cfg = HFAlbertConfig(**COMMON, **dims)
    cfg._attn_implementation = "eager"
    return cfg


def build_model(cfg: HFAlbertConfig, dtype: torch.dtype) -> AlbertForPreTraining:
    torch.manual_seed(0)  # the default init is overwritten anyway; this only makes construction deterministic
    model = AlbertForPreTraining(cfg)
    model.config._attn_implementation = "eager"
    model.to(dtype)
    model.eval()  # no dropout (all dropout probabilities are 0 as well)
    return model


def param_names(model: AlbertForPreTraining) -> list[str]:
    """state_dict keys without the tied duplicates (predictions.decoder.weight/bias)."""
    return [k for k in model.state_dict() if not k.startswith("predictions.decoder.")]


def random_params(model: AlbertForPreTraining, seed: int) -> dict[str, np.ndarray]:
    """float64 values for every parameter, far from the default init so that every tensor matters.

    Embedding tables ~ N(0, 0.5); Linear weights ~ N(0, 1.5 / sqrt(fan_in)) (pre-activations of
    order 1-2, so tanh-GELU, softmax and tanh all work away from their linear regions without
    saturating); LayerNorm gains 1 + U(-0.2, 0.2); every bias ~ N(0, 0.1).  The padding row of the
    word embedding is as random as the others.
    """
    rng = np.random.default_rng(seed)
    sd = model.state_dict()
    out = {}
    for name in param_names(model):
        shape = tuple(sd[name].shape)
        if "LayerNorm.weight" in name or "layer_norm.weight" in name:
            value = 1.0 + rng.uniform(-0.2, 0.2, shape)
        elif len(shape) == 1:
            value = rng.normal(0.0, 0.1, shape)
        elif "embeddings" in name:
            value = rng.normal(0.0, 0.5, shape)
        else:  # Linear weight [out, in]
            value = rng.normal(0.0, 1.5 / np.sqrt(shape[1]), shape)
        out[name] = value
    return out


def load_params(model: AlbertForPreTraining, params: dict[str, np.ndarray]) -> None:
    sd = model.state_dict()
    with torch.no_grad():
        for name, value in params.items():
            sd[name].copy_(torch.from_numpy(np.asarray(value, dtype=np.float64)))
    model.tie_weights()
    # the decoder must be the word embedding and predictions.bias, not copies
    assert model.predictions.decoder.weight is model.albert.embeddings.word_embeddings.weight
    assert model.predictions.decoder.bias is model.predictions.bias


def make_batch(cfg: HFAlbertConfig, T: int) -> dict[str, np.ndarray]:
    """B=3 rows of length T: row 0 full, rows 1 and 2 padded at the end (ids 0, mask 0).

    Token ids repeat within and across rows (so embedding gradients accumulate), and id 0 (the
    padding id) also occurs as a *real*, attended token (row 0, position 5): there its lookup
    gradient is nonzero in principle, which PyTorch's padding_idx discards.  Token types are 0 for
    the first half of the real tokens and 1 for the rest.  MLM labels are -100 except at a few
    real tokens (one labelled 0, one label repeated); SOP labels [0, 1, 0].
    """
    B, V = 3, cfg.vocab_size
    rng = np.random.default_rng(1234)
    lengths = [T, T - 3, T - 5]
    input_ids = rng.integers(4, V, size=(B, T))
    input_ids[:, 0] = 2           # [CLS]
    input_ids[0, 3] = input_ids[0, 7] = input_ids[1, 2] = 17   # repeated ids
    input_ids[2, 1] = input_ids[2, 4] = input_ids[0, 9]
    input_ids[0, 5] = 0           # the padding id as a real token
    attention_mask = np.zeros((B, T), dtype=np.int64)
    token_type_ids = np.zeros((B, T), dtype=np.int64)
    mlm_labels = np.full((B, T), -100, dtype=np.int64)
    for b, n in enumerate(lengths):
        attention_mask[b, :n] = 1
        input_ids[b, n:] = cfg.pad_token_id
        token_type_ids[b, n // 2:n] = 1
    mlm_labels[0, 2] = 0
    mlm_labels[0, 5] = 11
    mlm_labels[0, T - 1] = 42
    mlm_labels[1, 1] = 11
    mlm_labels[1, 6] = V - 1
    mlm_labels[2, 3] = 5
    mlm_labels[2, lengths[2] - 1] = 29
    assert np.all(attention_mask[mlm_labels != -100] == 1), "labels only on real tokens"
    return dict(input_ids=input_ids.astype(np.int64), token_type_ids=token_type_ids,
                attention_mask=attention_mask, mlm_labels=mlm_labels,
                sop_labels=np.array([0, 1, 0], dtype=np.int64))


def run(model: AlbertForPreTraining, batch: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """Forward with hidden states and attentions, loss = MLM CE + SOP CE, backward."""
    model.zero_grad(set_to_none=True)
    t = {k: torch.from_numpy(v) for k, v in batch.items()}
    out = model(input_ids=t["input_ids"], attention_mask=t["attention_mask"], token_type_ids=t["token_type_ids"],
                labels=t["mlm_labels"], sentence_order_label=t["sop_labels"],
                output_hidden_states=True, output_attentions=True, return_dict=True)
    V = model.config.vocab_size
    ce = torch.nn.CrossEntropyLoss()
    with torch.no_grad():
        mlm_loss = ce(out.prediction_logits.reshape(-1, V), t["mlm_labels"].reshape(-1))
        sop_loss = ce(out.sop_logits.reshape(-1, 2), t["sop_labels"].reshape(-1))
    out.loss.backward()
    named = dict(model.named_parameters())  # tied tensors appear once, under their first name
    outputs = dict(
        hidden_states=torch.stack(out.hidden_states).detach().numpy(),
        attentions=torch.stack(out.attentions).detach().numpy(),
        mlm_logits=out.prediction_logits.detach().numpy(),
        sop_logits=out.sop_logits.detach().numpy(),
        loss=out.loss.detach().numpy(),
        mlm_loss=mlm_loss.numpy(),
        sop_loss=sop_loss.numpy(),
    )
    grads = {name: named[name].grad.detach().numpy().copy() for name in param_names(model)}
    return outputs, grads


def _write_group(f: h5py.File, group: str, arrays: dict[str, np.ndarray]) -> None:
    g = f.create_group(group)
    for name, value in arrays.items():
        value = np.asarray(value)
        if value.size >= 64:
            g.create_dataset(name, data=value, chunks=value.shape, compression="gzip", compression_opts=9,
                             shuffle=True)
        else:
            g.create_dataset(name, data=value)


def write_fixture(path: str, cfg: HFAlbertConfig, dtype: str, params: dict, batch: dict, outputs: dict,
                  grads: dict, description: str, seed: int, extra_groups: dict | None = None) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        _write_file(tmp, cfg, dtype, params, batch, outputs, grads, description, seed, extra_groups)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _write_file(tmp: str, cfg: HFAlbertConfig, dtype: str, params: dict, batch: dict, outputs: dict,
                grads: dict, description: str, seed: int, extra_groups: dict | None) -> None:
    # libver="latest": single-chunk compressed datasets without per-dataset B-tree nodes (small files)
    with h5py.File(tmp, "w", libver="latest") as f:
        f.attrs["config"] = cfg.to_json_string(use_diff=False)
        f.attrs["dtype"] = dtype
        f.attrs["seed"] = seed
        f.attrs["torch_version"] = str(torch.__version__)
        f.attrs["transformers_version"] = str(transformers.__version__)
        f.attrs["numpy_version"] = str(np.__version__)
        f.attrs["description"] = description
        _write_group(f, "params", params)
        _write_group(f, "inputs", batch)
        _write_group(f, "outputs", outputs)
        _write_group(f, "grads", grads)
        for group, arrays in (extra_groups or {}).items():
            _write_group(f, group, arrays)


def make_fixture(dims: dict, seed: int, T: int, dtype: torch.dtype) -> tuple:
    cfg = make_config(dims)
    model = build_model(cfg, dtype)
    params64 = random_params(model, seed)
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    params = {k: v.astype(np_dtype) for k, v in params64.items()}
    load_params(model, params)
    batch = make_batch(cfg, T)
    outputs, grads = run(model, batch)
    # the model's loss is the sum of the two cross-entropies computed here
    assert abs(float(outputs["loss"]) - float(outputs["mlm_loss"]) - float(outputs["sop_loss"])) \
        <= 8 * np.finfo(np_dtype).eps * abs(float(outputs["loss"]))
    return cfg, params, batch, outputs, grads


def rel_err(a: np.ndarray, b: np.ndarray, scale: np.ndarray | None = None) -> float:
    """max|a - b| / max|scale| (scale defaults to b), in float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    s = np.abs(np.asarray(b if scale is None else scale, np.float64)).max()
    return float(np.abs(a - b).max() / max(s, 1e-300))


def summary(outputs: dict) -> str:
    att = outputs["attentions"]
    ent = -(att * np.log(np.where(att > 0, att, 1.0))).sum(-1)
    return (f"loss={float(outputs['loss']):.6f} (mlm {float(outputs['mlm_loss']):.6f}, "
            f"sop {float(outputs['sop_loss']):.6f}); attention max prob {att.max():.3f}, "
            f"mean row entropy {ent.mean():.3f} nats; |mlm_logits| max {np.abs(outputs['mlm_logits']).max():.2f}")


def main() -> int:
    torch.set_num_threads(1)
    os.makedirs(FIXTURES, exist_ok=True)
    T = 12

    cfg, params, batch, outputs, grads = make_fixture(SMALL, seed=20240601, T=T, dtype=torch.float64)
    path = os.path.join(FIXTURES, "reference_small.h5")
    write_fixture(path, cfg, "float64", params, batch, outputs, grads, seed=20240601,
                  description="AlbertForPreTraining, 1 group x 1 inner layer, 3 applications, float64")
    print(f"{path}: {os.path.getsize(path)} bytes; {summary(outputs)}")

    # float32: the same parameters rounded to float32, computed by torch in float32; plus the
    # float64 computation with exactly those (float32-representable) parameters.
    cfg32, params32, batch32, outputs32, grads32 = make_fixture(SMALL, seed=20240601, T=T, dtype=torch.float32)
    model64 = build_model(cfg32, torch.float64)
    load_params(model64, {k: v.astype(np.float64) for k, v in params32.items()})
    exact_outputs, exact_grads = run(model64, batch32)
    path = os.path.join(FIXTURES, "reference_small_fp32.h5")
    write_fixture(path, cfg32, "float32", params32, batch32, outputs32, grads32, seed=20240601,
                  description="AlbertForPreTraining, 1 group x 1 inner layer, 3 applications, float32; "
                              "exact_fp64/ and exact_fp64_grads/ hold the float64 results for the same "
                              "float32 parameters (no attentions there, to keep the file small)",
                  extra_groups={"exact_fp64": {k: v for k, v in exact_outputs.items() if k != "attentions"},
                                "exact_fp64_grads": exact_grads})
    print(f"{path}: {os.path.getsize(path)} bytes; {summary(outputs32)}")
    for k in ("hidden_states", "attentions", "mlm_logits", "sop_logits", "loss", "mlm_loss", "sop_loss"):
        print(f"    torch fp32 vs fp64 {k:14s} rel err {rel_err(outputs32[k], exact_outputs[k]):.2e}")
    for k in grads32:
        # key.bias: its exact gradient is 0 (it shifts a query's scores uniformly), so measure against key.weight's
        scale = exact_grads[k.replace("key.bias", "key.weight")] if k.endswith("key.bias") else exact_grads[k]
        print(f"    torch fp32 vs fp64 grad {k:70s} {rel_err(grads32[k], exact_grads[k], scale):.2e}")

    # T=10 for the grouped model: eight attention maps instead of three (keeps the file under 200 KB)
    cfg, params, batch, outputs, grads = make_fixture(GROUPS, seed=20240602, T=10, dtype=torch.float64)
    path = os.path.join(FIXTURES, "reference_groups.h5")
    write_fixture(path, cfg, "float64", params, batch, outputs, grads, seed=20240602,
                  description="AlbertForPreTraining, 2 groups x 2 inner layers, 4 applications, float64")
    print(f"{path}: {os.path.getsize(path)} bytes; {summary(outputs)}")
    print(f"    hidden_states {outputs['hidden_states'].shape}, attentions {outputs['attentions'].shape}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
