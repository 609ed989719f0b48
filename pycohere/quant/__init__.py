"""Quantized weights: registered block schemes (their NumPy dequantizers are the spec), packed tensors and
their ``Weight``, ``QuantizationConfig``, streaming quantization, and llama.cpp's activation rounding.

    >>> from pycohere.quant import quantize, QuantizedWeight
    >>> q = quantize(w, "int4", group_size=64)        # w: float [out, in]
    >>> q.arrays, q.metadata                          # plain arrays + JSON-able dict
    >>> W = QuantizedWeight(q.arrays, q.metadata)     # what layers use: W.matmul(x)

Schemes: int8 (per channel or per group), int4, int4-asym, nf4 (bitsandbytes), and llama.cpp's
q8_0, q4_0, q4_1, q5_0, q5_1 (byte-for-byte GGUF blocks) plus the dequantize-only k-quants q2_k, q3_k,
q4_k, q5_k, q6_k and non-linear iq4_nl, iq4_xs. The Numba kernels are in ``pycohere.kernels``; quantized checkpoints are read by
``pycohere.checkpoints`` and written by ``pycohere.export``.

May import: ``pycohere.spec``, ``pycohere.io`` and below.
"""
from __future__ import annotations

from .config import QuantizationConfig
from .schemes import (FORMAT_VERSION, NF4_TABLE, SCHEMES, QuantizedTensor, QuantScheme,
                      array_shapes, dequantize, get_scheme, quantize)
from .weight import PermutedWeight, QuantizedWeight

__all__ = [
    "FORMAT_VERSION", "NF4_TABLE", "SCHEMES", "QuantScheme", "QuantizedTensor", "QuantizedWeight", "PermutedWeight",
    "array_shapes", "dequantize", "get_scheme", "quantize", "QuantizationConfig",
]
