"""Numba kernels for dense (float) weights: the fast twins of ``pycohere.spec.weights.DenseWeight``.

Weights are read straight from the memory map: bf16 as uint16 bits widened in registers
(``bits << 16`` reinterpreted as float32, an LLVM bitcast: exact and free), f16 by ``jit.f16_as_f32``
(vcvtph2ps; Numba has no float16 type on CPU) or, in row gathers, a 64K-entry float32 table. No float32
copy of the model exists: prefills multiply the mapped bits in place (``pycohere.kernels.tiles.gemm``).
Every kernel has a NumPy twin named in its docstring and listed in ``pycohere.kernels.registry``.
"""
from __future__ import annotations

import numpy as np

from ..io.dtypes import widen
from .jit import F16_TABLE, FAST, GEMV_MAX_ROWS, njit, prange, u32_as_f32
from .rows import row_bf16, row_f16, row_f32
from . import tiles


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


#: Input rows up to which a dense matmul runs the GEMV (each weight row read once for all rows) rather
#: than ``tiles.gemm`` (4 x 4 register tiles). Measured with tools/bench_small_prefill.py on the demo and
#: bench shapes (docs/serve.md "Measurements"): for bf16 and float32 the GEMM is as fast at 2 rows and
#: 1.5-3x faster from 3. f16 was measured when its tiles were widened first (2-4 ms for a 5632 x 2048 matrix,
#: repaid from about 8 rows); the GEMM now widens f16 in registers too, so 8 is conservative. No cliff at 9 rows.
DENSE_GEMV_MAX_ROWS = {"BF16": 2, "F16": 8, "F32": 2}


def dense_matmul(x: np.ndarray, raw: np.ndarray, storage: str) -> np.ndarray:
    """x (..., in) float32 @ W.T for an mmap'd raw W (out, in) -> (..., out) float32.

    Decode (a row or two): a GEMV kernel that reads W once, widening in registers.
    More rows: the register-tiled ``tiles.gemm``, reading bf16, f16 (vcvtph2ps: 250-260 against 155-185
    GFLOP/s for the widened tiles it replaced, 5632 x 2048, 128-512 rows) and float32 W in place. No BLAS:
    it stalls on a shared machine (``pycohere.kernels.tiles``).
    """
    lead = x.shape[:-1]
    x2 = np.ascontiguousarray(x.reshape(-1, x.shape[-1]), dtype=np.float32)
    if storage == "F16":
        raw = raw.view(np.uint16)
    if x2.shape[0] <= DENSE_GEMV_MAX_ROWS[storage]:
        if storage == "BF16":
            y = gemv_bf16(x2, raw)
        elif storage == "F16":
            y = gemv_f16(x2, raw)
        else:
            y = gemv_f32(x2, raw)
        return y.reshape(lead + (raw.shape[0],))
    return gemm_rows(x2, raw, storage).reshape(lead + (raw.shape[0],))


def gemm_rows(x2: np.ndarray, raw: np.ndarray, storage: str, kernel=None) -> np.ndarray:
    """x2 (M, in) float32 @ W.T by a prefill GEMM on W's bits in place: ``tiles.gemm`` (the host's pick), or
    ``kernel``, one of the others with its arguments (the twins run each on every host)."""
    out = np.empty((x2.shape[0], raw.shape[0]), dtype=np.float32)
    # f16 bits as an int16 view: tiles.as_f32 widens them in registers (vcvtph2ps), bf16's uint16 by a shift
    (kernel or tiles.gemm)(x2, raw.view(np.int16) if storage == "F16" else raw, np.int64(tiles.GEMM_ROW_BLOCK),
                           out, np.int64(0))
    return out


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
