"""The one weight abstraction layers see, and its dense (float) implementation: the NumPy spec.

A linear weight is a matrix W of shape [out, in]; a layer only ever asks for ``x @ W.T``
(``Weight.matmul``), an embedding lookup (``Weight.rows``) or, for the golden path, the full float
matrix (``Weight.dequantize``). Whether W lives as an mmap'd F32/F16/BF16 view, a widened copy in RAM
or packed quantized blocks (``pycohere.quant``) is the weight's business, not the layer's.

Everything here is NumPy. The Numba twins of ``matmul`` and ``rows`` live in ``pycohere.kernels``;
the model wraps its weights in them (``pycohere.kernels.dispatch.fast_weight``), never the spec.

Storage dtypes follow safetensors names: "F32", "F16", "BF16" (bf16 is kept as uint16 bits, since
NumPy has no bfloat16; widening is ``bits << 16`` reinterpreted as float32, exact).
"""
from __future__ import annotations

import numpy as np

from ..constants import CHUNK_ELEMENTS, FLOAT_STORAGE
from ..errors import UnsupportedFormatError
from ..io.dtypes import widen


def chunked_matmul(x: np.ndarray, shape: tuple[int, int], rows) -> np.ndarray:
    """x (..., in) @ W.T for W [out, in] given as ``rows(index) -> float rows of W in x's dtype``, in row
    chunks of at most ``CHUNK_ELEMENTS`` values: a 256000 x 8192 head never needs an 8 GB float32
    temporary. Each output column is still one full dot product, so chunking changes no result."""
    out_dim, in_dim = shape
    step = max(1, CHUNK_ELEMENTS // max(1, in_dim))
    if step >= out_dim:
        return x @ rows(slice(0, out_dim)).T
    out = np.empty(x.shape[:-1] + (out_dim,), dtype=x.dtype)
    for r in range(0, out_dim, step):
        out[..., r:r + step] = x @ rows(slice(r, r + step)).T
    return out


class Weight:
    """Interface: a [out, in] matrix that can be multiplied by, gathered from and dequantized.

    Subclasses implement ``dequantize_rows``; the other operations default to the readable spec
    built on it (chunked ``x @ W.T``, a gather of rows).
    """

    shape: tuple[int, ...]
    storage: str  # a short name of the stored format ("BF16", "int8", "q4_0", ...)
    compute_dtype: np.dtype = np.dtype(np.float32)

    def dequantize_rows(self, index, dtype) -> np.ndarray:  # pragma: no cover - interface
        """Rows ``index`` (a slice or int64 ids) of the float matrix, in ``dtype``."""
        raise NotImplementedError

    def dequantize(self, dtype=None) -> np.ndarray:
        dtype = self.compute_dtype if dtype is None else np.dtype(dtype)
        return self.dequantize_rows(slice(0, self.shape[0]), dtype)

    def matmul(self, x: np.ndarray) -> np.ndarray:
        """x (..., in) -> x @ W.T (..., out), computed in x's dtype."""
        return chunked_matmul(x, self.shape, lambda index: self.dequantize_rows(index, x.dtype))

    def rows(self, ids: np.ndarray, dtype=None) -> np.ndarray:
        """Gather rows (an embedding lookup): ids (...) -> (..., in)."""
        dtype = self.compute_dtype if dtype is None else np.dtype(dtype)
        ids = np.asarray(ids)
        flat = ids.reshape(-1).astype(np.int64)
        return self.dequantize_rows(flat, dtype).reshape(ids.shape + (self.shape[1],))

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

    def __init__(self, raw: np.ndarray, storage: str, *, compute_dtype=np.float32, materialize: bool = False):
        if storage not in FLOAT_STORAGE:
            raise UnsupportedFormatError(f"dense weights must be one of {sorted(FLOAT_STORAGE)}, got {storage!r}")
        self.storage = storage
        self.shape = tuple(raw.shape)
        self.compute_dtype = np.dtype(compute_dtype)
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

    def _source(self) -> tuple[np.ndarray, str]:
        """The stored array and its storage name (a materialized copy is F32 or F64)."""
        if self.raw is not None:
            return self.raw, self.storage
        return self._full, {4: "F32", 8: "F64"}[self._full.itemsize]

    def dequantize_rows(self, index, dtype) -> np.ndarray:
        src, storage = self._source()
        return widen(src[index], storage, dtype)

    def dequantize(self, dtype=None) -> np.ndarray:
        dtype = self.compute_dtype if dtype is None else np.dtype(dtype)
        if self._full is not None and self._full.dtype == dtype:
            return self._full
        src, storage = self._source()
        return widen(src, storage, dtype)

    def rows(self, ids: np.ndarray, dtype=None) -> np.ndarray:
        # Gather first, widen after: an embedding lookup touches only the rows it needs.
        dtype = self.compute_dtype if dtype is None else np.dtype(dtype)
        if self.raw is None:
            return self._full[ids].astype(dtype, copy=False)
        return widen(self.raw[ids], self.storage, dtype)

    def matmul(self, x: np.ndarray) -> np.ndarray:
        if self._full is not None and self._full.dtype == x.dtype:
            return x @ self._full.T
        return super().matmul(x)
