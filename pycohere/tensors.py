"""The one weight abstraction layers see.

A linear weight is a matrix W of shape [out, in]; a layer only ever asks for ``x @ W.T``
(``Weight.matmul``) or, for the spec and golden paths, the full float matrix
(``Weight.dequantize``). Whether W lives as an mmap'd F32/F16/BF16 view, a widened copy in
RAM, or packed quantized blocks is the weight's business, not the layer's.

Storage dtypes follow safetensors names: "F32", "F16", "BF16" (bf16 is kept as uint16 bits,
since NumPy has no bfloat16; widening is ``bits << 16`` reinterpreted as float32, exact).
"""
from __future__ import annotations

import numpy as np

from .errors import UnsupportedFormatError

# storage dtype name -> numpy dtype of the raw buffer
RAW_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
}


def widen(raw: np.ndarray, storage: str, dtype=np.float32) -> np.ndarray:
    """Raw stored values -> float array of ``dtype`` (always a new array unless already right)."""
    dtype = np.dtype(dtype)
    if storage == "BF16":
        # bf16 is the top half of an IEEE float32: shifting the bits up is exact.
        f32 = (raw.astype(np.uint32) << 16).view(np.float32)
        return f32 if dtype == np.float32 else f32.astype(dtype)
    if storage in ("F32", "F16", "F64"):
        return np.asarray(raw, dtype=dtype)
    raise UnsupportedFormatError(f"cannot widen storage dtype {storage!r}; expected one of {sorted(RAW_DTYPES)}")


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """float array -> bf16 bits (uint16) with round-to-nearest-even, as torch does."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounding = ((u >> 16) & 1) + np.uint32(0x7FFF)
    out = ((u + rounding) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        out[nan] = 0x7FC0
    return out


CHUNK_ELEMENTS = 1 << 24  # 64 MiB of float32 per widened chunk


class Weight:
    """Interface: a [out, in] matrix that can be multiplied by and dequantized.

    Subclasses (dense here, quantized formats in ``pycohere.quant``) implement ``dequantize``;
    ``matmul`` defaults to the readable spec ``x @ dequantize().T`` and is overridden by
    kernels where a fast path exists.
    """

    shape: tuple[int, ...]
    storage: str  # a short name of the stored format ("BF16", "int8", "q4_0", ...)
    backend: str = "numpy"

    def dequantize(self, dtype=np.float32) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def matmul(self, x: np.ndarray) -> np.ndarray:
        """x (..., in) -> x @ W.T (..., out), computed in x's dtype."""
        return x @ self.dequantize(x.dtype).T

    def rows(self, ids: np.ndarray, dtype=np.float32) -> np.ndarray:
        """Gather rows (an embedding lookup): ids (...) -> (..., in)."""
        return self.dequantize(dtype)[ids]

    @property
    def nbytes(self) -> int:  # pragma: no cover - interface
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={tuple(self.shape)}, storage={self.storage})"


class DenseWeight(Weight):
    """A float weight: a (usually mmap'd) raw array plus its storage dtype.

    ``materialize=False`` keeps the raw view and widens per use (RAM stays at the file's size);
    ``True`` widens once into an owned array of the compute dtype (faster numpy path, 2-4x RAM).
    """

    def __init__(self, raw: np.ndarray, storage: str, *, compute_dtype=np.float32,
                 materialize: bool = False, backend: str = "numpy"):
        if storage not in RAW_DTYPES:
            raise UnsupportedFormatError(
                f"dense weights must be one of {sorted(RAW_DTYPES)}, got {storage!r}")
        self.storage = storage
        self.shape = tuple(raw.shape)
        self.compute_dtype = np.dtype(compute_dtype)
        self.backend = backend
        if materialize or (storage == "F64" and self.compute_dtype != np.float64):
            self.raw = None
            self._full = widen(raw, storage, self.compute_dtype)
        else:
            self.raw = raw
            # No copy when the stored dtype already is the compute dtype (F32 -> float32).
            self._full = raw if raw.dtype == self.compute_dtype else None

    @property
    def nbytes(self) -> int:
        return int(self.raw.nbytes if self.raw is not None else self._full.nbytes)

    def dequantize(self, dtype=None) -> np.ndarray:
        dtype = self.compute_dtype if dtype is None else np.dtype(dtype)
        if self._full is not None and self._full.dtype == dtype:
            return self._full
        src = self.raw if self.raw is not None else self._full
        storage = self.storage if self.raw is not None else {4: "F32", 8: "F64"}[self._full.itemsize]
        return widen(src, storage, dtype)

    def rows(self, ids: np.ndarray, dtype=None) -> np.ndarray:
        # Gather first, widen after: an embedding lookup touches only the rows it needs.
        dtype = self.compute_dtype if dtype is None else np.dtype(dtype)
        if self.backend == "numba" and self.raw is not None and dtype == np.float32:
            from .kernels import gather_rows
            return gather_rows(self.raw, self.storage, ids)
        if self.raw is None:
            return self._full[ids].astype(dtype, copy=False)
        return widen(self.raw[ids], self.storage, dtype)

    def matmul(self, x: np.ndarray) -> np.ndarray:
        if self.backend == "numba" and self.raw is not None and x.dtype == np.float32:
            from .kernels import dense_matmul  # the fast twin of the lines below
            return dense_matmul(x, self.raw, self.storage)
        full = self._full if self._full is not None and self._full.dtype == x.dtype else None
        if full is not None:
            return x @ full.T
        # Widen per use, in row chunks of <= CHUNK_ELEMENTS so a 256000 x 8192 bf16 head never
        # needs an 8 GB float32 temporary. Each output column is still one full dot product.
        src = self.raw if self.raw is not None else self._full
        storage = self.storage if self.raw is not None else {4: "F32", 8: "F64"}[self._full.itemsize]
        rows = max(1, CHUNK_ELEMENTS // max(1, self.shape[1]))
        if rows >= self.shape[0]:
            return x @ widen(src, storage, x.dtype).T
        out = np.empty(x.shape[:-1] + (self.shape[0],), dtype=x.dtype)
        for r in range(0, self.shape[0], rows):
            out[..., r:r + rows] = x @ widen(src[r:r + rows], storage, x.dtype).T
        return out
