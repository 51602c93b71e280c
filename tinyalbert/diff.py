"""Where tinyalbert and transformers part ways: the same weights and input through both, tensor by tensor.

    python -m tinyalbert.diff weights/albert-xxlarge-v2.h5
    python -m tinyalbert.diff path/to/checkpoint-folder --text "Paris is the [MASK] of France."
    python -m tinyalbert.diff model.h5 --dtype float64 --threshold 1e-10

The input is a tinyalbert weights file (transformers' model is then built from its tensors) or a folder that
transformers loads itself (tinyalbert then converts it in memory, as tinyalbert.convert would).  Both run
in eval mode, transformers with eager attention (AlbertForPreTraining, or AlbertForMaskedLM for weights
without the SOP head), on the weights' own tokenizer's ids for one sentence.

Captured on both sides, in the order the model computes them: the embeddings, the projection, and for every
layer run the query, key, value, scores (q·kᵀ/√hs, before the mask), attention probabilities, context,
attention output (after its LayerNorm), FFN intermediate (after the activation), FFN output (before the
residual) and layer output; then the MLM transform, MLM logits, pooled output and SOP logits.
transformers' tensors come from forward hooks on its modules (probabilities from output_attentions, scores
from the hooked q and k); tinyalbert's from the caches its forward functions return (scores and the FFN
output, which the engine does not keep, are recomputed from cached q, k and FFN activation with the same
operations).  Relative error per tensor: max|a - b| / max|b|, b = transformers, in float64.  The first
tensor above the threshold is where to look.

Needs torch and transformers (pip install -e ".[reference]").  Exit code 1 when a tensor is above the
threshold, 2 for bad input.
"""
from __future__ import annotations

import math
import os
import sys
import warnings
from dataclasses import dataclass

import numpy as np

from .cli import OneLineParser
from .nn.config import AlbertConfig
from .nn.params import EMB, MLM, POOLER, SOP, Params, has_sop_head, layer_prefix, sub
from .tuning import tune_process

DEFAULT_TEXT = "The man went to the [MASK] to buy some milk."
# Above rounding (float32: at most 6e-6 measured through a random xxlarge's 12 runs, 2e-6 on the bundled model),
# below a real fault (one weight element off by 0.05 gives 3e-3 where it acts).
DEFAULT_THRESHOLD = {"float32": 1e-4, "float64": 1e-10}
RUN_TENSORS = ("query", "key", "value", "scores", "probabilities", "context", "attention output",
               "FFN intermediate", "FFN output", "layer output")


class DiffError(ValueError):
    """Input that diff cannot run; the message is one line."""


@dataclass
class Row:
    name: str
    shape: tuple[int, ...]
    scale: float        # max|b|
    error: float        # max|a - b| / max|b|


def run_names(config: AlbertConfig) -> list[str]:
    """'layer 3' for each application, 'layer 3.2' for its second inner layer when there are several."""
    inner = config.inner_group_num
    return [f"layer {i + 1}" + (f".{j + 1}" if inner > 1 else "")
            for i in range(config.num_hidden_layers) for j in range(inner)]


# ---- tinyalbert ---------------------------------------------------------------------------------------
def tinyalbert_tensors(config: AlbertConfig, params: Params, input_ids: np.ndarray) -> dict[str, np.ndarray]:
    """Every intermediate tensor of tinyalbert's forward on input_ids (B, T), by name, in order."""
    from .nn.attention import heads
    from .nn.body import albert_body_forward, body_cache_tensors, prepare_inputs
    from .nn.heads import mlm_head_cache_tensors, mlm_head_forward, pooler_forward, sop_head_forward
    from .nn.linear import linear_forward

    ids, types, mask = prepare_inputs(config, input_ids)
    hidden, _, cache = albert_body_forward(ids, types, mask, params, config)
    embedded, runs = body_cache_tensors(cache)
    out = {"embeddings": embedded, "projection": hidden[0]}
    outputs = [run["input"] for _, _, run in runs[1:]] + [hidden[-1]]
    nh, sqrt_hs = config.num_attention_heads, embedded.dtype.type(math.sqrt(config.head_size))
    for name, (group, j, run), layer_out in zip(run_names(config), runs, outputs, strict=True):
        p = sub(params, layer_prefix(group, j))
        q, k = (heads(np.ascontiguousarray(run[w]), nh) for w in ("query", "key"))
        scores = np.matmul(q, k.swapaxes(-1, -2)) / sqrt_hs      # as the engine: q kᵀ, scaled in the softmax
        ffn_out, _ = linear_forward(run["ffn_activation"], p["ffn_output.weight"], p["ffn_output.bias"])
        values = (run["query"], run["key"], run["value"], scores, run["probabilities"], run["context"],
                  run["attention_output"], run["ffn_activation"], ffn_out, layer_out)
        out.update({f"{name} {what}": v for what, v in zip(RUN_TENSORS, values, strict=True)})
    logits, mlm_cache = mlm_head_forward(hidden[-1], sub(params, MLM), params[EMB + "word_embeddings.weight"],
                                         config.layer_norm_eps, config.hidden_act)
    out.update({"MLM transform": mlm_head_cache_tensors(mlm_cache)["transform"], "MLM logits": logits})
    if has_sop_head(params):
        pooled, _ = pooler_forward(hidden[-1], params[POOLER + "weight"], params[POOLER + "bias"])
        out.update({"pooled": pooled, "SOP logits": sop_head_forward(pooled, params[SOP + "weight"],
                                                                     params[SOP + "bias"])[0]})
    return out


# ---- transformers -------------------------------------------------------------------------------------
def _torch():
    try:
        import torch
        import transformers
    except ImportError as e:
        raise DiffError(f"tinyalbert.diff needs torch and transformers ({e.name or 'torch'} is missing): "
                        "pip install -e \".[reference]\"") from None
    transformers.logging.set_verbosity_error()
    return torch, transformers


def transformers_tensors(model, config: AlbertConfig, input_ids: np.ndarray) -> dict[str, np.ndarray]:
    """Every intermediate tensor of transformers' forward on input_ids (B, T), captured with hooks, by name."""
    torch, _ = _torch()
    got: dict[str, np.ndarray] = {}
    names = run_names(config)
    runs = [-1]                          # index of the layer run in progress

    def capture(name, value):
        """A forward hook storing value(inputs, output) under `name`: a string, or a function of the current run."""
        def hook(module, inputs, output):
            got[name() if callable(name) else name] = value(inputs, output).detach().numpy()
        return hook

    def in_run(what):
        return lambda: f"{names[runs[0]]} {what}"

    def next_run(module, inputs):
        runs[0] += 1

    output, first_output, first_input = (lambda i, o: o), (lambda i, o: o[0]), (lambda i, o: i[0])
    albert = model.albert
    hooks = [albert.embeddings.register_forward_hook(capture("embeddings", output)),
             albert.encoder.embedding_hidden_mapping_in.register_forward_hook(capture("projection", output))]
    for group in albert.encoder.albert_layer_groups:
        for layer in group.albert_layers:
            att = layer.attention
            hooks += [layer.register_forward_pre_hook(next_run),
                      att.query.register_forward_hook(capture(in_run("query"), output)),
                      att.key.register_forward_hook(capture(in_run("key"), output)),
                      att.value.register_forward_hook(capture(in_run("value"), output)),
                      att.dense.register_forward_hook(capture(in_run("context"), first_input)),
                      att.register_forward_hook(capture(in_run("attention output"), first_output)),
                      layer.ffn_output.register_forward_hook(capture(in_run("FFN intermediate"), first_input)),
                      layer.ffn_output.register_forward_hook(capture(in_run("FFN output"), output)),
                      layer.register_forward_hook(capture(in_run("layer output"), first_output))]
    hooks += [model.predictions.decoder.register_forward_hook(capture("MLM transform", first_input)),
              model.predictions.register_forward_hook(capture("MLM logits", output))]
    if hasattr(model, "sop_classifier"):
        hooks += [albert.pooler_activation.register_forward_hook(capture("pooled", output)),
                  model.sop_classifier.register_forward_hook(capture("SOP logits", output))]
    ids = torch.as_tensor(np.asarray(input_ids), dtype=torch.long)
    try:
        with torch.no_grad():
            result = model(input_ids=ids, token_type_ids=torch.zeros_like(ids), attention_mask=torch.ones_like(ids),
                           output_attentions=True)
    finally:
        for h in hooks:
            h.remove()
    nh, hs = config.num_attention_heads, config.head_size
    for name, probs in zip(names, result.attentions, strict=True):
        q, k = (torch.from_numpy(got[f"{name} {w}"]) for w in ("query", "key"))
        q, k = (t.view(t.shape[0], -1, nh, hs).transpose(1, 2) for t in (q, k))
        got[f"{name} scores"] = (torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(hs)).numpy()
        got[f"{name} probabilities"] = probs.detach().numpy()
    return got


def transformers_model(config: AlbertConfig, params: Params, dtype: str):
    """transformers' AlbertForPreTraining (AlbertForMaskedLM without the SOP head) holding copies of params."""
    torch, transformers = _torch()
    cls = transformers.AlbertForPreTraining if has_sop_head(params) else transformers.AlbertForMaskedLM
    hf_config = transformers.AlbertConfig(**config.to_dict())
    hf_config._attn_implementation = "eager"
    model = cls(hf_config).to(getattr(torch, dtype)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")     # read-only (memory-mapped) arrays warn; load_state_dict only reads them
        state = {k: torch.from_numpy(np.asarray(v, dtype=dtype)) for k, v in params.items()}
    result = model.load_state_dict(state, strict=False)          # copies into the model's own tensors
    tied = {"predictions.decoder.weight", "predictions.decoder.bias"}
    if set(result.missing_keys) - tied or result.unexpected_keys:
        raise DiffError(f"transformers' {cls.__name__} does not take these tensors: missing "
                        f"{sorted(set(result.missing_keys) - tied)[:3]}, unexpected {result.unexpected_keys[:3]}")
    return model


def load_both(path: str, dtype: str):
    """(config, params, tokenizer or None, transformers' model) for a weights file or a checkpoint folder."""
    torch, transformers = _torch()
    if os.path.isdir(path):
        from .convert import ConvertError, find_source, read_tensors, select_params
        from .tokenizer import Tokenizer
        try:
            weights_file, config_file, spiece_file = find_source(path)
            config = AlbertConfig.from_json(config_file)
            params = {k: np.asarray(t, dtype=dtype) for k, t in
                      select_params(read_tensors(weights_file), config, weights_file).items()}
        except (ConvertError, ValueError, OSError) as e:
            raise DiffError(str(e).splitlines()[0]) from None
        cls = transformers.AlbertForPreTraining if has_sop_head(params) else transformers.AlbertForMaskedLM
        model = cls.from_pretrained(path, attn_implementation="eager").to(getattr(torch, dtype)).eval()
        return config, params, Tokenizer(spiece_file), model
    from .weights import WeightsError, load
    try:
        loaded = load(path, dtype=dtype)
    except WeightsError as e:
        raise DiffError(str(e)) from None
    return loaded.config, loaded.params, loaded.tokenizer, transformers_model(loaded.config, loaded.params, dtype)


# ---- comparing ----------------------------------------------------------------------------------------
def compare(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray]) -> list[Row]:
    """One row per tensor of `ours`, in order: relative error max|a - b| / max|b| in float64 (inf if b lacks it)."""
    rows = []
    for name, a in ours.items():
        b = theirs.get(name)
        if b is None or b.shape != a.shape:
            rows.append(Row(name, a.shape, float("nan"), float("inf")))
            continue
        a64, b64 = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        scale = float(np.abs(b64).max(initial=0.0))
        rows.append(Row(name, a.shape, scale,
                        float(np.abs(a64 - b64).max(initial=0.0) / max(scale, np.finfo(np.float64).tiny))))
    return rows


def first_above(rows: list[Row], threshold: float) -> Row | None:
    return next((r for r in rows if not r.error <= threshold), None)


def diff(config: AlbertConfig, params: Params, model, input_ids: np.ndarray) -> list[Row]:
    """The whole comparison: tinyalbert on (config, params) against transformers' `model`, on input_ids."""
    return compare(tinyalbert_tensors(config, params, input_ids), transformers_tensors(model, config, input_ids))


def format_rows(rows: list[Row], threshold: float) -> str:
    first = first_above(rows, threshold)
    lines = [f"  {'#':>3}  {'tensor':<28} {'shape':<18} {'max|b|':>9}  {'rel. error':>10}"]
    for i, r in enumerate(rows, 1):
        mark = "  <- first above the threshold" if r is first else ("  above" if not r.error <= threshold else "")
        lines.append(f"  {i:>3}  {r.name:<28} {str(r.shape):<18} {r.scale:>9.2e}  {r.error:>10.2e}{mark}")
    lines.append(f"first tensor above {threshold:.0e}: #{rows.index(first) + 1} {first.name} "
                 f"(relative error {first.error:.2e})" if first else f"no tensor is above {threshold:.0e}")
    return "\n".join(lines)



def main(argv: list[str] | None = None) -> int:
    tune_process(training=False)
    parser = OneLineParser(
        prog="python -m tinyalbert.diff",
        description="Run the same weights and input through tinyalbert and transformers' AlbertForPreTraining "
                    "(eager attention, eval) and print the relative error of every intermediate tensor in the "
                    "order the model computes it: embeddings, projection, then per layer run q, k, v, scores, "
                    "probabilities, context, attention output, FFN intermediate, FFN output, layer output, then "
                    "the heads; names the first tensor above --threshold.  For a converted checkpoint that gives "
                    "odd answers.  Needs torch and transformers.  Exit code 1 if a tensor is above the threshold.")
    parser.add_argument("weights", help="a tinyalbert weights file (.h5), or a checkpoint folder transformers loads "
                                        "(config.json, spiece.model, model.safetensors or pytorch_model.bin)")
    parser.add_argument("--text", default=DEFAULT_TEXT, help=f"input sentence (default {DEFAULT_TEXT!r})")
    parser.add_argument("--ids", help="comma-separated token ids instead of --text (for weights without a vocabulary)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                        help="both sides compute in this dtype (default float32)")
    parser.add_argument("--threshold", type=float, default=None,
                        help=f"relative error that counts as a difference (default {DEFAULT_THRESHOLD['float32']:g} "
                             f"in float32, {DEFAULT_THRESHOLD['float64']:g} in float64)")
    args = parser.parse_args(argv)
    threshold = DEFAULT_THRESHOLD[args.dtype] if args.threshold is None else args.threshold
    try:
        if not os.path.exists(args.weights):
            raise DiffError(f"not found: {args.weights}")
        config, params, tokenizer, model = load_both(args.weights, args.dtype)
        if args.ids:
            try:
                ids = [int(x) for x in args.ids.split(",")]
            except ValueError:
                raise DiffError(f"--ids must be comma-separated integers, got {args.ids!r}") from None
        elif tokenizer is None:
            raise DiffError(f"{args.weights} has no vocabulary (spiece.model): give --ids")
        else:
            ids = tokenizer.encode(args.text)
        input_ids = np.asarray([ids], dtype=np.int64)
        rows = diff(config, params, model, input_ids)
    except DiffError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:      # the engine's input checks: a bad id, too many tokens
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001  (a bug or an unforeseen file: still one line)
        from .cli import report_unexpected
        return report_unexpected(e)
    _, transformers = _torch()
    print(f"tinyalbert against transformers {transformers.__version__} {type(model).__name__} (eager, eval), "
          f"{args.dtype}, {input_ids.shape[1]} tokens; relative error = max|a - b| / max|b|, b = transformers")
    print(format_rows(rows, threshold))
    return 1 if first_above(rows, threshold) else 0


if __name__ == "__main__":
    sys.exit(main())
