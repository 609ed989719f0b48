"""QuantizedWeight: a packed quantized matrix behind the ``pycohere.tensors.Weight`` interface.

Layers see the same three operations as for a dense weight: ``matmul`` (``x @ W.T``),
``dequantize`` and ``rows`` (an embedding lookup). This class is the readable spec: ``matmul``
is ``x @ dequantize().T`` (inherited); Numba kernels subclass or replace it later and are tested
against it. The packed arrays are held as given (memory-mapped safetensors views stay views).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from ..tensors import Weight
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
        return self.tensor.rows(ids, self.compute_dtype if dtype is None else np.dtype(dtype))

    def __repr__(self) -> str:
        return (f"QuantizedWeight(shape={self.shape}, storage={self.storage}, "
                f"group_size={self.group_size})")
