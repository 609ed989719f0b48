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

``gemm`` keeps ``tiles.gemm``'s layout: 4 x 4 tiles (4 activation rows by 4 weight rows, 16 vector
accumulators) parallel over groups of 4 weight rows, activation rows taken ``row_block`` at a time so they
stay in L2. Needs the input width to be a multiple of 32 (``supported``); ``vdpbf16ps`` treats subnormal
inputs and results as zero (a weight or rounded activation below 1.2e-38 in magnitude counts as 0).
"""
from __future__ import annotations

import numpy as np

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


#: activation rows per pass of ``gemm``: 256 rows of a 2048-wide x in bf16 are 1 MiB (a Zen 5 core's L2)
ROW_BLOCK = 256


def matmul(x2: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x2 (M, K) float32 @ W.T for W (N, K) bf16 bits, x rounded to bf16 first -> (M, N) float32.
    Needs ``supported(K)``."""
    xb = np.empty(x2.shape, dtype=np.uint16)
    bf16_bits(x2, xb)
    out = np.empty((x2.shape[0], w.shape[0]), dtype=np.float32)
    gemm(xb, w, np.int64(ROW_BLOCK), out, np.int64(0))
    return out
