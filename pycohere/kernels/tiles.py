"""Prefill matmuls (more than a few input rows): ``gemm``, a register-tiled GEMM in Numba that reads bf16,
f16 or float32 weights in place, and ``tiled_matmul`` for weights it cannot read (quantized): rows
widened (or dequantized) tile by tile into one reused per-thread buffer, each tile multiplied by ``gemm``.
``gemm`` is ``gemm_host`` on hosts with FMA: ``gemm_broadcast`` (BLIS's outer-product micro-kernel, in the
tile shape of the host's registers: 6 x 16 on AVX2, 12 x 32 on AVX-512) from ``BROADCAST_MIN_ROWS`` x rows, and
dot-product tiles on fewer (``gemm_4x3`` with 16 vector registers, ``gemm_4x4`` with 32); else ``gemm_4x4``.

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

import numba
import numpy as np
from numba import get_thread_id

from ..errors import BackendError
from .jit import FAST, JIT_DISABLED, cpu_features, f16_as_f32, njit, prange, u32_as_f32


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


def scratch(n: int, slot: str = "tile") -> np.ndarray:
    """A float32 buffer of n values owned by the calling thread (reused by its next call for ``slot``)."""
    bufs = getattr(_local, "bufs", None)
    if bufs is None:
        bufs = _local.bufs = {}
    buf = bufs.get(slot)
    if buf is None or buf.size < n:
        buf = bufs[slot] = np.empty(n, dtype=np.float32)
    return buf[:n]


@njit(cache=True, inline="always", fastmath=FAST)
def _dots(x, w, j0, j1, i0, i1, out, col0):
    """out[i, col0 + j] = x[i] . W[j] for rows i0..i1 of x and j0..j1 of W, one dot product each (the GEMMs'
    last weight rows, fewer than a tile)."""
    for jj in range(j0, j1):
        for i in range(i0, i1):
            c = np.float32(0.0)
            for k in range(x.shape[1]):
                c += x[i, k] * as_f32(w[jj, k])
            out[i, col0 + jj] = c


@njit(cache=True, parallel=True, fastmath=FAST)
def gemm_4x4(x, w, row_block, out, col0):
    """out[:, col0:col0 + N] = x @ W.T for x (M, in) float32 and W (N, in): bf16 bits (uint16), f16 bits (int16)
    or float32, read in place (``as_f32``: widened in registers, no float32 copy).

    Twin: ``x @ widen(W).T``. llamafile's tinyBLAS design (``ggml/src/ggml-cpu/llamafile/sgemm.cpp``): a
    4 x 4 tile of accumulators (4 rows of x by 4 rows of W), the dot products vectorised along ``in`` by
    LLVM: 16 accumulators and 8 loaded vectors, which fit 32 vector registers (AVX-512). Parallel over
    groups of 4 weight rows; x is taken ``row_block`` rows at a time so that its rows stay in L2 while every
    weight group passes over them. Measured against widened tiles + BLAS in BENCHMARKS.md "Prefill (issue 15)"."""
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
                _dots(x, w, j, N, i0, i1, out, col0)


@njit(cache=True, parallel=True, fastmath=FAST)
def gemm_4x3(x, w, row_block, out, col0):
    """``gemm_4x4`` with 4 x 3 tiles (4 rows of x by 3 rows of W), for hosts with 16 vector registers (AVX2):
    12 accumulators and 3 widened weight vectors fit them and x enters each FMA from memory, where the 4 x 4
    tile spills (tinyBLAS takes the same shape for 16 registers). Twin: ``x @ widen(W).T``. 1.45x the 4 x 4
    tile's GFLOP/s on an AVX2 host (BENCHMARKS.md "Round 4")."""
    M, K = x.shape
    N = w.shape[0]
    groups = (N + 2) // 3
    for i0 in range(0, M, row_block):
        i1 = min(i0 + row_block, M)
        i4 = i0 + (i1 - i0) // 4 * 4
        for g in prange(groups):
            j = g * 3
            o = col0 + j
            if j + 3 <= N:
                for i in range(i0, i4, 4):
                    c00 = c01 = c02 = c10 = c11 = c12 = np.float32(0.0)
                    c20 = c21 = c22 = c30 = c31 = c32 = np.float32(0.0)
                    for k in range(K):
                        w0, w1, w2 = as_f32(w[j, k]), as_f32(w[j + 1, k]), as_f32(w[j + 2, k])
                        a0, a1, a2, a3 = x[i, k], x[i + 1, k], x[i + 2, k], x[i + 3, k]
                        c00 += a0 * w0
                        c01 += a0 * w1
                        c02 += a0 * w2
                        c10 += a1 * w0
                        c11 += a1 * w1
                        c12 += a1 * w2
                        c20 += a2 * w0
                        c21 += a2 * w1
                        c22 += a2 * w2
                        c30 += a3 * w0
                        c31 += a3 * w1
                        c32 += a3 * w2
                    out[i, o], out[i, o + 1], out[i, o + 2] = c00, c01, c02
                    out[i + 1, o], out[i + 1, o + 1], out[i + 1, o + 2] = c10, c11, c12
                    out[i + 2, o], out[i + 2, o + 1], out[i + 2, o + 2] = c20, c21, c22
                    out[i + 3, o], out[i + 3, o + 1], out[i + 3, o + 2] = c30, c31, c32
                for i in range(i4, i1):  # the last M % 4 rows of the block: 1 x 3 tiles
                    c0 = c1 = c2 = np.float32(0.0)
                    for k in range(K):
                        a = x[i, k]
                        c0 += a * as_f32(w[j, k])
                        c1 += a * as_f32(w[j + 1, k])
                        c2 += a * as_f32(w[j + 2, k])
                    out[i, o], out[i, o + 1], out[i, o + 2] = c0, c1, c2
            else:  # the last N % 3 weight rows: one dot product each
                _dots(x, w, j, N, i0, i1, out, col0)


# --- the broadcast micro-kernel (``gemm_broadcast``) ---------------------------------------------------------------
# ``tiles.gemm_4x3`` / ``gemm_4x4`` form dot products along ``in`` (tinyBLAS): per step of a vector they load the x
# and weight vectors of every accumulator, ~176 bytes from L2 per 6 cycles on AVX2, which is the L2's rate there (Zen
# 3: 32 B per cycle). This kernel is BLIS's outer-product form instead (Goto & van de Geijn, "Anatomy of
# high-performance matrix multiplication", 2008; BLIS's haswell 6 x 16 and skylakex 12 x 32 sgemm kernels): x is
# packed once per matmul into panels ``xp[p, k, l] = x[L p + l, k]`` (L x rows side by side along k, zero past the
# last row), and each step k multiplies the panel's L / V vectors by R broadcast weights: R L / V FMAs from L / V
# vector loads and R scalar ones, the R x L sums kept in registers. Weights are read in place: R rows at a time
# widened to float32 (bf16 bits shifted, f16 by vcvtph2ps: ``tiles.as_f32``) into a per-thread buffer.
#
# Twin: ``x @ widen(W).T`` (``tests/test_kernel_twins.py``, every shape on every host). Any ``in``: the vectors run
# along x's rows, not along k.
#: (R weight rows, L x rows per panel, V floats per vector) of a tile. AVX2 (16 registers): 12 accumulators of 8
#: floats + 2 loaded + 1 broadcast; AVX-512 (32 registers): 24 accumulators of 16 floats + 2 + 1.
PANELS_AVX2 = (6, 16, 8)
PANELS_AVX512 = (12, 32, 16)
PANEL_SHAPES = (PANELS_AVX2, PANELS_AVX512)


@njit(cache=True, inline="always")
def _pack_panel(x, xp, p):
    M, K = x.shape
    L = xp.shape[2]
    n = min(L, M - L * p)
    if n < L:
        xp[p] = 0
    for l in range(n):
        r = L * p + l
        for k in range(K):
            xp[p, k, l] = x[r, k]


@njit(cache=True, parallel=True)
def pack_x(x, xp):
    """x (M, K) float32 -> its panels xp (ceil(M / L), K, L): xp[p, k, l] = x[L p + l, k], 0 past row M."""
    for p in prange(xp.shape[0]):
        _pack_panel(x, xp, p)


if not JIT_DISABLED:
    from llvmlite import ir
    from numba.core import types
    from numba.extending import intrinsic

    from .vrows import counted_loop, splat, vec

    _I64, _F32 = ir.IntType(64), ir.FloatType()

    def _tile_code(b, wdata, wstride, K, panel, kstride, dst, dstride, R, L, V):
        """The IR of one R x L tile (``_tile``) for the shape (R, L, V); wdata, panel, dst: i8 pointers, strides
        in bytes (row a of the weights at wdata + a wstride, step k of the panel at panel + k kstride, row a of
        the tile at dst + a dstride)."""
        fv = vec(_F32, V)
        wrows = [b.bitcast(b.gep(wdata, [b.mul(ir.Constant(_I64, a), wstride)]), _F32.as_pointer()) for a in range(R)]
        # fmuladd: one vfmadd where the CPU has FMA (always, where this kernel is chosen), else mul + add
        fma = b.module.declare_intrinsic(f"llvm.fmuladd.v{V}f32", fnty=ir.FunctionType(fv, [fv] * 3))
        nv = L // V
        fvp = fv.as_pointer()

        def body(k, accs):
            at = b.bitcast(b.gep(panel, [b.mul(k, kstride)]), _F32.as_pointer())
            xs = [b.load(b.bitcast(b.gep(at, [ir.Constant(_I64, V * i)]), fvp), align=4) for i in range(nv)]
            out = []
            for a in range(R):
                s = splat(b, b.load(b.gep(wrows[a], [k])), V)
                out += [b.call(fma, [s, xv, accs[nv * a + i]]) for i, xv in enumerate(xs)]
            return out

        zero = ir.Constant(fv, [0.0] * V)
        # AVX-512's 24 accumulators: two interleaved copies of the step spill them (AVX2's 6 x 16 measured unrolled)
        accs = counted_loop(b, ir.Constant(_I64, 0), K, [zero] * (R * nv), body, unroll=R * nv <= 12)
        for a in range(R):  # accumulator nv a + i: lanes V i .. V i + V - 1 of row a
            row = b.bitcast(b.gep(dst, [b.mul(ir.Constant(_I64, a), dstride)]), _F32.as_pointer())
            for i in range(nv):
                b.store(accs[nv * a + i], b.bitcast(b.gep(row, [ir.Constant(_I64, V * i)]), fvp), align=4)

    @intrinsic
    def _tile(typingctx, wf, xp, p, tmp):
        """tmp[a, l] = sum_{k < K} wf[a, k] xp[p, k, l] for a < R, l < L: wf (R, >= K) (rows ``padded``), xp (P, K,
        L) and tmp (R, L) of any strides but a contiguous last axis (``panel_matmul`` passes V in place and writes
        into its output); all float32; (R, L) one of ``PANEL_SHAPES``, chosen at run time: one compiled function
        serves both."""
        sig = types.void(wf, xp, p, tmp)

        def codegen(context, builder, signature, args):
            b = builder
            wa, xa, pa, ta = args
            arr = lambda t, a: context.make_array(t)(context, b, a)  # noqa: E731
            W, X, T = arr(signature.args[0], wa), arr(signature.args[1], xa), arr(signature.args[3], ta)
            R, K, L = b.extract_value(W.shape, 0), b.extract_value(X.shape, 1), b.extract_value(X.shape, 2)
            i8p = ir.IntType(8).as_pointer()
            wdata, wstride = b.bitcast(W.data, i8p), b.extract_value(W.strides, 0)
            panel = b.gep(b.bitcast(X.data, i8p), [b.mul(pa, b.extract_value(X.strides, 0))])
            kstride, dstride = b.extract_value(X.strides, 1), b.extract_value(T.strides, 0)
            dst = b.bitcast(T.data, i8p)
            done = b.append_basic_block("tile_done")
            for r, l, v in PANEL_SHAPES:
                this, other = b.append_basic_block(f"tile_{r}x{l}"), b.append_basic_block(f"not_{r}x{l}")
                b.cbranch(b.and_(b.icmp_signed("==", R, ir.Constant(_I64, r)),
                                 b.icmp_signed("==", L, ir.Constant(_I64, l))), this, other)
                b.position_at_end(this)
                _tile_code(b, wdata, wstride, K, panel, kstride, dst, dstride, r, l, v)
                b.branch(done)
                b.position_at_end(other)
            b.branch(done)  # no other shape is made (``_buffers``)
            b.position_at_end(done)
            return context.get_dummy_value()
        return sig, codegen
else:
    def _tile(wf, xp, p, tmp):
        """Plain Python twin of the IR tile (NUMBA_DISABLE_JIT)."""
        tmp[...] = wf[:, :xp.shape[1]] @ xp[p]


@njit(cache=True, inline="always")
def _panel_group(xp, M, w, out, col0, wf, tmp, g):
    """Weight rows g R .. g R + R - 1 of gemm_panels: widened into wf (R, K), times every panel, into out."""
    P, K, L = xp.shape
    R = wf.shape[0]
    j = g * R
    n = min(R, w.shape[0] - j)
    if n < R:
        wf[n:] = 0
    for a in range(n):
        for k in range(K):
            wf[a, k] = as_f32(w[j + a, k])
    for p in range(P):
        _tile(wf, xp, p, tmp)
        for l in range(min(L, M - L * p)):
            for a in range(n):
                out[L * p + l, col0 + j + a] = tmp[a, l]


@njit(cache=True, parallel=True)
def gemm_panels(xp, M, w, out, col0, wbuf, tbuf):
    """out[:M, col0:col0 + N] = x @ W.T from x's panels ``xp`` (``pack_x``) and W (N, K): bf16 bits (uint16),
    f16 bits (int16) or float32. Parallel over groups of R weight rows; each thread widens its group into
    wbuf[thread] (R, >= K) (a vectorised widening; ``padded``) and takes a tile's sums in tbuf[thread] (R, L).
    (No blocks of k as BLIS's kc: they measured no faster on Zen 5, BENCHMARKS.md "Round 5".)"""
    R = wbuf.shape[1]
    for g in prange((w.shape[0] + R - 1) // R):
        _panel_group(xp, M, w, out, col0, wbuf[get_thread_id()], tbuf[get_thread_id()], g)


@njit(cache=True, nogil=True)
def pack_rows(x, xp):
    """``pack_x`` on the calling thread alone (for jobs already running one per core)."""
    for p in range(xp.shape[0]):
        _pack_panel(x, xp, p)


@njit(cache=True, nogil=True)
def panel_matmul(w, xp, M, out, wf, tmp):
    """out[n, m] = sum_k w[n, k] x[m, k] for m < M: out (N, >= M) = w (N, K) @ x.T, x given as its panels xp
    (P, K, L), xp[p, k, l] = x[L p + l, k] (``pack_rows``, or any array so strided: V (S, Dh) is the panels of V.T
    in place); float32, on the calling thread alone (for ``attention.blocked_attention``'s jobs, one per core).
    The tile's layout is out's: whole tiles are stored straight into it; wf (R, K), tmp (R, L) buffers."""
    K, L = xp.shape[1], xp.shape[2]
    P = min(xp.shape[0], (M + L - 1) // L)  # panels past M: none (a caller may pass more)
    R = wf.shape[0]
    N = w.shape[0]
    for g in range((N + R - 1) // R):
        j = g * R
        n = min(R, N - j)
        if n < R:
            wf[n:] = 0
        for a in range(n):
            for k in range(K):
                wf[a, k] = w[j + a, k]
        for p in range(P):
            m = min(L, M - L * p)
            if n == R and m == L:
                _tile(wf, xp, p, out[j:j + R, L * p:L * p + L])
            else:
                _tile(wf, xp, p, tmp)
                for a in range(n):
                    for l in range(m):
                        out[j + a, L * p + l] = tmp[a, l]


#: AVX2 + FMA without AVX-512: 16 vector registers of 8 floats, which the 4 x 4 tile overflows; the 4 x 3 tiles
#: for few rows there. One probe (``jit.cpu_features``): ``PYCOHERE_MASK_CPU_FEATURES=avx512f`` runs the AVX2
#: choices on an AVX-512 host.
AVX2_TILES = {"avx2", "fma"} <= cpu_features() and "avx512f" not in cpu_features()
#: the broadcast tile of this host
PANELS = PANELS_AVX512 if {"avx512f", "fma"} <= cpu_features() else PANELS_AVX2
#: gemm_host takes the broadcast kernel from this many x rows (fewer: the dot-product tiles, faster there: the
#: panels' packing and the weights' widening are repaid by the rows; BENCHMARKS.md "Round 4" and "Round 5"), and
#: packs x in blocks of this many rows (every weight group passes over a block's panels: 4 MiB for a 2048-wide x,
#: which stay in a Zen 3 or Zen 5 L3 of 32 MiB; the chunked prefill's 512 tokens are one block).
BROADCAST_MIN_ROWS = 64 if PANELS == PANELS_AVX512 else 48
BROADCAST_ROW_BLOCK = 512
#: float32 values per dequantized tile of ``tiled_matmul`` on the broadcast kernel (x packed once)
PANEL_TILE_ELEMENTS = 1 << 19


def _pack(x, lanes: int):
    """x (M <= BROADCAST_ROW_BLOCK, K) as panels of ``lanes`` rows, in this thread's buffer for them (kept for the
    next call, as ``scratch``'s other slots: at most BROADCAST_ROW_BLOCK * K floats, 64 MiB for K = 33792, Command
    A's ffn). x's dtype is float32, or another of 4 bytes (``bf16_dot``'s bf16 pairs as uint32)."""
    P = (x.shape[0] + lanes - 1) // lanes
    xp = scratch(P * x.shape[1] * lanes, "panels").view(x.dtype).reshape(P, x.shape[1], lanes)
    pack_x(x, xp)
    return xp


def padded(rows: int, K: int, slot: str, dtype=np.float32, count: int = 1) -> np.ndarray:
    """(count, rows, K + 64 bytes) of this thread's ``slot`` buffer, C-contiguous (so loops over a row's first K
    values vectorise; the kernels take K from their other operand): rows 2^n bytes apart (K = 2048 float32 or
    4096 bf16) would all fall in one set of a 12-way L1 (48 KiB on Zen 5: 64 sets of 64 bytes, 4 KiB apart),
    and the 12 weight rows of a tile and its panel evict each other (BENCHMARKS.md "Round 5")."""
    width = K + 64 // np.dtype(dtype).itemsize
    buf = scratch(-(-count * rows * width * np.dtype(dtype).itemsize // 4), slot).view(dtype)
    return buf[:count * rows * width].reshape(count, rows, width)


def check_shape(shape) -> tuple:
    """``shape`` if it is one of PANEL_SHAPES (the compiled tile computes only those; any other would leave its
    output unwritten), else a BackendError."""
    if tuple(shape) not in PANEL_SHAPES:
        raise BackendError(f"no broadcast tile of shape {tuple(shape)}; the compiled ones are {PANEL_SHAPES}")
    return tuple(shape)


def _buffers(K: int, shape: tuple):
    """``gemm_panels``' per-thread buffers for rows of K values and a tile ``shape`` (reused across calls: a fresh
    large array page-faults on first write, see above)."""
    threads, (R, L, _) = numba.config.NUMBA_NUM_THREADS, check_shape(shape)
    return (padded(R, K, "widened", count=threads),
            scratch(threads * R * L, "sums").reshape(threads, R, L))


def gemm_broadcast(x, w, row_block, out, col0, shape=None):
    """``gemm_4x4``'s arguments and result by ``pack_x`` + ``gemm_panels`` for every row, in tiles of ``shape``
    (one of PANEL_SHAPES; default: this host's ``PANELS``). ``row_block`` unused: x goes in blocks of
    ``BROADCAST_ROW_BLOCK``."""
    shape = PANELS if shape is None else shape
    M, K = x.shape
    wbuf, tbuf = _buffers(K, shape)
    for i0 in range(0, M, BROADCAST_ROW_BLOCK):
        i1 = min(i0 + BROADCAST_ROW_BLOCK, M)
        gemm_panels(_pack(x[i0:i1], shape[1]), np.int64(i1 - i0), w, out[i0:i1], col0, wbuf, tbuf)


def gemm_host(x, w, row_block, out, col0):
    """This host's GEMM with FMA: the broadcast kernel on whole panels of x rows when there are
    ``BROADCAST_MIN_ROWS`` or more, the dot-product tiles on the rest (``gemm_4x3`` on AVX2, ``gemm_4x4`` with
    32 registers)."""
    M, L = x.shape[0], PANELS[1]
    whole = M // L * L if M >= BROADCAST_MIN_ROWS else 0
    if whole:
        gemm_broadcast(x[:whole], w, row_block, out, col0)
    if whole < M:
        (gemm_4x3 if AVX2_TILES else gemm_4x4)(x[whole:], w, row_block, out[whole:], col0)


#: blocked_attention's products by ``panel_matmul`` rather than BLAS (measured faster with AVX-512's tiles:
#: OpenBLAS runs its Haswell kernels on Zen 5; BENCHMARKS.md "Round 5")
PANEL_ATTENTION = PANELS == PANELS_AVX512
#: the prefill GEMM of this host (every caller takes this one): hosts without FMA keep ``gemm_4x4``
gemm = gemm_host if "fma" in cpu_features() else gemm_4x4


#: gemm's x rows per pass: 128 rows of a 2048-wide x are 1 MiB (the L2 of a Zen 5 core).
GEMM_ROW_BLOCK = 128


def tiled_matmul(x2: np.ndarray, out_dim: int, in_dim: int, fill: Callable, tile_elements: int) -> np.ndarray:
    """x2 (M, in) float32 @ W.T -> (M, out) float32, where ``fill(r0, r1, tile)`` writes rows r0:r1 of W
    as float32 into ``tile`` (r1 - r0, in), which ``gemm`` multiplies into columns r0:r1. Tiling over
    rows changes no result: each output is one dot product over the whole row."""
    M = x2.shape[0]
    # the broadcast kernel: x packed once for every tile, and tiles small enough to stay in the cache
    panels = gemm is gemm_host and BROADCAST_MIN_ROWS <= M <= BROADCAST_ROW_BLOCK
    if panels:
        tile_elements = min(tile_elements, PANEL_TILE_ELEMENTS)
        xp, (wbuf, tbuf) = _pack(x2, PANELS[1]), _buffers(in_dim, PANELS)
    rows = max(1, min(out_dim, tile_elements // max(in_dim, 1)))
    w = scratch(rows * in_dim).reshape(rows, in_dim)                 # (rows, in) the widened tile
    out = np.empty((M, out_dim), dtype=np.float32)
    for r0 in range(0, out_dim, rows):
        n = min(rows, out_dim - r0)
        fill(r0, r0 + n, w[:n])
        if panels:
            gemm_panels(xp, np.int64(M), w[:n], out, np.int64(r0), wbuf, tbuf)
        else:
            gemm(x2, w[:n], np.int64(GEMM_ROW_BLOCK), out, np.int64(r0))
    return out
