"""Prefill matmuls (more than a few input rows): ``gemm``, a register-tiled GEMM in Numba that reads bf16,
f16 or float32 weights in place, and ``tiled_matmul`` for weights it cannot read (quantized): rows
widened (or dequantized) tile by tile into one reused per-thread buffer, each tile multiplied by ``gemm``.

Why a reused buffer of about a MiB, not a fresh 16 MiB tile per call: a fresh large ``np.empty`` is a
new anonymous mapping, and its first write page-faults every 4 KiB page (the kernel zeroes each), which
cost as much as the widening itself; a tile that stays in L2/L3 is also still there when it is multiplied.
Measured in BENCHMARKS.md "Prefill (issue 15)": a 128-token gate/up projection (5632 x 2048 bf16) went
from 27.6 ms to ~15 ms.

Why no BLAS: OpenBLAS splits a product statically over its threads and waits for the slowest, so on a
shared machine one preempted thread stalls the call for a scheduler tick (4 ms) or several: a 28 x 256
x 768 product took 8-16 ms by BLAS beside 0.04 ms by ``gemm`` (docs/serve.md "Measurements"; the 28-token
suffix prefill of a chat's second turn). Numba's workers share the loop dynamically, so a preempted one
only loses its share.
"""
from __future__ import annotations

import threading
from typing import Callable

import numpy as np

from .jit import FAST, JIT_DISABLED, f16_as_f32, njit, prange, u32_as_f32


def as_f32(v):
    """A weight element as float32: uint16 is bf16 bits (widened exactly: bits << 16), int16 is f16 bits
    (``dense_matmul`` passes an f16 weight as an int16 view, so the type picks the conversion: vcvtph2ps),
    float32 stays. (Plain Python, for NUMBA_DISABLE_JIT; compiled code gets the overload below.)"""
    if isinstance(v, np.uint16):
        return u32_as_f32(np.uint32(v) << np.uint32(16))
    if isinstance(v, np.int16):
        return f16_as_f32(np.uint16(np.int32(v) & 0xFFFF))
    return np.float32(v)


if not JIT_DISABLED:
    from numba.core import types
    from numba.extending import overload

    @overload(as_f32, inline="always")
    def _as_f32(v):
        if v == types.uint16:
            return lambda v: u32_as_f32(np.uint32(v) << np.uint32(16))
        if v == types.int16:
            return lambda v: f16_as_f32(np.uint16(v))
        return lambda v: np.float32(v)


_local = threading.local()  # a buffer per thread: the tensor-parallel ranks may run in threads


def scratch(n: int) -> np.ndarray:
    """A float32 buffer of n values owned by the calling thread (reused by its next call)."""
    buf = getattr(_local, "buf", None)
    if buf is None or buf.size < n:
        buf = _local.buf = np.empty(n, dtype=np.float32)
    return buf[:n]


@njit(cache=True, parallel=True, fastmath=FAST)
def gemm(x, w, row_block, out, col0):
    """out[:, col0:col0 + N] = x @ W.T for x (M, in) float32 and W (N, in): bf16 bits (uint16), f16 bits (int16)
    or float32, read in place (``as_f32``: widened in registers, no float32 copy).

    Twin: ``x @ widen(W).T``. llamafile's tinyBLAS design (``ggml/src/ggml-cpu/llamafile/sgemm.cpp``): a
    4 x 4 tile of accumulators (4 rows of x by 4 rows of W), the dot products vectorised along ``in`` by
    LLVM. Parallel over groups of 4 weight rows; x is taken ``row_block`` rows at a time so that its rows
    stay in L2 while every weight group passes over them. Measured against widened tiles + BLAS in
    BENCHMARKS.md "Prefill (issue 15)"."""
    M, K = x.shape
    N = w.shape[0]
    groups = (N + 3) // 4
    for i0 in range(0, M, row_block):
        i1 = min(i0 + row_block, M)
        i4 = i0 + (i1 - i0) // 4 * 4
        for g in prange(groups):
            j = g * 4
            o = col0 + j
            if j + 4 <= N:
                for i in range(i0, i4, 4):
                    c00 = c01 = c02 = c03 = c10 = c11 = c12 = c13 = np.float32(0.0)
                    c20 = c21 = c22 = c23 = c30 = c31 = c32 = c33 = np.float32(0.0)
                    for k in range(K):
                        w0, w1, w2, w3 = as_f32(w[j, k]), as_f32(w[j + 1, k]), as_f32(w[j + 2, k]), as_f32(w[j + 3, k])
                        a0, a1, a2, a3 = x[i, k], x[i + 1, k], x[i + 2, k], x[i + 3, k]
                        c00 += a0 * w0
                        c01 += a0 * w1
                        c02 += a0 * w2
                        c03 += a0 * w3
                        c10 += a1 * w0
                        c11 += a1 * w1
                        c12 += a1 * w2
                        c13 += a1 * w3
                        c20 += a2 * w0
                        c21 += a2 * w1
                        c22 += a2 * w2
                        c23 += a2 * w3
                        c30 += a3 * w0
                        c31 += a3 * w1
                        c32 += a3 * w2
                        c33 += a3 * w3
                    out[i, o], out[i, o + 1], out[i, o + 2], out[i, o + 3] = c00, c01, c02, c03
                    out[i + 1, o], out[i + 1, o + 1], out[i + 1, o + 2], out[i + 1, o + 3] = c10, c11, c12, c13
                    out[i + 2, o], out[i + 2, o + 1], out[i + 2, o + 2], out[i + 2, o + 3] = c20, c21, c22, c23
                    out[i + 3, o], out[i + 3, o + 1], out[i + 3, o + 2], out[i + 3, o + 3] = c30, c31, c32, c33
                for i in range(i4, i1):  # the last M % 4 rows of the block: 1 x 4 tiles
                    c0 = c1 = c2 = c3 = np.float32(0.0)
                    for k in range(K):
                        a = x[i, k]
                        c0 += a * as_f32(w[j, k])
                        c1 += a * as_f32(w[j + 1, k])
                        c2 += a * as_f32(w[j + 2, k])
                        c3 += a * as_f32(w[j + 3, k])
                    out[i, o], out[i, o + 1], out[i, o + 2], out[i, o + 3] = c0, c1, c2, c3
            else:  # the last N % 4 weight rows: one dot product each
                for jj in range(j, N):
                    for i in range(i0, i1):
                        c = np.float32(0.0)
                        for k in range(K):
                            c += x[i, k] * as_f32(w[jj, k])
                        out[i, col0 + jj] = c


#: gemm's x rows per pass: 128 rows of a 2048-wide x are 1 MiB (the L2 of a Zen 5 core).
GEMM_ROW_BLOCK = 128


def tiled_matmul(x2: np.ndarray, out_dim: int, in_dim: int, fill: Callable, tile_elements: int) -> np.ndarray:
    """x2 (M, in) float32 @ W.T -> (M, out) float32, where ``fill(r0, r1, tile)`` writes rows r0:r1 of W
    as float32 into ``tile`` (r1 - r0, in), which ``gemm`` multiplies into columns r0:r1. Tiling over
    rows changes no result: each output is one dot product over the whole row."""
    M = x2.shape[0]
    rows = max(1, min(out_dim, tile_elements // max(in_dim, 1)))
    w = scratch(rows * in_dim).reshape(rows, in_dim)                 # (rows, in) the widened tile
    out = np.empty((M, out_dim), dtype=np.float32)
    for r0 in range(0, out_dim, rows):
        n = min(rows, out_dim - r0)
        fill(r0, r0 + n, w[:n])
        gemm(x2, w[:n], np.int64(GEMM_ROW_BLOCK), out, np.int64(r0))
    return out
