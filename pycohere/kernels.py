"""Numba kernels: the fast twins of the NumPy spec.

Every kernel here has a readable NumPy twin (named in its docstring) and a differential test against
it (tests/test_kernels.py, hypothesis over shapes). With ``NUMBA_DISABLE_JIT=1`` every kernel runs as
plain Python, so it stays debuggable.

Weights are read straight from the memory map: bf16 as uint16 bits widened in registers
(``bits << 16`` reinterpreted as float32, an LLVM bitcast: exact and free), f16 through a 64K-entry
float32 table (Numba has no float16 arithmetic on CPU). No float32 copy of the model exists.

Threads: Numba's ``workqueue`` layer is used so that Numba's threads and OpenBLAS's do not
oversubscribe the cores when a prefill alternates BLAS calls and Numba loops (measured in
BENCHMARKS.md); the thread count follows the cores.
"""
from __future__ import annotations

import os

import numpy as np

import numba  # noqa: E402
from numba import njit, prange  # noqa: E402

if "NUMBA_THREADING_LAYER" not in os.environ:  # the user's choice wins; numba may be imported already
    numba.config.THREADING_LAYER = "workqueue"

JIT_DISABLED = bool(numba.config.DISABLE_JIT)

if JIT_DISABLED:
    def u32_as_f32(x):
        """Reinterpret the bits of a uint32 as float32 (plain Python twin of the intrinsic)."""
        return np.array(x, dtype=np.uint32).view(np.float32)[()]
else:
    from llvmlite import ir
    from numba.core import types
    from numba.extending import intrinsic

    @intrinsic
    def _bitcast_u32_f32(typingctx, x):
        sig = types.float32(types.uint32)

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir.FloatType())
        return sig, codegen

    @njit(inline="always")
    def u32_as_f32(x):
        return _bitcast_u32_f32(x)

# f16 bit pattern -> float32 value, for every pattern (256 KiB, stays in L2)
F16_TABLE = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)

# fastmath without "ninf"/"nnan": the attention kernels use -inf as "masked", and a NaN in the
# input must stay visible. Reassociation is what lets LLVM vectorise the dot products.
FAST = {"nsz", "arcp", "contract", "afn", "reassoc"}

# The dot products below are plain loops on purpose: with reassociation allowed, LLVM vectorises them
# and keeps several vector accumulators itself (measured faster than hand-unrolled lanes here).
@njit(cache=True, fastmath=FAST, inline="always")
def _dot_bf16(x, wrow):
    s = np.float32(0.0)
    for j in range(wrow.shape[0]):
        s += x[j] * u32_as_f32(np.uint32(wrow[j]) << np.uint32(16))
    return s


@njit(cache=True, fastmath=FAST, inline="always")
def _dot_f16(x, wrow, table):
    s = np.float32(0.0)
    for j in range(wrow.shape[0]):
        s += x[j] * table[wrow[j]]
    return s


@njit(cache=True, fastmath=FAST, inline="always")
def _dot_f32(x, wrow):
    s = np.float32(0.0)
    for j in range(wrow.shape[0]):
        s += x[j] * wrow[j]
    return s


@njit(cache=True, parallel=True, fastmath=FAST)
def gemv_bf16(x, w):
    """y = W x for bf16 bits W (out, in) uint16 and x (R, in) float32 -> (R, out).
    Twin: ``x @ widen(W, "BF16").T``. Parallel over output rows; each weight row is read once
    for all R input rows (R is the decode batch)."""
    R = x.shape[0]
    out = np.empty((R, w.shape[0]), dtype=np.float32)
    for o in prange(w.shape[0]):
        for r in range(R):
            out[r, o] = _dot_bf16(x[r], w[o])
    return out


@njit(cache=True, parallel=True, fastmath=FAST)
def gemv_f16(x, w, table):
    """Twin: ``x @ widen(W, "F16").T``; W as uint16 bits, widened through ``F16_TABLE``."""
    R = x.shape[0]
    out = np.empty((R, w.shape[0]), dtype=np.float32)
    for o in prange(w.shape[0]):
        for r in range(R):
            out[r, o] = _dot_f16(x[r], w[o], table)
    return out


@njit(cache=True, parallel=True, fastmath=FAST)
def gemv_f32(x, w):
    """Twin: ``x @ W.T`` (float32)."""
    R = x.shape[0]
    out = np.empty((R, w.shape[0]), dtype=np.float32)
    for o in prange(w.shape[0]):
        for r in range(R):
            out[r, o] = _dot_f32(x[r], w[o])
    return out


@njit(cache=True, parallel=True)
def widen_bf16(w):
    """bf16 bits (rows, in) -> float32 (rows, in). Twin: ``pycohere.tensors.widen(w, "BF16")``."""
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


GEMV_MAX_ROWS = 8      # up to this many input rows: stream the weights once (memory bound)
TILE_ELEMENTS = 1 << 22  # prefill: widen 16 MiB float32 tiles and hand them to BLAS


def dense_matmul(x: np.ndarray, raw: np.ndarray, storage: str) -> np.ndarray:
    """x (..., in) float32 @ W.T for an mmap'd raw W (out, in) -> (..., out) float32.

    Decode (few rows): a GEMV kernel that reads W once, widening in registers.
    Prefill (many rows): W is widened tile by tile and multiplied by BLAS (compute bound).
    """
    lead = x.shape[:-1]
    x2 = np.ascontiguousarray(x.reshape(-1, x.shape[-1]), dtype=np.float32)
    if storage == "F16":
        raw = raw.view(np.uint16)
    if x2.shape[0] <= GEMV_MAX_ROWS:
        if storage == "BF16":
            y = gemv_bf16(x2, raw)
        elif storage == "F16":
            y = gemv_f16(x2, raw, F16_TABLE)
        else:
            y = gemv_f32(x2, raw)
        return y.reshape(lead + (raw.shape[0],))
    if storage == "F32":
        return (x2 @ raw.T).reshape(lead + (raw.shape[0],))
    out = np.empty((x2.shape[0], raw.shape[0]), dtype=np.float32)
    rows = max(1, TILE_ELEMENTS // raw.shape[1])
    for r in range(0, raw.shape[0], rows):
        tile = widen_bf16(raw[r:r + rows]) if storage == "BF16" else widen_f16(raw[r:r + rows], F16_TABLE)
        out[:, r:r + rows] = x2 @ tile.T  # (matmul into a strided out= slice skips BLAS: copy instead)
    return out.reshape(lead + (raw.shape[0],))


def gather_rows(raw: np.ndarray, storage: str, ids: np.ndarray) -> np.ndarray:
    """Embedding lookup straight from the map: raw (V, D)[ids] widened to float32."""
    rows = raw[ids.reshape(-1)]
    if storage == "BF16":
        out = widen_bf16(rows)
    elif storage == "F16":
        out = widen_f16(rows.view(np.uint16), F16_TABLE)
    else:
        out = rows.astype(np.float32)
    return out.reshape(ids.shape + (raw.shape[1],))


# --- attention -----------------------------------------------------------------------------------
@njit(cache=True, parallel=True, fastmath=FAST)
def decode_attention(q, k, v, q_index, kv_start, kv_valid, window):
    """One pass of attention for few queries over the cache, without copying K/V per head.

    q (B, T, H, Dh), k/v (B, S, K, Dh) float32, q_index (T,) absolute indices, kv_start: absolute index
    of k[:, 0], kv_valid (B, S) bool (padding), window: sliding window or 0 for none.
    Twin: ``pycohere.layers.attention`` with ``attention_mask(q_index, kv_index, kv_valid, window)``.
    Fully masked rows give the mean of V, as the spec (finfo.min scores) does.
    """
    B, T, H, Dh = q.shape
    S, K = k.shape[1], k.shape[2]
    G = H // K
    scale = np.float32(1.0 / np.sqrt(Dh))
    out = np.empty((B, T, H, Dh), dtype=np.float32)
    for bh in prange(B * H):
        b, h = bh // H, bh % H
        kh = h // G
        scores = np.empty(S, dtype=np.float32)
        for t in range(T):
            qi = q_index[t]
            m = np.float32(-np.inf)
            n_ok = 0
            for s in range(S):
                ki = kv_start + s
                ok = ki <= qi and kv_valid[b, s] and (window == 0 or qi - ki < window)
                if ok:
                    acc = np.float32(0.0)
                    for d in range(Dh):
                        acc += q[b, t, h, d] * k[b, s, kh, d]
                    sc = acc * scale
                    scores[s] = sc
                    if sc > m or sc != sc:  # NaN wins, as in the spec's max
                        m = sc
                    n_ok += 1
                else:
                    scores[s] = -np.inf
            total = np.float32(0.0)
            for s in range(S):
                if n_ok == 0:
                    p = np.float32(1.0)
                elif scores[s] == -np.inf:
                    p = np.float32(0.0)
                else:
                    p = np.exp(scores[s] - m)
                scores[s] = p
                total += p
            for d in range(Dh):
                out[b, t, h, d] = 0.0
            for s in range(S):
                p = scores[s] / total
                if p != 0.0:
                    for d in range(Dh):
                        out[b, t, h, d] += p * v[b, s, kh, d]
    return out


@njit(cache=True, inline="always")
def _any_allowed(sc, n):
    for j in range(n):
        if sc[j] != -np.inf:
            return True
    return False


@njit(cache=True, parallel=True, fastmath=FAST)
def flash_attention(q, k, v, q_index, kv_start, kv_valid, window, tile):
    """Tiled attention with an online softmax (FlashAttention's recurrence): never holds a (H, T, S)
    score tensor, only a (tile, tile) block per worker. Same arguments and twin as
    ``decode_attention``; parallel over (batch, head, query tile)."""
    B, T, H, Dh = q.shape
    S, K = k.shape[1], k.shape[2]
    G = H // K
    scale = np.float32(1.0 / np.sqrt(Dh))
    out = np.empty((B, T, H, Dh), dtype=np.float32)
    n_qt = (T + tile - 1) // tile
    for job in prange(B * H * n_qt):
        b = job // (H * n_qt)
        h = (job // n_qt) % H
        t0 = (job % n_qt) * tile
        t1 = min(t0 + tile, T)
        kh = h // G
        nq = t1 - t0
        m = np.full(nq, -np.inf, dtype=np.float32)
        l = np.zeros(nq, dtype=np.float32)
        acc = np.zeros((nq, Dh), dtype=np.float32)
        any_ok = np.zeros(nq, dtype=np.bool_)
        sc = np.empty(tile, dtype=np.float32)
        qmax = q_index[t1 - 1]
        for s0 in range(0, S, tile):
            if kv_start + s0 > qmax:
                break  # causal: later key tiles are invisible to this query tile
            s1 = min(s0 + tile, S)
            for i in range(nq):
                qi = q_index[t0 + i]
                tile_max = np.float32(-np.inf)
                for s in range(s0, s1):
                    ki = kv_start + s
                    if ki <= qi and kv_valid[b, s] and (window == 0 or qi - ki < window):
                        a = np.float32(0.0)
                        for d in range(Dh):
                            a += q[b, t0 + i, h, d] * k[b, s, kh, d]
                        a *= scale
                        sc[s - s0] = a
                        if a > tile_max or a != a:  # NaN wins, as in the spec's max
                            tile_max = a
                    else:
                        sc[s - s0] = -np.inf
                if tile_max == -np.inf and not _any_allowed(sc, s1 - s0):
                    continue  # nothing visible in this tile (a NaN score still counts: it must propagate)
                any_ok[i] = True
                new_m = max(m[i], tile_max)
                corr = np.exp(m[i] - new_m) if m[i] != -np.inf else np.float32(0.0)
                l[i] *= corr
                for d in range(Dh):
                    acc[i, d] *= corr
                for s in range(s0, s1):
                    if sc[s - s0] != -np.inf:
                        p = np.exp(sc[s - s0] - new_m)
                        l[i] += p
                        for d in range(Dh):
                            acc[i, d] += p * v[b, s, kh, d]
                m[i] = new_m
        for i in range(nq):
            if any_ok[i]:
                for d in range(Dh):
                    out[b, t0 + i, h, d] = acc[i, d] / l[i]
            else:  # fully masked row: the spec's uniform softmax over all S keys -> mean of V
                for d in range(Dh):
                    total = np.float32(0.0)
                    for s in range(S):
                        total += v[b, s, kh, d]
                    out[b, t0 + i, h, d] = total / S
    return out


FLASH_TILE = 64
DECODE_MAX_QUERIES = 4


def fused_attention(q, k, v, q_index, kv_start, kv_valid, window):
    """Dispatch: decode (a few queries) -> one pass; prefill -> tiled online softmax."""
    B, S = k.shape[0], k.shape[1]
    valid = np.ones((B, S), dtype=np.bool_) if kv_valid is None else np.ascontiguousarray(kv_valid)
    args = (np.ascontiguousarray(q, dtype=np.float32), np.ascontiguousarray(k, dtype=np.float32),
            np.ascontiguousarray(v, dtype=np.float32), np.ascontiguousarray(q_index, dtype=np.int64),
            np.int64(kv_start), valid, np.int64(window or 0))
    if q.shape[1] <= DECODE_MAX_QUERIES:
        return decode_attention(*args)
    return flash_attention(*args, np.int64(FLASH_TILE))
