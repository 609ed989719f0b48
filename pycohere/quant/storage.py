"""Quantized checkpoints on disk: ordinary safetensors plus metadata naming the scheme per tensor.

Layout of a quantized checkpoint folder (written by :mod:`pycohere.quant.convert`)::

    config.json                  the source config + "quantization_config": {"quant_method":
                                 "pycohere", "scheme", "group_size", "keep_embeddings", "format_version"}
    model.safetensors            (or model-0000i-of-0000n.safetensors + model.safetensors.index.json)
    tokenizer.json, ...          copied from the source

A quantized weight ``W`` (a transformers parameter name such as
``model.layers.0.mlp.up_proj.weight``) is stored as the plain arrays of its scheme's storage
contract (``pycohere.quant.schemes``), named ``W.qweight``, ``W.scales`` (and ``W.mins``), each
``[out, (in / group) * width]``. Every file's safetensors ``__metadata__`` holds, under
``"pycohere_quantization"``, the JSON string ``{"format_version": 1, "tensors": {W: {"scheme",
"group_size", "shape": [out, in], "version"}}}`` for the whole checkpoint. Norms, biases (and
the embedding with ``keep_embeddings``) stay under their own names in their float dtype.

Loading maps the files like any checkpoint and wraps the packed views in ``QuantizedWeight``
without copying; :class:`WeightSource` checks them against the manifest in the *logical* names, so
a missing or misshaped tensor is reported as ``model.layers.0.mlp.up_proj.weight``, together with
every other problem. Offsets and sizes are Python integers throughout (64-bit safe).

Writing is incremental (:class:`SafetensorsWriter`): the header with every offset is computed
from the shapes first, then each array's rows are written at their place with ``os.pwrite``, so
a converter never holds more than a chunk of rows. Float source rows are read with ``os.pread``
(:class:`RowReader`) rather than through the memory map, so reading a 200 GB model does not
grow the process's resident set.
"""
from __future__ import annotations

import functools
import json
import math
import os
import struct
from pathlib import Path
from typing import Callable, Iterable, Mapping, NamedTuple

import numpy as np

from ..errors import CorruptCheckpointError, QuantizationError, UnsupportedFormatError
from ..formats import TensorInfo
from ..tensors import DenseWeight, widen
from ..weights import INDEX_NAME, SAFETENSORS_DTYPES, SINGLE_NAME, Checkpoint, TensorRef
from .config import QUANT_METHOD, QuantizationConfig
from .schemes import SCHEMES, QuantizedTensor, _check_finite, _row_chunks, array_shapes, get_scheme
from .weight import QuantizedWeight

METADATA_KEY = "pycohere_quantization"
STORAGE_VERSION = 1
_NUMPY_TO_SAFETENSORS = {np.dtype("<f4"): "F32", np.dtype("i1"): "I8", np.dtype("u1"): "U8",
                         np.dtype("<f2"): "F16", np.dtype("<f8"): "F64", np.dtype("<u2"): "U16"}


def array_name(tensor: str, array: str) -> str:
    """The stored name of one packed array of a quantized tensor."""
    return f"{tensor}.{array}"


# --- writing -------------------------------------------------------------------------------------
class TensorSpec(NamedTuple):
    """One tensor of a file to write: name, safetensors dtype name, shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * SAFETENSORS_DTYPES[self.dtype].itemsize


def safetensors_dtype(dtype: np.dtype) -> str:
    return _NUMPY_TO_SAFETENSORS[np.dtype(dtype)]


class SafetensorsWriter:
    """Write one safetensors file incrementally.

    The header (every tensor's dtype, shape and ``data_offsets``, in ``specs`` order, padded to 8
    bytes as the safetensors library does) is written first; then :meth:`write` puts rows of any
    tensor at their place. :meth:`close` checks that every byte was written and syncs the file.
    """

    def __init__(self, path: str | os.PathLike, specs: Iterable[TensorSpec],
                 metadata: Mapping[str, str] | None = None):
        self.path = Path(path)
        self.specs = {s.name: s for s in specs}
        header: dict = {"__metadata__": dict(metadata)} if metadata else {}
        offset = 0
        self._begin = {}
        for s in self.specs.values():
            header[s.name] = {"dtype": s.dtype, "shape": list(s.shape), "data_offsets": [offset, offset + s.nbytes]}
            self._begin[s.name] = offset
            offset += s.nbytes
        raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
        raw += b" " * (-len(raw) % 8)
        self.data_start = 8 + len(raw)
        self.size = self.data_start + offset
        self._written = dict.fromkeys(self.specs, 0)
        self._f = open(self.path, "xb")
        self._f.write(struct.pack("<Q", len(raw)) + raw)
        self._f.flush()

    def write(self, name: str, rows: np.ndarray, row_start: int = 0) -> None:
        """Write ``rows`` as rows ``row_start, ...`` of tensor ``name`` (all of it by default)."""
        spec = self.specs[name]
        rows = np.ascontiguousarray(rows)
        want = SAFETENSORS_DTYPES[spec.dtype]
        if rows.dtype != want or rows.shape[1:] != spec.shape[1:] or row_start + len(rows) > (spec.shape or (1,))[0]:
            raise ValueError(f"{name}: cannot write {rows.dtype} {list(rows.shape)} at row {row_start} of "
                             f"{spec.dtype} {list(spec.shape)}")
        row_bytes = rows.nbytes // max(1, len(rows)) if rows.ndim else rows.nbytes
        pos = self.data_start + self._begin[name] + int(row_start) * row_bytes
        view = memoryview(rows.reshape(-1).view(np.uint8))
        while len(view):
            n = os.pwrite(self._f.fileno(), view, pos)
            view, pos = view[n:], pos + n
        self._written[name] += rows.nbytes

    def close(self) -> None:
        short = [n for n, s in self.specs.items() if self._written[n] != s.nbytes]
        try:
            if short:
                raise RuntimeError(f"{self.path}: tensors not completely written: {short[:5]}")
            os.fsync(self._f.fileno())
        finally:
            self._f.close()

    def abort(self) -> None:
        self._f.close()


def shard_file_names(n: int) -> list[str]:
    """transformers' names: model.safetensors, or model-0000i-of-0000n.safetensors."""
    return [SINGLE_NAME] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]


def plan_shards(groups: list[list[TensorSpec]], max_shard_size: int | None) -> list[list[TensorSpec]]:
    """Split tensors into files of at most ``max_shard_size`` bytes (a group, i.e. the arrays of
    one logical tensor, is never split; a group larger than the limit gets a file of its own)."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for group in groups:
        nbytes = sum(s.nbytes for s in group)
        if max_shard_size and shards[-1] and size + nbytes > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].extend(group)
        size += nbytes
    return shards


def write_index(folder: Path, shards: list[list[TensorSpec]], names: list[str]) -> None:
    """model.safetensors.index.json, as transformers writes it."""
    weight_map = {s.name: file for specs, file in zip(shards, names) for s in specs}
    total = sum(s.nbytes for specs in shards for s in specs)
    (folder / INDEX_NAME).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                indent=2, sort_keys=True) + "\n")


def metadata_entry(tensors: Mapping[str, dict]) -> dict[str, str]:
    """The ``__metadata__`` of every file of a quantized checkpoint."""
    return {METADATA_KEY: json.dumps({"format_version": STORAGE_VERSION, "tensors": dict(tensors)},
                                     separators=(",", ":"), sort_keys=True)}


# --- reading float rows without the memory map -----------------------------------------------------
@functools.lru_cache(maxsize=64)
def _data_offsets(path: str, mtime_ns: int) -> dict[str, int]:
    """Absolute file offset of every tensor's data (the header was validated by Checkpoint)."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    return {k: 8 + n + v["data_offsets"][0] for k, v in header.items() if k != "__metadata__"}


def read_at(path: str | os.PathLike, offset: int, nbytes: int, what: str) -> bytearray:
    """``nbytes`` bytes of the file at ``offset`` (Python ints: 64-bit safe), read with ``os.preadv``
    into one buffer; CorruptCheckpointError naming ``what`` when the file ends first (it was
    truncated after it was opened). Shared by every streaming reader (safetensors, GGUF)."""
    buf = bytearray(nbytes)
    view, pos = memoryview(buf), offset
    with open(path, "rb", buffering=0) as f:
        while len(view):
            got = os.preadv(f.fileno(), [view], pos)
            if got == 0:
                raise CorruptCheckpointError(
                    f"{path} ended at byte {pos} while reading {what} (bytes {offset}..{offset + nbytes}); "
                    "the file was truncated or replaced while in use: re-download it")
            view, pos = view[got:], pos + got
    return buf


class RowReader:
    """fetch(start, stop) -> float32 rows of a float tensor, read with ``os.pread``.

    Pages read this way stay in the page cache, not in this process's resident set (the memory
    map would count every page it touched until it is unmapped)."""

    def __init__(self, ref: TensorRef):
        self.ref = ref
        self.offset = _data_offsets(ref.file, os.stat(ref.file).st_mtime_ns)[ref.name]
        self.itemsize = SAFETENSORS_DTYPES[ref.dtype].itemsize
        self.row_values = math.prod(ref.shape[1:])

    def raw(self, start: int, stop: int) -> np.ndarray:
        """Rows as stored (bf16 as uint16 bits)."""
        row_bytes = self.row_values * self.itemsize
        buf = read_at(self.ref.file, self.offset + start * row_bytes, (stop - start) * row_bytes, self.ref.name)
        dtype = SAFETENSORS_DTYPES[self.ref.dtype]
        return np.frombuffer(buf, dtype=dtype).reshape((stop - start,) + tuple(self.ref.shape[1:]))

    def __call__(self, start: int, stop: int) -> np.ndarray:
        if self.ref.dtype not in ("F32", "F16", "BF16", "F64"):
            raise QuantizationError(f"{self.ref.name} has dtype {self.ref.dtype}; only float tensors can be quantized")
        return widen(self.raw(start, stop), self.ref.dtype, np.float32)


def quantize_stream(name: str, fetch: Callable[[int, int], np.ndarray], shape, scheme: str, group_size: int,
                    emit: Callable[[str, int, np.ndarray], None]) -> None:
    """Quantize a float [out, in] tensor chunk by chunk: ``emit(array, row_start, rows)``.

    Same chunks and the same ``quantize_blocks`` as :func:`pycohere.quant.quantize`, hence the
    same bytes; memory stays a few MiB whatever the tensor."""
    cls = get_scheme(scheme)
    rows, cols = shape
    for start, stop in _row_chunks(rows, cols):
        values = fetch(start, stop)
        try:
            _check_finite(values, start)
        except QuantizationError as e:
            raise QuantizationError(f"{name}: {e}") from None
        for array, packed in cls.quantize_blocks(values.reshape(-1, group_size)).items():
            emit(array, start, packed.reshape(stop - start, -1))


def resolve_group(name: str, shape, qc: QuantizationConfig) -> int:
    """The group size for tensor ``name``, or a QuantizationError naming the tensor."""
    if len(shape) != 2:
        raise QuantizationError(f"{name} has shape {list(shape)}; only 2-D weights can be quantized")
    try:
        return get_scheme(qc.scheme).resolve_group_size(qc.group_size, shape[1])
    except QuantizationError as e:
        raise QuantizationError(f"cannot quantize {name} {list(shape)}: {e}") from None


def quantize_tensor(ref: TensorRef, qc: QuantizationConfig) -> QuantizedTensor:
    """Quantize one float tensor of a checkpoint into owned arrays (quantize-on-load)."""
    group = resolve_group(ref.name, ref.shape, qc)
    out = {a: np.empty(shape, dtype) for a, (shape, dtype) in array_shapes(qc.scheme, ref.shape, group).items()}

    def emit(array, start, rows):
        out[array][start:start + len(rows)] = rows
    quantize_stream(ref.name, RowReader(ref), ref.shape, qc.scheme, group, emit)
    return QuantizedTensor(qc.scheme, group, ref.shape, out)


# --- reading a (possibly quantized) checkpoint ---------------------------------------------------
def read_metadata(ckpt: Checkpoint) -> dict | None:
    """The checkpoint's quantization metadata ``{"format_version", "tensors"}``, or None."""
    raw = ckpt.metadata.get(METADATA_KEY)
    if raw is None:
        return None
    try:
        meta = json.loads(raw)
    except ValueError as e:
        raise CorruptCheckpointError(f"{ckpt.path}: the {METADATA_KEY} metadata is not valid JSON ({e}); "
                                     "re-run `pycohere quantize`") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("tensors"), dict):
        raise CorruptCheckpointError(f"{ckpt.path}: the {METADATA_KEY} metadata lacks its 'tensors' table")
    if meta.get("format_version") != STORAGE_VERSION:
        raise UnsupportedFormatError(
            f"{ckpt.path} is a pycohere quantized checkpoint of format version {meta.get('format_version')!r}; "
            f"this pycohere reads version {STORAGE_VERSION}: upgrade pycohere or re-quantize")
    return meta


def _config_quantization(config) -> dict | None:
    entry = getattr(config, "quantization_config", None)
    if entry is None:
        return None
    if not isinstance(entry, Mapping) or entry.get("quant_method") != QUANT_METHOD:
        method = entry.get("quant_method") if isinstance(entry, Mapping) else entry
        raise UnsupportedFormatError(
            f"config.json says the weights are quantized with {method!r}; pycohere reads float "
            f"checkpoints, its own quantized format ({QUANT_METHOD!r}), bitsandbytes, GPTQ and AWQ "
            f"checkpoints and GGUF files: load the float checkpoint, optionally with "
            f"quantization_config=pycohere.QuantizationConfig(...)")
    return dict(entry)


def _array_problems(scheme: str, expected: dict, stored: dict[str, TensorRef]) -> list[str]:
    """Missing, misshaped and unexpected packed arrays of one quantized tensor."""
    bad = []
    for array, (shape, dtype) in expected.items():
        ref = stored.get(array)
        if ref is None:
            bad.append(f"{array} missing")
        elif ref.array.dtype != dtype or tuple(ref.shape) != shape:
            bad.append(f"{array} is {ref.dtype} {list(ref.shape)}, {scheme} needs "
                       f"{safetensors_dtype(dtype)} {list(shape)}")
    return bad + [f"unexpected array {a}" for a in sorted(set(stored) - set(expected))]


class SafetensorsSource:
    """What every safetensors-backed weight source shares (``pycohere.formats``): the checkpoint's
    path, files and size, float vectors widened to the compute dtype, float matrices as DenseWeight
    over the mmap view, and the table row of a float tensor."""

    ckpt: Checkpoint

    @property
    def path(self):
        return self.ckpt.path

    @property
    def files(self):
        return self.ckpt.files

    @property
    def nbytes(self) -> int:
        return self.ckpt.nbytes

    def vector(self, name: str, dtype) -> np.ndarray:
        t = self.ckpt[name]
        return widen(t.array, t.dtype, dtype)

    def dense(self, name: str, dtype, backend: str, materialize: bool = False) -> DenseWeight:
        ref = self.ckpt[name]
        return DenseWeight(ref.array, ref.dtype, compute_dtype=dtype, materialize=materialize, backend=backend)

    def float_info(self, name: str) -> TensorInfo:
        t = self.ckpt[name]
        return TensorInfo(name, tuple(t.shape), t.dtype, 8.0 * SAFETENSORS_DTYPES[t.dtype].itemsize, None, t.nbytes)


class WeightSource(SafetensorsSource):
    """The weights of a checkpoint in transformers' names, quantized or not.

    ``shapes`` (logical name -> shape) and ``problems`` (packed arrays missing or misshaped) feed
    the manifest check; :meth:`matrix` builds the ``Weight`` of a linear layer: the stored
    quantized arrays (mmap views), the float tensor quantized now (``quantization``), or a
    DenseWeight over the float view.
    """

    def __init__(self, ckpt: Checkpoint, config, quantization: QuantizationConfig | None = None):
        self.ckpt = ckpt
        self.quantization = quantization
        self.meta = read_metadata(ckpt)
        declared = _config_quantization(config)
        if declared is not None and self.meta is None:
            raise CorruptCheckpointError(
                f"{ckpt.path}: config.json declares a pycohere quantized checkpoint but the safetensors "
                f"files carry no {METADATA_KEY} metadata; the files were replaced or damaged: re-quantize")
        if quantization is not None and self.meta is not None:
            raise QuantizationError(
                f"{ckpt.path} is already quantized ({self.describe()}); load it without "
                f"quantization_config / load_in_8bit / load_in_4bit, or quantize the float checkpoint")
        self.quantized: dict[str, tuple[dict[str, np.ndarray], dict]] = {}
        self.problems: list[str] = []
        self.shapes = {n: t.shape for n, t in ckpt.tensors.items()}
        if self.meta is not None:
            self._collect_quantized()

    # --- the pycohere.formats source interface ------------------------------------------------
    def tensor_table(self) -> list[TensorInfo]:
        """Every logical tensor: float ones with their dtype, quantized ones with their scheme."""
        rows = []
        for name, shape in sorted(self.shapes.items()):
            if name in self.quantized:
                arrays, entry = self.quantized[name]
                cls = get_scheme(entry["scheme"])
                g = int(entry["group_size"])
                rows.append(TensorInfo(name, tuple(shape), entry["scheme"], cls.bits_per_weight(g),
                                       None if g == shape[-1] and cls.block_size is None else g,
                                       int(sum(a.nbytes for a in arrays.values()))))
            elif name in self.ckpt:
                rows.append(self.float_info(name))
        return rows

    def describe(self) -> str:
        schemes = sorted({str(e.get("scheme")) for e in self.meta["tensors"].values() if isinstance(e, dict)})
        return f"{', '.join(schemes)}, {len(self.meta['tensors'])} tensors"

    def _collect_quantized(self) -> None:
        for name, entry in sorted(self.meta["tensors"].items()):
            expected = self._expected_arrays(name, entry)
            prefix = name + "."
            stored = {n[len(prefix):]: ref for n, ref in self.ckpt.tensors.items()
                      if n.startswith(prefix) and "." not in n[len(prefix):]}
            for array in stored:  # the packed arrays stand for one logical tensor in the manifest
                self.shapes.pop(prefix + array, None)
            self.shapes[name] = tuple(entry["shape"])
            bad = _array_problems(entry["scheme"], expected, stored)
            if bad:
                self.problems.append(f"{name} ({entry['scheme']}): " + "; ".join(bad))
            else:
                self.quantized[name] = ({a: stored[a].array for a in expected}, entry)

    def _expected_arrays(self, name: str, entry) -> dict:
        """{array: (shape, dtype)} the metadata entry of ``name`` promises (validated)."""
        where = f"{self.ckpt.path}: {name}"
        if not isinstance(entry, dict) or not {"scheme", "group_size", "shape"} <= set(entry):
            raise CorruptCheckpointError(f"{where}: quantization metadata {entry!r} needs scheme, group_size "
                                         "and shape")
        if entry["scheme"] not in SCHEMES:
            raise UnsupportedFormatError(
                f"{where} uses quantization scheme {entry['scheme']!r}, unknown to this pycohere (it reads "
                f"{', '.join(sorted(SCHEMES))}); upgrade pycohere")
        try:
            return array_shapes(entry["scheme"], entry["shape"], entry["group_size"])
        except QuantizationError as e:
            raise CorruptCheckpointError(f"{where}: inconsistent quantization metadata: {e}") from None

    def matrix(self, name: str, dtype, backend: str, materialize: bool = False):
        """The Weight of the [out, in] matrix ``name``."""
        if name in self.quantized:
            arrays, entry = self.quantized[name]
            return QuantizedWeight(arrays, entry, compute_dtype=dtype, backend=backend)
        if self.quantization is not None and self.quantization.applies_to(name):
            q = quantize_tensor(self.ckpt[name], self.quantization)
            return QuantizedWeight.from_tensor(q, compute_dtype=dtype, backend=backend)
        return self.dense(name, dtype, backend, materialize)

    def check_quantization_plan(self) -> None:
        """Before quantizing anything on load: every group size must fit (one clear error)."""
        if self.quantization is None:
            return
        for name in self.shapes:
            if self.quantization.applies_to(name):
                resolve_group(name, self.ckpt[name].shape, self.quantization)
