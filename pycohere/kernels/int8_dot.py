"""Integer GEMVs for activations rounded to 8-bit blocks: llama.cpp's numerics outside the decode step.

With ``activations="llama.cpp"`` (``pycohere.quant.activations``) the input ``x`` of a q8_0 / q4_0 matmul
is first rounded to Q8_0 blocks of 32 (``x' = d * q``: ``q`` int8, ``d`` one fp16-valued float per block),
and that of a q4_K / q6_K matmul to Q8_K blocks of 256. The spec then multiplies ``x'`` by the dequantized
weights in float32. Because ``q`` and the weight codes are small integers, the same sum can be formed the
way llama.cpp forms it: per block an exact integer dot product of the codes, scaled once by the blocks'
scales. The row dot products are ``pycohere.kernels.irows`` (LLVM IR: vpmaddubsw / vpmaddwd, or vpdpbusd
where the CPU has VNNI); the decode step calls them directly, and ``matmul_codes`` here serves the rest (a
llama.cpp-rounded weight's ``matmul``: the prefill, and a step outside the decode engine).

Available on x86-64 CPUs with AVX2 (``AVAILABLE``); elsewhere, and with ``NUMBA_DISABLE_JIT``, the spec path
(round ``x``, then the float kernels) is used. Tested against that spec (tests/test_int8_dot.py,
tests/test_kernel_twins.py "rounded-matmul/*"): equal up to float32 summation order.
"""
from __future__ import annotations

import numpy as np

from . import irows
from .jit import njit, prange
from .rounding import CODES, quantize_rows

AVAILABLE = irows.AVAILABLE
SCHEMES = tuple(irows.KINDS)  # weight schemes with an integer kernel: q8_0, q4_0 (Q8_0 codes), q4_k, q6_k (Q8_K)


def quantize_activations(x2: np.ndarray, vec_dot_type: str = "q8_0"):
    """(codes int8 (R, n), block scales float32 (R, n / 32; Q8_K: entry k for block k of 256), sums of 16
    codes int16 (R, n / 16)) of x2 (R, n) rounded as ``vec_dot_type`` ("q8_0" or "q8_k")."""
    x = np.array(x2, dtype=np.float32, order="C", copy=True)  # (quantize_rows also rounds it in place)
    R, n = x.shape
    xq, xd, xb = np.empty((R, n), np.int8), np.empty((R, max(1, n // 32)), np.float32), np.empty(
        (R, max(1, n // 16)), np.int16)
    quantize_rows(x, CODES[vec_dot_type], xq, xd, xb)
    return xq, xd, xb


# four activation rows per weight row visit, so that a prefill's rows share its loads and unpacking; the
# activations in tiles of TILE_ROWS (their codes stay in L2 while every weight row passes over them)
TILE_ROWS = 64


@njit(cache=True, parallel=True)
def matmul_codes(kind, q, xq, xd, xb):
    """y (R, O) = the activation rows given as codes (xq, xd, xb) times the rows of weight q of ``kind`` (an
    index of ``irows.KINDS``)."""
    R, O = xq.shape[0], q.shape[0]
    y = np.empty((R, O), dtype=np.float32)
    for r0 in range(0, R, TILE_ROWS):
        r1 = min(R, r0 + TILE_ROWS)
        for o in prange(O):
            r = r0
            while r + 4 <= r1:
                y[r, o], y[r + 1, o], y[r + 2, o], y[r + 3, o] = irows.dot4(kind, q, o, xq, r, xd, xb)
                r += 4
            for rr in range(r, r1):
                y[rr, o] = irows.dot(kind, q, o, xq, rr, xd, xb)
    return y


_BLOCK = {"q8_0": (32, 34), "q4_0": (32, 18), "q4_k": (256, 144), "q6_k": (256, 210)}  # values, bytes


def gemv_rounded(x2: np.ndarray, qweight: np.ndarray, scheme: str) -> np.ndarray | None:
    """x2 (R, in) float32 rounded as llama.cpp rounds it for ``scheme``, times a q8_0 / q4_0 / q4_k / q6_k
    weight, as integer dot products (any number of rows: a decode's GEMV, a prefill's GEMM); None when
    this host or shape has no kernel (the caller then takes the spec path)."""
    if not AVAILABLE or scheme not in SCHEMES:
        return None
    values, nbytes = _BLOCK[scheme]
    if x2.shape[1] % values or qweight.shape[-1] * values != x2.shape[1] * nbytes:
        return None
    xq, xd, xb = quantize_activations(x2, irows.KINDS[scheme])
    w = qweight.view()
    w.flags.writeable = False  # one Numba signature for mapped and in-memory weights
    return matmul_codes(SCHEMES.index(scheme), w, xq, xd, xb)
