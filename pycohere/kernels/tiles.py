"""Prefill matmuls over weights that are not float32: rows widened (or dequantized) tile by tile into one
reused per-thread buffer, each tile multiplied by BLAS.

Why a reused buffer of about a MiB, not a fresh 16 MiB tile per call: a fresh large ``np.empty`` is a
new anonymous mapping, and its first write page-faults every 4 KiB page (the kernel zeroes each), which
cost as much as the widening itself; a tile that stays in L2/L3 is also still there when BLAS packs it.
Measured in BENCHMARKS.md "Prefill (issue 15)": a 128-token gate/up projection (5632 x 2048 bf16) went
from 27.6 ms to ~15 ms, which is BLAS alone on a float32 copy. bf16 weights skip the tiles altogether
(``pycohere.kernels.dense.gemm_bf16`` widens in registers, as llama.cpp's
``ggml/src/ggml-cpu/llamafile/sgemm.cpp``); f16 and quantized weights come here.
"""
from __future__ import annotations

import threading
from typing import Callable

import numpy as np

_local = threading.local()  # a buffer per thread: the tensor-parallel ranks may run in threads


def scratch(n: int) -> np.ndarray:
    """A float32 buffer of n values owned by the calling thread (reused by its next call)."""
    buf = getattr(_local, "buf", None)
    if buf is None or buf.size < n:
        buf = _local.buf = np.empty(n, dtype=np.float32)
    return buf[:n]


def tiled_matmul(x2: np.ndarray, out_dim: int, in_dim: int, fill: Callable, tile_elements: int) -> np.ndarray:
    """x2 (M, in) float32 @ W.T -> (M, out) float32, where ``fill(r0, r1, tile)`` writes rows r0:r1 of W
    as float32 into ``tile`` (r1 - r0, in). Each output column is one BLAS dot product over the whole
    row, as ``x2 @ W.T``: tiling over rows changes no result."""
    M = x2.shape[0]
    rows = max(1, min(out_dim, tile_elements // max(in_dim, 1)))
    buf = scratch(rows * in_dim + M * rows)
    w = buf[:rows * in_dim].reshape(rows, in_dim)                    # (rows, in) the widened tile
    y = buf[rows * in_dim:].reshape(M, rows)                         # (M, rows) its products
    out = np.empty((M, out_dim), dtype=np.float32)
    for r0 in range(0, out_dim, rows):
        n = min(rows, out_dim - r0)
        fill(r0, r0 + n, w[:n])
        if n == rows:
            np.matmul(x2, w.T, out=y)
            out[:, r0:r0 + n] = y  # (matmul into a strided out= slice skips BLAS: a contiguous y, then a copy)
        else:
            out[:, r0:r0 + n] = x2 @ w[:n].T
    return out
