"""Read (and minimally write) GGUF files: llama.cpp's single-file checkpoint format.

Layout (little-endian; llama.cpp ``ggml/include/gguf.h`` and gguf-py ``gguf/gguf_reader.py``)::

    "GGUF"  u32 version (2 or 3)  u64 n_tensors  u64 n_kv
    n_kv    x  { string key, u32 value_type, value }
    n_tensors x { string name, u32 n_dims, u64 ne[n_dims], u32 ggml_type, u64 offset }
    padding to ``general.alignment`` (default 32)
    tensor data; tensor i lives at data_start + offset_i (each offset a multiple of the alignment)

A string is ``u64 length`` + UTF-8 bytes; an array is ``u32 elem_type, u64 count`` + elements.
``ne[0]`` is the fastest-varying dimension, so the NumPy shape of a tensor is ``reversed(ne)``
(a linear weight ``[out, in]`` is stored with ``ne = [in, out]``).

Tensor data is never copied: :meth:`GGUFReader.tensor_data` returns views into one read-only
``np.memmap`` of the file. Dequantization is not done here; :data:`GGML_TYPES` gives every
type's id, name, values per block and bytes per block, and :data:`BLOCK_DTYPES` gives
NumPy structured dtypes for the block layouts of ``ggml-common.h`` that pycohere dequantizes.
"""
from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..constants import STORAGE_DTYPES
from ..errors import CheckpointNotFoundError, CorruptCheckpointError, UnsupportedFormatError

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS


# --- metadata value types (gguf.h enum gguf_type) --------------------------------------------
class ValueType:
    UINT8, INT8, UINT16, INT16, UINT32, INT32, FLOAT32, BOOL, STRING, ARRAY, UINT64, INT64, FLOAT64 = range(13)


# Scalar value types -> little-endian NumPy dtype (BOOL is one byte, 0 or 1).
_SCALAR_DTYPES: dict[int, np.dtype] = {
    ValueType.UINT8: np.dtype("<u1"),
    ValueType.INT8: np.dtype("<i1"),
    ValueType.UINT16: np.dtype("<u2"),
    ValueType.INT16: np.dtype("<i2"),
    ValueType.UINT32: np.dtype("<u4"),
    ValueType.INT32: np.dtype("<i4"),
    ValueType.FLOAT32: np.dtype("<f4"),
    ValueType.BOOL: np.dtype("<u1"),
    ValueType.UINT64: np.dtype("<u8"),
    ValueType.INT64: np.dtype("<i8"),
    ValueType.FLOAT64: np.dtype("<f8"),
}
_VALUE_TYPE_NAMES = {
    getattr(ValueType, name): name for name in vars(ValueType) if name.isupper()
}


# --- tensor types (ggml.h enum ggml_type; sizes from ggml-common.h / gguf-py GGML_QUANT_SIZES) --
@dataclass(frozen=True)
class GGMLType:
    id: int
    name: str
    block_size: int  # values per block (1 for plain float/int types)
    type_size: int  # bytes per block

    @property
    def is_quantized(self) -> bool:
        return self.block_size > 1


_TYPE_TABLE = [
    (0, "F32", 1, 4), (1, "F16", 1, 2), (2, "Q4_0", 32, 18), (3, "Q4_1", 32, 20),
    (6, "Q5_0", 32, 22), (7, "Q5_1", 32, 24), (8, "Q8_0", 32, 34),
    (10, "Q2_K", 256, 84), (11, "Q3_K", 256, 110), (12, "Q4_K", 256, 144),
    (13, "Q5_K", 256, 176), (14, "Q6_K", 256, 210),
    (16, "IQ2_XXS", 256, 66), (17, "IQ2_XS", 256, 74), (18, "IQ3_XXS", 256, 98),
    (19, "IQ1_S", 256, 50), (20, "IQ4_NL", 32, 18), (21, "IQ3_S", 256, 110),
    (22, "IQ2_S", 256, 82), (23, "IQ4_XS", 256, 136),
    (24, "I8", 1, 1), (25, "I16", 1, 2), (26, "I32", 1, 4), (27, "I64", 1, 8), (28, "F64", 1, 8),
    (29, "IQ1_M", 256, 56), (30, "BF16", 1, 2), (34, "TQ1_0", 256, 54), (35, "TQ2_0", 256, 66),
    (39, "MXFP4", 32, 17),
]
GGML_TYPES: dict[int, GGMLType] = {row[0]: GGMLType(*row) for row in _TYPE_TABLE}
GGML_TYPE_IDS: dict[str, int] = {t.name: t.id for t in GGML_TYPES.values()}

# Element dtypes of the unquantized types: the storage table (ggml's names are the same); BF16 is
# exposed as its raw uint16 bits (NumPy has no bfloat16; widening is ``bits << 16`` viewed as float32).
PLAIN_DTYPES: dict[str, np.dtype] = {name: STORAGE_DTYPES[name]
                                     for name in ("F32", "F16", "BF16", "F64", "I8", "I16", "I32", "I64")}

# Block layouts (ggml-common.h); field order and sizes are exactly the C structs, unpadded.
BLOCK_DTYPES: dict[str, np.dtype] = {
    "Q8_0": np.dtype([("d", "<f2"), ("qs", "i1", (32,))]),
    "Q4_0": np.dtype([("d", "<f2"), ("qs", "u1", (16,))]),
    "Q4_1": np.dtype([("d", "<f2"), ("m", "<f2"), ("qs", "u1", (16,))]),
    "Q4_K": np.dtype([("d", "<f2"), ("dmin", "<f2"), ("scales", "u1", (12,)), ("qs", "u1", (128,))]),
    "Q6_K": np.dtype([("ql", "u1", (128,)), ("qh", "u1", (64,)), ("scales", "i1", (16,)), ("d", "<f2")]),
    "IQ4_NL": np.dtype([("d", "<f2"), ("qs", "u1", (16,))]),
    "IQ4_XS": np.dtype([("d", "<f2"), ("scales_h", "<u2"), ("scales_l", "u1", (4,)), ("qs", "u1", (128,))]),
}
for _name, _dtype in BLOCK_DTYPES.items():  # keep the two tables honest with each other
    assert _dtype.itemsize == GGML_TYPES[GGML_TYPE_IDS[_name]].type_size, _name


def ggml_type(type_or_name: int | str) -> GGMLType:
    """Look a type up by id (12) or name ("Q4_K"); UnsupportedFormatError if unknown."""
    key = GGML_TYPE_IDS.get(type_or_name.upper()) if isinstance(type_or_name, str) else type_or_name
    if key not in GGML_TYPES:
        raise UnsupportedFormatError(
            f"unknown ggml tensor type {type_or_name!r}; known types: {sorted(GGML_TYPE_IDS)}"
        )
    return GGML_TYPES[key]


# --- reader -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class GGUFTensorInfo:
    name: str
    shape: tuple[int, ...]  # GGUF order: shape[0] (ne0) varies fastest
    type: GGMLType
    offset: int  # relative to the start of the data section
    n_bytes: int

    @property
    def numpy_shape(self) -> tuple[int, ...]:
        """Row-major element shape, i.e. ``reversed(shape)``."""
        return tuple(reversed(self.shape))

    @property
    def n_elements(self) -> int:
        return math.prod(self.shape)  # Python ints (a Command R+ embedding has > 2**31 values)


class _Cursor:
    """Sequential little-endian reads over a bytes-like buffer; every overrun is a named error."""

    def __init__(self, buffer, path: str):
        self.buf = memoryview(buffer)
        self.pos = 0
        self.path = path

    def take(self, n: int, what: str) -> memoryview:
        end = self.pos + n
        if n < 0 or end > len(self.buf):
            raise CorruptCheckpointError(
                f"{self.path}: file truncated while reading {what} (needs {n} bytes at offset "
                f"{self.pos}, file has {len(self.buf)}); re-download or re-convert the file"
            )
        view = self.buf[self.pos:end]
        self.pos = end
        return view

    def u32(self, what: str) -> int:
        return struct.unpack("<I", self.take(4, what))[0]

    def u64(self, what: str) -> int:
        return struct.unpack("<Q", self.take(8, what))[0]

    def string(self, what: str) -> str:
        n = self.u64(f"length of {what}")
        raw = self.take(n, what)
        try:
            return str(raw, "utf-8")
        except UnicodeDecodeError as exc:
            raise CorruptCheckpointError(f"{self.path}: {what} is not valid UTF-8 ({exc})") from None


class GGUFReader:
    """Parse a GGUF file's header, metadata and tensor table; map tensor data without copying.

    >>> reader = GGUFReader("model.gguf")                       # doctest: +SKIP
    >>> reader.metadata["general.architecture"]                  # doctest: +SKIP
    'command-r'
    >>> reader.tensor_data("blk.0.attn_q.weight").shape          # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointNotFoundError(f"GGUF file not found: {self.path}")
        size = self.path.stat().st_size
        # A zero-length file cannot be memory-mapped; it is simply a truncated GGUF.
        self._data = np.memmap(self.path, dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)
        cur = _Cursor(self._data, str(self.path))
        self.version, n_tensors, n_kv = self._read_header(cur)
        self.metadata: dict[str, Any] = {}
        self.metadata_types: dict[str, int | tuple[int, int]] = {}
        for i in range(n_kv):
            self._read_kv(cur, i)
        self.alignment = self._alignment()
        infos = [self._read_tensor_info(cur, i) for i in range(n_tensors)]
        self.data_offset = _align(cur.pos, self.alignment)
        self.tensors: dict[str, GGUFTensorInfo] = {}
        for info in infos:
            self._check_tensor_placement(info, size)
            if info.name in self.tensors:
                raise CorruptCheckpointError(f"{self.path}: tensor {info.name!r} appears twice")
            self.tensors[info.name] = info

    # -- header and metadata --------------------------------------------------------------------
    def _read_header(self, cur: _Cursor) -> tuple[int, int, int]:
        magic = bytes(cur.take(4, "magic"))
        if magic != GGUF_MAGIC:
            raise CorruptCheckpointError(
                f"{self.path}: not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})"
            )
        version = cur.u32("version")
        if version not in SUPPORTED_VERSIONS:
            if version.to_bytes(4, "little")[::-1] in (v.to_bytes(4, "little") for v in SUPPORTED_VERSIONS):
                raise UnsupportedFormatError(f"{self.path}: big-endian GGUF is not supported")
            raise UnsupportedFormatError(
                f"{self.path}: GGUF version {version} is not supported (only versions "
                f"{' and '.join(map(str, SUPPORTED_VERSIONS))}); "
                "re-convert it with a current llama.cpp"
            )
        n_tensors = cur.u64("tensor count")
        n_kv = cur.u64("metadata count")
        # Each entry needs at least 8 bytes of header, so bigger counts mean garbage.
        if (n_tensors + n_kv) * 8 > len(self._data):
            raise CorruptCheckpointError(
                f"{self.path}: header claims {n_tensors} tensors and {n_kv} metadata entries, "
                f"impossible in a {len(self._data)}-byte file: it is truncated or damaged; re-download or re-convert it"
            )
        return version, n_tensors, n_kv

    def _read_kv(self, cur: _Cursor, index: int) -> None:
        key = cur.string(f"key of metadata entry #{index}")
        vtype = cur.u32(f"type of metadata {key!r}")
        if key in self.metadata:
            raise CorruptCheckpointError(f"{self.path}: metadata key {key!r} appears twice")
        if vtype == ValueType.ARRAY:
            etype = cur.u32(f"element type of metadata array {key!r}")
            self.metadata[key] = self._read_array(cur, etype, key)
            self.metadata_types[key] = (ValueType.ARRAY, etype)
        else:
            self.metadata[key] = self._read_scalar(cur, vtype, key)
            self.metadata_types[key] = vtype

    def _read_scalar(self, cur: _Cursor, vtype: int, key: str):
        if vtype == ValueType.STRING:
            return cur.string(f"value of metadata {key!r}")
        dtype = _SCALAR_DTYPES.get(vtype)
        if dtype is None:
            raise CorruptCheckpointError(f"{self.path}: metadata {key!r} has unknown value type {vtype}")
        value = np.frombuffer(cur.take(dtype.itemsize, f"value of metadata {key!r}"), dtype)[0]
        return bool(value) if vtype == ValueType.BOOL else value.item()

    def _read_array(self, cur: _Cursor, etype: int, key: str):
        count = cur.u64(f"length of metadata array {key!r}")
        if etype == ValueType.STRING:
            if count * 8 > len(cur.buf) - cur.pos:
                raise CorruptCheckpointError(f"{self.path}: metadata array {key!r} claims {count} strings, "
                                             "more than the file can hold")
            return self._read_string_array(cur, count, key)
        if etype == ValueType.ARRAY:  # nested arrays: legal, rare
            return [self._read_array(cur, cur.u32(f"element type in {key!r}"), key) for _ in range(count)]
        dtype = _SCALAR_DTYPES.get(etype)
        if dtype is None:
            raise CorruptCheckpointError(f"{self.path}: metadata array {key!r} has unknown element type {etype}")
        raw = cur.take(count * dtype.itemsize, f"values of metadata array {key!r}")
        values = np.frombuffer(raw, dtype).copy()  # metadata is small: own it, don't pin the mmap
        return values.astype(bool) if etype == ValueType.BOOL else values

    def _read_string_array(self, cur: _Cursor, count: int, key: str) -> list[str]:
        # Hot path (a vocabulary is 256k tokens + 253k merges): a tight loop with unpack_from
        # instead of _Cursor.string, then one bounds check for the whole array.
        buf, pos, size = cur.buf, cur.pos, len(cur.buf)
        unpack_len = struct.Struct("<Q").unpack_from
        out = []
        try:
            for _ in range(count):
                (n,) = unpack_len(buf, pos)
                pos += 8
                if pos + n > size:
                    break
                out.append(str(buf[pos:pos + n], "utf-8"))
                pos += n
        except struct.error:
            pass
        except UnicodeDecodeError as exc:
            raise CorruptCheckpointError(
                f"{self.path}: item {len(out)} of metadata array {key!r} is not valid UTF-8 ({exc})"
            ) from None
        if len(out) != count:
            raise CorruptCheckpointError(
                f"{self.path}: file truncated inside metadata array {key!r} (item {len(out)} of {count}); "
                "re-download or re-convert the file"
            )
        cur.pos = pos
        return out

    def _alignment(self) -> int:
        alignment = self.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
        # A BOOL is an int in Python but not an alignment: ggml's gguf.cpp reads the key with
        # gguf_get_val_u32 (which asserts the type), and True would silently shift every tensor.
        if isinstance(alignment, bool) or not isinstance(alignment, int) or alignment <= 0 \
                or alignment & (alignment - 1):
            raise CorruptCheckpointError(
                f"{self.path}: general.alignment must be a positive power of two, got {alignment!r}"
            )
        return alignment

    # -- tensor table --------------------------------------------------------------------------
    def _read_tensor_info(self, cur: _Cursor, index: int) -> GGUFTensorInfo:
        name = cur.string(f"name of tensor #{index}")
        n_dims = cur.u32(f"dimension count of tensor {name!r}")
        if not 0 < n_dims <= MAX_DIMS:
            raise CorruptCheckpointError(f"{self.path}: tensor {name!r} has {n_dims} dimensions (1..{MAX_DIMS} allowed)")
        shape = tuple(cur.u64(f"dimension {d} of tensor {name!r}") for d in range(n_dims))
        type_id = cur.u32(f"type of tensor {name!r}")
        offset = cur.u64(f"data offset of tensor {name!r}")
        if type_id not in GGML_TYPES:
            raise UnsupportedFormatError(
                f"{self.path}: tensor {name!r} has ggml type id {type_id}, which pycohere does not know "
                f"(known: {', '.join(f'{t.name}={t.id}' for t in GGML_TYPES.values())})"
            )
        gtype = GGML_TYPES[type_id]
        if shape[0] % gtype.block_size:
            raise CorruptCheckpointError(
                f"{self.path}: tensor {name!r} of type {gtype.name} has row length {shape[0]}, "
                f"not a multiple of its block size {gtype.block_size}"
            )
        n_elements = math.prod(shape)  # Python ints: exact for any dims, garbage ones included
        n_bytes = n_elements // gtype.block_size * gtype.type_size
        return GGUFTensorInfo(name, shape, gtype, offset, n_bytes)

    def _check_tensor_placement(self, info: GGUFTensorInfo, file_size: int) -> None:
        if info.offset % self.alignment:
            raise CorruptCheckpointError(
                f"{self.path}: tensor {info.name!r} offset {info.offset} is not a multiple of the "
                f"alignment {self.alignment}"
            )
        end = self.data_offset + info.offset + info.n_bytes
        if end > file_size:
            raise CorruptCheckpointError(
                f"{self.path}: tensor {info.name!r} ({info.type.name}, shape {list(info.shape)}) needs bytes "
                f"up to offset {end} but the file is {file_size} bytes long: the file is truncated; re-download or "
                "re-convert it"
            )

    # -- data access ---------------------------------------------------------------------------
    def _info(self, name: str) -> GGUFTensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise KeyError(f"{self.path}: no tensor named {name!r}") from None

    def raw_bytes(self, name: str) -> np.ndarray:
        """The tensor's bytes as a flat read-only uint8 view (any type)."""
        info = self._info(name)
        start = self.data_offset + info.offset
        return self._data[start:start + info.n_bytes]

    def tensor_data(self, name: str) -> np.ndarray:
        """Zero-copy view of a tensor.

        Plain types (F32, F16, F64, I8..I64, and BF16 as uint16 bits) -> elements with the
        NumPy shape ``reversed(shape)``. Quantized types -> uint8 blocks of shape
        ``(*reversed(shape[1:]), shape[0] // block_size, type_size)``.
        """
        info = self._info(name)
        raw = self.raw_bytes(name)
        dtype = PLAIN_DTYPES.get(info.type.name)
        if dtype is not None:
            return raw.view(dtype).reshape(info.numpy_shape)
        blocks_per_row = info.shape[0] // info.type.block_size
        return raw.reshape(*info.numpy_shape[:-1], blocks_per_row, info.type.type_size)

    def tensor_blocks(self, name: str) -> np.ndarray:
        """Quantized tensor as a structured array of ggml blocks (fields per :data:`BLOCK_DTYPES`)."""
        info = self._info(name)
        block_dtype = BLOCK_DTYPES.get(info.type.name)
        if block_dtype is None:
            raise UnsupportedFormatError(
                f"{self.path}: tensor {name!r} has type {info.type.name}; block views exist only for "
                f"{sorted(BLOCK_DTYPES)}"
            )
        blocks_per_row = info.shape[0] // info.type.block_size
        return self.raw_bytes(name).view(block_dtype).reshape(*info.numpy_shape[:-1], blocks_per_row)

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def close(self) -> None:
        """Drop this reader's reference to the mapping (views handed out keep it alive)."""
        self._data = np.zeros(0, np.uint8)

    def __enter__(self) -> "GGUFReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _align(offset: int, alignment: int) -> int:
    return offset + (-offset) % alignment


# --- writer -----------------------------------------------------------------------------------
def tensor_nbytes(ne: tuple[int, ...], gtype: GGMLType) -> int:
    """Bytes of a tensor with GGUF dims ``ne`` (``ne[0]`` a multiple of the block size)."""
    n = 1
    for d in ne:
        n *= int(d)  # Python ints: no overflow for tensors of more than 2**31 values
    return n // gtype.block_size * gtype.type_size


@dataclass
class _PendingTensor:
    name: str
    shape: tuple[int, ...]  # GGUF order
    gtype: GGMLType
    data: bytes | None  # None: declared with add_tensor_info, written later by write_tensor_data

    @property
    def nbytes(self) -> int:
        return tensor_nbytes(self.shape, self.gtype)

    @property
    def n_rows(self) -> int:
        """Rows of ``ne[0]`` values (1 for a 1-D tensor)."""
        n = 1
        for d in self.shape[1:]:
            n *= int(d)
        return n


@dataclass
class GGUFWriter:
    """Write a GGUF v3 file: metadata plus F32 / F16 / BF16 (or pre-packed quantized) tensors.

    Metadata value types are inferred by :func:`_infer_value_type` (bool, int, float, str, lists
    and arrays) or given explicitly with ``value_type``. Tensors are given as NumPy arrays in
    row-major shape; they are stored with ``ne = reversed(shape)`` as llama.cpp does.

    Two ways to use it:

    * collect, then write: ``add`` / ``add_tensor(name, array)`` ..., then ``write()`` (the whole
      file is built in memory; for small files and tests);
    * streaming (``pycohere convert``): ``add`` metadata and ``add_tensor_info(name, shape, type)``
      for every tensor, then ``open()`` writes the header with every tensor's offset (the layout
      depends only on names, shapes and types), ``write_tensor_data(name, rows, row_start)`` puts
      rows of any tensor at their place with ``os.pwrite`` (any order, any chunks), and
      ``close()`` checks that every byte was written and syncs the file. Memory stays at one
      chunk of rows whatever the model size. ``abort()`` closes without checks.
    """

    path: str | os.PathLike
    alignment: int = DEFAULT_ALIGNMENT
    _kv: list[tuple[str, int, Any, int | None]] = field(default_factory=list)
    _tensors: list[_PendingTensor] = field(default_factory=list)
    _file: Any = None
    _data_start: int = 0
    _offsets: dict[str, int] = field(default_factory=dict)
    _written: dict[str, int] = field(default_factory=dict)

    def add(self, key: str, value: Any, value_type: int | None = None, element_type: int | None = None) -> None:
        if value_type is None:
            value_type, element_type = _infer_value_type(value)
        self._kv.append((key, value_type, value, element_type))

    def add_tensor(self, name: str, array: np.ndarray, ggml_type_name: str | None = None) -> None:
        """Add a tensor. F32/F16/F64/I* from the array's dtype; "BF16" for uint16 bit arrays; for
        quantized types pass a uint8 array of shape ``(*rows, blocks, type_size)``."""
        array = np.ascontiguousarray(array)
        if ggml_type_name is None:
            by_dtype = {v: k for k, v in PLAIN_DTYPES.items() if k != "BF16"}
            if array.dtype.newbyteorder("<") not in by_dtype:
                raise UnsupportedFormatError(f"cannot store dtype {array.dtype} for tensor {name!r}")
            ggml_type_name = by_dtype[array.dtype.newbyteorder("<")]
        gtype = ggml_type(ggml_type_name)
        if gtype.is_quantized:
            if array.dtype != np.uint8 or array.shape[-1] != gtype.type_size:
                raise UnsupportedFormatError(
                    f"quantized tensor {name!r} must be uint8 blocks ending in {gtype.type_size} bytes"
                )
            shape = (array.shape[-2] * gtype.block_size, *reversed(array.shape[:-2]))
        else:
            array = array.astype(PLAIN_DTYPES[gtype.name], copy=False)
            shape = tuple(reversed(array.shape)) or (1,)
        self._check_new_name(name)
        self._tensors.append(_PendingTensor(name, shape, gtype, array.tobytes()))

    def add_tensor_info(self, name: str, shape, ggml_type_name: str) -> None:
        """Declare a tensor of row-major ``shape`` and type (its bytes come later through
        :meth:`write_tensor_data`). A quantized type needs rows that are whole blocks."""
        gtype = ggml_type(ggml_type_name)
        shape = tuple(int(n) for n in shape)
        if not 0 < len(shape) <= MAX_DIMS or min(shape) < 0:
            raise UnsupportedFormatError(f"tensor {name!r}: shape {list(shape)} must have 1..{MAX_DIMS} dimensions")
        if shape[-1] % gtype.block_size:
            raise UnsupportedFormatError(
                f"tensor {name!r} {list(shape)}: rows of {shape[-1]} values are not whole {gtype.name} blocks "
                f"of {gtype.block_size}")
        self._check_new_name(name)
        self._tensors.append(_PendingTensor(name, tuple(reversed(shape)), gtype, None))

    def _check_new_name(self, name: str) -> None:
        if any(t.name == name for t in self._tensors):
            raise UnsupportedFormatError(f"tensor {name!r} added twice to the GGUF file")

    # -- layout ------------------------------------------------------------------------------------
    def _header(self) -> tuple[bytes, dict[str, int]]:
        """Header, metadata and tensor table (padded to the alignment), and each tensor's offset
        relative to the data section."""
        out = bytearray()
        custom = self.alignment != DEFAULT_ALIGNMENT
        out += GGUF_MAGIC + struct.pack("<IQQ", 3, len(self._tensors), len(self._kv) + custom)
        if custom:
            out += _pack_kv("general.alignment", ValueType.UINT32, self.alignment, None)
        for key, vtype, value, etype in self._kv:
            out += _pack_kv(key, vtype, value, etype)
        offset = 0
        offsets = {}
        for t in self._tensors:
            out += _pack_string(t.name) + struct.pack("<I", len(t.shape))
            out += struct.pack(f"<{len(t.shape)}Q", *t.shape) + struct.pack("<IQ", t.gtype.id, offset)
            offsets[t.name] = offset
            offset = _align(offset + t.nbytes, self.alignment)
        out += bytes(_align(len(out), self.alignment) - len(out))
        return bytes(out), offsets

    @property
    def file_size(self) -> int:
        """Size of the finished file (the last tensor's end; no trailing padding)."""
        header, offsets = self._header()
        return len(header) + max((offsets[t.name] + t.nbytes for t in self._tensors), default=0)

    # -- streaming -----------------------------------------------------------------------------------
    def open(self) -> None:
        """Create (or truncate) the file and write everything but the tensor data."""
        header, self._offsets = self._header()
        self._data_start = len(header)
        self._written = {t.name: 0 for t in self._tensors}
        self._file = open(self.path, "wb")
        try:
            self._file.write(header)
            self._file.flush()
        except BaseException:
            self.abort()
            raise

    def write_tensor_data(self, name: str, data: np.ndarray, row_start: int = 0) -> None:
        """Write ``data`` (whole rows of the tensor's storage: float elements, BF16 as uint16
        bits, uint8 blocks for quantized types) as rows ``row_start, ...`` of tensor ``name``."""
        if self._file is None:
            raise RuntimeError("GGUFWriter.open() must be called before write_tensor_data")
        t = next((t for t in self._tensors if t.name == name), None)
        if t is None:
            raise KeyError(f"tensor {name!r} was not declared with add_tensor_info")
        data = np.ascontiguousarray(data)
        want = np.dtype(np.uint8) if t.gtype.is_quantized else PLAIN_DTYPES.get(t.gtype.name)
        row_nbytes = t.nbytes // max(1, t.n_rows)
        if data.dtype != want or data.nbytes % max(1, row_nbytes) \
                or int(row_start) * row_nbytes + data.nbytes > t.nbytes:
            raise ValueError(f"{name}: cannot write {data.dtype} {list(data.shape)} ({data.nbytes} bytes) at row "
                             f"{row_start} of a {t.gtype.name} tensor of {t.n_rows} rows x {row_nbytes} bytes")
        pos = self._data_start + self._offsets[name] + int(row_start) * row_nbytes
        view = memoryview(data.reshape(-1).view(np.uint8))
        while len(view):
            n = os.pwrite(self._file.fileno(), view, pos)
            view, pos = view[n:], pos + n
        self._written[name] += data.nbytes

    def close(self) -> None:
        """Check that every tensor was completely written, fix the file's length, sync, close."""
        try:
            short = [t.name for t in self._tensors if self._written.get(t.name) != t.nbytes]
            if short:
                raise RuntimeError(f"{self.path}: tensors not completely written: {short[:5]}")
            end = self._data_start + max((self._offsets[t.name] + t.nbytes for t in self._tensors), default=0)
            os.ftruncate(self._file.fileno(), end)  # (a tensor-less file ends at its header)
            os.fsync(self._file.fileno())
        finally:
            self.abort()

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def write(self) -> Path:
        """Write the file at once (tensors given to :meth:`add_tensor`)."""
        missing = [t.name for t in self._tensors if t.data is None]
        if missing:
            raise RuntimeError(f"write() needs the data of every tensor; use open()/write_tensor_data()/close() "
                               f"for {missing[:5]}")
        self.open()
        try:
            for t in self._tensors:
                self.write_tensor_data(t.name, np.frombuffer(t.data, np.uint8).view(
                    np.uint8 if t.gtype.is_quantized else PLAIN_DTYPES[t.gtype.name]))
            self.close()
        except BaseException:
            self.abort()
            raise
        return Path(self.path)


def _pack_string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def _pack_value(vtype: int, value: Any) -> bytes:
    if vtype == ValueType.STRING:
        return _pack_string(value)
    return np.asarray(value, dtype=_SCALAR_DTYPES[vtype]).tobytes()


def _pack_kv(key: str, vtype: int, value: Any, etype: int | None) -> bytes:
    out = _pack_string(key) + struct.pack("<I", vtype)
    if vtype != ValueType.ARRAY:
        return out + _pack_value(vtype, value)
    out += struct.pack("<IQ", etype, len(value))
    if etype == ValueType.STRING:
        return out + b"".join(_pack_string(v) for v in value)
    return out + np.asarray(value, dtype=_SCALAR_DTYPES[etype]).tobytes()


def _infer_value_type(value: Any) -> tuple[int, int | None]:
    """bool->BOOL, int->INT32 (INT64/UINT64 if out of range), float->FLOAT32, str->STRING,
    list/ndarray->ARRAY of the first element's type (the rules gguf-py's GGUFWriter uses)."""
    if isinstance(value, (bool, np.bool_)):
        return ValueType.BOOL, None
    if isinstance(value, (int, np.integer)):
        if -(2**31) <= value < 2**31:
            return ValueType.INT32, None
        return (ValueType.INT64 if value < 0 else ValueType.UINT64), None
    if isinstance(value, (float, np.floating)):
        return ValueType.FLOAT32, None
    if isinstance(value, str):
        return ValueType.STRING, None
    if isinstance(value, np.ndarray):
        by_dtype = {d: t for t, d in _SCALAR_DTYPES.items() if t != ValueType.BOOL}
        if value.dtype == bool:
            return ValueType.ARRAY, ValueType.BOOL
        return ValueType.ARRAY, by_dtype[value.dtype.newbyteorder("<")]
    if isinstance(value, (list, tuple)):
        if not value:
            raise UnsupportedFormatError("cannot infer the element type of an empty list; pass element_type")
        return ValueType.ARRAY, _infer_value_type(value[0])[0]
    raise UnsupportedFormatError(f"cannot store metadata value of type {type(value).__name__}")


def value_type_name(vtype: int) -> str:
    return _VALUE_TYPE_NAMES.get(vtype, f"unknown({vtype})")


__all__ = [
    "GGUFReader", "GGUFWriter", "GGUFTensorInfo", "GGMLType", "GGML_TYPES", "GGML_TYPE_IDS",
    "BLOCK_DTYPES", "PLAIN_DTYPES", "ValueType", "ggml_type", "value_type_name",
]

