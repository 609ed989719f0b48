"""llama.cpp's activation rounding: what its CPU matmuls do to ``x`` before multiplying.

pycohere multiplies float32 activations by the exact (dequantized) weights: ``x @ W.T``. llama.cpp's CPU
backend instead converts the activations to the weight type's ``vec_dot_type`` first and takes
integer (or half-precision) dot products (ggml-cpu/ggml-cpu.c ``type_traits_cpu``):

=========================  ==============  ===================================================
weight type                vec_dot_type    activations become
=========================  ==============  ===================================================
F32                        F32             unchanged
F16 / BF16                 F16 / BF16      rounded to half / bfloat16 (nearest even)
Q8_0, Q4_0, Q5_0, IQ4_NL  Q8_0            blocks of 32: ``d = fp16(amax / 127)``,
                                           ``q = rint(x * (127 / amax))`` (ggml-cpu/arch/x86/quants.c
                                           ``quantize_row_q8_0``; the repacked AVX2 path rounds alike)
Q4_1, Q5_1                 Q8_1            as Q8_0, plus ``s = fp16(d * sum q)`` for the min term
                                           (not emulated: pycohere uses ``sum(d * q)``)
Q2_K .. Q6_K, IQ4_XS       Q8_K            blocks of 256: ``iscale = -127 / max`` (signed element of
                                           largest magnitude, first on ties), ``q = min(127,
                                           rint(iscale * x))``, ``d = 1 / iscale`` in float32
                                           (ggml-quants.c ``quantize_row_q8_K_ref``)
=========================  ==============  ===================================================

The dot product of the rounded blocks with the weight blocks then equals ``x' @ W.T`` with
``x' = d * q`` up to float32 summation order, so rounding ``x`` and calling the ordinary (exact) matmul
reproduces llama.cpp's numerics: ``from_pretrained(path, activations="llama.cpp")``. That brings
pycohere from ~1e-2 to a few 1e-3 of llama.cpp's logits on quantized GGUF files (what remains: float32
differences of ~1e-6 upstream flip individual roundings; tests/test_llama_cpp_parity.py).

The rounded blocks are also what makes integer arithmetic possible: for q8_0 / q4_0 weights the
numba backend multiplies them with the AVX2 integer kernels of ``pycohere.kernels.int8_dot``, and for
iq4_nl / iq4_xs weights with those of ``pycohere.kernels.iquant`` (their readable twin is this module:
``round_activations`` followed by the exact float matmul).
"""
from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..io.dtypes import bf16_bits
from ..spec.weights import Weight

# storage of a Weight (DenseWeight dtype or quantization scheme) -> llama.cpp's vec_dot_type
VEC_DOT_TYPE = {"F32": None, "F64": None, "F16": "f16", "BF16": "bf16", "q8_0": "q8_0", "q4_0": "q8_0",
                "q4_1": "q8_0", "q5_0": "q8_0", "q5_1": "q8_0",
                "q2_k": "q8_k", "q3_k": "q8_k", "q4_k": "q8_k", "q5_k": "q8_k", "q6_k": "q8_k",
                "iq4_nl": "q8_0", "iq4_xs": "q8_k"}  # ggml-cpu.c type_traits_cpu[GGML_TYPE_IQ4_NL / IQ4_XS]


def round_q8_0(x: np.ndarray) -> np.ndarray:
    """x (..., n) float32 -> d * q per block of 32, as ggml's quantize_row_q8_0 (n % 32 == 0)."""
    blocks = x.reshape(-1, 32)
    amax = np.abs(blocks).max(axis=1, keepdims=True)
    with np.errstate(divide="ignore"):
        inverse = np.where(amax != 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
    q = np.rint(blocks * inverse)  # float32 product, then round half to even (_mm256_round_ps)
    d = (amax / np.float32(127)).astype(np.float16).astype(np.float32)
    return (d * q).reshape(x.shape)


def round_q8_k(x: np.ndarray) -> np.ndarray:
    """x (..., n) float32 -> d * q per block of 256, as ggml's quantize_row_q8_K_ref (n % 256 == 0)."""
    blocks = x.reshape(-1, 256)
    signed_max = np.take_along_axis(blocks, np.abs(blocks).argmax(axis=1)[:, None], axis=1)
    with np.errstate(divide="ignore"):
        iscale = np.where(signed_max != 0, np.float32(-127) / signed_max, np.float32(0)).astype(np.float32)
        d = np.where(iscale != 0, np.float32(1) / iscale, np.float32(0)).astype(np.float32)
    q = np.minimum(np.rint(blocks * iscale), np.float32(127))  # nearest_int: round half to even
    return (d * q).reshape(x.shape)


def round_activations(x: np.ndarray, vec_dot_type: str | None) -> np.ndarray:
    """The activations llama.cpp's dot product of type ``vec_dot_type`` sees, in x's dtype."""
    if vec_dot_type is None:
        return x
    x32 = np.ascontiguousarray(x, dtype=np.float32)
    if vec_dot_type == "f16":
        out = x32.astype(np.float16).astype(np.float32)
    elif vec_dot_type == "bf16":
        out = (bf16_bits(x32).astype(np.uint32) << 16).view(np.float32)
    elif vec_dot_type == "q8_0":
        out = round_q8_0(x32)
    elif vec_dot_type == "q8_k":
        out = round_q8_k(x32)
    else:
        raise ValueError(f"unknown vec_dot_type {vec_dot_type!r}")
    return out.astype(x.dtype, copy=False)


class LlamaCppActivations(Weight):
    """A Weight whose ``matmul`` first rounds ``x`` as llama.cpp does for this weight's type.

    Embedding lookups (``rows``) and ``dequantize`` are unchanged: llama.cpp's get_rows dequantizes
    exactly."""

    def __init__(self, weight: Weight, name: str = "weight"):
        if weight.storage not in VEC_DOT_TYPE:
            raise InputError(
                f"activations='llama.cpp' emulates llama.cpp's matmuls, which have no counterpart for {name} "
                f"stored as {weight.storage}; it applies to F32/F16/BF16 and GGUF block types (q2_k..q8_0, iq4_nl, "
                "iq4_xs) weights (load a GGUF file, or use the default activations='float32')")
        self.weight = weight
        # (q8_0 / q8_k blocks always fit: q4_0 / q8_0 / iq4_nl rows hold whole blocks of 32, k-quants and
        # iq4_xs of 256)
        self.vec_dot_type = VEC_DOT_TYPE[weight.storage]
        self.shape, self.storage = weight.shape, weight.storage

    @property
    def nbytes(self) -> int:
        return self.weight.nbytes

    def dequantize(self, dtype=None) -> np.ndarray:
        return self.weight.dequantize(dtype)

    def rows(self, ids, dtype=None) -> np.ndarray:
        return self.weight.rows(ids, dtype)

    def matmul(self, x: np.ndarray) -> np.ndarray:
        return self.weight.matmul(round_activations(x, self.vec_dot_type))

    def dequantize_rows(self, index, dtype) -> np.ndarray:
        return self.weight.dequantize_rows(index, dtype)

    def __repr__(self) -> str:
        return f"LlamaCppActivations({self.weight!r}, vec_dot_type={self.vec_dot_type})"
