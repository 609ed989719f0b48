"""QuantizedWeight: a packed quantized matrix behind the ``pycohere.spec.weights.Weight`` interface.

Layers see the same three operations as for a dense weight: ``matmul`` (``x @ W.T``), ``dequantize``
and ``rows`` (an embedding lookup). This class is the readable spec: ``matmul`` is ``x @ dequantize().T``
computed over row chunks, so that a 256000-row head never needs its whole float matrix at once. The
Numba kernels (``pycohere.kernels.quant``, tested against this spec) wrap it for the fast path
(``pycohere.kernels.dispatch.fast_weight``). The packed arrays are held as given (memory-mapped
safetensors views stay views).

``PermutedWeight`` is a weight whose input columns are stored in another order (GPTQ act-order).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from ..spec.weights import Weight
from .schemes import QuantizedTensor


class QuantizedWeight(Weight):
    """A ``[out, in]`` weight stored in a quantized scheme (``storage`` is the scheme name).

    ``QuantizedWeight(arrays, metadata)`` validates the arrays against the metadata (see
    :meth:`QuantizedTensor.from_arrays`) without copying them; ``from_tensor`` wraps the
    result of :func:`pycohere.quant.quantize`.
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], metadata, *, compute_dtype=np.float32):
        self.tensor = QuantizedTensor.from_arrays(arrays, metadata)
        self.shape = self.tensor.shape
        self.storage = self.tensor.scheme
        self.group_size = self.tensor.group_size
        self.compute_dtype = np.dtype(compute_dtype)

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

    def dequantize_rows(self, index, dtype) -> np.ndarray:
        return self.tensor.dequantize_rows(index).astype(dtype, copy=False)

    def dequantize(self, dtype=None) -> np.ndarray:
        return self.tensor.dequantize(self.compute_dtype if dtype is None else np.dtype(dtype))

    def rows(self, ids, dtype=None) -> np.ndarray:
        # Only the asked-for rows are gathered and dequantized (an embedding lookup on a
        # 256000-row table touches a few rows, never the whole matrix).
        return self.tensor.rows(ids, self.compute_dtype if dtype is None else np.dtype(dtype))

    def __repr__(self) -> str:
        return (f"QuantizedWeight(shape={self.shape}, storage={self.storage}, "
                f"group_size={self.group_size})")


class PermutedWeight(Weight):
    """``W`` stored as ``inner = W[:, perm]`` (GPTQ ``desc_act``: input columns reordered so that each
    quantization group is contiguous). ``x @ W.T == x[..., perm] @ inner.T``; ``dequantize`` and
    ``rows`` give back W's own column order."""

    def __init__(self, inner: Weight, perm: np.ndarray):
        self.inner = inner
        self.perm = np.asarray(perm, dtype=np.int64)
        self.inverse = np.argsort(self.perm)
        self.shape = inner.shape
        self.storage = inner.storage
        self.compute_dtype = getattr(inner, "compute_dtype", np.dtype(np.float32))

    @property
    def nbytes(self) -> int:
        return int(self.inner.nbytes + self.perm.nbytes)

    def matmul(self, x: np.ndarray) -> np.ndarray:
        return self.inner.matmul(np.take(x, self.perm, axis=-1))

    def dequantize_rows(self, index, dtype) -> np.ndarray:
        return self.inner.dequantize_rows(index, dtype)[:, self.inverse]

    def dequantize(self, dtype=None) -> np.ndarray:
        return self.inner.dequantize(dtype)[:, self.inverse]

    def rows(self, ids, dtype=None) -> np.ndarray:
        return self.inner.rows(ids, dtype)[..., self.inverse]

    def __repr__(self) -> str:
        return f"PermutedWeight({self.inner!r})"
