"""Typed structures of the spec: dimensions, one layer's parameters, the model's, and per-forward state.

``PARAMETERS`` is the one table of a checkpoint's tensors: for each, its field in ``LayerParams`` /
``ModelParams``, its transformers name, its llama.cpp (GGUF) name, its shape in the legend's letters and
when it exists. The loader (``pycohere.model.params``), the manifest check
(``pycohere.checkpoints.manifest``), the GGUF reader and the GGUF exporter all read it, so a name or a
shape is written down exactly once (llama2.c's ``TransformerWeights``, gguf-py's ``TENSOR_NAMES``).

Shape legend (``pycohere.spec.layers``): B batch, T tokens in this call, S keys visible, D hidden,
H query heads, K kv heads, Dh head dim, F feed-forward size, V vocabulary.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .weights import Weight

MATRIX, VECTOR = "matrix", "vector"


@dataclass(frozen=True)
class Dims:
    """The sizes and constants every layer needs (from the config, once)."""

    D: int       # hidden_size
    H: int       # num_attention_heads
    K: int       # num_key_value_heads
    Dh: int      # head dim (head_dim, else D / H)
    F: int       # intermediate_size
    V: int       # vocab_size
    L: int       # num_hidden_layers
    eps: float   # layer_norm_eps (COHERE: LayerNorm's epsilon, inside the square root)
    act: str     # hidden_act: "silu" or "gelu"
    logit_scale: float  # COHERE: logits are multiplied by it (Command-R: 0.0625)

    @property
    def G(self) -> int:
        """Query heads per kv head (GQA group size)."""
        return self.H // self.K

    @classmethod
    def from_config(cls, config) -> "Dims":
        return cls(D=config.hidden_size, H=config.num_attention_heads, K=config.num_key_value_heads,
                   Dh=config.get_head_dim(), F=config.intermediate_size, V=config.vocab_size,
                   L=config.num_hidden_layers, eps=float(config.layer_norm_eps), act=config.hidden_act,
                   logit_scale=float(config.logit_scale))

    def size(self, expr: str) -> int:
        """A shape entry of the table ("H*Dh") -> its value."""
        return math.prod(getattr(self, name) for name in expr.split("*"))


class _ByName:
    """Access by field name, as for the dicts these structures replace (``params["layers"][0]["q_proj"]``);
    an absent optional tensor (None) is not ``in`` it."""

    def __getitem__(self, name: str):
        value = getattr(self, name, None) if name in self.__dataclass_fields__ else None
        if value is None:
            raise KeyError(name)
        return value

    def __setitem__(self, name: str, value) -> None:
        if name not in self.__dataclass_fields__:
            raise KeyError(name)
        setattr(self, name, value)

    def __contains__(self, name: str) -> bool:
        return name in self.__dataclass_fields__ and getattr(self, name) is not None

    def get(self, name: str, default=None):
        return self[name] if name in self else default

    def keys(self) -> list[str]:
        return [n for n in self.__dataclass_fields__ if n in self]

    def values(self) -> list:
        return [getattr(self, n) for n in self.keys()]

    def items(self) -> list[tuple]:
        return [(n, getattr(self, n)) for n in self.keys()]


@dataclass
class LayerParams(_ByName):
    """One decoder layer. Matrices are ``Weight`` [out, in]; vectors are arrays in the compute dtype."""

    input_layernorm: np.ndarray            # (D,)   COHERE: the one LayerNorm of the parallel block
    q_proj: Weight                         # [H*Dh, D]
    k_proj: Weight                         # [K*Dh, D]
    v_proj: Weight                         # [K*Dh, D]
    o_proj: Weight                         # [D, H*Dh]
    gate_proj: Weight                      # [F, D]
    up_proj: Weight                        # [F, D]
    down_proj: Weight                      # [D, F]
    q_bias: np.ndarray | None = None       # (H*Dh,) when attention_bias
    k_bias: np.ndarray | None = None       # (K*Dh,)
    v_bias: np.ndarray | None = None       # (K*Dh,)
    o_bias: np.ndarray | None = None       # (D,)
    q_norm: np.ndarray | None = None       # (H, Dh) COHERE: per-head LayerNorm weights (use_qk_norm, v1)
    k_norm: np.ndarray | None = None       # (K, Dh)
    sliding_window: int | None = None      # not a tensor: the layer's window (Cohere2 sliding layers), set by the model
    use_rope: bool = True                  # not a tensor: False on Cohere2's full-attention (NoPE) layers

    def matrices(self) -> tuple:
        """The seven matrices, in the order q, k, v, o, gate, up, down (the decode engine's matrix index)."""
        return (self.q_proj, self.k_proj, self.v_proj, self.o_proj, self.gate_proj, self.up_proj, self.down_proj)


@dataclass
class ModelParams(_ByName):
    embed_tokens: Weight                   # [V, D]
    layers: list[LayerParams]              # L of them
    norm: np.ndarray                       # (D,)   final LayerNorm
    lm_head: Weight                        # [V, D] COHERE: the tied embed_tokens unless a head is saved


@dataclass(frozen=True)
class Param:
    """One row of the table. ``hf``/``gguf`` are relative to ``model.layers.{i}.`` / ``blk.{i}.`` for
    layer tensors; ``when`` names the config condition under which the tensor exists."""

    field: str
    hf: str
    gguf: str
    shape: tuple[str, ...]
    kind: str = MATRIX
    when: str | None = None  # "attention_bias" | "qk_norm" | "untied"

    def shape_for(self, dims: Dims) -> tuple[int, ...]:
        return tuple(dims.size(e) for e in self.shape)


LAYER_PARAMETERS: tuple[Param, ...] = (
    Param("input_layernorm", "input_layernorm.weight", "attn_norm.weight", ("D",), VECTOR),
    Param("q_proj", "self_attn.q_proj.weight", "attn_q.weight", ("H*Dh", "D")),
    Param("q_bias", "self_attn.q_proj.bias", "attn_q.bias", ("H*Dh",), VECTOR, "attention_bias"),
    Param("k_proj", "self_attn.k_proj.weight", "attn_k.weight", ("K*Dh", "D")),
    Param("k_bias", "self_attn.k_proj.bias", "attn_k.bias", ("K*Dh",), VECTOR, "attention_bias"),
    Param("v_proj", "self_attn.v_proj.weight", "attn_v.weight", ("K*Dh", "D")),
    Param("v_bias", "self_attn.v_proj.bias", "attn_v.bias", ("K*Dh",), VECTOR, "attention_bias"),
    Param("o_proj", "self_attn.o_proj.weight", "attn_output.weight", ("D", "H*Dh")),
    Param("o_bias", "self_attn.o_proj.bias", "attn_output.bias", ("D",), VECTOR, "attention_bias"),
    Param("q_norm", "self_attn.q_norm.weight", "attn_q_norm.weight", ("H", "Dh"), VECTOR, "qk_norm"),
    Param("k_norm", "self_attn.k_norm.weight", "attn_k_norm.weight", ("K", "Dh"), VECTOR, "qk_norm"),
    Param("gate_proj", "mlp.gate_proj.weight", "ffn_gate.weight", ("F", "D")),
    Param("up_proj", "mlp.up_proj.weight", "ffn_up.weight", ("F", "D")),
    Param("down_proj", "mlp.down_proj.weight", "ffn_down.weight", ("D", "F")),
)
MODEL_PARAMETERS: tuple[Param, ...] = (
    Param("embed_tokens", "model.embed_tokens.weight", "token_embd.weight", ("V", "D")),
    Param("norm", "model.norm.weight", "output_norm.weight", ("D",), VECTOR),
    Param("lm_head", "lm_head.weight", "output.weight", ("V", "D"), MATRIX, "untied"),
)
PARAMETERS = LAYER_PARAMETERS + MODEL_PARAMETERS
LAYER_PREFIX = "model.layers.{i}."
GGUF_LAYER_PREFIX = "blk.{i}."


def uses_qk_norm(config) -> bool:
    """Only Cohere (v1) has q/k norms; a stray use_qk_norm in a cohere2 config.json is ignored, as
    transformers' Cohere2 does."""
    return config.model_type == "cohere" and bool(getattr(config, "use_qk_norm", False))


def present(param: Param, config) -> bool:
    """Whether the config implies this tensor."""
    if param.when is None:
        return True
    if param.when == "attention_bias":
        return bool(config.attention_bias)
    if param.when == "qk_norm":
        return uses_qk_norm(config)
    if param.when == "untied":
        return not config.tie_word_embeddings
    raise ValueError(f"unknown condition {param.when!r}")  # pragma: no cover - a table typo


def hf_name(param: Param, layer: int | None = None) -> str:
    return param.hf if layer is None else LAYER_PREFIX.format(i=layer) + param.hf


def gguf_name(param: Param, layer: int | None = None) -> str:
    return param.gguf if layer is None else GGUF_LAYER_PREFIX.format(i=layer) + param.gguf


@dataclass
class ForwardState:
    """What every layer of one forward call shares, built once per call (``pycohere.model``).

    Indices are absolute positions in the cache (not position_ids, which restart at 0 after left
    padding): a query at cache index i sees keys at indices <= i.
    """

    cos: np.ndarray                        # (B, T, Dh/2) RoPE tables for this call's positions
    sin: np.ndarray                        # (B, T, Dh/2)
    q_index: np.ndarray                    # (T,) absolute cache indices of the queries
    kv_valid: np.ndarray | None = None     # (B, past + T) bool padding mask over every cache index, or None
    segments: np.ndarray | None = None     # (B, T) packed-sequence ids (no cache), or None
