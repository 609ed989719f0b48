"""Loading: memory-mapped safetensors, single file or sharded, checked against a manifest.

Nothing here copies a tensor: every tensor is a NumPy view into a read-only ``np.memmap`` of its
file, so opening a 2 GB bf16 checkpoint costs page-table entries, not 2 GB of RAM. Widening to
the compute dtype happens later, per use (``pycohere.tensors.DenseWeight``).

The safetensors header is parsed here rather than through ``safetensors.safe_open`` because the
numpy framework of that library returns copies and cannot express bf16; the format is 8 bytes of
little-endian header length, a JSON header ``{name: {dtype, shape, data_offsets}}``, then data.
"""
from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

import numpy as np

from .errors import (CheckpointNotFoundError, CorruptCheckpointError, UnsafeCheckpointError,
                     UnsupportedFormatError, WeightMismatchError)

SAFETENSORS_DTYPES = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit


class TensorRef:
    """One tensor of a file: a zero-copy view plus its safetensors dtype name."""

    __slots__ = ("name", "dtype", "shape", "array", "file")

    def __init__(self, name, dtype, shape, array, file):
        self.name, self.dtype, self.shape, self.array, self.file = name, dtype, tuple(shape), array, file

    @property
    def nbytes(self) -> int:
        return int(self.array.nbytes)

    def __repr__(self):
        return f"TensorRef({self.name!r}, {self.dtype}, {self.shape}, file={Path(self.file).name})"


def refuse_pickle(path: Path) -> None:
    raise UnsafeCheckpointError(
        f"{path} is a pickle-based checkpoint; pycohere never unpickles files because loading a pickle "
        "can run arbitrary code. Convert it to safetensors with a tool you trust (for example, in "
        "transformers: model.save_pretrained(dir, safe_serialization=True)) and load that folder.")


def open_safetensors(path: str | os.PathLike) -> tuple[dict[str, TensorRef], dict]:
    """Parse one .safetensors file; return ({name: TensorRef}, metadata) with mmap'd views."""
    path = Path(path)
    if path.suffix in PICKLE_SUFFIXES:
        refuse_pickle(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise CheckpointNotFoundError(f"safetensors file {path} does not exist") from None
    if size < 8:
        raise CorruptCheckpointError(f"{path} is {size} bytes long, too short to be safetensors "
                                     "(truncated download?); re-download or re-save it")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > MAX_HEADER or 8 + n > size:
            raise CorruptCheckpointError(
                f"{path}: header length {n} does not fit a {size}-byte file; the file is truncated or "
                "not safetensors; re-download or re-save it")
        raw_header = f.read(n)
    try:
        header = json.loads(raw_header.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not an object")
    except (UnicodeDecodeError, ValueError) as e:
        raise CorruptCheckpointError(f"{path}: the safetensors header is not valid JSON ({e}); "
                                     "the file is corrupt; re-download or re-save it") from None
    metadata = header.pop("__metadata__", None) or {}
    data_start = 8 + n
    data_len = size - data_start
    mm = np.memmap(path, dtype=np.uint8, mode="r") if data_len > 0 else np.zeros(0, np.uint8)
    tensors, spans = {}, []
    for name, info in header.items():
        try:
            dtype_name, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CorruptCheckpointError(f"{path}: header entry for {name!r} lacks dtype/shape/data_offsets") from None
        if (not isinstance(dtype_name, str) or not isinstance(shape, list)
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
                or not all(isinstance(o, int) and not isinstance(o, bool) for o in (begin, end))):
            raise CorruptCheckpointError(f"{path}: header entry for {name!r} is malformed (dtype must be a string, "
                                         "shape a list of non-negative integers, data_offsets two integers); "
                                         "the file is corrupt; re-download or re-save it")
        if dtype_name not in SAFETENSORS_DTYPES:
            raise UnsupportedFormatError(f"{path}: tensor {name!r} has dtype {dtype_name!r}, which pycohere "
                                         f"cannot read (known: {', '.join(SAFETENSORS_DTYPES)})")
        dt = SAFETENSORS_DTYPES[dtype_name]
        want = math.prod(shape) * dt.itemsize
        if not (0 <= begin <= end) or end - begin != want:
            raise CorruptCheckpointError(f"{path}: tensor {name!r} {dtype_name}{list(shape)} needs {want} bytes "
                                         f"but its data_offsets are [{begin}, {end}]")
        if end > data_len:
            raise CorruptCheckpointError(
                f"{path}: tensor {name!r} ends at byte {data_start + end} but the file has {size} bytes; "
                "the file is truncated (interrupted download?); re-download it")
        # 64-bit offsets throughout: Command R+'s embedding alone is > 2**31 elements.
        view = mm[data_start + begin: data_start + end].view(dt).reshape(shape)
        tensors[name] = TensorRef(name, dtype_name, shape, view, str(path))
        spans.append((begin, end, name))
    spans.sort()
    for (b0, e0, n0), (b1, e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise CorruptCheckpointError(f"{path}: tensors {n0!r} and {n1!r} overlap in the file; it is corrupt")
    return tensors, metadata


def find_weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a checkpoint folder (single file or shards from the index)."""
    index = folder / INDEX_NAME
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
            if not all(isinstance(f, str) and f == Path(f).name and f not in ("", ".", "..") for f in files):
                raise ValueError("shard names must be plain file names")
        except (ValueError, KeyError, TypeError, AttributeError):
            raise CorruptCheckpointError(f"{index} is not a valid shard index (expected a JSON object with "
                                         "a 'weight_map' of tensor name -> file name in the same folder)") from None
        missing = [f for f in files if not (folder / f).exists()]
        if missing:
            raise CheckpointNotFoundError(f"{index} lists shard(s) that are not in {folder}: {', '.join(missing)}; "
                                          "the download is incomplete")
        return [folder / f for f in files]
    if (folder / SINGLE_NAME).exists():
        return [folder / SINGLE_NAME]
    found = sorted(folder.glob("*.safetensors"))
    if found:
        return found
    pickles = sorted(p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        refuse_pickle(pickles[0])
    raise CheckpointNotFoundError(f"no model.safetensors, {INDEX_NAME} or *.safetensors in {folder}")


class Checkpoint:
    """All tensors of a checkpoint by name (mmap views), from a folder or a single file."""

    def __init__(self, path: str | os.PathLike, progress: bool | None = None):
        """progress: show a bar over the files (default: for checkpoints over 1 GiB when stderr is a
        terminal). Mapping is fast; the bar mostly reports how many shards were opened and checked."""
        path = Path(path)
        if path.suffix in PICKLE_SUFFIXES:
            refuse_pickle(path)
        if not path.exists():
            raise CheckpointNotFoundError(f"checkpoint path {path} does not exist")
        self.path = path
        self.files = find_weight_files(path) if path.is_dir() else [path]
        self.tensors: dict[str, TensorRef] = {}
        self.metadata: dict = {}
        files = self.files
        if progress is None:
            import sys
            progress = sys.stderr.isatty() and sum(f.stat().st_size for f in files) > (1 << 30)
        if progress:
            from tqdm.auto import tqdm  # (a dependency of huggingface_hub)
            files = tqdm(files, desc=f"mapping {path.name}", unit="file", leave=False)
        for f in files:
            tensors, meta = open_safetensors(f)
            dup = set(tensors) & set(self.tensors)
            if dup:
                raise CorruptCheckpointError(f"tensor(s) {sorted(dup)[:3]} appear in more than one shard")
            self.tensors.update(tensors)
            self.metadata.update(meta)

    def __contains__(self, name):
        return name in self.tensors

    def __getitem__(self, name) -> TensorRef:
        return self.tensors[name]

    def __iter__(self):
        return iter(self.tensors)

    def __len__(self):
        return len(self.tensors)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())


# --- the manifest ------------------------------------------------------------------------------
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)  # stale buffers saved by old transformers versions


def uses_qk_norm(config) -> bool:
    """Only Cohere (v1) has q/k norms; a stray use_qk_norm in a cohere2 config.json is ignored, as
    transformers' Cohere2 does."""
    return config.model_type == "cohere" and bool(getattr(config, "use_qk_norm", False))


def expected_tensors(config) -> dict[str, tuple[int, ...]]:
    """Every tensor name the config implies, with its shape (transformers' parameter names)."""
    D, F, V = config.hidden_size, config.intermediate_size, config.vocab_size
    H, K, Dh = config.num_attention_heads, config.num_key_value_heads, config.get_head_dim()
    m = {"model.embed_tokens.weight": (V, D), "model.norm.weight": (D,)}
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        m[p + "input_layernorm.weight"] = (D,)
        for name, rows in (("q_proj", H * Dh), ("k_proj", K * Dh), ("v_proj", K * Dh)):
            m[p + f"self_attn.{name}.weight"] = (rows, D)
            if config.attention_bias:
                m[p + f"self_attn.{name}.bias"] = (rows,)
        m[p + "self_attn.o_proj.weight"] = (D, H * Dh)
        if config.attention_bias:
            m[p + "self_attn.o_proj.bias"] = (D,)
        if uses_qk_norm(config):
            m[p + "self_attn.q_norm.weight"] = (H, Dh)
            m[p + "self_attn.k_norm.weight"] = (K, Dh)
        m[p + "mlp.gate_proj.weight"] = (F, D)
        m[p + "mlp.up_proj.weight"] = (F, D)
        m[p + "mlp.down_proj.weight"] = (D, F)
    if not config.tie_word_embeddings:
        m["lm_head.weight"] = (V, D)
    return m


def check_manifest(config, shapes: dict[str, tuple[int, ...]], where: str = "checkpoint",
                   problems: list[str] | tuple = ()) -> None:
    """Compare the file's tensors with the manifest; report every problem in one error.

    ``shapes`` are in transformers' (logical) names; a quantized checkpoint gives each quantized
    weight's logical shape and lists its missing/misshaped packed arrays in ``problems``
    (``pycohere.quant.storage.WeightSource``), reported in the same error."""
    want = expected_tensors(config)
    ignorable = lambda n: n.endswith(IGNORED_SUFFIXES) or (n == "lm_head.weight" and config.tie_word_embeddings)
    missing = sorted(set(want) - set(shapes))
    unexpected = sorted(n for n in set(shapes) - set(want) if not ignorable(n))
    misshaped = sorted(f"{n}: file {list(shapes[n])}, config wants {list(want[n])}"
                       for n in set(want) & set(shapes) if tuple(shapes[n]) != tuple(want[n]))
    if missing or unexpected or misshaped or problems:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("misshaped", misshaped),
                             ("incomplete quantized", sorted(problems))):
            if items:
                shown = ", ".join(items[:20]) + (f", ... ({len(items) - 20} more)" if len(items) > 20 else "")
                parts.append(f"{len(items)} {label}: {shown}")
        raise WeightMismatchError(
            f"{where} does not match its config (config.json or GGUF metadata) ({config.model_type}, {config.num_hidden_layers} layers, "
            f"hidden {config.hidden_size}): " + "; ".join(parts) +
            ". Check that config.json belongs to these weights (use_qk_norm, attention_bias, "
            "tie_word_embeddings, head counts).")
