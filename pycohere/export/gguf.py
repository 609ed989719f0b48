"""``pycohere convert SRC DST.gguf --type TYPE``: any checkpoint pycohere reads -> a llama.cpp GGUF.

    pycohere convert ./c4ai-command-r-v01 command-r-q8_0.gguf --type q8_0

SRC is anything :func:`pycohere.formats.open_weights` serves (float safetensors, pycohere-quantized
safetensors, bitsandbytes / GPTQ / AWQ, GGUF). The file holds what llama.cpp's converter
(``convert_hf_to_gguf.py`` with ``conversion/command_r.py``, ``conversion/base.py``) writes for
``CohereForCausalLM`` / ``Cohere2ForCausalLM``:

* ``general.architecture`` ``command-r`` / ``cohere2``, ``general.type/name/size_label``,
  ``general.file_type``, ``general.quantization_version`` and ``general.sampling.*`` from
  generation_config.json (gguf-py ``Metadata``);
* ``{arch}.block_count``, ``.context_length`` (command-r: ``model_max_length`` when config.json has
  it, as ``CommandR2Model.__init__``), ``.embedding_length``, ``.feed_forward_length``,
  ``.attention.head_count(_kv)``, ``.rope.freq_base``, ``.attention.layer_norm_epsilon``,
  ``.attention.key_length/value_length`` (when config.json names ``head_dim``; always for cohere2,
  whose transformers config always has it), ``.logit_scale``, ``.rope.scaling.type = none``;
  cohere2 adds ``.attention.sliding_window``, ``.vocab_size`` and ``.rope.dimension_count``;
* the vocabulary as ``TextModel.get_vocab_base`` + gguf-py ``SpecialVocab`` build it: model
  ``gpt2``, pre ``command-r``, tokens padded with ``[PADi]`` (UNUSED) to the config's vocab_size,
  token types (added tokens CONTROL when special or looking special like ``<|...|>``, else
  USER_DEFINED), merges, bos/eos/unk/sep/pad/mask ids, add_bos/add_eos(/add_sep), the chat template
  and named ones as ``tokenizer.chat_template.<name>``. A GGUF source's ``tokenizer.*`` keys are
  copied as they are.

Tensor types (``conversion/base.py`` ``prepare_tensors`` for f32/f16/bf16/q8_0; llama-quantize,
``src/llama-quant.cpp``, for q4_0, which the converter cannot write):

* 1-D tensors (norms, biases) and every ``*_norm.weight`` (also the 2-D q/k norms) stay F32;
* other weights take the file type; a weight whose rows (``ne[0]``, the input dimension) are not
  a multiple of 32 falls back to F16 (the converter's ``QuantError`` fallback, llama-quantize's
  ``tensor_type_fallback``);
* ``token_embd`` with q8_0 is Q8_0, as the converter writes it. With q4_0,
  llama-quantize gives this tensor, which is also the output head, Q6_K (Q8_0 when its rows are not
  a multiple of 256); pycohere cannot produce Q6_K (its k-quants are read-only), so it writes
  Q8_0, or keeps Q4_0 when the source already stores the embedding as q4_0 (re-rounding could only
  add error). ``token_embedding_type=`` / ``--token-embedding-type`` overrides it (as
  llama-quantize's option of that name; ``q4_0`` gives a pure q4_0 file).

Quantization uses :mod:`pycohere.quant.schemes` in row chunks (Q8_0 bit-exact with gguf-py and
llama.cpp's quantizer; Q4_0 too except on exact ties of ``x*id + 8.5``, where the scheme rounds once
and llama.cpp 0.3.36's quantizer, like gguf-py, rounds twice: frequent with bf16 weights); a quantized source tensor already in the target type (q8_0 -> Q8_0, q4_0 -> Q4_0) is
copied byte for byte. Everything else is read as float32 rows (``Weight.rows``, or ``os.pread``
for safetensors and float GGUF tensors) a chunk at a time, so memory stays a few chunks whatever
the model size.

Refused (:class:`~pycohere.errors.UnsupportedFormatError`, nothing written), because llama.cpp
would load the file and compute something else: RoPE scaling other than the default (the
converter writes scaling type ``none`` and llama.cpp's graph applies plain RoPE), a GELU MLP
(llama.cpp's graph is SiLU-gated), non-zero Cohere2 attention biases (``Cohere2Model.modify_tensors``
refuses them; zero ones are dropped as it does), a cohere2 config without a sliding window, a
vocabulary whose pipeline is not Command-R's (``pre = command-r`` would tokenize differently), and
an output head that differs from the token embedding: gguf-py's tensor lists for command-r and
cohere2 have no ``output`` tensor (the converter cannot map ``lm_head.weight``) and llama.cpp's
loaders always use ``token_embd`` as the head. A saved lm_head equal to the embedding is dropped.
Cohere2 ``layer_types`` that are not llama.cpp's default pattern (3 sliding, 1 full) are written as
the per-layer ``{arch}.attention.sliding_window_pattern`` bool array, which llama.cpp's
``load_swa_pattern`` reads (the dense-Cohere2 converter would write nothing and get them wrong).

Written, but with a warning, as the converter writes them: files this llama.cpp refuses to load
(``done_getting_tensors``: "wrong number of tensors") rather than misreads: q/k-norm weights of a
Command-R model with fewer than 64 layers (``src/models/command-r.cpp`` creates them only for
``n_layer >= 64``, i.e. Command R+), a non-zero ``attn_output.bias`` and a head_dim other than
hidden_size / heads. A zero o_proj bias is dropped, so such a file loads.

Atomic: the file is written as ``.DST.partial-XXXX`` beside DST and renamed at the end; any
failure (disk full, bad weights, Ctrl-C) removes it. An existing DST is replaced only with
``force``. Python API: :func:`convert_to_gguf`.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..checkpoints.gguf import GGUFModelFile
from ..checkpoints.manifest import check_manifest, expected_tensors
from ..checkpoints.probe import probe
from ..errors import CheckpointError, TokenizerError, UnsupportedFormatError
from ..io.files import (check_free_space, fsync_folder, make_parents, os_error_message, progress_bar,
                        remove_folders, umask)
from ..io.gguf import GGUFWriter, ValueType, ggml_type, tensor_nbytes
from ..quant.schemes import row_chunks
from ..quant.stream import quantize_stream
from ..spec.params import LAYER_PARAMETERS, MODEL_PARAMETERS
from ..text.tokenizer import CohereTokenizer

# --type -> (general.file_type: gguf-py LlamaFileType, ggml type of the weights)
FILE_TYPES = {"f32": (0, "F32"), "f16": (1, "F16"), "bf16": (32, "BF16"), "q8_0": (7, "Q8_0"), "q4_0": (2, "Q4_0")}
ARCHITECTURES = {"cohere": "command-r", "cohere2": "cohere2"}
GGML_QUANT_VERSION = 2  # gguf-py constants.GGML_QUANT_VERSION
# gguf-py TokenType
TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED = 1, 3, 4, 5
# llama.cpp's Cohere2 default sliding pattern (llama_model_cohere2::load_arch_hparams: load_swa_pattern(ml, 4)):
# layer i slides iff i % 4 < 3.
COHERE2_DEFAULT_PATTERN = 4
QK_NORM_MIN_LAYERS = 64  # src/models/command-r.cpp: q/k norms are created only for n_layer >= 64

U32, I32, F32, BOOL, STR, ARRAY = (ValueType.UINT32, ValueType.INT32, ValueType.FLOAT32, ValueType.BOOL,
                                   ValueType.STRING, ValueType.ARRAY)

# transformers parameter names -> llama.cpp tensor names, from the one parameter table, without
# `output` (llama.cpp's command-r / cohere2 always use token_embd as the head)
_GLOBAL_NAMES = {p.hf: p.gguf for p in MODEL_PARAMETERS if p.field != "lm_head"}
_LAYER_NAMES = {p.hf: p.gguf for p in LAYER_PARAMETERS}


def gguf_tensor_name(name: str) -> str:
    """``model.layers.3.mlp.up_proj.weight`` -> ``blk.3.ffn_up.weight``."""
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    prefix, _, rest = name.partition(".layers.")
    index, _, leaf = rest.partition(".")
    if prefix != "model" or not index.isdigit() or leaf not in _LAYER_NAMES:
        raise UnsupportedFormatError(f"tensor {name!r} has no llama.cpp command-r/cohere2 counterpart")
    return f"blk.{int(index)}.{_LAYER_NAMES[leaf]}"


@dataclass(frozen=True)
class TensorPlan:
    """One tensor of the output: its GGUF name, source (transformers) name, row-major shape,
    ggml type, and whether the source's stored blocks are copied as they are."""

    gguf_name: str
    source_name: str
    shape: tuple[int, ...]
    ggml_type: str
    copy: bool = False


# --- the API -------------------------------------------------------------------------------------
WHAT = "the GGUF file"


def convert_to_gguf(src, dst, type: str = "f16", *, force: bool = False, token_embedding_type: str | None = None,
                    name: str | None = None, progress: bool | None = None) -> Path:
    """Write the checkpoint ``src`` (folder, file or hub repo id) as the GGUF file ``dst``.

    type: f32 | f16 | bf16 | q8_0 | q4_0 (see the module docstring for which tensors take it).
    token_embedding_type: the type of token_embd (also the output head) instead of the default.
    name: ``general.name`` (default: the source's GGUF name or folder name).
    force: replace an existing ``dst`` file. progress: tqdm bar on stderr (None: if a terminal).
    Returns ``dst`` as a Path. Raises UnsupportedFormatError (nothing written) for what llama.cpp
    cannot represent, CheckpointError when ``dst`` cannot be written.
    """
    file_type = _check_type(type, "type")
    embedding_type = None if token_embedding_type is None else _check_type(token_embedding_type, "token_embedding_type")
    found = probe(src)  # one probe: config, weights, and a GGUF source's metadata parsed once
    src, config, gguf_src = found.path, found.config, found.gguf
    dst = _check_destination_name(dst)
    source = found.open_weights()
    check_manifest(config, source.shapes, where=str(src), problems=source.problems)
    _check_destination(dst, force, source)
    check_representable(config)
    plan, notes = plan_tensors(config, source, file_type, embedding_type)
    n_params = sum(math.prod(t.shape) for t in plan)
    metadata = model_metadata(config, file_type, _model_name(src, gguf_src, name), n_params,
                              sampling_metadata(src, gguf_src))
    metadata += vocab_metadata(src, config, gguf_src)
    if notes:
        warnings.warn(f"{dst.name} follows llama.cpp's converter, but this llama.cpp refuses to load it: "
                      + "; ".join(notes) + ". pycohere loads it.", UserWarning, stacklevel=2)
    writer = _declare(dst, metadata, plan)
    check_free_space(dst, writer.file_size, WHAT, CheckpointError)
    created = make_parents(dst.parent, WHAT, CheckpointError)
    tmp = None
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dst.name}.partial-", dir=dst.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        writer.path = tmp
        _write_tensors(writer, source, plan, file_type, progress)
        os.chmod(tmp, 0o666 & ~umask())  # (mkstemp made it 0600)
        os.replace(tmp, dst)
        tmp = None
        fsync_folder(dst.parent)
    except OSError as e:
        raise CheckpointError(os_error_message(e, dst, WHAT)) from None
    finally:
        if tmp is not None:  # any failure, including KeyboardInterrupt: leave nothing behind
            tmp.unlink(missing_ok=True)
            remove_folders(created)
    return dst


def _check_type(value, what: str) -> str:
    key = str(value).lower()
    if key not in FILE_TYPES:
        raise UnsupportedFormatError(f"unknown GGUF {what} {value!r}; choose one of {', '.join(FILE_TYPES)}")
    return key


# --- what llama.cpp can represent ----------------------------------------------------------------
def check_representable(config) -> None:
    """Refuse configs that llama.cpp would load but compute differently (module docstring)."""
    if config.model_type not in ARCHITECTURES:
        raise UnsupportedFormatError(f"model_type {config.model_type!r} has no llama.cpp architecture here; "
                                     f"pycohere converts {', '.join(ARCHITECTURES)}")
    arch = ARCHITECTURES[config.model_type]
    problems = []
    if config.rope_type != "default":
        problems.append(f"rope scaling {config.rope_parameters} (llama.cpp's converter writes rope scaling "
                        f"type 'none' for {arch} and its graph applies plain RoPE)")
    if config.hidden_act not in ("silu", "swish"):
        problems.append(f"hidden_act {config.hidden_act!r} (llama.cpp's {arch} MLP is SiLU-gated)")
    if config.model_type == "cohere2" and not config.sliding_window:
        problems.append("no sliding_window (llama.cpp requires cohere2.attention.sliding_window)")
    if problems:
        raise UnsupportedFormatError(
            "cannot convert to GGUF: " + "; ".join(problems) + ". The file would load in llama.cpp but compute "
            "a different model; run this checkpoint with pycohere instead")


def llama_cpp_load_problems(config, written: set[str]) -> list[str]:
    """Why this llama.cpp would refuse to load the file (``written``: GGUF tensor names)."""
    notes = []
    n_layer = config.num_hidden_layers
    has_qk_norm = "blk.0.attn_q_norm.weight" in written
    if has_qk_norm and n_layer < QK_NORM_MIN_LAYERS:
        notes.append(f"q/k-norm weights in a {n_layer}-layer command-r model (llama.cpp reads them only for "
                     f"{QK_NORM_MIN_LAYERS}+ layers, as Command R+)")
    if config.model_type == "cohere" and not has_qk_norm and n_layer >= QK_NORM_MIN_LAYERS:
        notes.append(f"no q/k-norm weights in a {n_layer}-layer command-r model (llama.cpp requires them "
                     f"from {QK_NORM_MIN_LAYERS} layers on)")
    if any(n.endswith("attn_output.bias") for n in written):
        notes.append("non-zero attn_output biases (llama.cpp does not read them)")
    if config.num_attention_heads * config.get_head_dim() != config.hidden_size:
        notes.append(f"head_dim {config.get_head_dim()} x {config.num_attention_heads} heads != hidden_size "
                     f"{config.hidden_size} (llama.cpp's attention weights are hidden x hidden)")
    return notes


# --- tensors -------------------------------------------------------------------------------------
def tensor_type(gguf_name: str, shape, file_type: str, embedding_type: str) -> str:
    """The ggml type of one tensor (module docstring; conversion/base.py prepare_tensors)."""
    if len(shape) < 2 or gguf_name.endswith("_norm.weight") or not gguf_name.endswith(".weight"):
        return "F32"
    want = FILE_TYPES[embedding_type if gguf_name == "token_embd.weight" else file_type][1]
    if shape[-1] % ggml_type(want).block_size:
        return "F16"  # rows that are not whole blocks: the converter's and llama-quantize's fallback
    return want


def default_embedding_type(file_type: str, source_storage: str | None) -> str:
    if file_type != "q4_0":
        return file_type
    return "q4_0" if source_storage == "q4_0" else "q8_0"


def plan_tensors(config, source, file_type: str, embedding_type: str | None = None) -> tuple[list[TensorPlan], list[str]]:
    """Every output tensor (in llama.cpp's usual order) and the llama.cpp load problems."""
    storage = {r.name: r.storage.lower() for r in source.tensor_table()}
    embed = "model.embed_tokens.weight"
    emb_type = embedding_type or default_embedding_type(file_type, storage.get(embed))
    names = [n for n in expected_tensors(config) if n not in (embed, "model.norm.weight", "lm_head.weight")]
    names = [embed] + [n for n in names if _keep_tensor(config, source, n)] + ["model.norm.weight"]
    # pycohere and transformers 5 use a saved lm_head even when the config says tied
    if "lm_head.weight" in source.shapes and not _same_matrix(source, "lm_head.weight", embed):
        raise UnsupportedFormatError(
            "cannot convert to GGUF: lm_head.weight differs from the token embedding, and llama.cpp's command-r / "
            "cohere2 have no separate output tensor (the loader always uses token_embd as the head; the converter "
            "cannot map lm_head). Run this checkpoint with pycohere instead")
    plan = []
    for n in names:
        shape = tuple(int(d) for d in source.shapes[n])
        g = gguf_tensor_name(n)
        t = tensor_type(g, shape, file_type, emb_type)
        plan.append(TensorPlan(g, n, shape, t, copy=ggml_type(t).is_quantized and storage.get(n) == t.lower()))
    return plan, llama_cpp_load_problems(config, {t.gguf_name for t in plan})


def _keep_tensor(config, source, name: str) -> bool:
    """Zero biases llama.cpp does not read are dropped (Cohere2Model.modify_tensors drops every zero
    bias and refuses non-zero ones; a zero command-r o_proj bias is dropped so the file loads)."""
    if not name.endswith(".bias"):
        return True
    zero = not np.any(source.vector(name, np.float32))
    if config.model_type == "cohere2":
        if not zero:
            raise UnsupportedFormatError(
                f"cannot convert to GGUF: bias tensor {name} is not zero; llama.cpp's converter refuses non-zero "
                "cohere2 biases (Cohere2Model.modify_tensors: its cohere2 runtime is built without them) and reads "
                "no o_proj bias. Run this checkpoint with pycohere instead")
        return False
    return not (zero and name.endswith("o_proj.bias"))


def _same_matrix(source, a: str, b: str) -> bool:
    if tuple(source.shapes[a]) != tuple(source.shapes[b]):
        return False
    fa, _ = row_readers(source, a)
    fb, _ = row_readers(source, b)
    rows, cols = source.shapes[a]
    return all(np.array_equal(fa(s, e), fb(s, e)) for s, e in _chunks(rows, cols))


def row_readers(source, name: str) -> tuple[Callable, Callable | None]:
    """(floats(start, stop) -> float32 rows, stored(start, stop) -> stored ggml block rows or None)
    of the [out, in] matrix ``name``. Float tensors and packed pycohere blocks are read with ``os.pread``
    (pages read stay out of the process's resident set); other tensors through their ``Weight``."""
    floats = source.float_rows(name)
    if floats is None and hasattr(source, "dequantized_rows"):
        floats = source.dequantized_rows(name)
    if floats is None:
        w = source.weight(name, np.float32)

        def floats(start, stop):
            return np.asarray(w.rows(np.arange(start, stop)), dtype=np.float32)
    return floats, source.stored_rows(name)


def _chunks(rows: int, cols: int):
    return row_chunks(rows, max(1, cols))  # the chunking of pycohere quantize: same bytes, bounded memory


# --- metadata ------------------------------------------------------------------------------------
def model_metadata(config, file_type: str, name: str, n_params: int, sampling: list[tuple] = ()) -> list[tuple]:
    """general.* and the architecture's hyperparameters, in the converter's order
    (ModelBase.prepare_metadata, TextModel.set_gguf_parameters, CommandR2Model / Cohere2Model)."""
    arch = ARCHITECTURES[config.model_type]
    kv = [("general.architecture", arch, STR), ("general.type", "model", STR)]
    kv += list(sampling)
    kv += [("general.name", name, STR), ("general.size_label", size_label(n_params), STR)]
    ctx = config.max_position_embeddings
    if config.model_type == "cohere" and isinstance(getattr(config, "model_max_length", None), int):
        ctx = config.model_max_length  # CommandR2Model: "trained on 128k context length"
    kv += [(f"{arch}.block_count", config.num_hidden_layers, U32), (f"{arch}.context_length", ctx, U32),
           (f"{arch}.embedding_length", config.hidden_size, U32),
           (f"{arch}.feed_forward_length", config.intermediate_size, U32),
           (f"{arch}.attention.head_count", config.num_attention_heads, U32),
           (f"{arch}.attention.head_count_kv", config.num_key_value_heads, U32),
           (f"{arch}.rope.freq_base", float(config.rope_theta), F32),
           (f"{arch}.attention.layer_norm_epsilon", float(config.layer_norm_eps), F32)]
    if config.model_type == "cohere2" or config.head_dim is not None:
        kv += [(f"{arch}.attention.key_length", config.get_head_dim(), U32),
               (f"{arch}.attention.value_length", config.get_head_dim(), U32)]
    kv += [("general.file_type", FILE_TYPES[file_type][0], U32), (f"{arch}.logit_scale", float(config.logit_scale), F32)]
    if config.model_type == "cohere2":
        kv += [(f"{arch}.attention.sliding_window", int(config.sliding_window), U32),
               (f"{arch}.vocab_size", config.vocab_size, U32),
               # pycohere / transformers rotate the whole head (partial_rotary_factor is ignored by
               # Cohere's default RoPE), so the rotated dimension is head_dim.
               (f"{arch}.rope.dimension_count", config.get_head_dim(), U32)]
        sliding = [t == "sliding_attention" for t in config.layer_types]
        if sliding != [i % COHERE2_DEFAULT_PATTERN < COHERE2_DEFAULT_PATTERN - 1 for i in range(len(sliding))]:
            kv.append((f"{arch}.attention.sliding_window_pattern", sliding, ARRAY, BOOL))
    kv += [(f"{arch}.rope.scaling.type", "none", STR), ("general.quantization_version", GGML_QUANT_VERSION, U32)]
    return kv


def size_label(n_params: int) -> str:
    """gguf-py utility.model_weight_count_rounded_notation (min_digits=2): 35B, 8.0M..."""
    for limit, scale, suffix in ((1e12, 1e-12, "T"), (1e9, 1e-9, "B"), (1e6, 1e-6, "M"), (0, 1e-3, "K")):
        if n_params > limit or suffix == "K":
            scaled = n_params * scale
            fix = max(2 - len(str(round(scaled)).lstrip("0")), 0)
            return f"{scaled:.{fix}f}{suffix}"
    raise AssertionError("unreachable")


# generation_config.json key -> (general.sampling key, type): gguf-py Metadata.load
_SAMPLING = (("sequence", "sequence", STR), ("top_k", "top_k", I32), ("top_p", "top_p", F32), ("min_p", "min_p", F32),
             ("xtc_probability", "xtc_probability", F32), ("xtc_threshold", "xtc_threshold", F32),
             ("temperature", "temp", F32), ("penalty_last_n", "penalty_last_n", I32),
             ("penalty_repeat", "penalty_repeat", F32), ("mirostat", "mirostat", I32),
             ("mirostat_tau", "mirostat_tau", F32), ("mirostat_eta", "mirostat_eta", F32))


def sampling_metadata(src: Path, gguf_src: GGUFModelFile | None = None) -> list[tuple]:
    """general.sampling.* from generation_config.json (gguf-py Metadata.load), or a GGUF source's."""
    if gguf_src is not None:
        return _copy_keys(gguf_src, "general.sampling.")
    generation = _generation_config(src if src.is_dir() else src.parent)
    if "penalty_repeat" not in generation and "repetition_penalty" in generation:
        generation = {**generation, "penalty_repeat": generation["repetition_penalty"]}
    out = []
    for key, gguf_key, vtype in _SAMPLING:
        value = generation.get(key)
        if value is not None and not isinstance(value, bool):
            out.append((f"general.sampling.{gguf_key}", value, vtype))
    return out


def _generation_config(folder: Path) -> dict:
    path = folder / "generation_config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        return {}  # as gguf-py: not every model has a valid generation_config.json
    return data if isinstance(data, dict) else {}


def _model_name(src: Path, gguf_src: GGUFModelFile | None, name: str | None) -> str:
    if name:
        return name
    if gguf_src is not None:
        value = gguf_src.metadata.get("general.name")
        return value if isinstance(value, str) else gguf_src.path.stem
    return (src if src.is_dir() else src.parent).name


# --- vocabulary ----------------------------------------------------------------------------------
def vocab_metadata(src: Path, config, gguf_src: GGUFModelFile | None = None) -> list[tuple]:
    """tokenizer.* keys: copied from a GGUF source, else built from the folder's tokenizer files."""
    if gguf_src is not None:
        out = _copy_keys(gguf_src, "tokenizer.")
        if not any(k == "tokenizer.ggml.tokens" for k, *_ in out):
            raise TokenizerError(f"{gguf_src.path} has no vocabulary (tokenizer.ggml.tokens); llama.cpp needs one")
        return out
    folder = src if src.is_dir() else src.parent
    data = _tokenizer_json(folder)
    check_command_r_pipeline(data, folder)
    tokens, types = vocab_tokens(folder, config.vocab_size)
    kv = [("tokenizer.ggml.model", "gpt2", STR), ("tokenizer.ggml.pre", "command-r", STR),
          ("tokenizer.ggml.tokens", tokens, ARRAY, STR), ("tokenizer.ggml.token_type", types, ARRAY, I32)]
    return kv + special_vocab(folder, data)


def _copy_keys(gguf_src: GGUFModelFile, prefix: str) -> list[tuple]:
    """A GGUF file's metadata under ``prefix``, with the value types it was written with."""
    out = []
    for key, value in gguf_src.metadata.items():
        if key.startswith(prefix):
            vtype = gguf_src.metadata_types[key]
            out.append((key, value, *vtype) if isinstance(vtype, tuple) else (key, value, vtype))
    return out


def _tokenizer_json(folder: Path) -> dict:
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise TokenizerError(f"no tokenizer.json in {folder}: a GGUF carries its vocabulary; copy the model's "
                             "tokenizer files (tokenizer.json, tokenizer_config.json) into the folder")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TokenizerError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise TokenizerError(f"{path} must hold a JSON object")
    return data


def check_command_r_pipeline(data: dict, folder: Path) -> None:
    """``tokenizer.ggml.pre = command-r`` (llama-vocab.cpp LLAMA_VOCAB_PRE_TYPE_COMMAND_R) stands for
    Command-R's byte-level BPE: NFC, single digits, ByteLevel without prefix space. Another
    pipeline would tokenize differently in llama.cpp, so it is refused."""
    model = data.get("model") or {}
    pre = data.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else [pre]
    ok = (model.get("type") == "BPE" and not model.get("byte_fallback")
          and data.get("normalizer") in (None, {"type": "NFC"}) and isinstance(steps, list) and len(steps) == 2
          and steps[0].get("type") == "Digits" and steps[0].get("individual_digits") is True
          and steps[1].get("type") == "ByteLevel" and not steps[1].get("add_prefix_space")
          and steps[1].get("use_regex", True))
    if not ok:
        raise UnsupportedFormatError(
            f"{folder / 'tokenizer.json'} is not Command-R's tokenizer pipeline (BPE, NFC, Digits(individual), "
            f"ByteLevel); got model {model.get('type')!r}, normalizer {data.get('normalizer')!r}, pre_tokenizer "
            f"{pre!r}. llama.cpp's pre-tokenizer 'command-r' would tokenize it differently")


def looks_special(token: str) -> bool:
    """conversion/base.py TextModel.does_token_look_special."""
    return (token in ("<pad>", "<mask>", "<2mass>", "[@BOS@]") or (token.startswith("<|") and token.endswith("|>"))
            or (token.startswith("<｜") and token.endswith("｜>")) or (token.startswith("<unused") and token.endswith(">")))


def vocab_tokens(folder: Path, vocab_size: int) -> tuple[list[str], list[int]]:
    """tokens and token types, as TextModel.get_vocab_base builds them from AutoTokenizer
    (pycohere's CohereTokenizer is its twin): ids without a token become ``[PADi]`` (UNUSED)."""
    tok = CohereTokenizer.from_pretrained(folder)
    vocab = tok.get_vocab()
    if vocab and max(vocab.values()) >= vocab_size:
        raise TokenizerError(f"the tokenizer in {folder} has token id {max(vocab.values())} but the model's "
                             f"vocab_size is {vocab_size}; the vocabulary does not fit the embedding")
    reverse = {i: t for t, i in vocab.items()}
    added = tok.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        token = reverse.get(i)
        if token is None:
            tokens.append(f"[PAD{i}]")
            types.append(TOKEN_UNUSED)
            continue
        if i in added:
            # llama.cpp expects CONTROL / USER_DEFINED tokens pre-normalized (get_vocab_base)
            if not added[i].normalized:
                token = tok.decode(tok.encode(token, add_special_tokens=False))
            if added[i].special or looks_special(token):
                types.append(TOKEN_CONTROL)
            else:
                token = token.replace("\u2581", " ")
                types.append(TOKEN_USER_DEFINED)
        else:
            types.append(TOKEN_NORMAL)
        tokens.append(token)
    return tokens, types


# gguf-py SpecialVocab: special token kinds and their GGUF keys (kinds without a GGUFWriter
# handler, such as cls, are skipped as SpecialVocab.add_to_gguf skips them).
_SPECIAL_KEYS = {"bos": "bos_token_id", "eos": "eos_token_id", "unk": "unknown_token_id", "sep": "seperator_token_id",
                 "pad": "padding_token_id", "mask": "mask_token_id", "eot": "eot_token_id", "eom": "eom_token_id"}
_ADD_KEYS = ("bos", "eos", "sep")


def special_vocab(folder: Path, tokenizer: dict) -> list[tuple]:
    """merges, special token ids, add_*_token flags, chat templates and normalizer flags: gguf-py
    ``SpecialVocab(folder, load_merges=True).add_to_gguf`` (llama.cpp gguf-py/gguf/vocab.py)."""
    sv = _SpecialVocab(folder, tokenizer)
    kv = []
    if sv.merges:
        kv.append(("tokenizer.ggml.merges", sv.merges, ARRAY, STR))
    for typ, tid in sv.special_token_ids.items():
        if typ in _SPECIAL_KEYS:
            kv.append((f"tokenizer.ggml.{_SPECIAL_KEYS[typ]}", tid, U32))
    for typ, value in sv.add_special_token.items():
        if typ in _ADD_KEYS:
            kv.append((f"tokenizer.ggml.add_{typ}_token", value, BOOL))
    kv += _chat_template_metadata(sv.chat_template)
    if sv.normalizer_lowercase is not None:
        kv.append(("tokenizer.ggml.normalizer.lowercase", sv.normalizer_lowercase, BOOL))
    if sv.normalizer_strip_accents is not None:
        kv.append(("tokenizer.ggml.normalizer.strip_accents", sv.normalizer_strip_accents, BOOL))
    return kv


def _chat_template_metadata(template) -> list[tuple]:
    """gguf-py GGUFWriter.add_chat_template: a list of {name, template} becomes
    ``tokenizer.chat_template.<name>`` (name reduced to [A-Za-z0-9_]) listed in
    ``tokenizer.chat_templates``, with "default" as ``tokenizer.chat_template``."""
    if template is None:
        return []
    if isinstance(template, str):
        return [("tokenizer.chat_template", template, STR)]
    kv, names, default = [], [], None
    for choice in template:
        name = "".join(c if c.isascii() and c.isalnum() else "_" for c in choice.get("name", ""))
        text = choice.get("template")
        if name and text is not None:
            if name == "default":
                default = text
            elif name not in names:  # (gguf-py keeps a set; here the first-seen order, deterministic)
                names.append(name)
                kv.append((f"tokenizer.chat_template.{name}", text, STR))
    if names:
        kv.append(("tokenizer.chat_templates", names, ARRAY, STR))
    if default is not None:
        kv.append(("tokenizer.chat_template", default, STR))
    return kv


class _SpecialVocab:
    """A port of gguf-py ``SpecialVocab._load`` (llama.cpp gguf-py/gguf/vocab.py) for a folder with
    tokenizer.json: what it reads and in which precedence, so the keys match the converter's."""

    def __init__(self, folder: Path, tokenizer: dict):
        self.special_token_types = ("bos", "eos", "unk", "sep", "pad", "cls", "mask")
        self.special_token_ids: dict[str, int] = {}
        self.add_special_token: dict[str, bool] = {}
        self.chat_template = None
        self.normalizer_lowercase = self.normalizer_strip_accents = None
        self.merges = self._merges(tokenizer)
        if tokenizer.get("normalizer"):
            self._parse_normalizer(tokenizer["normalizer"])
        config = _read_json_object(folder / "tokenizer_config.json") or {}
        self._post_processor(tokenizer, config)
        if config:  # (gguf-py reads no templates nor special tokens without tokenizer_config.json)
            self._from_tokenizer_config(folder, tokenizer.get("added_tokens") or [], config)
        model_config = _read_json_object(folder / "config.json") or {}
        for typ in self.special_token_types:
            self._set(typ, model_config.get(f"{typ}_token_id"))

    @staticmethod
    def _merges(tokenizer: dict) -> list[str]:
        merges = (tokenizer.get("model") or {}).get("merges")
        if not isinstance(merges, list) or not merges:
            return []
        if isinstance(merges[0], str):
            return list(merges)
        # transformers >= 4.45 pairs: spaces inside a part are written as chr(ord(" ") + 256)
        return [" ".join("".join(chr(ord(c) + 256) if c == " " else c for c in part) for part in pair)
                for pair in merges]

    def _set(self, typ: str, tid) -> None:
        if not isinstance(tid, int) or isinstance(tid, bool):
            return
        if tid < 0:
            raise TokenizerError(f"invalid id {tid} for the special token {typ}")
        self.special_token_ids.setdefault(typ, tid)

    def _parse_normalizer(self, normalizer: dict) -> None:
        kind = normalizer.get("type")
        if kind == "Lowercase":
            self.normalizer_lowercase = True
        elif kind == "StripAccents":
            self.normalizer_strip_accents = True
        elif kind == "BertNormalizer":
            self.normalizer_lowercase = normalizer.get("lowercase", self.normalizer_lowercase)
            self.normalizer_strip_accents = normalizer.get("strip_accents", self.normalizer_strip_accents)
        elif kind == "Sequence":
            for n in normalizer.get("normalizers", []):
                self._parse_normalizer(n)

    def _post_processor(self, tokenizer: dict, config: dict) -> None:
        """The add_bos/add_eos/add_sep flags a post-processor implies (the crude TemplateProcessing
        reading of SpecialVocab._try_load_from_tokenizer_json, warnings dropped). ``config`` is
        tokenizer_config.json ({} without one); like gguf-py it is updated in place."""
        post = tokenizer.get("post_processor")
        bos, cls_, eos, sep = (config.get(k) for k in ("bos_token", "cls_token", "eos_token", "sep_token"))
        if not bos and cls_ and config:
            config["bos_token"] = bos = cls_
        if not eos and sep and config:
            config["eos_token"] = eos = sep
        if not post:
            return
        for proc in post.get("processors", [post]):
            kind = proc.get("type")
            if kind == "ByteLevel":
                self.add_special_token.setdefault("bos", False)
                self.add_special_token.setdefault("eos", False)
            elif kind == "RobertaProcessing":
                self.add_special_token.update(bos=True, eos=True, sep=True)
                if not cls_ and config:
                    cls_ = config["cls_token"] = proc.get("cls", [bos])[0]
                if not sep and config:
                    sep = config["sep_token"] = proc.get("sep", [eos])[0]
            elif kind == "TemplateProcessing":
                bos, cls_, eos, sep = self._template(proc, config, bos, cls_, eos, sep)

    def _template(self, proc: dict, config: dict, bos, cls_, eos, sep):
        single, pair = proc.get("single", []), proc.get("pair", [])
        first = last = None
        if len(single) > 1:
            first = single[0].get("SpecialToken", {}).get("id")
            if first:
                if not config:
                    bos = first
                elif first not in (bos, cls_):
                    if not bos:
                        config["bos_token"] = bos = first
                    if not cls_:
                        config["cls_token"] = cls_ = first
                self.add_special_token["bos"] = first in (bos, cls_)
            last = single[-1].get("SpecialToken", {}).get("id")
            if last:
                if not config:
                    eos = last
                elif last != eos:
                    if "eot" not in self.special_token_types:
                        self.special_token_types += ("eot",)
                        config["eot_token"] = eos
                    elif "eom" not in self.special_token_types:
                        self.special_token_types += ("eom",)
                        config["eom_token"] = eos
                    config["eos_token"] = eos = last
                self.add_special_token["eos"] = last == eos
        if pair:
            start = 1 if first and pair[0].get("SpecialToken", {}).get("id") == first else 0
            stop = -1 if last and pair[-1].get("SpecialToken", {}).get("id") == last else None
            pair = pair[slice(start, stop)]
            if pair:
                a, b = pair[0].get("Sequence", {}).get("id"), pair[-1].get("Sequence", {}).get("id")
                middle = pair[1:-1]
                if a == "A" and b == "B" and middle:
                    add_sep = False
                    entry = middle[0].get("SpecialToken", {}).get("id")
                    if entry and entry in (sep, eos) and not last:
                        add_sep = True
                    if len(middle) == 2:
                        entry = middle[1].get("SpecialToken", {}).get("id")
                        if entry and entry in (sep, eos):
                            add_sep = True
                    self.add_special_token["sep"] = add_sep
                    if add_sep and not sep and config:
                        config["sep_token"] = sep = eos
        return bos, cls_, eos, sep

    def _from_tokenizer_config(self, folder: Path, added_tokens: list, config: dict) -> None:
        self.chat_template = config.get("chat_template", _chat_template_files(folder))
        if self.chat_template is not None and not isinstance(self.chat_template, (str, list)):
            self.chat_template = None  # (gguf-py: "Bad type for chat_template field" - ignored)
        for typ in self.special_token_types:
            flag = config.get(f"add_{typ}_token")
            if isinstance(flag, bool):
                self.add_special_token.setdefault(typ, flag)  # the post-processor's reading wins
            entry = config.get(f"{typ}_token")
            content = entry.get("content") if isinstance(entry, dict) else entry
            if isinstance(content, str):
                self._set(typ, next((t.get("id") for t in added_tokens if t.get("content") == content), None))


def _chat_template_files(folder: Path):
    """chat_template.jinja (+ additional_chat_templates/*.jinja) or chat_template.json."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        template = jinja.read_text(encoding="utf-8")
        extra = sorted((folder / "additional_chat_templates").glob("*.jinja"))
        if extra:
            return [{"name": "default", "template": template}] + [
                {"name": p.stem, "template": p.read_text(encoding="utf-8")} for p in extra]
        return template
    data = _read_json_object(folder / "chat_template.json")
    return None if data is None else data.get("chat_template")


def _read_json_object(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise TokenizerError(f"{path} is not valid JSON ({e})") from None
    return data if isinstance(data, dict) else None


# --- writing -------------------------------------------------------------------------------------
def _declare(dst: Path, metadata: list[tuple], plan: list[TensorPlan]) -> GGUFWriter:
    writer = GGUFWriter(dst)
    for key, value, *types in metadata:
        writer.add(key, value, *types)
    for t in plan:
        writer.add_tensor_info(t.gguf_name, t.shape, t.ggml_type)
    return writer


def _write_tensors(writer: GGUFWriter, source, plan: list[TensorPlan], file_type: str, progress) -> None:
    total = sum(tensor_nbytes(tuple(reversed(t.shape)), ggml_type(t.ggml_type)) for t in plan)
    bar = progress_bar(total, f"converting to {file_type}", progress)
    writer.open()
    try:
        for t in plan:
            _write_tensor(writer, source, t, bar.update)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        bar.close()


def _write_tensor(writer: GGUFWriter, source, t: TensorPlan, advance: Callable[[int], Any]) -> None:
    def put(rows: np.ndarray, start: int) -> None:
        writer.write_tensor_data(t.gguf_name, rows, start)
        advance(rows.nbytes)

    if len(t.shape) < 2 or t.gguf_name.endswith("_norm.weight"):  # norms and biases: small, F32
        put(np.asarray(source.vector(t.source_name, np.float32), dtype="<f4"), 0)
        return
    floats, stored = row_readers(source, t.source_name)
    rows, cols = t.shape
    if t.copy and stored is not None:  # the source's blocks are already this type: byte for byte
        for start, stop in _chunks(rows, cols):
            put(np.ascontiguousarray(stored(start, stop), dtype=np.uint8), start)
    elif ggml_type(t.ggml_type).is_quantized:
        quantize_stream(t.source_name, floats, t.shape, t.ggml_type.lower(), 32,
                        lambda array, start, packed: put(packed, start))
    else:
        for start, stop in _chunks(rows, cols):
            put(float_rows(floats(start, stop), t.ggml_type), start)


def float_rows(values: np.ndarray, ggml_name: str) -> np.ndarray:
    """float32 rows -> the stored elements of F32 / F16 / BF16 (gguf-py quants.quantize)."""
    values = np.asarray(values, dtype=np.float32)
    if ggml_name == "F32":
        return values.astype("<f4", copy=False)
    if ggml_name == "F16":
        with np.errstate(over="ignore"):  # as numpy / gguf-py: beyond 65504 becomes inf
            return values.astype("<f2")
    return bf16_round(values)


def bf16_round(values: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bits, round to nearest even; NaN kept quiet with its sign and top payload
    (ggml_compute_fp32_to_bf16, gguf-py quants.__compute_fp32_to_bf16)."""
    u = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    rounded = (u.astype(np.uint64) + (0x7FFF + ((u >> 16) & 1))) >> 16
    return np.where(nan, (u >> 16) | np.uint32(64), rounded).astype("<u2")


# --- destination ---------------------------------------------------------------------------------
def _check_destination_name(dst) -> Path:
    dst = Path(os.path.expanduser(str(dst))).absolute()
    if dst.suffix != ".gguf":
        raise CheckpointError(f"the output {dst} must be a file name ending in .gguf (pycohere and llama.cpp tools "
                              "recognise GGUF files by it)")
    return dst


def _check_destination(dst: Path, force: bool, source) -> None:
    if dst.is_dir():
        raise CheckpointError(f"{dst} is a folder; give the path of the .gguf file to write")
    inputs = {Path(f).resolve() for f in getattr(source, "files", ()) or ()}
    if dst.resolve() in inputs:
        raise CheckpointError(f"{dst} is a file of the source checkpoint; choose another destination")
    if (dst.exists() or dst.is_symlink()) and not force:
        raise CheckpointError(f"{dst} already exists; pass --force (force=True) to replace it, or choose another "
                              "destination")
