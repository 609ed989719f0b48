"""safetensors files: memory-mapped reading (single file or sharded), streaming writing, row reads.

Nothing here copies a tensor: every tensor is a NumPy view into a read-only ``np.memmap`` of its
file, so opening a 2 GB bf16 checkpoint costs page-table entries, not 2 GB of RAM. Widening to
the compute dtype happens later, per use (``pycohere.spec.weights.DenseWeight``).

The header is parsed here rather than through ``safetensors.safe_open`` because the numpy framework
of that library returns copies and cannot express bf16; the format is 8 bytes of little-endian
header length, a JSON header ``{name: {dtype, shape, data_offsets}}``, then data.

Writing is incremental (:class:`SafetensorsWriter`): the header with every offset is computed from the
shapes first, then each array's rows are written at their place with ``os.pwrite``, so a converter
never holds more than a chunk of rows. :func:`write_safetensors` writes small in-memory tensors
deterministically (golden bundles). Rows of a float tensor can be read with ``os.pread``
(:class:`RowReader`) rather than through the memory map, so streaming a 200 GB model does not grow
the process's resident set.
"""
from __future__ import annotations

import functools
import json
import math
import os
import struct
from pathlib import Path
from typing import Iterable, Mapping, NamedTuple

import numpy as np

from ..constants import FLOAT_STORAGE, STORAGE_DTYPES, STORAGE_NAMES
from ..errors import (CheckpointNotFoundError, CorruptCheckpointError, InputError, QuantizationError,
                      UnsafeCheckpointError, UnsupportedFormatError)
from .dtypes import widen

SAFETENSORS_DTYPES = STORAGE_DTYPES  # (safetensors' names are the storage names)
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


# --- writing ------------------------------------------------------------------------------------
class TensorSpec(NamedTuple):
    """One tensor of a file to write: name, safetensors dtype name, shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * SAFETENSORS_DTYPES[self.dtype].itemsize


def safetensors_dtype(dtype: np.dtype) -> str:
    return STORAGE_NAMES[np.dtype(dtype)]


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


# --- reading rows without the memory map -------------------------------------------------------
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
        if self.ref.dtype not in FLOAT_STORAGE:
            raise QuantizationError(f"{self.ref.name} has dtype {self.ref.dtype}; only float tensors can be quantized")
        return widen(self.raw(start, stop), self.ref.dtype, np.float32)


# --- small in-memory files (golden bundles) --------------------------------------------------
_SMALL_FILE_DTYPES = ("F64", "F32", "F16", "I64", "I32")


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None,
                      what: str = "a golden bundle") -> None:
    """Write a safetensors file byte-for-byte deterministically: tensors and header keys sorted by name,
    compact JSON, header padded with spaces to a multiple of 8 (the format's rule). Written here rather
    than with ``safetensors.numpy.save_file`` because that library serialises ``__metadata__`` from a
    hash map whose order is not guaranteed."""
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        if STORAGE_NAMES.get(a.dtype) not in _SMALL_FILE_DTYPES:
            raise InputError(f"cannot store tensor {name!r} of dtype {a.dtype} in {what}")
        raw = a.tobytes()
        header[name] = {"dtype": STORAGE_NAMES[a.dtype], "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    if metadata:
        header["__metadata__"] = {k: str(metadata[k]) for k in sorted(metadata)}
    h = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for raw in blobs:
            f.write(raw)


def read_safetensors(path: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a safetensors file of any producer: float tensors (F64/F32/F16/BF16) come back as float64,
    integers as int64; returns ({name: array}, {name: stored dtype name})."""
    refs, _ = open_safetensors(path)
    arrays, dtypes = {}, {}
    for name, ref in refs.items():
        if ref.dtype in FLOAT_STORAGE:
            arrays[name] = np.array(widen(ref.array, ref.dtype, np.float64), dtype=np.float64)
        elif ref.dtype.startswith(("I", "U")) or ref.dtype == "BOOL":
            arrays[name] = np.array(ref.array, dtype=np.int64)
        else:  # pragma: no cover - open_safetensors already rejects unknown dtypes
            raise UnsupportedFormatError(f"{path}: tensor {name!r} has dtype {ref.dtype}")
        dtypes[name] = ref.dtype
    return arrays, dtypes
