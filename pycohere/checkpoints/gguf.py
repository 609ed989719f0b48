"""GGUF checkpoints (llama.cpp) of the ``command-r`` and ``cohere2`` architectures.

``config_from_gguf(path)`` turns the GGUF metadata into a :class:`~pycohere.config.CohereConfig` /
:class:`~pycohere.config.Cohere2Config` with transformers' field names, and ``GGUFSource`` serves the
tensors under transformers' parameter names (the ``WeightSource`` interface of :mod:`pycohere.checkpoints.source`),
zero-copy from the memory map: float matrices as ``DenseWeight`` over the F32/F16/BF16 view, ggml
blocks (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, the k-quants Q2_K, Q3_K, Q4_K, Q5_K, Q6_K and the non-linear
IQ4_NL, IQ4_XS) as ``QuantizedWeight``
over ``raw_bytes(name).reshape(out, -1)``. Q5_0, Q5_1, Q2_K, Q3_K and Q5_K have no GEMV kernel: their
matmuls (decode included) multiply dequantized tiles with BLAS (Numba dequantizers in
pycohere.kernels.kquant, the NumPy spec with ``backend="numpy"``).
Sources read in llama.cpp (the tree bundled with llama-cpp-python 0.3.36): ``src/llama-arch.cpp``
(key names), ``src/llama-model.cpp`` (``load_hparams``, ``llama_model_rope_type``),
``src/models/command-r.cpp`` and ``src/models/cohere2.cpp`` (per-arch hparams, tensors, graph),
``src/llama-hparams.cpp`` (``set_swa_pattern``), ``src/llama-model-loader.cpp`` (split files) and
``conversion/command_r.py`` + ``conversion/base.py`` (what the HF -> GGUF converter writes).

Metadata (``{arch}`` is ``general.architecture``) -> config field:

* ``{arch}.block_count``, ``.embedding_length``, ``.feed_forward_length``, ``.attention.head_count``
  -> ``num_hidden_layers``, ``hidden_size``, ``intermediate_size``, ``num_attention_heads`` (required;
  a per-layer array must be uniform); ``.attention.head_count_kv`` -> ``num_key_value_heads``
  (default: the head count, as llama.cpp).
* ``{arch}.attention.key_length`` -> ``head_dim`` (the converter writes it only when config.json has
  ``head_dim``; ``value_length`` must agree).
* ``{arch}.rope.freq_base`` -> ``rope_parameters.rope_theta`` (llama.cpp's default 10000).
  ``{arch}.rope.scaling.*``: none -> default RoPE; a linear factor -> ``linear`` (llama.cpp reads
  ``rope.scaling.factor`` or ``rope.scale_linear`` as ``freq_scale = 1 / factor`` whatever the type);
  YaRN / LongRoPE files and an ``attn_factor`` != 1 are refused.
* ``{arch}.rope.dimension_count`` must equal the head dim: llama.cpp would rotate only the first
  n_rot values, transformers' Cohere models always rotate the whole head.
* ``{arch}.attention.layer_norm_epsilon`` -> ``layer_norm_eps`` (required).
* ``{arch}.logit_scale`` -> ``logit_scale``: optional for command-r, required for cohere2; 0 or
  absent means "no scaling" in llama.cpp's graph (``if (f_logit_scale)``), i.e. 1.0.
* ``{arch}.context_length`` -> ``max_position_embeddings`` (required; the converter stores
  config.json's ``model_max_length`` when it has one).
* ``{arch}.vocab_size``, else the length of ``tokenizer.ggml.tokens``, else the rows of
  ``token_embd`` -> ``vocab_size``.
* ``cohere2.attention.sliding_window`` -> ``sliding_window`` (required for cohere2);
  ``cohere2.attention.sliding_window_pattern`` -> ``layer_types``: a per-layer bool array (true =
  sliding), or an integer n (default 4) with layer il sliding iff ``n == 0 or il % n < n - 1``
  (``llama_hparams::set_swa_pattern``, ``load_swa_pattern(ml, 4)`` in cohere2.cpp). The non-MoE
  converter writes no pattern, so every cohere2 GGUF it makes is S,S,S,F,...
* ``tokenizer.ggml.{bos,eos,padding}_token_id`` -> ``bos/eos/pad_token_id`` (None when absent).

FLOAT32 metadata values (rope theta, epsilon, logit scale) are read back as the shortest decimal that
rounds to the stored float32 (``1e-05``, not ``9.99999974738e-06``): the converter stored a
config.json decimal, and this recovers it. From the tensors: ``use_qk_norm`` (command-r) is the
presence of ``blk.0.attn_q_norm.weight``; ``tie_word_embeddings`` the absence of ``output.weight``;
``attention_bias`` the presence of ``blk.0.attn_q.bias`` (or a fused ``attn_qkv.bias``).
``hidden_act`` is ``silu``: both graphs use ``LLM_FFN_SILU`` and GGUF records no activation.

Tensors: ``token_embd`` -> ``model.embed_tokens``, ``output_norm`` -> ``model.norm``, ``output`` ->
``lm_head``; ``blk.N.attn_norm`` -> ``model.layers.N.input_layernorm``, ``attn_q/k/v/output`` ->
``self_attn.{q,k,v,o}_proj``, ``attn_q_norm/attn_k_norm`` -> ``self_attn.q_norm/k_norm`` (llama.cpp's
``{n_embd_head_k, n_head}`` in ggml order is NumPy ``[H, Dh]``, transformers' shape),
``ffn_gate/up/down`` -> ``mlp.{gate,up,down}_proj``; a fused ``attn_qkv`` (``--fuse-qkv`` in the
converter) is served as row ranges ``[q; k; v]`` of the one mapped tensor (no copy).

**No q/k permutation.** llama.cpp permutes q/k rows only for architectures whose HF checkpoints use
split-half ("NeoX") RoPE but which llama.cpp runs with its interleaved ``LLAMA_ROPE_TYPE_NORM``
(``LlamaModel.permute`` in conversion/llama.py). Cohere already uses interleaved RoPE (transformers'
modeling_cohere ``rotate_half`` pairs values 2i, 2i+1), ``llama_model_rope_type`` returns
``LLAMA_ROPE_TYPE_NORM`` for ``LLM_ARCH_COMMAND_R`` and ``LLM_ARCH_COHERE2`` ("normal RoPE, operating
on pairs of consecutive head values", src/llama-model.cpp), and ``conversion/command_r.py``'s
``CommandR2Model`` / ``Cohere2Model`` derive from ``TextModel`` without any q/k ``modify_tensors``
(Cohere2 only drops all-zero biases). So GGUF q/k rows are transformers' rows, unchanged. Checked:
tiny cohere (qk-norm) and cohere2 models converted by llama.cpp's own convert_hf_to_gguf.py (F32)
load here with logits identical to their safetensors checkpoints.

Where pycohere reads more than llama.cpp (which would refuse these files with a tensor count error):
an untied ``output.weight`` (llama.cpp's command-r/cohere2 always reuse ``token_embd``), q/k norms in
a model of fewer than 64 layers (command-r.cpp creates them only for ``n_layer >= 64``, i.e.
Command R+), ``head_dim != hidden_size / heads`` and an ``attn_output.bias``.

Split files (llama.cpp ``gguf-split``, gguf-py ``split_max_tensors``): ``name-00001-of-0000N.gguf``;
every part carries ``split.no``, ``split.count``, ``split.tensors.count``, the first also all the
metadata. Load the first part; the others are found by name and checked (number, count, total
tensors, no duplicates), as llama-model-loader.cpp does.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..config import Cohere2Config, CohereConfig
from ..constants import STORAGE_DTYPES
from ..errors import (CheckpointNotFoundError, ConfigError, CorruptCheckpointError,
                      QuantizationError, UnsupportedFormatError)
from ..io.dtypes import widen
from ..io.gguf import GGUF_MAGIC, GGUFReader, GGUFTensorInfo, ValueType
from ..io.safetensors import read_at
from ..quant.config import QuantizationConfig
from ..quant.stream import quantize_rows, resolve_group
from ..quant.weight import QuantizedWeight
from ..spec.params import LAYER_PARAMETERS, MODEL_PARAMETERS
from ..spec.weights import DenseWeight
from .source import RowFetch, TensorInfo, WeightSource

#: general.architecture -> transformers model_type
SUPPORTED_ARCHITECTURES = {"command-r": "cohere", "cohere2": "cohere2"}
#: ggml block types read as pycohere quantization schemes (same bytes, see pycohere.quant.schemes)
GGML_SCHEMES = {"Q8_0": "q8_0", "Q4_0": "q4_0", "Q4_1": "q4_1", "Q5_0": "q5_0", "Q5_1": "q5_1",
                "Q2_K": "q2_k", "Q3_K": "q3_k", "Q4_K": "q4_k", "Q5_K": "q5_k", "Q6_K": "q6_k",
                "IQ4_NL": "iq4_nl", "IQ4_XS": "iq4_xs"}
FLOAT_TYPES = ("F32", "F16", "BF16")
SUPPORTED_MATRIX_TYPES = FLOAT_TYPES + tuple(GGML_SCHEMES)
# llama.cpp's default sliding-window pattern for cohere2 (load_swa_pattern(ml, 4) in cohere2.cpp)
DEFAULT_SWA_PATTERN = 4

FUSED_QKV = ("attn_qkv.weight", "attn_qkv.bias")
_LAYER_NAME = re.compile(r"^blk\.(\d+)\.(.+)$")
# llama.cpp's tensor names -> transformers parameter names, from the one parameter table
# (gguf-py constants.TENSOR_NAMES / tensor_mapping.py). Inverted by pycohere.export.gguf.
GLOBAL_TENSORS = {p.gguf: p.hf for p in MODEL_PARAMETERS}
LAYER_TENSORS = {p.gguf: p.hf for p in LAYER_PARAMETERS}  # after "blk.N." -> after "model.layers.N."

GGUF_SUFFIX = ".gguf"
# llama_split_path's "%s-%05d-of-%05d.gguf" (llama.cpp src/llama.cpp; gguf-split)
SPLIT_NAME = re.compile(r"^(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)


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


def transformers_name(gguf_name: str) -> str | None:
    """The transformers parameter name of a GGUF tensor, or None (fused or unknown tensors)."""
    if gguf_name in GLOBAL_TENSORS:
        return GLOBAL_TENSORS[gguf_name]
    m = _LAYER_NAME.match(gguf_name)
    if m and m.group(2) in LAYER_TENSORS:
        return f"model.layers.{m.group(1)}.{LAYER_TENSORS[m.group(2)]}"
    return None


def _is_vector(name: str) -> bool:
    """Norm weights (q/k norms are [H, Dh]) and biases: widened to the compute dtype on load."""
    return name.endswith(("norm.weight", ".bias"))


# --- the files --------------------------------------------------------------------------------------
class GGUFModelFile:
    """Every part of a (possibly split) GGUF model: metadata from the first part, tensors from all.

    ``tensors`` maps a GGUF tensor name to ``(reader, info)``; ``readers[i]`` is part i + 1."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        first = GGUFReader(self.path)
        self.metadata: dict[str, Any] = first.metadata
        self.metadata_types = first.metadata_types
        self.readers = [first] + self._other_parts(first)
        self.tensors: dict[str, tuple[GGUFReader, GGUFTensorInfo]] = {}
        for reader in self.readers:
            for name, info in reader.tensors.items():
                if name in self.tensors:
                    raise CorruptCheckpointError(
                        f"tensor {name!r} is in both {self.tensors[name][0].path.name} and {reader.path.name}: "
                        "the parts come from different conversions; re-download them")
                self.tensors[name] = (reader, info)
        if len(self.readers) > 1:
            total = self.metadata["split.tensors.count"]
            if total != len(self.tensors):
                raise CorruptCheckpointError(
                    f"{self.path}: split.tensors.count says {total} tensors but the {len(self.readers)} parts "
                    f"hold {len(self.tensors)}: a part is damaged or from another conversion; re-download them")

    @property
    def files(self) -> list[Path]:
        return [r.path for r in self.readers]

    @property
    def nbytes(self) -> int:
        """Bytes of tensor data in all parts."""
        return sum(info.n_bytes for _, info in self.tensors.values())

    def _split_value(self, reader: GGUFReader, key: str) -> int | None:
        value = reader.metadata.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise CorruptCheckpointError(f"{reader.path}: {key!r} must be a non-negative integer, got {value!r}")
        return value

    def _other_parts(self, first: GGUFReader) -> list[GGUFReader]:
        """Open parts 2..N of a split model (llama-model-loader.cpp: llama_get_list_splits + checks)."""
        count = self._split_value(first, "split.count") or 0
        if count <= 1:
            return []
        no = self._split_value(first, "split.no") or 0
        m = SPLIT_NAME.match(self.path.name)
        if no != 0:
            hint = f"{m.group('prefix')}-00001-of-{count:05d}.gguf" if m else "the part with split.no = 0"
            raise CheckpointNotFoundError(f"{self.path} is part {no + 1} of {count} of a split GGUF model; load the first "
                             f"part, {hint} (the metadata lives there)")
        if self._split_value(first, "split.tensors.count") is None:
            raise CorruptCheckpointError(f"{self.path}: split.count = {count} but split.tensors.count is missing; "
                                         "re-split the model with llama.cpp's gguf-split")
        if not m or int(m.group("no")) != 1 or int(m.group("count")) != count:
            raise CorruptCheckpointError(
                f"{self.path} is part 1 of a {count}-part split model but is not named "
                f"<name>-00001-of-{count:05d}.gguf, so the other parts cannot be found: keep the names "
                "llama.cpp's gguf-split gave the parts")
        names = [self.path.with_name(f"{m.group('prefix')}-{i + 1:05d}-of-{count:05d}{self.path.suffix}")
                 for i in range(1, count)]
        missing = [p.name for p in names if not p.is_file()]
        if missing:
            raise CheckpointNotFoundError(
                f"{self.path.name} is part 1 of a {count}-part split GGUF model, but part(s) {', '.join(missing)} "
                f"are missing from {self.path.parent}; download every part into the same folder")
        parts = []
        for i, p in enumerate(names, start=1):
            reader = GGUFReader(p)
            got = (self._split_value(reader, "split.no"), self._split_value(reader, "split.count"))
            if got != (i, count):
                raise CorruptCheckpointError(
                    f"{p}: split.no = {got[0]}, split.count = {got[1]}, expected part {i} (split.no {i}) of "
                    f"{count}: the files come from different splits; re-download them")
            parts.append(reader)
        return parts


def _gguf_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.is_dir():
        found = gguf_file(p)
        if found is None:
            raise CheckpointNotFoundError(f"no .gguf file in {p}")
        return found
    return p


# --- metadata -> config -----------------------------------------------------------------------------
class _Metadata:
    """Typed access to ``{arch}.*`` keys; every problem names the key."""

    def __init__(self, gguf: GGUFModelFile, arch: str):
        self.gguf, self.arch, self.meta = gguf, arch, gguf.metadata

    def key(self, name: str) -> str:
        return f"{self.arch}.{name}"

    def _missing(self, key: str):
        return CorruptCheckpointError(
            f"{self.gguf.path}: the GGUF metadata lacks {key!r}, which a {self.arch} model needs; the file is "
            "incomplete or was written by a converter that does not know this architecture: re-convert it "
            "with llama.cpp's convert_hf_to_gguf.py")

    def _bad(self, key: str, value, want: str):
        return CorruptCheckpointError(f"{self.gguf.path}: metadata {key!r} must be {want}, got {value!r}")

    def count(self, name: str, default: Any = ..., n_layers: int | None = None, minimum: int = 1) -> Any:
        """An integer key (>= minimum). With ``n_layers``, a per-layer array is accepted when uniform."""
        key = self.key(name)
        value = self.meta.get(key)
        if value is None:
            if default is ...:
                raise self._missing(key)
            return default
        if isinstance(value, (np.ndarray, list)) and n_layers is not None:
            values = np.asarray(value).tolist()
            if len(values) != n_layers or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                raise self._bad(key, value, f"an integer or {n_layers} integers (one per layer)")
            if len(set(values)) != 1:
                raise UnsupportedFormatError(
                    f"{self.gguf.path}: {key!r} differs between layers ({values}); Cohere models have the same "
                    "value in every layer and pycohere does not support per-layer sizes")
            value = values[0]
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self._bad(key, value, f"an integer >= {minimum}")
        return value

    def number(self, name: str, default: Any = ...) -> Any:
        """A float key; FLOAT32 values come back as the shortest decimal rounding to them."""
        key = self.key(name)
        value = self.meta.get(key)
        if value is None:
            if default is ...:
                raise self._missing(key)
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
            raise self._bad(key, value, "a finite number")
        if self.gguf.metadata_types.get(key) == ValueType.FLOAT32:
            return float(str(np.float32(value)))
        return float(value)

    def string(self, name: str, default: Any = None) -> Any:
        value = self.meta.get(self.key(name), default)
        if value is not None and not isinstance(value, str):
            raise self._bad(self.key(name), value, "a string")
        return value

    def token_id(self, name: str, vocab_size: int) -> int | None:
        key = f"tokenizer.ggml.{name}"
        value = self.meta.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < vocab_size:
            raise self._bad(key, value, f"a token id below the vocabulary size {vocab_size}")
        return value


def config_from_gguf(path: str | os.PathLike | GGUFModelFile) -> CohereConfig:
    """The transformers-style config (``CohereConfig`` or ``Cohere2Config``) of a GGUF model (a path, or
    the already parsed ``GGUFModelFile``)."""
    return _config_from(path if isinstance(path, GGUFModelFile) else GGUFModelFile(_gguf_path(path)))


def _architecture(gguf: GGUFModelFile) -> str:
    arch = gguf.metadata.get("general.architecture")
    if arch is None:
        raise CorruptCheckpointError(f"{gguf.path}: the GGUF metadata has no 'general.architecture'; it is not a "
                                     "llama.cpp model file (or it is damaged)")
    if not isinstance(arch, str):  # (a damaged type byte: an array or a number is not a name)
        raise CorruptCheckpointError(f"{gguf.path}: 'general.architecture' must be a string, got {arch!r}; the file "
                                     "is damaged: re-download or re-convert it")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedFormatError(
            f"{gguf.path}: general.architecture is {arch!r}; pycohere runs GGUF models of the architectures "
            f"{', '.join(repr(a) for a in SUPPORTED_ARCHITECTURES)} (Command-R / R+ / Aya, and Command R7B / "
            "Command A)")
    return arch


def _config_from(gguf: GGUFModelFile) -> CohereConfig:
    arch = _architecture(gguf)
    k = _Metadata(gguf, arch)
    n_layers = k.count("block_count")
    _check_layer_count(k, gguf, n_layers)
    hidden = k.count("embedding_length")
    heads = k.count("attention.head_count", n_layers=n_layers)
    kw: dict[str, Any] = dict(
        num_hidden_layers=n_layers, hidden_size=hidden, num_attention_heads=heads,
        intermediate_size=k.count("feed_forward_length", n_layers=n_layers),
        num_key_value_heads=k.count("attention.head_count_kv", default=heads, n_layers=n_layers),
        max_position_embeddings=k.count("context_length"),
        layer_norm_eps=k.number("attention.layer_norm_epsilon"),
        hidden_act="silu",
        head_dim=_head_dim(k, hidden, heads),
        rope_parameters=_rope_parameters(k),
        logit_scale=_logit_scale(k, arch),
        tie_word_embeddings="output.weight" not in gguf.tensors,
        attention_bias="blk.0.attn_q.bias" in gguf.tensors or "blk.0.attn_qkv.bias" in gguf.tensors,
    )
    vocab = _vocab_size(k, gguf)
    kw.update(vocab_size=vocab, bos_token_id=k.token_id("bos_token_id", vocab),
              eos_token_id=k.token_id("eos_token_id", vocab), pad_token_id=k.token_id("padding_token_id", vocab))
    if arch == "command-r":
        kw["use_qk_norm"] = "blk.0.attn_q_norm.weight" in gguf.tensors
        cls = CohereConfig
    else:
        kw["sliding_window"] = k.count("attention.sliding_window")
        kw["layer_types"] = _layer_types(k, n_layers)
        cls = Cohere2Config
    try:
        return cls(**kw)
    except ConfigError as e:
        raise CorruptCheckpointError(f"{gguf.path}: the GGUF metadata describes an impossible model: {e}") from None


def _check_layer_count(k: _Metadata, gguf: GGUFModelFile, n_layers: int) -> None:
    """block_count may not promise layers the file does not hold. Every later check is per layer
    (pycohere.checkpoints.manifest.expected_tensors lists 11 names per layer), so a damaged count (one flipped
    bit makes 2 into 2**24 + 2) would otherwise take minutes and gigabytes before the manifest check
    could say "missing". A file without tensors (llama.cpp's vocab-only models/ggml-vocab-*.gguf)
    has only its metadata and is read as it is."""
    if not gguf.tensors:
        return
    held = 1 + max((int(m.group(1)) for name in gguf.tensors if (m := _LAYER_NAME.match(name))), default=-1)
    if n_layers > held:
        what = f"the tensors of {held} layer(s) (blk.0 .. blk.{held - 1})" if held else "no layer tensors (blk.N.*)"
        raise CorruptCheckpointError(
            f"{gguf.path}: {k.key('block_count')!r} = {n_layers} but the file holds {what}; the metadata is damaged "
            "or the file is incomplete: re-download or re-convert it")


def _head_dim(k: _Metadata, hidden: int, heads: int) -> int | None:
    """``key_length`` when present (the converter writes it only for a config.json head_dim)."""
    key_len = k.count("attention.key_length", default=None)
    value_len = k.count("attention.value_length", default=key_len)
    if value_len != key_len:
        raise CorruptCheckpointError(
            f"{k.gguf.path}: {k.key('attention.key_length')!r} = {key_len} but {k.key('attention.value_length')!r} = "
            f"{value_len}; Cohere attention uses one head size for keys and values")
    head_dim = key_len or hidden // heads
    n_rot = k.count("rope.dimension_count", default=head_dim)
    if n_rot != head_dim:
        raise UnsupportedFormatError(
            f"{k.gguf.path}: {k.key('rope.dimension_count')!r} = {n_rot} rotates part of each {head_dim}-value "
            "head (llama.cpp applies RoPE to the first n_rot values); transformers' Cohere models rotate the "
            "whole head and pycohere follows them")
    return key_len


def _rope_parameters(k: _Metadata) -> dict:
    """rope.freq_base and the scaling keys, as llama.cpp reads them (llama-model.cpp load_hparams:
    the type defaults to "linear" and the factor, rope.scaling.factor or the older
    rope.scale_linear, becomes freq_scale = 1 / factor whatever the type; 0 means none)."""
    theta = k.number("rope.freq_base", default=10000.0)
    kind = k.string("rope.scaling.type", default="linear")
    factor = k.number("rope.scaling.factor", default=None)
    if factor is None:
        factor = k.number("rope.scale_linear", default=0.0)
    if kind not in ("none", "linear"):
        raise UnsupportedFormatError(
            f"{k.gguf.path}: {k.key('rope.scaling.type')!r} is {kind!r}; pycohere reads GGUF models with plain or "
            "linearly scaled RoPE only; load the original safetensors checkpoint instead")
    # ggml's rope multiplies cos/sin by attn_factor (rope_yarn's mscale) whatever the type
    attn_factor = k.number("rope.scaling.attn_factor", default=1.0)
    if attn_factor != 1.0:
        raise UnsupportedFormatError(
            f"{k.gguf.path}: {k.key('rope.scaling.attn_factor')!r} = {attn_factor} scales the rotated queries and "
            "keys, which transformers' Cohere models never do; pycohere cannot run this file")
    if factor in (0.0, 1.0):
        return {"rope_type": "default", "rope_theta": theta}
    if factor < 0:
        raise CorruptCheckpointError(f"{k.gguf.path}: {k.key('rope.scaling.factor')!r} must be positive, got {factor}")
    return {"rope_type": "linear", "factor": factor, "rope_theta": theta}


def _logit_scale(k: _Metadata, arch: str) -> float:
    # command-r.cpp reads logit_scale as optional, cohere2.cpp as required; both graphs skip the
    # multiplication when it is 0 (`if (f_logit_scale)`), which is a scale of 1.
    scale = k.number("logit_scale", default=0.0 if arch == "command-r" else ...)
    return scale if scale != 0.0 else 1.0


def _vocab_size(k: _Metadata, gguf: GGUFModelFile) -> int:
    tokens = gguf.metadata.get("tokenizer.ggml.tokens")
    n_tokens = len(tokens) if isinstance(tokens, list) else None
    declared = k.count("vocab_size", default=None)
    if declared is not None and n_tokens is not None and declared != n_tokens:
        raise CorruptCheckpointError(
            f"{gguf.path}: {k.key('vocab_size')!r} = {declared} but tokenizer.ggml.tokens lists {n_tokens} tokens; "
            "the vocabulary and the model disagree: re-convert the model")
    vocab = declared if declared is not None else n_tokens
    if vocab is None and "token_embd.weight" in gguf.tensors:
        vocab = gguf.tensors["token_embd.weight"][1].numpy_shape[0]
    if vocab is None:
        raise CorruptCheckpointError(f"{gguf.path}: cannot tell the vocabulary size: no {k.key('vocab_size')!r}, "
                                     "tokenizer.ggml.tokens or token_embd.weight")
    return vocab


def _layer_types(k: _Metadata, n_layers: int) -> list[str]:
    """cohere2's sliding layers, exactly as llama.cpp decides them (see the module docstring)."""
    key = k.key("attention.sliding_window_pattern")
    raw = k.meta.get(key)
    if isinstance(raw, (np.ndarray, list)):
        values = np.asarray(raw).tolist()
        if len(values) != n_layers or not all(isinstance(v, (bool, int)) for v in values):
            raise k._bad(key, raw, f"{n_layers} booleans (one per layer, true = sliding window)")
        return ["sliding_attention" if v else "full_attention" for v in values]
    n = k.count("attention.sliding_window_pattern", default=DEFAULT_SWA_PATTERN, minimum=0)
    return ["sliding_attention" if n == 0 or il % n < n - 1 else "full_attention" for il in range(n_layers)]


# --- the weight source ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Tensor:
    """One logical tensor: a GGUF tensor, or a row range of a fused one."""

    gguf_name: str
    reader: GGUFReader
    info: GGUFTensorInfo
    rows: tuple[int, int] | None = None

    @property
    def storage(self) -> str:
        return self.info.type.name

    @property
    def shape(self) -> tuple[int, ...]:
        shape = self.info.numpy_shape
        return shape if self.rows is None else (self.rows[1] - self.rows[0], *shape[1:])

    @property
    def nbytes(self) -> int:
        whole = self.info.n_bytes
        return whole if self.rows is None else whole // self.info.numpy_shape[0] * self.shape[0]

    def raw(self) -> np.ndarray:
        """Zero-copy, read-only view: elements for float types (BF16 as uint16 bits), the ggml block
        bytes ``[out, blocks * type_size]`` for quantized ones."""
        if self.info.type.is_quantized:
            data = self.reader.raw_bytes(self.gguf_name).reshape(self.info.numpy_shape[0], -1)
        else:
            data = self.reader.tensor_data(self.gguf_name)
        if self.rows is not None:
            data = data[self.rows[0]:self.rows[1]]
        return np.asarray(data)  # a plain ndarray view of the np.memmap

    def file_offset(self) -> int:
        """Absolute file offset of the first row (for pread)."""
        row = 0 if self.rows is None else self.rows[0]
        row_bytes = self.info.n_bytes // max(1, self.info.numpy_shape[0])
        return self.reader.data_offset + self.info.offset + row * row_bytes


class GGUFSource(WeightSource):
    """The tensors of a GGUF model in transformers' names (the ``WeightSource`` interface).

    ``gguf``: a path or the already parsed ``GGUFModelFile`` (the probe's: a file is parsed once).
    ``quantization`` (a QuantizationConfig) quantizes float GGUF matrices on load; asking for it on
    tensors that are already ggml-quantized is a QuantizationError.
    """

    def __init__(self, gguf: str | os.PathLike | GGUFModelFile, config,
                 quantization: QuantizationConfig | None = None):
        self.gguf = self.container = gguf if isinstance(gguf, GGUFModelFile) else GGUFModelFile(_gguf_path(gguf))
        self.config = config
        self.quantization = quantization
        self.problems: list[str] = []
        self._tensors: dict[str, _Tensor] = {}
        _architecture(self.gguf)
        for name, (reader, info) in self.gguf.tensors.items():
            self._add(name, reader, info)
        self.shapes = {name: t.shape for name, t in self._tensors.items()}
        self._check_types()
        self._check_already_quantized()

    # --- the WeightSource interface (path, files, nbytes: of self.container, the GGUFModelFile) --------
    @property
    def readers(self) -> list[GGUFReader]:
        return self.gguf.readers

    def gguf_name(self, name: str) -> str:
        """The GGUF tensor that holds the transformers tensor ``name``."""
        return self._tensors[name].gguf_name

    def weight(self, name: str, dtype, materialize: bool = False):
        """The Weight of the [out, in] matrix ``name``: ggml blocks or float values, never copied
        (unless quantized on load or ``materialize``)."""
        t = self._tensors[name]
        if t.storage in GGML_SCHEMES:
            out, n_in = t.shape
            meta = {"scheme": GGML_SCHEMES[t.storage], "group_size": t.info.type.block_size, "shape": [out, n_in]}
            return QuantizedWeight({"qweight": t.raw()}, meta, compute_dtype=dtype)
        if self.quantization is not None and self.quantization.applies_to(name):
            # rows read with pread, so the memory map's pages do not stay in the resident set
            q = quantize_rows(name, self.float_rows(name), t.shape, self.quantization)
            return QuantizedWeight.from_tensor(q, compute_dtype=dtype)
        return DenseWeight(t.raw(), t.storage, compute_dtype=dtype, materialize=materialize)

    def vector(self, name: str, dtype) -> np.ndarray:
        t = self._tensors[name]
        return widen(t.raw(), t.storage, dtype)

    def float_rows(self, name: str) -> RowFetch | None:
        """``fetch(start, stop)`` -> float32 rows of the float (F32/F16/BF16) matrix ``name``, read with
        ``os.pread`` so that streaming a whole model (``pycohere convert``, quantize-on-load) leaves the
        pages in the page cache, not in this process's resident set; None for ggml-quantized tensors."""
        t = self._tensors[name]
        return _RowFetcher(t) if t.storage in FLOAT_TYPES else None

    def stored_rows(self, name: str) -> RowFetch | None:
        t = self._tensors[name]
        if t.storage not in GGML_SCHEMES:
            return None
        raw = t.raw()
        return lambda start, stop: np.asarray(raw[start:stop])

    def tensor_table(self) -> list[TensorInfo]:
        """Every logical tensor with its ggml type, bits per weight and block size."""
        rows = []
        for name, t in sorted(self._tensors.items()):
            g = t.info.type
            rows.append(TensorInfo(name, tuple(t.shape), g.name, 8.0 * g.type_size / g.block_size,
                                   g.block_size if g.is_quantized else None, t.nbytes))
        return rows

    def check_quantization_plan(self) -> None:
        """Before quantizing anything on load: every group size must fit (one clear error)."""
        if self.quantization is None:
            return
        for name, t in self._tensors.items():
            if self.quantization.applies_to(name) and not _is_vector(name):
                resolve_group(name, t.shape, self.quantization)

    # --- construction ---------------------------------------------------------------------------------
    def _add(self, gguf_name: str, reader: GGUFReader, info: GGUFTensorInfo) -> None:
        m = _LAYER_NAME.match(gguf_name)
        if m and m.group(2) in FUSED_QKV:
            self._add_fused(int(m.group(1)), m.group(2), gguf_name, reader, info)
            return
        name = transformers_name(gguf_name) or gguf_name  # unknown names are reported as unexpected
        self._tensors[name] = _Tensor(gguf_name, reader, info)

    def _add_fused(self, layer: int, which: str, gguf_name: str, reader: GGUFReader, info: GGUFTensorInfo) -> None:
        """``attn_qkv`` = rows [q; k; v] (conversion/base.py concatenates them along dim 0)."""
        c = self.config
        dh = c.get_head_dim()
        sizes = (c.num_attention_heads * dh, c.num_key_value_heads * dh, c.num_key_value_heads * dh)
        rows = info.numpy_shape[0]
        if rows != sum(sizes):
            self.problems.append(f"{gguf_name} has {rows} rows, the config needs q+k+v = {'+'.join(map(str, sizes))}")
            return
        suffix = which.split(".")[1]
        start = 0
        for proj, n in zip(("q_proj", "k_proj", "v_proj"), sizes):
            self._tensors[f"model.layers.{layer}.self_attn.{proj}.{suffix}"] = \
                _Tensor(gguf_name, reader, info, (start, start + n))
            start += n

    def _check_types(self) -> None:
        """Every tensor the model uses must be a type pycohere reads (checked before loading)."""
        for name, t in sorted(self._tensors.items()):
            if name == t.gguf_name and transformers_name(name) is None:
                continue  # not a model tensor: the manifest reports it
            allowed = FLOAT_TYPES if _is_vector(name) else SUPPORTED_MATRIX_TYPES
            if t.storage not in allowed:
                what = "norms and biases" if _is_vector(name) else "matrices"
                raise UnsupportedFormatError(
                    f"{self.path}: tensor {t.gguf_name!r} ({name}) is stored as {t.storage}; pycohere reads GGUF "
                    f"{what} stored as {', '.join(allowed)}. Re-quantize the model with llama-quantize to one of "
                    "those (e.g. Q4_K_M, Q6_K or Q8_0), or load the original checkpoint")

    def _check_already_quantized(self) -> None:
        if self.quantization is None:
            return
        done = sorted((n, t.storage) for n, t in self._tensors.items()
                      if t.storage in GGML_SCHEMES and self.quantization.applies_to(n))
        if done:
            raise QuantizationError(
                f"{self.path} is already quantized ({done[0][0]} is {done[0][1]}, {len(done)} such tensors); load it "
                "without quantization_config / load_in_8bit / load_in_4bit, or quantize an F32/F16/BF16 GGUF")


class _RowFetcher:
    """fetch(start, stop) -> float32 rows of a float GGUF matrix, read with ``os.pread``."""

    def __init__(self, t: _Tensor):
        self.t = t
        self.dtype = STORAGE_DTYPES[t.storage]
        self.row_values = math.prod(t.shape[1:])
        self.offset = t.file_offset()

    def __call__(self, start: int, stop: int) -> np.ndarray:
        row_bytes = self.row_values * self.dtype.itemsize
        buf = read_at(self.t.reader.path, self.offset + start * row_bytes, (stop - start) * row_bytes,
                      f"tensor {self.t.gguf_name!r}")
        raw = np.frombuffer(buf, dtype=self.dtype).reshape(stop - start, *self.t.shape[1:])
        return widen(raw, self.t.storage, np.float32)


__all__ = ["GGUFModelFile", "GGUFSource", "config_from_gguf", "transformers_name", "SUPPORTED_ARCHITECTURES",
           "GGML_SCHEMES"]
