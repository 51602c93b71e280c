"""The model's hyper-parameters: `AlbertConfig`, its presets and its config.json form.

The field names and defaults are those of the reference `config.json`, so a
published checkpoint's config reads in unchanged.  The defaults are
albert-xxlarge-v2.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

from .activations import ACTIVATIONS

# The JSON values each annotated field type accepts (a bool is not a number here).
_TYPE_CHECKS = {"int": lambda v: isinstance(v, int) and not isinstance(v, bool),
                "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
                "str": lambda v: isinstance(v, str)}
_MAY_BE_NULL = frozenset({"pad_token_id", "bos_token_id", "eos_token_id", "classifier_dropout_prob"})


@dataclass
class AlbertConfig:
    """Every field of the reference ALBERT config.json.

    Dimension names used throughout the code:
    V = vocab_size, E = embedding_size, H = hidden_size, NH = num_attention_heads,
    hs = H / NH (head size), I = intermediate_size, L = num_hidden_layers.
    """

    vocab_size: int = 30000
    embedding_size: int = 128
    hidden_size: int = 4096
    num_hidden_layers: int = 12
    num_hidden_groups: int = 1
    inner_group_num: int = 1
    num_attention_heads: int = 64
    intermediate_size: int = 16384
    hidden_act: str = "gelu_new"
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    classifier_dropout_prob: float = 0.1
    position_embedding_type: str = "absolute"
    pad_token_id: int = 0
    bos_token_id: int = 2
    eos_token_id: int = 3
    # Keys of config.json that tinyalbert does not use, kept so that a
    # round trip through to_json loses nothing.
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        problems = []
        if self.hidden_size % self.num_attention_heads:
            problems.append(
                f"hidden_size={self.hidden_size} is not a multiple of num_attention_heads={self.num_attention_heads}")
        if self.num_hidden_layers % self.num_hidden_groups:
            problems.append(
                f"num_hidden_layers={self.num_hidden_layers} is not a multiple of "
                f"num_hidden_groups={self.num_hidden_groups}")
        if self.hidden_act not in ACTIVATIONS:
            known = ", or ".join(f"{name!r}, {what}" for name, what in ACTIVATIONS.items())
            problems.append(f"hidden_act={self.hidden_act!r} is not supported ({known})")
        if self.position_embedding_type != "absolute":
            problems.append(f"position_embedding_type={self.position_embedding_type!r} is not supported "
                            "(only 'absolute')")
        for name in ("vocab_size", "embedding_size", "hidden_size", "num_hidden_layers", "num_hidden_groups",
                     "inner_group_num", "num_attention_heads", "intermediate_size", "max_position_embeddings",
                     "type_vocab_size"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name}={getattr(self, name)} must be at least 1")
        if problems:
            raise ValueError("invalid AlbertConfig: " + "; ".join(problems))

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def group_of_application(self, i: int, depth: int | None = None) -> int:
        """Which layer group the i-th of the L applications uses (the reference's `int(i / (L / G))`).

        depth: run N applications instead of L (inference at another depth): the same rule with
        N in place of L, `int(i / (N / G))`, which is what the reference computes with
        num_hidden_layers = N.  N need not be a multiple of G; with N < G some groups go unused.
        """
        applications = self.num_hidden_layers if depth is None else depth
        return int(i / (applications / self.num_hidden_groups))

    # ---- config.json --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        out = dict(self.extra)
        out.update(d)
        out.setdefault("model_type", "albert")
        out.setdefault("architectures", ["AlbertForPreTraining"])
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AlbertConfig":
        if not isinstance(d, dict):
            raise TypeError(f"a config must be a JSON object, not a {type(d).__name__}")
        # A value of the wrong type (a string layer_norm_eps, a float hidden_size) would fail far
        # from here, in the middle of a forward pass; None is allowed where the reference allows it.
        wrong = [f"{f.name}={d[f.name]!r} is not {f.type}" for f in dataclasses.fields(cls)
                 if f.name in d and not (d[f.name] is None and f.name in _MAY_BE_NULL)
                 and not _TYPE_CHECKS.get(f.type, lambda v: True)(d[f.name])]
        if wrong:
            raise ValueError("invalid AlbertConfig: " + "; ".join(wrong))
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        kwargs = {k: v for k, v in d.items() if k in known}
        extra = {k: v for k, v in d.items() if k not in known}
        return cls(**kwargs, extra=extra)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json_string(cls, text: str) -> "AlbertConfig":
        return cls.from_dict(json.loads(text))

    def save_json(self, path: str | os.PathLike) -> None:
        """Write a transformers-style config.json (atomically)."""
        from ..files import atomic_output
        with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            f.write(self.to_json_string())

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "AlbertConfig":
        """Read a transformers-style config.json."""
        with open(path, encoding="utf-8") as f:
            return cls.from_json_string(f.read())

    @classmethod
    def from_name_or_file(cls, name: str | os.PathLike) -> "AlbertConfig":
        """A config.json if `name` is an existing file, else a preset name (see `preset`)."""
        if os.path.isfile(name):
            return cls.from_json(name)
        return cls.preset(str(name))

    @classmethod
    def preset(cls, name: str) -> "AlbertConfig":
        """A published v2 size: 'base', 'large', 'xlarge' or 'xxlarge' (also as 'albert-base-v2' and the like)."""
        key = name.lower().removeprefix("albert/").removeprefix("albert-").removesuffix("-v2")
        if key not in PRESETS:
            raise ValueError(f"unknown ALBERT preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**PRESETS[key])


# The published v2 sizes (all: V=30000, E=128, 12 applications of one shared layer, gelu_new, no dropout).
PRESETS: dict[str, dict[str, Any]] = {
    "base": dict(hidden_size=768, num_attention_heads=12, intermediate_size=3072),
    "large": dict(hidden_size=1024, num_attention_heads=16, intermediate_size=4096, num_hidden_layers=24),
    "xlarge": dict(hidden_size=2048, num_attention_heads=16, intermediate_size=8192, num_hidden_layers=24),
    "xxlarge": dict(hidden_size=4096, num_attention_heads=64, intermediate_size=16384, num_hidden_layers=12),
}
