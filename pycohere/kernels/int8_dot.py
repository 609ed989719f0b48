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
from .jit import f16_in, njit, prange
from .rounding import CODES, code_buffers, quantize_rows

AVAILABLE = irows.AVAILABLE
SCHEMES = tuple(irows.KINDS)  # weight schemes with an integer kernel: q8_0, q4_0 (Q8_0 codes), q4_k, q6_k (Q8_K)


def quantize_activations(x2: np.ndarray, vec_dot_type: str = "q8_0"):
    """(codes int8 (R, n), block scales float32 (R, n / 32; Q8_K: entry k for block k of 256), sums of 16
    codes int16 (R, n / 16)) of x2 (R, n) rounded as ``vec_dot_type`` ("q8_0" or "q8_k")."""
    x = np.array(x2, dtype=np.float32, order="C", copy=True)  # (quantize_rows also rounds it in place)
    xq, xd, xb = code_buffers(*x.shape)
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


# --- a prefill's GEMM on repacked tiles (AVX-512 VNNI hosts: ``irows.tile4``) ------------------------------
TILE = 16  # weight rows per tile: the lanes of one 512-bit int32 vector
TILE_MIN_ROWS = 16  # fewer activation rows do not repay the repacking (measured: BENCHMARKS.md)
# q8_0, q4_0, q4_k. (q6_k's scales are per 16 values: a 16-value tile variant measured 162 against 307 GFLOP/s
# for its rows four at a time, the plain repacking of its split 6-bit codes costing more than the tiles save)
TILE_KINDS = (0, 1, 2)


if irows.TILES:  # (their IR needs 512-bit vpdpbusd)
    @njit(cache=True, inline="always")
    def _word(q, o, i):
        """The 4 bytes q[o, i:i + 4] as one little-endian uint32 (LLVM folds it into one unaligned load)."""
        return (np.uint32(q[o, i]) | (np.uint32(q[o, i + 1]) << np.uint32(8))
                | (np.uint32(q[o, i + 2]) << np.uint32(16)) | (np.uint32(q[o, i + 3]) << np.uint32(24)))

    @njit(cache=True)
    def repack_tile(kind, q, o0, n, codes, scales, offs):
        """Rows o0..o0+n (n <= 16) of weight q of ``kind`` as a tile for ``irows.tile4``: codes (nb, 8, 16, 4) u8
        (block of 32, group of 4 values, row, value), and per block and row the scale s and offset m of
        w = s c + m (the offset then enters through the activation's code sums). q8_0: c = w + 128, s = d,
        m = -128 d; q4_0: c = n, s = d, m = -8 d; q4_K: c = n, s = d sc_j, m = -dmin m_j. Rows past n are 0.
        A group of 4 codes is moved as one uint32 word (nibbles masked four at a time, q8_0's + 128 as the
        sign bits flipped): 4-6x faster than value by value, which cost a quarter of a 128-token prefill."""
        nb = codes.shape[0]
        words = codes.reshape(nb * 8 * TILE * 4).view(np.uint32).reshape(nb, 8, TILE)  # (nb, group, row)
        if n < TILE:
            words[...] = 0
            scales[...] = 0
            offs[...] = 0
        low, flip = np.uint32(0x0F0F0F0F), np.uint32(0x80808080)
        for j in range(n):
            o = o0 + j
            for k in range(nb):
                if kind == 0:
                    d = f16_in(q, o, 34 * k)
                    for g in range(8):
                        words[k, g, j] = _word(q, o, 34 * k + 2 + 4 * g) ^ flip
                    scales[k, j], offs[k, j] = d, np.float32(-128.0) * d
                elif kind == 1:
                    d = f16_in(q, o, 18 * k)
                    for g in range(4):  # byte l holds element l (low nibble) and l + 16 (high)
                        v = _word(q, o, 18 * k + 2 + 4 * g)
                        words[k, g, j] = v & low
                        words[k, 4 + g, j] = (v >> np.uint32(4)) & low
                    scales[k, j], offs[k, j] = d, np.float32(-8.0) * d
                else:
                    K, sub = k // 8, k % 8
                    blk = 144 * K
                    sc, mn = irows.scale_min_k4(q, o, blk, sub)
                    shift = np.uint32(4 * (sub % 2))  # sub-block 2i: low nibbles of 32 bytes, 2i + 1: high
                    for g in range(8):
                        words[k, g, j] = (_word(q, o, blk + 16 + 32 * (sub // 2) + 4 * g) >> shift) & low
                    scales[k, j] = f16_in(q, o, blk) * np.float32(sc)
                    offs[k, j] = -(f16_in(q, o, blk + 2) * np.float32(mn))

    @njit(cache=True, parallel=True)
    def matmul_tiles(kind, q, xq, xd, xb):
        """``matmul_codes`` through repacked 16-row tiles: each tile is repacked once and multiplied with every
        activation row, four at a time (``irows.tile4``); the last R % 4 rows take ``irows.dot``."""
        R, O = xq.shape[0], q.shape[0]
        nb = xq.shape[1] // 32
        y = np.empty((R, O), dtype=np.float32)
        R4 = R // 4 * 4
        dshift = 3 if kind == 2 else 0  # log2 of the 32-value blocks per activation scale (Q8_K: 8)
        for ti in prange((O + TILE - 1) // TILE):
            o0 = ti * TILE
            n = min(TILE, O - o0)
            codes = np.empty((nb, 8, TILE, 4), dtype=np.uint8)
            scales = np.empty((nb, TILE), dtype=np.float32)
            offs = np.empty((nb, TILE), dtype=np.float32)
            out = np.empty((4, TILE), dtype=np.float32)
            repack_tile(kind, q, o0, n, codes, scales, offs)
            for r in range(0, R4, 4):
                irows.tile4(codes, scales, offs, xq, xd, xb, r, dshift, out)
                for t in range(4):
                    for j in range(n):
                        y[r + t, o0 + j] = out[t, j]
            for r in range(R4, R):
                for j in range(n):
                    y[r, o0 + j] = irows.dot(kind, q, o0 + j, xq, r, xd, xb)
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
    kind = SCHEMES.index(scheme)
    if irows.TILES and kind in TILE_KINDS and x2.shape[0] >= TILE_MIN_ROWS:
        return matmul_tiles(kind, w, xq, xd, xb)
    return matmul_codes(kind, w, xq, xd, xb)
