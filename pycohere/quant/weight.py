"""QuantizedWeight: a packed quantized matrix behind the ``pycohere.tensors.Weight`` interface.

Layers see the same three operations as for a dense weight: ``matmul`` (``x @ W.T``),
``dequantize`` and ``rows`` (an embedding lookup). With the numpy backend this class is the
readable spec: ``matmul`` is ``x @ dequantize().T``, computed over row chunks so that a 256000-row
head never needs its whole float matrix at once. With ``backend="numba"`` and float32 inputs the
kernels of ``pycohere.quant.kernels`` (tested against this spec) run instead. The packed arrays
are held as given (memory-mapped safetensors views stay views).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from ..tensors import CHUNK_ELEMENTS, Weight
from .schemes import QuantizedTensor


class QuantizedWeight(Weight):
    """A ``[out, in]`` weight stored in a quantized scheme (``storage`` is the scheme name).

    ``QuantizedWeight(arrays, metadata)`` validates the arrays against the metadata (see
    :meth:`QuantizedTensor.from_arrays`) without copying them; ``from_tensor`` wraps the
    result of :func:`pycohere.quant.quantize`.
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], metadata, *, compute_dtype=np.float32,
                 backend: str = "numpy"):
        self.tensor = QuantizedTensor.from_arrays(arrays, metadata)
        self.shape = self.tensor.shape
        self.storage = self.tensor.scheme
        self.group_size = self.tensor.group_size
        self.compute_dtype = np.dtype(compute_dtype)
        self.backend = backend

    @classmethod
    def from_tensor(cls, q: QuantizedTensor, **kwargs) -> QuantizedWeight:
        return cls(q.arrays, q.metadata, **kwargs)

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        return self.tensor.arrays

    @property
    def metadata(self) -> dict:
        return self.tensor.metadata

    @property
    def nbytes(self) -> int:
        return self.tensor.nbytes

    def dequantize(self, dtype=None) -> np.ndarray:
        return self.tensor.dequantize(self.compute_dtype if dtype is None else np.dtype(dtype))

    def rows(self, ids, dtype=None) -> np.ndarray:
        # Only the asked-for rows are gathered and dequantized (an embedding lookup on a
        # 256000-row table touches a few rows, never the whole matrix).
        dtype = self.compute_dtype if dtype is None else np.dtype(dtype)
        if self.backend == "numba" and dtype == np.float32 and np.asarray(ids).dtype.kind in "iu":
            from .kernels import quantized_rows
            return quantized_rows(self.tensor, ids)
        return self.tensor.rows(ids, dtype)

    def matmul(self, x: np.ndarray) -> np.ndarray:
        """x (..., in) -> x @ dequantize().T (..., out) in x's dtype."""
        if self.backend == "numba" and x.dtype == np.float32:
            from .kernels import quantized_matmul
            return quantized_matmul(x, self.tensor)
        # The spec, by row chunks: each output column is still one full dot product.
        out_dim, in_dim = self.shape
        step = max(1, CHUNK_ELEMENTS // max(1, in_dim))
        if step >= out_dim:
            return x @ self.dequantize(x.dtype).T
        out = np.empty(x.shape[:-1] + (out_dim,), dtype=x.dtype)
        for r in range(0, out_dim, step):
            w = self.tensor._dequantize_rows(slice(r, r + step)).astype(x.dtype, copy=False)
            out[..., r:r + step] = x @ w.T
        return out

    def __repr__(self) -> str:
        return (f"QuantizedWeight(shape={self.shape}, storage={self.storage}, "
                f"group_size={self.group_size})")
