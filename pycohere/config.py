"""Model configuration read from a Hugging Face ``config.json``.

Field names are exactly transformers' (``CohereConfig``, ``Cohere2Config``). Both schemas seen in the
wild are accepted: transformers 4.x (``rope_theta`` + ``rope_scaling`` with ``type`` or ``rope_type``) and
5.x (``rope_parameters``). Either way the result is one normalised ``rope_parameters`` dict, as
transformers' ``RotaryEmbeddingConfigMixin.standardize_rope_params`` builds it. Unknown keys are kept.
"""
from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

from .errors import CheckpointNotFoundError, ConfigError

ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "longrope", "llama3")
HIDDEN_ACTS = ("silu", "swish", "gelu")  # "gelu" is the exact erf GELU (transformers ACT2FN["gelu"])
LAYER_TYPES = ("full_attention", "sliding_attention")

# rope_scaling keys each type needs (transformers modeling_rope_utils: the _compute_*_parameters).
_ROPE_REQUIRED = {
    "default": (), "linear": ("factor",), "dynamic": ("factor",), "yarn": ("factor",),
    "longrope": ("short_factor", "long_factor"),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor"),
}


class CohereConfig:
    """Configuration of a ``model_type: "cohere"`` checkpoint (Command-R, Command R+).

    Defaults are transformers 5.x's ``CohereConfig``. One deliberate choice: when a file has no
    ``rope_theta`` (nor ``rope_parameters``), transformers 5.x uses 5e5 for Cohere and 4.x used 1e4;
    pycohere follows the installed-oracle era, 5e5 (``default_theta``). Real checkpoints carry it.
    """

    model_type = "cohere"
    default_theta = 500000.0
    defaults: dict[str, Any] = dict(
        vocab_size=256000, hidden_size=8192, intermediate_size=22528, logit_scale=0.0625,
        num_hidden_layers=40, num_attention_heads=64, num_key_value_heads=None, hidden_act="silu",
        max_position_embeddings=8192, initializer_range=0.02, layer_norm_eps=1e-5, use_cache=True,
        pad_token_id=0, bos_token_id=5, eos_token_id=255001, tie_word_embeddings=True,
        rope_parameters=None, attention_bias=False, attention_dropout=0.0, use_qk_norm=False,
        head_dim=None,
    )

    def __init__(self, **kwargs: Any):
        kwargs = copy.deepcopy(kwargs)
        kwargs.pop("model_type", None)
        for key, value in self.defaults.items():
            setattr(self, key, kwargs.pop(key, value))
        # 4.x schema: rope_theta / rope_scaling; keep them out of the unknown keys.
        rope_scaling = kwargs.pop("rope_scaling", None)
        rope_theta = kwargs.pop("rope_theta", None)
        self._extra_keys = sorted(kwargs)
        for key, value in kwargs.items():  # unknown keys are kept, not dropped
            setattr(self, key, value)
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        self.rope_parameters = self._standardize_rope(self.rope_parameters, rope_scaling, rope_theta)
        self._post_init(kwargs)
        self.validate()

    def _post_init(self, kwargs: dict) -> None:
        """Hook for Cohere2's layer types."""

    # -- rope --------------------------------------------------------------------------------
    def _standardize_rope(self, params, rope_scaling, rope_theta) -> dict:
        """One flat dict {rope_type, rope_theta, ...} whatever the schema (transformers
        ``convert_rope_params_to_dict`` + ``standardize_rope_params``)."""
        raw = rope_scaling or params or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"rope_parameters/rope_scaling must be a JSON object, got {raw!r}")
        params = dict(raw)
        if any(isinstance(v, dict) for v in params.values()):
            raise ConfigError("rope_parameters nested per layer type (e.g. {'sliding_attention': {...}}) are not "
                              "used by Cohere models (transformers' Cohere cannot read them either); write one "
                              "flat rope_parameters object")
        top_partial = getattr(self, "partial_rotary_factor", None)  # transformers moves it into the dict
        if top_partial is not None:
            params.setdefault("partial_rotary_factor", top_partial)
        if rope_theta is not None:
            params.setdefault("rope_theta", rope_theta)
        params.setdefault("rope_theta", self.default_theta)
        params.setdefault("rope_type", params.get("type", "default"))
        params.pop("type", None)
        if params["rope_type"] in ("yarn", "longrope", "llama3"):
            # As transformers: a top-level original_max_position_embeddings (Phi-3 style) wins.
            top = getattr(self, "original_max_position_embeddings", None)
            if top is not None:
                params["original_max_position_embeddings"] = top
            params.setdefault("original_max_position_embeddings", self.max_position_embeddings)
        return params

    @property
    def rope_theta(self) -> float:
        return float(self.rope_parameters["rope_theta"])

    @property
    def rope_type(self) -> str:
        return self.rope_parameters["rope_type"]

    # -- derived sizes -----------------------------------------------------------------------
    def get_head_dim(self) -> int:
        """transformers' CohereAttention: ``getattr(config, "head_dim", hidden // heads)``."""
        return int(self.head_dim) if self.head_dim else self.hidden_size // self.num_attention_heads

    @property
    def num_key_value_groups(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    @property
    def eos_token_ids(self) -> list[int]:
        eos = self.eos_token_id
        return [] if eos is None else [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]

    # -- validation --------------------------------------------------------------------------
    def validate(self) -> None:
        problems = []

        def positive_int(name):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                problems.append(f"{name} must be a positive integer, got {v!r}")
                return False
            return True

        ok = all([positive_int(n) for n in ("vocab_size", "hidden_size", "intermediate_size",
                                              "num_hidden_layers", "num_attention_heads",
                                              "num_key_value_heads", "max_position_embeddings")
                  + (("head_dim",) if self.head_dim is not None else ())])
        if ok:
            H, K = self.num_attention_heads, self.num_key_value_heads
            if H % K:
                problems.append(f"num_attention_heads ({H}) must be a multiple of num_key_value_heads ({K}): "
                                "each kv head serves H/K query heads")
            if self.head_dim is None and self.hidden_size % H:
                problems.append(f"hidden_size ({self.hidden_size}) is not divisible by num_attention_heads "
                                f"({H}); set head_dim explicitly")
            dh = self.get_head_dim()
            if dh <= 0 or dh % 2:
                problems.append(f"head dim must be a positive even number for RoPE pairs, got {dh}")
        if self.hidden_act not in HIDDEN_ACTS:
            problems.append(f"hidden_act {self.hidden_act!r} is not supported; use one of {HIDDEN_ACTS}")
        if not (isinstance(self.layer_norm_eps, (int, float)) and self.layer_norm_eps > 0):
            problems.append(f"layer_norm_eps must be a positive number, got {self.layer_norm_eps!r}")
        for name in ("tie_word_embeddings", "attention_bias") + (("use_qk_norm",) if "use_qk_norm" in self.defaults else ()):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name} must be true or false, got {getattr(self, name)!r}")
        eos = self.eos_token_id
        if eos is not None and not all(isinstance(e, int) and not isinstance(e, bool) and e >= 0
                                       for e in (eos if isinstance(eos, list) else [eos])):
            problems.append(f"eos_token_id must be a token id or a list of ids, got {eos!r}")
        if not isinstance(self.logit_scale, (int, float)) or isinstance(self.logit_scale, bool):
            problems.append(f"logit_scale must be a number, got {self.logit_scale!r}")
        problems += self._validate_rope()
        problems += self._validate_extra()
        if problems:
            raise ConfigError(f"invalid {self.model_type} config: " + "; ".join(problems))

    def _validate_rope(self) -> list[str]:
        p = self.rope_parameters
        rt = p.get("rope_type")
        if rt not in ROPE_TYPES:
            return [f"unknown rope type {rt!r}; pycohere supports {', '.join(ROPE_TYPES)}"]
        if p.get("partial_rotary_factor", 1.0) != 1.0 and rt != "default":
            # Cohere's default RoPE always rotates the whole head (partial_rotary_factor is ignored
            # there, as transformers does); the scaled types would rotate part of it, which
            # transformers' Cohere attention cannot apply (its cos/sin no longer fit the head).
            return [f"partial_rotary_factor {p['partial_rotary_factor']} with rope type {rt!r}: Cohere models rotate "
                    "the whole head; remove partial_rotary_factor"]
        out = [f"rope type {rt!r} needs {k!r} in rope_scaling/rope_parameters"
               for k in _ROPE_REQUIRED[rt] if p.get(k) is None]
        theta = p.get("rope_theta")
        if not isinstance(theta, (int, float)) or theta <= 0:
            out.append(f"rope_theta must be a positive number, got {theta!r}")
        if p.get("factor") is not None and (not isinstance(p["factor"], (int, float)) or p["factor"] <= 0):
            out.append(f"rope factor must be a positive number, got {p['factor']!r}")
        if rt == "longrope" and not out:
            half = self.get_head_dim() // 2 if self.num_attention_heads > 0 else None
            for k in ("short_factor", "long_factor"):
                if not isinstance(p[k], list) or not all(isinstance(f, (int, float)) for f in p[k]):
                    out.append(f"longrope {k} must be a list of numbers, got {p[k]!r}")
                elif half is not None and len(p[k]) != half:
                    out.append(f"longrope {k} must have head_dim/2 = {half} entries, got {len(p[k])}")
        return out

    def _validate_extra(self) -> list[str]:
        return []

    # -- (de)serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = {"model_type": self.model_type}
        for key in self.defaults:
            d[key] = copy.deepcopy(getattr(self, key))
        for key in self._extra_keys:
            d[key] = copy.deepcopy(getattr(self, key))
        return d

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "config.json").write_text(self.to_json_string() + "\n")

    @classmethod
    def from_dict(cls, d: dict) -> "CohereConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"a config must be a JSON object, got {type(d).__name__}")
        mt = d.get("model_type", cls.model_type)
        if mt != cls.model_type:
            raise ConfigError(f"config has model_type {mt!r} but {cls.__name__} reads {cls.model_type!r}; "
                              "use pycohere.AutoConfig / AutoModelForCausalLM to dispatch")
        return cls(**d)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "CohereConfig":
        return cls.from_dict(read_config_json(path))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "CohereConfig":
        """config.json of a checkpoint folder (``pycohere.AutoConfig.from_pretrained`` reads GGUF too)."""
        return cls.from_json_file(_config_path(path))

    def __repr__(self) -> str:
        return f"{type(self).__name__} {self.to_json_string()}"

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.to_dict() == other.to_dict()


class Cohere2Config(CohereConfig):
    """``model_type: "cohere2"`` (Command R7B, Command A): sliding-window layers with RoPE and
    full-attention layers with no positional encoding (NoPE). Defaults: transformers' Cohere2Config."""

    model_type = "cohere2"
    default_theta = 10000.0  # Cohere2Config does not override RotaryEmbeddingConfigMixin's default
    defaults = {k: v for k, v in CohereConfig.defaults.items() if k != "use_qk_norm"}
    defaults.update(sliding_window=4096, layer_types=None)

    def _post_init(self, kwargs: dict) -> None:
        # 4.x files carry an int pattern: layer i is full iff (i+1) % pattern == 0 (S,S,S,F,...).
        pattern = kwargs.get("sliding_window_pattern", getattr(self, "_sliding_window_pattern", 4))
        if self.layer_types is None:
            if not isinstance(pattern, int) or isinstance(pattern, bool) or pattern <= 0:
                raise ConfigError(f"sliding_window_pattern must be a positive integer, got {pattern!r}")
            self.layer_types = ["sliding_attention" if (i + 1) % pattern else "full_attention"
                                for i in range(self.num_hidden_layers)]

    def _validate_extra(self) -> list[str]:
        out = []
        lt = self.layer_types
        if not isinstance(lt, list) or len(lt) != self.num_hidden_layers:
            out.append(f"layer_types must list one entry per layer ({self.num_hidden_layers}), got {lt!r}")
        elif any(t not in LAYER_TYPES for t in lt):
            out.append(f"layer_types entries must be one of {LAYER_TYPES}, got {sorted(set(lt) - set(LAYER_TYPES))}")
        elif "sliding_attention" in lt:
            w = self.sliding_window
            if isinstance(w, bool) or not isinstance(w, int) or w <= 0:
                out.append(f"sliding_window must be a positive integer when sliding layers exist, got {w!r}")
        return out

    def is_sliding(self, layer_idx: int) -> bool:
        return self.layer_types[layer_idx] == "sliding_attention"


CONFIG_CLASSES = {"cohere": CohereConfig, "cohere2": Cohere2Config}


def _config_path(path) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / "config.json"
    if not p.exists():
        raise CheckpointNotFoundError(f"no config.json at {p}; pass a checkpoint folder that contains one")
    return p


def read_config_json(path) -> dict:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CheckpointNotFoundError(f"config file {p} does not exist") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p} is not UTF-8 JSON; pass a checkpoint folder with config.json or a GGUF file") from None
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{p} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}); "
                          "fix or re-download the file") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{p} must hold a JSON object, got {type(d).__name__}")
    return d


def config_from_dict(d: dict) -> CohereConfig:
    """A config.json dict -> CohereConfig / Cohere2Config, by its ``model_type`` (the config side of
    transformers' AutoConfig; ``pycohere.AutoConfig`` adds reading any checkpoint)."""
    if not isinstance(d, dict) or "model_type" not in d:
        raise ConfigError("config.json has no 'model_type'; expected 'cohere' or 'cohere2'")
    model_type = d.get("model_type")
    if model_type not in CONFIG_CLASSES:
        raise ConfigError(f"model_type {model_type!r} is not a Cohere architecture; "
                          f"pycohere reads {sorted(CONFIG_CLASSES)}")
    return CONFIG_CLASSES[model_type](**{k: v for k, v in d.items() if k != "model_type"})


def read_config_file(path) -> dict:
    """config.json of a checkpoint folder (or that file itself) as a dict."""
    return read_config_json(_config_path(path))
