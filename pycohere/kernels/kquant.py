"""Numba kernels for llama.cpp's k-quants ``q4_k`` and ``q6_k``, read in place from ggml blocks, and
dequantizers (no GEMV) for ``q5_0``, ``q5_1``, ``q2_k``, ``q3_k`` and ``q5_k``.

The NumPy spec of both formats is ``pycohere.quant.schemes.Q4_K`` / ``Q6_K`` (bit-exact against
gguf-py's ``gguf.quants``); these kernels are its fast twins, registered with
listed in the scheme tables of :mod:`pycohere.kernels.quant` (and in :mod:`pycohere.kernels.registry`):

* ``gemv_q4_k`` / ``gemv_q6_k`` (decode, up to ``GEMV_MAX_ROWS`` input rows): twin of
  ``x @ dequantize().T``. Parallel over chunks of output rows; each packed row is read once.
* ``dequant_q4_k`` / ``dequant_q6_k`` (prefill tiles for BLAS, embedding rows): bit-identical to
  ``dequantize_blocks`` (no fastmath, so ``(d * sc) * n - dmin * m`` rounds exactly as NumPy does).
* ``dequant_q5_0`` / ``_q5_1`` / ``_q2_k`` / ``_q3_k`` / ``_q5_k``: bit-identical twins of those schemes'
  ``dequantize_blocks`` (layouts in their docstrings); with no GEMV registered, decode of these types
  also multiplies dequantized tiles with BLAS.

Layouts (ggml-common.h ``block_q4_K`` / ``block_q6_K``; ggml-quants.c ``dequantize_row_q4_K`` /
``dequantize_row_q6_K``), 256 values per block:

* Q4_K, 144 bytes: f16 ``d``, f16 ``dmin``, 12 bytes of 6-bit (scale, min) pairs for eight
  sub-blocks of 32, 128 bytes ``qs``: byte ``32 i + l`` holds element ``64 i + l`` (low nibble, sub-block
  ``2 i``) and ``64 i + 32 + l`` (high nibble, sub-block ``2 i + 1``). ``w = d sc_j n - dmin m_j``.
* Q6_K, 210 bytes: ``ql[128]``, ``qh[64]``, int8 ``sc[16]`` (one per 16 values), f16 ``d`` last.
  Two halves of 128 values; in half ``h``, for ``l < 32`` the values ``l, l+32, l+64, l+96`` take
  the low nibble of ``ql[64h+l]``, ``ql[64h+l+32]``, then their high nibbles, with bits 0-1, 2-3,
  4-5, 6-7 of ``qh[32h+l]`` as bits 4-5; ``w = d sc (q - 32)``.

The GEMVs follow ``pycohere/kernels/quant.py``: per-position float32 "lanes" (a scratch row as wide
as the innermost loop, reduced once per output row) so that LLVM vectorises the short loops;
codes go through int32 before float32 (a vectorised int64 -> float conversion does not exist on
AVX2); trip counts are computed at run time (a constant 32 or 16 is fully unrolled by LLVM and then
not vectorised); f16 scales are decoded through ``pycohere.kernels.jit.F16_TABLE``. Q4_K's mins are
applied once per sub-block through the sub-block sums of x: ``sum_l x_l (s n_l - m) = s sum_l x_l
n_l - m sum_l x_l``.
"""
from __future__ import annotations

import numpy as np

from .jit import F16_TABLE, FAST, ROWS_PER_JOB as CHUNK, f16_at, njit, prange
from .rows import Q4_K_BYTES, Q6_K_BYTES, q4_k_scales, q6_k_code, row_q4_k, row_q6_k

# --- decode GEMV: the row bodies of pycohere.kernels.rows ---------------------------------------------
@njit(cache=True, parallel=True, fastmath=FAST)
def gemv_q4_k(x, xsum, q, f16):
    """x (R, in) f32, xsum (R, in/32) the sums of x over each 32-value sub-block, q (out,
    blocks*144) u8 -> (R, out). Twin: ``x @ Q4_K.dequantize().T``."""
    O = q.shape[0]
    y = np.empty((x.shape[0], O), dtype=np.float32)
    for c in prange((O + CHUNK - 1) // CHUNK):
        lanes = np.empty(32, dtype=np.float32)
        scale = np.empty(8, dtype=np.float32)
        mins = np.empty(8, dtype=np.float32)
        for o in range(c * CHUNK, min(O, c * CHUNK + CHUNK)):
            row_q4_k(y, o, x, xsum, q, o, f16, lanes, scale, mins)
    return y


@njit(cache=True, parallel=True, fastmath=FAST)
def gemv_q6_k(x, q, qs, f16):
    """x (R, in) f32, q (out, blocks*210) u8 and qs its int8 view (for the scales) -> (R, out).
    Twin: ``x @ Q6_K.dequantize().T``."""
    O = q.shape[0]
    y = np.empty((x.shape[0], O), dtype=np.float32)
    for c in prange((O + CHUNK - 1) // CHUNK):
        lanes = np.empty(16, dtype=np.float32)
        for o in range(c * CHUNK, min(O, c * CHUNK + CHUNK)):
            row_q6_k(y, o, x, q, qs, o, f16, lanes)
    return y


@njit(cache=True, parallel=True)
def dequant_q4_k(q, f16, out):
    """Rows of Q4_K blocks -> float32 rows, as ``Q4_K.dequantize_blocks``: ``(d sc) n - dmin m``."""
    for o in prange(q.shape[0]):
        scale = np.empty(8, dtype=np.float32)
        mins = np.empty(8, dtype=np.float32)
        for k in range(q.shape[1] // Q4_K_BYTES):
            b = k * Q4_K_BYTES
            q4_k_scales(q, o, b, f16, scale, mins)
            for j in range(8):
                qb = b + 16 + (j // 2) * 32
                shift = np.int32(4 * (j % 2))
                e = k * 256 + j * 32
                for l in range(32):
                    v = (np.int32(q[o, qb + l]) >> shift) & np.int32(15)
                    out[o, e + l] = scale[j] * np.float32(v) - mins[j]


@njit(cache=True, parallel=True)
def dequant_q6_k(q, qs, f16, out):
    """Rows of Q6_K blocks -> float32 rows, as ``Q6_K.dequantize_blocks``: ``(d sc) (q - 32)``."""
    for o in prange(q.shape[0]):
        for k in range(q.shape[1] // Q6_K_BYTES):
            b = k * Q6_K_BYTES
            d = f16_at(q, o, b + 208, f16)
            for h in range(2):
                for l in range(32):
                    s = b + 192 + 8 * h + l // 16
                    a = np.int32(q[o, b + 64 * h + l])
                    a2 = np.int32(q[o, b + 64 * h + 32 + l])
                    hi = np.int32(q[o, b + 128 + 32 * h + l])
                    e = k * 256 + 128 * h + l
                    out[o, e] = (d * np.float32(qs[o, s])) * np.float32(q6_k_code(a, hi, 0, 0))
                    out[o, e + 32] = (d * np.float32(qs[o, s + 2])) * np.float32(q6_k_code(a2, hi, 0, 2))
                    out[o, e + 64] = (d * np.float32(qs[o, s + 4])) * np.float32(q6_k_code(a, hi, 4, 4))
                    out[o, e + 96] = (d * np.float32(qs[o, s + 6])) * np.float32(q6_k_code(a2, hi, 4, 6))


# --- dequantize-only types: Q5_0, Q5_1, Q2_K, Q3_K, Q5_K ------------------------------------------------
# Twins of Q5_0 / Q5_1 / Q2_K / Q3_K / Q5_K.dequantize_blocks in pycohere.quant.schemes (layouts there and in
# ggml-quants.c dequantize_row_*). No GEMV: decode and prefill both go through these tiles and BLAS.
# Each value is computed with the spec's float32 operations in the spec's order, so equal bit for bit.
Q5_0_BYTES, Q5_1_BYTES, Q2_K_BYTES, Q3_K_BYTES, Q5_K_BYTES = 22, 24, 84, 110, 176


@njit(cache=True, inline="always")
def _bit(q, o, b, j):
    """Bit j of the little-endian bit field starting at byte b of row o (ggml's qh / hmask)."""
    return (np.int32(q[o, b + (j >> 3)]) >> np.int32(j & 7)) & np.int32(1)


@njit(cache=True, parallel=True)
def dequant_q5_0(q, f16, out):
    """Rows of Q5_0 blocks (f16 d, qh[4], qs[16]) -> float32 rows: ``(n - 16) * d``."""
    for o in prange(q.shape[0]):
        for k in range(q.shape[1] // Q5_0_BYTES):
            b = k * Q5_0_BYTES
            d = f16_at(q, o, b, f16)
            for j in range(16):
                v = np.int32(q[o, b + 6 + j])
                lo = (v & np.int32(15)) | (_bit(q, o, b + 2, j) << np.int32(4))
                hi = (v >> np.int32(4)) | (_bit(q, o, b + 2, j + 16) << np.int32(4))
                out[o, k * 32 + j] = np.float32(lo - np.int32(16)) * d
                out[o, k * 32 + j + 16] = np.float32(hi - np.int32(16)) * d


@njit(cache=True, parallel=True)
def dequant_q5_1(q, f16, out):
    """Rows of Q5_1 blocks (f16 d, f16 m, qh[4], qs[16]) -> float32 rows: ``n * d + m``."""
    for o in prange(q.shape[0]):
        for k in range(q.shape[1] // Q5_1_BYTES):
            b = k * Q5_1_BYTES
            d = f16_at(q, o, b, f16)
            m = f16_at(q, o, b + 2, f16)
            for j in range(16):
                v = np.int32(q[o, b + 8 + j])
                lo = (v & np.int32(15)) | (_bit(q, o, b + 4, j) << np.int32(4))
                hi = (v >> np.int32(4)) | (_bit(q, o, b + 4, j + 16) << np.int32(4))
                out[o, k * 32 + j] = np.float32(lo) * d + m
                out[o, k * 32 + j + 16] = np.float32(hi) * d + m


@njit(cache=True, parallel=True)
def dequant_q2_k(q, f16, out):
    """Rows of Q2_K blocks (scales[16], qs[64], f16 d, f16 dmin) -> float32 rows:
    ``(d sc_j) q - dmin m_j``, element 128h + 32s + l = bits 2s..2s+1 of qs[32h + l]."""
    for o in prange(q.shape[0]):
        for k in range(q.shape[1] // Q2_K_BYTES):
            b = k * Q2_K_BYTES
            d = f16_at(q, o, b + 80, f16)
            dmin = f16_at(q, o, b + 82, f16)
            for h in range(2):
                for s in range(4):
                    for l in range(32):
                        e = 128 * h + 32 * s + l
                        sm = np.int32(q[o, b + e // 16])
                        code = (np.int32(q[o, b + 16 + 32 * h + l]) >> np.int32(2 * s)) & np.int32(3)
                        scale = d * np.float32(sm & np.int32(15))
                        offset = dmin * np.float32(sm >> np.int32(4))
                        out[o, k * 256 + e] = scale * np.float32(code) - offset


@njit(cache=True, parallel=True)
def dequant_q3_k(q, f16, out):
    """Rows of Q3_K blocks (hmask[32], qs[64], scales[12], f16 d) -> float32 rows: ``(d (sc_j - 32)) q``
    with q = 2 bits of qs minus 4 where the hmask bit is clear (see ``Q3_K`` in the schemes)."""
    for o in prange(q.shape[0]):
        for k in range(q.shape[1] // Q3_K_BYTES):
            b = k * Q3_K_BYTES
            d = f16_at(q, o, b + 108, f16)
            for h in range(2):
                for s in range(4):
                    for l in range(32):
                        e = 128 * h + 32 * s + l
                        j = e // 16  # sub-block: its 6-bit scale is a nibble of byte j % 8 + 2 bits of byte 8 + j % 4
                        low = (np.int32(q[o, b + 96 + j % 8]) >> np.int32(4 * (j // 8))) & np.int32(15)
                        high = (np.int32(q[o, b + 104 + j % 4]) >> np.int32(2 * (j // 4))) & np.int32(3)
                        sc = (low | (high << np.int32(4))) - np.int32(32)
                        code = (np.int32(q[o, b + 32 + 32 * h + l]) >> np.int32(2 * s)) & np.int32(3)
                        hbit = (np.int32(q[o, b + l]) >> np.int32(4 * h + s)) & np.int32(1)  # hmask[l], bit 4h + s
                        code -= np.int32(4) * (np.int32(1) - hbit)  # minus 4 where the bit is clear
                        out[o, k * 256 + e] = (d * np.float32(sc)) * np.float32(code)


@njit(cache=True, parallel=True)
def dequant_q5_k(q, f16, out):
    """Rows of Q5_K blocks (Q4_K's d, dmin, scales[12], then qh[32], qs[128]) -> float32 rows:
    ``(d sc_j) n - dmin m_j``; bit j of qh[l] is bit 4 of element 32 j + l."""
    for o in prange(q.shape[0]):
        scale = np.empty(8, dtype=np.float32)
        mins = np.empty(8, dtype=np.float32)
        for k in range(q.shape[1] // Q5_K_BYTES):
            b = k * Q5_K_BYTES
            q4_k_scales(q, o, b, f16, scale, mins)  # the same 16-byte header as Q4_K
            for j in range(8):
                qb = b + 48 + (j // 2) * 32
                shift = np.int32(4 * (j % 2))
                for l in range(32):
                    n = ((np.int32(q[o, qb + l]) >> shift) & np.int32(15)) | \
                        (((np.int32(q[o, b + 16 + l]) >> np.int32(j)) & np.int32(1)) << np.int32(4))
                    out[o, k * 256 + j * 32 + l] = scale[j] * np.float32(n) - mins[j]


# --- the wrappers listed in pycohere.kernels.quant's tables ---------------------------------------
def _sub_block_sums(x2: np.ndarray) -> np.ndarray:
    """(R, in) -> (R, in/32): the sum of x over each Q4_K sub-block."""
    return np.ascontiguousarray(x2.reshape(x2.shape[0], -1, 32).sum(axis=2, dtype=np.float32))


def gemv_q4_k_arrays(x2, a):
    return gemv_q4_k(x2, _sub_block_sums(x2), a["qweight"], F16_TABLE)


def gemv_q6_k_arrays(x2, a):
    q = a["qweight"]
    return gemv_q6_k(x2, q, q.view(np.int8), F16_TABLE)


def dequant_q4_k_arrays(a, out):
    dequant_q4_k(a["qweight"], F16_TABLE, out)


def dequant_q6_k_arrays(a, out):
    q = a["qweight"]
    dequant_q6_k(q, q.view(np.int8), F16_TABLE, out)


def dequant_blocks(kernel):
    return lambda a, out: kernel(a["qweight"], F16_TABLE, out)
