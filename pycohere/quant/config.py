"""``QuantizationConfig``: what to quantize and how, for ``pycohere quantize`` and quantize-on-load.

Mirrors the role of transformers' ``QuantizationConfigMixin`` / ``BitsAndBytesConfig``: passed to
``from_pretrained(path, quantization_config=...)`` and stored as ``config.json``'s
``quantization_config`` entry of a quantized checkpoint (``quant_method: "pycohere"``).
The shorthands follow transformers' Cohere documentation: ``load_in_8bit=True`` is int8 (per
output channel, as LLM.int8's weights), ``load_in_4bit=True`` is nf4 with blocks of 64 (the
bitsandbytes 4-bit type the documentation's ``BitsAndBytesConfig`` example selects).

Which tensors are quantized: every linear projection (``*_proj.weight``) and the token embedding
(plus an untied ``lm_head``) unless ``keep_embeddings``. Norms and biases stay float, as do the
QK-norm weights. A tied head is the embedding, so it is served by the same quantized matrix.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Mapping

from ..errors import QuantizationError, UnsupportedFormatError
from .schemes import SCHEMES, get_scheme

QUANT_METHOD = "pycohere"
EMBEDDING_NAMES = ("model.embed_tokens.weight", "lm_head.weight")


def quantizable_schemes() -> list[str]:
    """Scheme names that can quantize (the k-quants are read-only)."""
    return sorted(name for name, cls in SCHEMES.items() if cls.can_quantize)


@dataclass
class QuantizationConfig:
    """scheme: int8 | int4 | int4-asym | nf4 | q8_0 | q4_0 | q4_1 | q5_0 | q5_1.
    group_size: values per scale (None: the scheme's default: per output channel for int8, 64 for
    int4/int4-asym/nf4, 32 for the llama.cpp blocks).
    keep_embeddings: leave the token embedding (and an untied lm_head) in their float dtype."""

    scheme: str = "int8"
    group_size: int | None = None
    keep_embeddings: bool = False
    quant_method: str = QUANT_METHOD

    def __post_init__(self):
        if self.quant_method != QUANT_METHOD:
            raise UnsupportedFormatError(
                f"quantization_config has quant_method {self.quant_method!r}; pycohere reads and writes "
                f"only its own {QUANT_METHOD!r} format (re-quantize the float checkpoint with "
                f"`pycohere quantize`)")
        cls = get_scheme(self.scheme)  # QuantizationError listing the known schemes
        if not cls.can_quantize:
            raise QuantizationError(
                f"{self.scheme} is dequantize-only in pycohere; quantize to one of "
                f"{', '.join(quantizable_schemes())}")
        g = self.group_size
        if g is not None and (isinstance(g, bool) or not isinstance(g, int) or g <= 0):
            raise QuantizationError(f"group_size must be a positive integer or None, got {g!r}")
        if not isinstance(self.keep_embeddings, bool):
            raise QuantizationError(f"keep_embeddings must be true or false, got {self.keep_embeddings!r}")

    def applies_to(self, name: str) -> bool:
        """Whether the tensor ``name`` (a transformers parameter name) gets quantized."""
        if name in EMBEDDING_NAMES:
            return not self.keep_embeddings
        return name.endswith("_proj.weight")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> QuantizationConfig:
        """From a ``config.json`` ``quantization_config`` entry (extra keys such as
        ``format_version`` are ignored)."""
        if not isinstance(d, Mapping):
            raise QuantizationError(f"quantization_config must be an object, got {d!r}")
        d = dict(d)
        if "quant_method" not in d:
            raise UnsupportedFormatError(f"quantization_config {d} has no quant_method")
        return cls(**{k: d[k] for k in ("scheme", "group_size", "keep_embeddings", "quant_method") if k in d})


def resolve_quantization(quantization_config=None, load_in_8bit: bool = False,
                         load_in_4bit: bool = False) -> QuantizationConfig | None:
    """The ``from_pretrained`` arguments -> one QuantizationConfig (or None: load as stored)."""
    given = [quantization_config is not None, bool(load_in_8bit), bool(load_in_4bit)]
    if sum(given) > 1:
        raise QuantizationError("pass only one of quantization_config, load_in_8bit and load_in_4bit")
    if load_in_8bit:
        return QuantizationConfig(scheme="int8")
    if load_in_4bit:
        return QuantizationConfig(scheme="nf4", group_size=64)
    if quantization_config is None or isinstance(quantization_config, QuantizationConfig):
        return quantization_config
    if isinstance(quantization_config, Mapping):
        return QuantizationConfig.from_dict({"quant_method": QUANT_METHOD, **quantization_config})
    raise QuantizationError(
        f"quantization_config must be a pycohere.QuantizationConfig or a dict, got "
        f"{type(quantization_config).__name__}")


# --- the on-disk record of a pycohere quantized checkpoint ---------------------------------------------
# A quantized weight ``W`` is stored as the plain arrays of its scheme (``W.qweight``, ``W.scales``,
# ``W.mins``); every file's safetensors ``__metadata__`` holds, under METADATA_KEY, the JSON string
# ``{"format_version": 1, "tensors": {W: {"scheme", "group_size", "shape": [out, in], "version"}}}``.
METADATA_KEY = "pycohere_quantization"
STORAGE_VERSION = 1


def array_name(tensor: str, array: str) -> str:
    """The stored name of one packed array of a quantized tensor."""
    return f"{tensor}.{array}"


def metadata_entry(tensors: Mapping[str, dict]) -> dict[str, str]:
    """The ``__metadata__`` of every file of a quantized checkpoint."""
    return {METADATA_KEY: json.dumps({"format_version": STORAGE_VERSION, "tensors": dict(tensors)},
                                     separators=(",", ":"), sort_keys=True)}
