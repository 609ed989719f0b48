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
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointNotFoundError, UnsupportedFormatError

GGUF_SUFFIX = ".gguf"
GGUF_MAGIC = b"GGUF"  # (pycohere.gguf.GGUF_MAGIC; repeated so that this module imports nothing heavy)
# llama_split_path's "%s-%05d-of-%05d.gguf" (llama.cpp src/llama.cpp; gguf-split)
SPLIT_NAME = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)
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

    A file is GGUF when its name ends in ``.gguf`` (any case) or when it starts with the GGUF magic:
    llama.cpp and gguf-py never look at the name, and GGUFs people already have are often unnamed
    (Ollama keeps them as ``blobs/sha256-...``). A folder is a GGUF checkpoint when it holds
    ``.gguf`` files and no safetensors (a folder holding several different models must be given
    as one file)."""
    p = Path(path)
    if p.suffix.lower() == GGUF_SUFFIX and not p.is_dir():  # (hub snapshots may name a folder x.gguf)
        if not p.exists():
            raise CheckpointNotFoundError(f"GGUF file {p} does not exist")
        return p
    if p.is_file():
        return p if _starts_with_gguf_magic(p) else None
    if not p.is_dir() or any(p.glob("*.safetensors")):
        return None
    ggufs = sorted(g for g in p.iterdir() if g.suffix.lower() == GGUF_SUFFIX and g.is_file())
    if not ggufs:
        return None
    # A part of a split model is the model only when it is part 1 (llama-model-loader.cpp loads the
    # others from part 1's name); a name that merely contains "-of-" is an ordinary file.
    firsts = [g for g in ggufs if not (m := SPLIT_NAME.match(g.name)) or int(m["no"]) == 1]
    if not firsts:
        raise CheckpointNotFoundError(
            f"{p} holds only later parts of a split GGUF model ({', '.join(g.name for g in ggufs[:4])}) but not "
            "its first part <name>-00001-of-<count>.gguf, which holds the metadata; download every part")
    if len(firsts) != 1:
        raise UnsupportedFormatError(
            f"{p} holds several GGUF models ({', '.join(g.name for g in firsts[:4])}); pass the file to load")
    return firsts[0]


def _starts_with_gguf_magic(p: Path) -> bool:
    try:
        with open(p, "rb") as f:
            return f.read(len(GGUF_MAGIC)) == GGUF_MAGIC
    except OSError:  # unreadable: let the ordinary loader report it
        return False


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
