"""bf16 x bf16 dot products (AVX512-BF16 ``vdpbf16ps``) for the prefill of bf16 weights under
``activations="llama.cpp"``.

llama.cpp multiplies a BF16 weight by activations rounded to bf16 (its ``vec_dot_type`` for BF16;
``pycohere.quant.activations.round_activations``), with float32 sums: ``ggml_vec_dot_bf16`` and llamafile's
tinyBLAS (``ggml/src/ggml-cpu/llamafile/sgemm.cpp``, the ``ggml_bf16_t`` tiles) use ``_mm512_dpbf16_ps``
where the CPU has it. The spec reads that literally: round x to bf16, widen both, multiply in float32
(``x_rounded @ widen(W).T``). Every product of two bf16 values is exact in float32 (8-bit significands),
so this kernel differs from the spec only in the order of the float32 additions: one ``vdpbf16ps`` adds
two products to each of 16 lanes, a tile's lanes are summed once at the end.

Why it is faster than ``tiles.gemm`` on the same rounded x: one instruction does 32 multiply-adds where a
float32 FMA does 16, and neither operand is widened first (the weight's bf16 bits are loaded as they are
mapped; the activations are rounded to bf16 bits once per matmul, half the bytes of float32).

``gemm`` keeps ``tiles.gemm_4x4``'s layout: 4 x 4 tiles (4 activation rows by 4 weight rows, 16 vector
accumulators) parallel over groups of 4 weight rows, activation rows taken ``row_block`` at a time so they
stay in L2. From ``PANEL_MIN_ROWS`` rows ``gemm_broadcast`` runs ``tiles``' broadcast micro-kernel in bf16
pairs instead (12 x 32 tiles; no lane sums at the end). Needs the input width to be a multiple of 32
(``supported``); ``vdpbf16ps`` treats subnormal inputs and results as zero (a weight or rounded activation
below 1.2e-38 in magnitude counts as 0).
"""
from __future__ import annotations

import numba
import numpy as np
from numba import get_thread_id

from .jit import JIT_DISABLED, cpu_features, njit, prange
from .rounding import bf16_round_bits

AVAILABLE = not JIT_DISABLED and {"avx512bf16", "avx512f"} <= cpu_features()
#: values per vdpbf16ps (16 float lanes, two bf16 pairs each)
STEP = 32


@njit(cache=True, parallel=True)
def bf16_bits(x, out):
    """out (M, K) uint16 <- the bf16 bits of float32 x (M, K), round to nearest even; NaN -> 0x7FC0.
    Twin: ``pycohere.io.dtypes.bf16_bits`` (the rounding ``round_activations(x, "bf16")`` does)."""
    for i in prange(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, j] = np.uint16(bf16_round_bits(x[i, j]))


def supported(in_dim: int) -> bool:
    return AVAILABLE and in_dim % STEP == 0


if AVAILABLE:
    from llvmlite import ir
    from numba.core import types
    from numba.extending import intrinsic

    from .vrows import counted_loop, vec

    class _BFloat(ir.types._BaseFloatType):
        """LLVM's ``bfloat`` (llvmlite has no class for it); only vectors of it are bitcast to."""
        null = "0.0"
        intrinsic_name = "bf16"

        def __str__(self):
            return "bfloat"

    _BFloat._create_instance()
    _I8, _I32, _I64, _F32 = ir.IntType(8), ir.IntType(32), ir.IntType(64), ir.FloatType()
    _BF32, _F16V = vec(_BFloat(), 32), vec(_F32, 16)

    def _lane_sums(b, vs):
        """16 vectors <16 x float> -> one whose lane r is the sum of vector r's lanes: a tree of 15 pairwise
        shuffle-adds (each level halves the lanes per vector and doubles the vectors per register), against
        16 separate horizontal sums of 4 levels each."""
        width = 8  # lanes per vector at this level, after the add
        while len(vs) > 1:
            lo, hi = [], []
            for base in range(0, 32, 2 * width):  # (a, b) concatenated: lanes 0..15 a, 16..31 b
                lo += list(range(base, base + width))
                hi += list(range(base + width, base + 2 * width))
            # segments of 2 * width lanes (one accumulator's partial sums each) fold into width lanes, in order
            vs = [b.fadd(b.shuffle_vector(x, y, ir.Constant(vec(_I32, 16), lo)),
                         b.shuffle_vector(x, y, ir.Constant(vec(_I32, 16), hi)))
                  for x, y in zip(vs[0::2], vs[1::2])]
            width //= 2
        return vs[0]

    def _tile_intrinsic(rm: int, rn: int):
        """tile(x, i, w, j, out, oi, oj): out[oi + a, oj + b] = sum_k x[i + a, k] w[j + b, k] for a < rm,
        b < rn; x (M, K) and w (N, K) bf16 bits (uint16, rows contiguous), K % 32 == 0."""

        @intrinsic
        def tile(typingctx, x, i, w, j, out, oi, oj):
            sig = types.void(x, i, w, j, out, oi, oj)

            def codegen(context, builder, signature, args):
                b = builder
                xa, ia, wa, ja, oa, oia, oja = args
                arr = lambda t, a: context.make_array(t)(context, b, a)  # noqa: E731
                X, W, O = arr(signature.args[0], xa), arr(signature.args[2], wa), arr(signature.args[4], oa)
                i8p = _I8.as_pointer()

                def row(A, r):  # byte pointer to row r of a 2-D array
                    return b.gep(b.bitcast(A.data, i8p), [b.mul(r, b.extract_value(A.strides, 0))])

                xs = [row(X, b.add(ia, ir.Constant(_I64, a))) for a in range(rm)]
                ws = [row(W, b.add(ja, ir.Constant(_I64, c))) for c in range(rn)]
                steps = b.sdiv(b.extract_value(X.shape, 1), ir.Constant(_I64, STEP))
                dp = b.module.declare_intrinsic("llvm.x86.avx512bf16.dpbf16ps.512",
                                                fnty=ir.FunctionType(_F16V, [_F16V, _BF32, _BF32]))

                def load(p, k):  # 32 bf16 values at element 32 k of a row
                    ptr = b.gep(p, [b.mul(k, ir.Constant(_I64, 2 * STEP))])
                    return b.load(b.bitcast(ptr, _BF32.as_pointer()), align=2)

                def body(k, accs):
                    xv = [load(p, k) for p in xs]
                    wv = [load(p, k) for p in ws]
                    return [b.call(dp, [accs[a * rn + c], xv[a], wv[c]]) for a in range(rm) for c in range(rn)]

                zero = ir.Constant(_F16V, [0.0] * 16)
                accs = counted_loop(b, ir.Constant(_I64, 0), steps, [zero] * (rm * rn), body)
                # entry e = a * rn + c of the tile: lane e % 16 of the lane sums of accumulators 16 (e // 16) ...
                sums = [_lane_sums(b, (accs[e:e + 16] + [zero] * 16)[:16]) for e in range(0, rm * rn, 16)]
                f32p = _F32.as_pointer()
                for a in range(rm):
                    orow = b.gep(b.bitcast(row(O, b.add(oia, ir.Constant(_I64, a))), f32p), [oja])
                    part = ir.Constant(vec(_F32, rn), None)
                    for c in range(rn):
                        e = a * rn + c
                        lane = b.extract_element(sums[e // 16], ir.Constant(_I32, e % 16))
                        part = b.insert_element(part, lane, ir.Constant(_I32, c))
                    b.store(part, b.bitcast(orow, vec(_F32, rn).as_pointer()), align=4)
                return context.get_dummy_value()
            return sig, codegen
        return tile

    _t44, _t34, _t24, _t14 = (_tile_intrinsic(m, 4) for m in (4, 3, 2, 1))
    _t11 = _tile_intrinsic(1, 1)

    @njit(cache=True, parallel=True)
    def gemm(x, w, row_block, out, col0):
        """out[:, col0:col0 + N] = x @ W.T over float32 sums, x (M, K) and W (N, K) bf16 bits.
        Twin: ``widen(x, "BF16") @ widen(W, "BF16").T`` (float32), i.e. ``round_activations(x, "bf16")``
        times the widened weight: the spec of a bf16 matmul under ``activations="llama.cpp"``."""
        M = x.shape[0]
        N = w.shape[0]
        groups = (N + 3) // 4
        for i0 in range(0, M, row_block):
            i1 = min(i0 + row_block, M)
            i4 = i0 + (i1 - i0) // 4 * 4
            rest = i1 - i4
            for g in prange(groups):
                j = g * 4
                if j + 4 <= N:
                    for i in range(i0, i4, 4):
                        _t44(x, i, w, j, out, i, col0 + j)
                    if rest == 3:
                        _t34(x, i4, w, j, out, i4, col0 + j)
                    elif rest == 2:
                        _t24(x, i4, w, j, out, i4, col0 + j)
                    elif rest == 1:
                        _t14(x, i4, w, j, out, i4, col0 + j)
                else:  # the last N % 4 weight rows: one dot product each
                    for jj in range(j, N):
                        for i in range(i0, i1):
                            _t11(x, i, w, jj, out, i, col0 + jj)


    # --- the broadcast form (``tiles``' micro-kernel, in bf16 pairs): ``gemm_panels`` -------------------------
    # x's bf16 bits are packed into panels of 32 rows, two bf16 of a row per 32-bit lane:
    # ``xp[p, k2, l] = x[32 p + l, 2 k2] | x[32 p + l, 2 k2 + 1] << 16`` (``tiles.pack_x`` on x's bits viewed as
    # uint32). Each step k2 loads the panel's 2 vectors and broadcasts a 32-bit pair of each of 12 weight rows
    # (their bits as mapped, copied once per group; no widening): 24 ``vdpbf16ps``, 768 multiply-adds, the
    # 12 x 32 sums in 24 registers (BLIS's skylakex shape, as ``tiles.PANELS_AVX512``).
    PANEL_ROWS, PANEL_LANES = 12, 32

    @intrinsic
    def _panel_tile(typingctx, w, j, xp, p, tmp):
        """tmp[a, l] = sum_{k < K} x[32 p + l, k] w[j + a, k] (float32 sums) for a < 12, l < 32: w (N, >= K)
        bf16 bits (uint16, rows contiguous; rows j .. j + 11 exist), xp (P, K / 2, 32) uint32 panels, tmp (12, 32)
        float32, both C-contiguous."""
        sig = types.void(w, j, xp, p, tmp)

        def codegen(context, builder, signature, args):
            b = builder
            wa, ja, xa, pa, ta = args
            arr = lambda t, a: context.make_array(t)(context, b, a)  # noqa: E731
            W, X, T = arr(signature.args[0], wa), arr(signature.args[2], xa), arr(signature.args[4], ta)
            i8p, i32p = _I8.as_pointer(), _I32.as_pointer()
            wstride = b.extract_value(W.strides, 0)
            wrows = [b.bitcast(b.gep(b.bitcast(W.data, i8p), [b.mul(b.add(ja, ir.Constant(_I64, a)), wstride)]),
                               i32p) for a in range(PANEL_ROWS)]
            steps = b.extract_value(X.shape, 1)
            panel = b.gep(b.bitcast(X.data, i32p), [b.mul(b.mul(pa, steps), ir.Constant(_I64, PANEL_LANES))])
            dp = b.module.declare_intrinsic("llvm.x86.avx512bf16.dpbf16ps.512",
                                            fnty=ir.FunctionType(_F16V, [_F16V, _BF32, _BF32]))
            v16 = vec(_I32, 16)

            def body(k, accs):
                at = b.gep(panel, [b.mul(k, ir.Constant(_I64, PANEL_LANES))])
                xs = [b.load(b.bitcast(b.gep(at, [ir.Constant(_I64, 16 * h)]), _BF32.as_pointer()), align=4)
                      for h in range(2)]
                out = []
                for a in range(PANEL_ROWS):
                    pair = b.load(b.gep(wrows[a], [k]), align=2)  # w[j + a, 2 k], w[j + a, 2 k + 1]
                    s = b.insert_element(ir.Constant(v16, None), pair, ir.Constant(_I32, 0))
                    s = b.bitcast(b.shuffle_vector(s, ir.Constant(v16, None), ir.Constant(v16, [0] * 16)), _BF32)
                    out += [b.call(dp, [accs[2 * a + h], xs[h], s]) for h in range(2)]
                return out

            zero = ir.Constant(_F16V, [0.0] * 16)
            accs = counted_loop(b, ir.Constant(_I64, 0), steps, [zero] * (2 * PANEL_ROWS), body, unroll=False)
            t = b.bitcast(T.data, _F32.as_pointer())
            for e, v in enumerate(accs):  # accumulator 2 a + h: lanes 16 h .. 16 h + 15 of row a
                b.store(v, b.bitcast(b.gep(t, [ir.Constant(_I64, 16 * e)]), _F16V.as_pointer()), align=4)
            return context.get_dummy_value()
        return sig, codegen

    @njit(cache=True, parallel=True)
    def gemm_panels(xp, M, w, out, col0, wbuf, tbuf):
        """out[:M, col0:col0 + N] = x @ W.T over float32 sums from x's bf16 panels ``xp`` (P, K / 2, 32) and W
        (N, K) bf16 bits; parallel over groups of 12 weight rows, each copied into wbuf[thread] (12, >= K) (rows
        ``tiles.padded``: the mapped rows of a 2^n-wide matrix share one L1 set; zeros past the last row),
        tbuf[thread] (12, 32) a tile's sums. Twin: as ``gemm``'s."""
        P = xp.shape[0]
        N, K = w.shape
        R, L = PANEL_ROWS, PANEL_LANES
        for g in prange((N + R - 1) // R):
            wg, tmp = wbuf[get_thread_id()], tbuf[get_thread_id()]
            j = g * R
            n = min(R, N - j)
            for a in range(n):
                for k in range(K):
                    wg[a, k] = w[j + a, k]
            wg[n:] = 0
            for p in range(P):
                _panel_tile(wg, 0, xp, p, tmp)
                for l in range(min(L, M - L * p)):
                    for a in range(n):
                        out[L * p + l, col0 + j + a] = tmp[a, l]


#: activation rows per pass of ``gemm``: 256 rows of a 2048-wide x in bf16 are 1 MiB (a Zen 5 core's L2)
ROW_BLOCK = 256
#: ``matmul`` runs the broadcast form (``gemm_panels``) from this many rows (fewer: the 4 x 4 tiles, level with
#: it at 128 rows; 1.0-1.8x slower at 256-512, BENCHMARKS.md "Round 5"), x in blocks of ``PANEL_ROW_BLOCK`` rows
#: (the panels of 512 rows of a 2048-wide x are 2 MiB)
PANEL_MIN_ROWS = 256
PANEL_ROW_BLOCK = 512


def gemm_broadcast(xb: np.ndarray, w: np.ndarray, out: np.ndarray, col0: int = 0) -> None:
    """``gemm``'s result by ``gemm_panels``, x's bf16 bits xb (M, K) packed block by block."""
    from . import tiles
    M, K = xb.shape
    threads = numba.config.NUMBA_NUM_THREADS
    tbuf = tiles.scratch(threads * PANEL_ROWS * PANEL_LANES, "bf16 sums").reshape(threads, PANEL_ROWS, PANEL_LANES)
    wbuf = tiles.padded(PANEL_ROWS, K, "bf16 rows", np.uint16, threads)  # (threads, 12, K + 32)
    x32 = xb.view(np.uint32)                                          # (M, K/2): a row's bf16 pairs
    for i0 in range(0, M, PANEL_ROW_BLOCK):
        i1 = min(i0 + PANEL_ROW_BLOCK, M)
        xp = tiles._pack(x32[i0:i1], PANEL_LANES)                      # (ceil(rows/32), K/2, 32) reused panels
        gemm_panels(xp, np.int64(i1 - i0), w, out[i0:i1], np.int64(col0), wbuf, tbuf)


def matmul(x2: np.ndarray, w: np.ndarray, broadcast: bool | None = None) -> np.ndarray:
    """x2 (M, K) float32 @ W.T for W (N, K) bf16 bits, x rounded to bf16 first -> (M, N) float32.
    Needs ``supported(K)``. ``broadcast``: the broadcast tiles (True) or the 4 x 4 tiles (False); None: by
    ``PANEL_MIN_ROWS``."""
    xb = np.empty(x2.shape, dtype=np.uint16)
    bf16_bits(x2, xb)
    out = np.empty((x2.shape[0], w.shape[0]), dtype=np.float32)
    if x2.shape[0] >= PANEL_MIN_ROWS if broadcast is None else broadcast:
        gemm_broadcast(xb, w, out)
    else:
        gemm(xb, w, np.int64(ROW_BLOCK), out, np.int64(0))
    return out
