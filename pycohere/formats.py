"""Which on-disk format a checkpoint is, and the ``WeightSource`` that serves its tensors.

pycohere reads four families of weights; each is served by a *weight source* so that the model
(``pycohere.model.load_params``) never looks at a file format:

=====================================  ==========================================================
checkpoint                             source
=====================================  ==========================================================
float safetensors (F32/F16/BF16),      ``pycohere.quant.storage.WeightSource`` (also quantize-on-
pycohere quantized safetensors         load with a ``QuantizationConfig``)
bitsandbytes / GPTQ / AWQ safetensors  ``pycohere.quant.hf_formats.HFQuantizedSource`` (chosen by
                                       config.json's ``quantization_config.quant_method``)
GGUF (llama.cpp), single or split      ``pycohere.gguf_model.GGUFSource`` (config from metadata)
=====================================  ==========================================================

A source has, in transformers' parameter names (``model.layers.0.mlp.up_proj.weight``):

* ``path``, ``files`` (the weight files), ``nbytes`` (bytes of weights on disk);
* ``shapes``: logical name -> logical shape, and ``problems``: packed arrays missing or misshaped,
  both fed to :func:`pycohere.weights.check_manifest`;
* ``matrix(name, dtype, backend, materialize)`` -> a ``pycohere.tensors.Weight`` (dense or quantized);
* ``vector(name, dtype)`` -> a small float array (norms, biases) in the compute dtype;
* ``tensor_table()`` -> one :class:`TensorInfo` per logical tensor (``pycohere inspect``);
* ``check_quantization_plan()``: validate a quantize-on-load request before any work.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointNotFoundError, UnsupportedFormatError

GGUF_SUFFIX = ".gguf"
# Methods of config.json's quantization_config served by pycohere.quant.hf_formats.
HF_QUANT_METHODS = ("bitsandbytes", "gptq", "awq")


@dataclass(frozen=True)
class TensorInfo:
    """One logical tensor as stored: ``storage`` is a dtype (F32, BF16, ...) or a scheme / ggml
    type (int8, nf4, Q4_K, ...); ``block_size`` values share one scale (None for float tensors
    and per-channel scales over the whole row)."""

    name: str
    shape: tuple[int, ...]
    storage: str
    bits_per_weight: float
    block_size: int | None
    nbytes: int


def gguf_file(path: str | os.PathLike) -> Path | None:
    """The GGUF file to read for ``path`` (the first part of a split file), or None.

    A ``.gguf`` path is used as given; a folder is a GGUF checkpoint when it holds ``.gguf`` files
    and no safetensors (a folder holding several different models must be given as one file)."""
    p = Path(path)
    if p.suffix == GGUF_SUFFIX:
        if not p.exists():
            raise CheckpointNotFoundError(f"GGUF file {p} does not exist")
        return p
    if not p.is_dir() or any(p.glob("*.safetensors")):
        return None
    ggufs = sorted(p.glob("*" + GGUF_SUFFIX))
    if not ggufs:
        return None
    firsts = [g for g in ggufs if "-of-" not in g.name or "-00001-of-" in g.name]
    if len(firsts) != 1:
        raise UnsupportedFormatError(
            f"{p} holds several GGUF models ({', '.join(g.name for g in firsts[:4])}); pass the file to load")
    return firsts[0]


def load_config(path: str | os.PathLike):
    """The model config of a checkpoint: config.json, or a GGUF file's metadata."""
    from .config import AutoConfig
    g = gguf_file(path)
    if g is not None:
        from .gguf_model import config_from_gguf
        return config_from_gguf(g)
    return AutoConfig.from_pretrained(path)


def open_weights(path: str | os.PathLike, config, quantization=None):
    """The weight source for the checkpoint at ``path`` (see the module docstring)."""
    g = gguf_file(path)
    if g is not None:
        from .gguf_model import GGUFSource
        return GGUFSource(g, config, quantization)
    from .weights import Checkpoint
    ckpt = Checkpoint(path)
    qc = getattr(config, "quantization_config", None)
    method = qc.get("quant_method") if isinstance(qc, dict) else None
    if method in HF_QUANT_METHODS:
        from .quant.hf_formats import HFQuantizedSource
        return HFQuantizedSource(ckpt, config, quantization)
    from .quant.storage import WeightSource
    return WeightSource(ckpt, config, quantization)
