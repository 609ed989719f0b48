"""Numba kernels for dense (float) weights: the fast twins of ``pycohere.spec.weights.DenseWeight``.

Weights are read straight from the memory map: bf16 as uint16 bits widened in registers
(``bits << 16`` reinterpreted as float32, an LLVM bitcast: exact and free), f16 through a 64K-entry
float32 table (Numba has no float16 arithmetic on CPU). No float32 copy of the model exists.
Every kernel has a NumPy twin named in its docstring and listed in ``pycohere.kernels.registry``.
"""
from __future__ import annotations

import numpy as np

from ..constants import TILE_ELEMENTS
from ..io.dtypes import widen
from .jit import F16_TABLE, FAST, GEMV_MAX_ROWS, njit, prange, u32_as_f32
from .rows import row_bf16, row_f16, row_f32
from .tiles import tiled_matmul


@njit(cache=True, parallel=True, fastmath=FAST)
def gemv_bf16(x, w):
    """y = W x for bf16 bits W (out, in) uint16 and x (R, in) float32 -> (R, out).
    Twin: ``x @ widen(W, "BF16").T``. Parallel over output rows; each weight row is read once
    for all R input rows (R is the decode batch)."""
    out = np.empty((x.shape[0], w.shape[0]), dtype=np.float32)
    for o in prange(w.shape[0]):
        row_bf16(out, o, x, w, o)
    return out


@njit(cache=True, parallel=True, fastmath=FAST)
def gemv_f16(x, w):
    """Twin: ``x @ widen(W, "F16").T``; W as uint16 bits, widened in registers (``rows.row_f16``)."""
    out = np.empty((x.shape[0], w.shape[0]), dtype=np.float32)
    for o in prange(w.shape[0]):
        row_f16(out, o, x, w, o)
    return out


@njit(cache=True, parallel=True, fastmath=FAST)
def gemv_f32(x, w):
    """Twin: ``x @ W.T`` (float32)."""
    out = np.empty((x.shape[0], w.shape[0]), dtype=np.float32)
    for o in prange(w.shape[0]):
        row_f32(out, o, x, w, o)
    return out


@njit(cache=True, parallel=True)
def widen_bf16(w):
    """bf16 bits (rows, in) -> float32 (rows, in). Twin: ``pycohere.io.dtypes.widen(w, "BF16")``."""
    out = np.empty(w.shape, dtype=np.float32)
    for i in prange(w.shape[0]):
        for j in range(w.shape[1]):
            out[i, j] = u32_as_f32(np.uint32(w[i, j]) << np.uint32(16))
    return out


@njit(cache=True, parallel=True)
def widen_f16(w, table):
    out = np.empty(w.shape, dtype=np.float32)
    for i in prange(w.shape[0]):
        for j in range(w.shape[1]):
            out[i, j] = table[w[i, j]]
    return out


@njit(cache=True, inline="always")
def _bf16(w, j, k):
    return u32_as_f32(np.uint32(w[j, k]) << np.uint32(16))


@njit(cache=True, parallel=True, fastmath=FAST)
def gemm_bf16(x, w, row_block):
    """y = x @ W.T for x (M, in) float32 and bf16 bits W (out, in) -> (M, out), reading W in place.

    Twin: ``x @ widen(W, "BF16").T``. llamafile's tinyBLAS design (``ggml/src/ggml-cpu/llamafile/
    sgemm.cpp``): a 4 x 4 tile of accumulators (4 rows of x by 4 rows of W), each weight widened in
    registers as it is loaded (no float32 copy), the dot products vectorised along ``in`` by LLVM.
    Parallel over groups of 4 weight rows; x is taken ``row_block`` rows at a time so that its rows
    stay in L2 while every weight group passes over them. Measured against widened tiles + BLAS in
    BENCHMARKS.md "Prefill (issue 15)"."""
    M, K = x.shape
    N = w.shape[0]
    out = np.empty((M, N), dtype=np.float32)
    groups = (N + 3) // 4
    for i0 in range(0, M, row_block):
        i1 = min(i0 + row_block, M)
        i4 = i0 + (i1 - i0) // 4 * 4
        for g in prange(groups):
            j = g * 4
            if j + 4 <= N:
                for i in range(i0, i4, 4):
                    c00 = c01 = c02 = c03 = c10 = c11 = c12 = c13 = np.float32(0.0)
                    c20 = c21 = c22 = c23 = c30 = c31 = c32 = c33 = np.float32(0.0)
                    for k in range(K):
                        w0, w1, w2, w3 = _bf16(w, j, k), _bf16(w, j + 1, k), _bf16(w, j + 2, k), _bf16(w, j + 3, k)
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
                    out[i, j], out[i, j + 1], out[i, j + 2], out[i, j + 3] = c00, c01, c02, c03
                    out[i + 1, j], out[i + 1, j + 1], out[i + 1, j + 2], out[i + 1, j + 3] = c10, c11, c12, c13
                    out[i + 2, j], out[i + 2, j + 1], out[i + 2, j + 2], out[i + 2, j + 3] = c20, c21, c22, c23
                    out[i + 3, j], out[i + 3, j + 1], out[i + 3, j + 2], out[i + 3, j + 3] = c30, c31, c32, c33
                for i in range(i4, i1):  # the last M % 4 rows of the block: 1 x 4 tiles
                    c0 = c1 = c2 = c3 = np.float32(0.0)
                    for k in range(K):
                        a = x[i, k]
                        c0 += a * _bf16(w, j, k)
                        c1 += a * _bf16(w, j + 1, k)
                        c2 += a * _bf16(w, j + 2, k)
                        c3 += a * _bf16(w, j + 3, k)
                    out[i, j], out[i, j + 1], out[i, j + 2], out[i, j + 3] = c0, c1, c2, c3
            else:  # the last N % 4 weight rows: one dot product each
                for jj in range(j, N):
                    for i in range(i0, i1):
                        c = np.float32(0.0)
                        for k in range(K):
                            c += x[i, k] * _bf16(w, jj, k)
                        out[i, jj] = c
    return out


#: gemm_bf16's x rows per pass: 128 rows of a 2048-wide x are 1 MiB (the L2 of a Zen 5 core).
GEMM_ROW_BLOCK = 128


@njit(cache=True, parallel=True)
def widen_f16_into(w, table, out):
    """f16 bits w (rows, in) -> out[:rows] float32 through ``F16_TABLE``. Twin: ``widen(w, "F16")``."""
    for i in prange(w.shape[0]):
        for j in range(w.shape[1]):
            out[i, j] = table[w[i, j]]


def dense_matmul(x: np.ndarray, raw: np.ndarray, storage: str) -> np.ndarray:
    """x (..., in) float32 @ W.T for an mmap'd raw W (out, in) -> (..., out) float32.

    Decode (few rows): a GEMV kernel that reads W once, widening in registers.
    Prefill (many rows): bf16 by the register-tiled ``gemm_bf16``; f16 widened tile by tile into a
    reused buffer and multiplied by BLAS (``pycohere.kernels.tiles``).
    """
    lead = x.shape[:-1]
    x2 = np.ascontiguousarray(x.reshape(-1, x.shape[-1]), dtype=np.float32)
    if storage == "F16":
        raw = raw.view(np.uint16)
    if x2.shape[0] <= GEMV_MAX_ROWS:
        if storage == "BF16":
            y = gemv_bf16(x2, raw)
        elif storage == "F16":
            y = gemv_f16(x2, raw)
        else:
            y = gemv_f32(x2, raw)
        return y.reshape(lead + (raw.shape[0],))
    if storage == "F32":
        return (x2 @ raw.T).reshape(lead + (raw.shape[0],))
    if storage == "BF16":  # measured faster than widened tiles + BLAS on every bench shape
        return gemm_bf16(x2, raw, np.int64(GEMM_ROW_BLOCK)).reshape(lead + (raw.shape[0],))

    def fill(r0, r1, tile):
        widen_f16_into(raw[r0:r1], F16_TABLE, tile)
    out = tiled_matmul(x2, raw.shape[0], raw.shape[1], fill, TILE_ELEMENTS)
    return out.reshape(lead + (raw.shape[0],))


def gather_rows(raw: np.ndarray, storage: str, ids: np.ndarray) -> np.ndarray:
    """Embedding lookup straight from the map: raw (V, D)[ids] widened to float32. A decode step's few rows
    are widened by NumPy (the spec itself): a parallel kernel's thread-pool launch costs more than they do."""
    rows = raw[ids.reshape(-1)]
    if rows.shape[0] <= GEMV_MAX_ROWS:
        return widen(rows, storage, np.float32).reshape(ids.shape + (raw.shape[1],))
    if storage == "BF16":
        out = widen_bf16(rows)
    elif storage == "F16":
        out = widen_f16(rows.view(np.uint16), F16_TABLE)
    else:
        out = rows.astype(np.float32)
    return out.reshape(ids.shape + (raw.shape[1],))
