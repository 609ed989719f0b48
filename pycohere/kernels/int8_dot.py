"""Integer dot products for activations rounded to 8-bit blocks: the AVX2 fast path of llama.cpp's numerics.

With ``activations="llama.cpp"`` (``pycohere.quant.activations``) the input ``x`` of a q8_0 / q4_0 matmul
is first rounded to Q8_0 blocks of 32: ``x' = d * q`` with ``q`` int8 and ``d`` one (fp16-valued) float
per block. The spec then multiplies ``x'`` by the dequantized weights in float32. Because ``q`` and the
weight codes are small integers, the same sum can be formed the way llama.cpp forms it
(ggml-cpu/arch/x86/quants.c ``ggml_vec_dot_q4_0_q8_0``): per block an exact integer dot product of the
codes, scaled once by ``d_w * d_x``:

    y = sum_b d_w[b] d_x[b] sum_l w_l q_l        (q8_0; for q4_0 w_l = n_l - 8, see below)

Numba cannot express the byte-wise multiply-add this needs (its integer arithmetic is 64-bit, and LLVM
does not form ``vpmaddubsw`` from plain loops), so the row dot product is written once in LLVM IR
(a Numba ``@intrinsic``): per block 16 or 32 weight bytes and 32 activation bytes are loaded as
vectors, multiplied with ``vpmaddubsw`` (unsigned x signed bytes -> pairs summed to int16; exact here:
|15 * 127 * 2| and |127 * 127 * 2| < 2**15) and ``vpmaddwd`` (pairs to int32), converted to float and
accumulated into an 8-lane float vector; one horizontal sum per row. q8_0 weights are signed, so as in
llama.cpp's ``mul_sum_i8_pairs`` the weight's sign moves onto the activation (``|w| * sign(w) q``).
q4_0 codes ``n`` are unsigned; ``sum (n - 8) q = sum n q - 8 sum q`` with the block sums of ``q``
folded into one per-block correction.

Available on x86-64 CPUs with AVX2 (``AVAILABLE``); elsewhere, and with ``NUMBA_DISABLE_JIT``, the
spec path (round ``x``, then the float kernels) is used. Tested against that spec
(tests/test_int8_dot.py): equal up to float32 summation order.
"""
from __future__ import annotations

import numpy as np

from .jit import GEMV_MAX_ROWS, JIT_DISABLED, njit, prange


def _host_has_avx2() -> bool:
    try:
        import llvmlite.binding as llvm
        return bool(llvm.get_host_cpu_features().get("avx2", False))
    except Exception:  # pragma: no cover - unusual llvmlite builds: use the spec path
        return False


AVAILABLE = not JIT_DISABLED and _host_has_avx2()
SCHEMES = ("q8_0", "q4_0")  # weight schemes with an integer kernel (activations rounded to q8_0)


@njit(cache=True)
def quantize_q8_0_rows(x):
    """x (R, n) float32 -> (q int8 (R, n), amax float32 (R, n/32), sums int32 (R, n/32)).

    ``q = rint(x * (127 / amax))`` per block of 32, as ``pycohere.quant.activations.round_q8_0``;
    the block scale ``d = fp16(amax / 127)`` is formed by the caller (Numba has no float16)."""
    R, n = x.shape
    nb = n // 32
    q = np.empty((R, n), dtype=np.int8)
    amax = np.empty((R, nb), dtype=np.float32)
    sums = np.empty((R, nb), dtype=np.int32)
    for r in range(R):
        for b in range(nb):
            m = np.float32(0.0)
            finite = True
            for l in range(32):
                a = abs(x[r, b * 32 + l])
                m = max(m, a)
                finite = finite and a < np.inf  # (False for NaN too)
            if not finite:
                m = np.float32(np.nan)  # -> d = NaN: the row's outputs are NaN, as the spec's
            inv = np.float32(127.0) / m if m != 0 and finite else np.float32(0.0)
            s = 0
            for l in range(32):
                v = np.int8(np.rint(x[r, b * 32 + l] * inv))
                q[r, b * 32 + l] = v
                s += v
            amax[r, b] = m
            sums[r, b] = s
    return q, amax, sums


def quantize_activations(x2: np.ndarray):
    """(q, d, sums) of x2 (R, n): int8 codes, float32 block scales (fp16-valued), int32 block sums."""
    q, amax, sums = quantize_q8_0_rows(x2)
    d = (amax / np.float32(127)).astype(np.float16).astype(np.float32)
    return q, d, sums


if AVAILABLE:
    from llvmlite import ir
    from numba.core import types
    from numba.extending import intrinsic

    _I8, _I16, _I32, _I64, _F32 = ir.IntType(8), ir.IntType(16), ir.IntType(32), ir.IntType(64), ir.FloatType()

    def _v(t, n):
        return ir.VectorType(t, n)

    def _const_vec(t, n, value):
        return ir.Constant(_v(t, n), [value] * n)

    def _row_dot_codegen(block_bytes: int, four_bit: bool):
        """LLVM IR of one weight row times the q8_0 activations (see the module docstring).

        Row layout: ``nb`` ggml blocks of ``block_bytes`` (f16 d, then 16 nibble bytes or 32 int8)."""

        def codegen(context, builder, signature, args):
            qa, row, xqa, xda, xsa, r = args
            qt, _, xqt, xdt, xst, _ = signature.args
            w = context.make_array(qt)(context, builder, qa)
            xq = context.make_array(xqt)(context, builder, xqa)
            xd = context.make_array(xdt)(context, builder, xda)
            xs = context.make_array(xst)(context, builder, xsa)
            mod = builder.module
            fn = lambda name, ret, params: mod.declare_intrinsic(name, fnty=ir.FunctionType(ret, params))
            maddubs = fn("llvm.x86.avx2.pmadd.ub.sw", _v(_I16, 16), [_v(_I8, 32), _v(_I8, 32)])
            maddwd = fn("llvm.x86.avx2.pmadd.wd", _v(_I32, 8), [_v(_I16, 16), _v(_I16, 16)])
            psign = fn("llvm.x86.avx2.psign.b", _v(_I8, 32), [_v(_I8, 32), _v(_I8, 32)])
            pabs = fn("llvm.abs.v32i8", _v(_I8, 32), [_v(_I8, 32), ir.IntType(1)])

            nb = builder.extract_value(xd.shape, 1)
            wrow = builder.gep(builder.bitcast(w.data, _I8.as_pointer()),
                               [builder.mul(row, builder.extract_value(w.strides, 0))])
            xrow_off = builder.mul(r, builder.extract_value(xq.strides, 0))
            xqrow = builder.gep(builder.bitcast(xq.data, _I8.as_pointer()), [xrow_off])
            xdrow = builder.gep(xd.data, [builder.mul(r, nb)])
            xsrow = builder.gep(xs.data, [builder.mul(r, nb)])

            entry = builder.block
            loop = builder.append_basic_block("blocks")
            done = builder.append_basic_block("done")
            builder.branch(loop)
            builder.position_at_end(loop)
            b = builder.phi(_I64)
            acc = builder.phi(_v(_F32, 8))
            corr = builder.phi(_F32)
            blk = builder.gep(wrow, [builder.mul(b, ir.Constant(_I64, block_bytes))])
            d_bits = builder.load(builder.bitcast(blk, _I16.as_pointer()), align=1)
            dw = builder.fpext(builder.bitcast(d_bits, ir.HalfType()), _F32)
            codes_at = builder.gep(blk, [ir.Constant(_I64, 2)])
            xv = builder.load(builder.bitcast(builder.gep(xqrow, [builder.mul(b, ir.Constant(_I64, 32))]),
                                              _v(_I8, 32).as_pointer()), align=1)
            if four_bit:  # byte l holds element l (low nibble) and l + 16 (high): [low | high] = x order
                qs = builder.load(builder.bitcast(codes_at, _v(_I8, 16).as_pointer()), align=1)
                low = builder.and_(qs, _const_vec(_I8, 16, 15))
                high = builder.lshr(qs, _const_vec(_I8, 16, 4))
                wv = builder.shuffle_vector(low, high, ir.Constant(_v(_I32, 32), list(range(32))))
                pairs = builder.call(maddubs, [wv, xv])
            else:  # signed weights: |w| * (sign(w) x), as llama.cpp's mul_sum_i8_pairs
                wv = builder.load(builder.bitcast(codes_at, _v(_I8, 32).as_pointer()), align=1)
                pairs = builder.call(maddubs, [builder.call(pabs, [wv, ir.Constant(ir.IntType(1), 0)]),
                                               builder.call(psign, [xv, wv])])
            isum = builder.call(maddwd, [pairs, _const_vec(_I16, 16, 1)])
            scale = builder.fmul(dw, builder.load(builder.gep(xdrow, [b])))
            splat = builder.shuffle_vector(
                builder.insert_element(ir.Constant(_v(_F32, 8), None), scale, ir.Constant(_I32, 0)),
                ir.Constant(_v(_F32, 8), None), ir.Constant(_v(_I32, 8), [0] * 8))
            acc_next = builder.fadd(acc, builder.fmul(builder.sitofp(isum, _v(_F32, 8)), splat, flags=["contract"]),
                                    flags=["contract"])
            if four_bit:  # - 8 * d_w d_x sum(q): the codes' offset of 8, once per block
                block_sum = builder.sitofp(builder.load(builder.gep(xsrow, [b])), _F32)
                corr_next = builder.fadd(corr, builder.fmul(scale, block_sum))
            else:
                corr_next = corr
            b_next = builder.add(b, ir.Constant(_I64, 1))
            b.add_incoming(ir.Constant(_I64, 0), entry)
            b.add_incoming(b_next, loop)
            acc.add_incoming(ir.Constant(_v(_F32, 8), [0.0] * 8), entry)
            acc.add_incoming(acc_next, loop)
            corr.add_incoming(ir.Constant(_F32, 0.0), entry)
            corr.add_incoming(corr_next, loop)
            builder.cbranch(builder.icmp_signed("<", b_next, nb), loop, done)
            builder.position_at_end(done)
            total = builder.extract_element(acc_next, ir.Constant(_I32, 0))
            for i in range(1, 8):
                total = builder.fadd(total, builder.extract_element(acc_next, ir.Constant(_I32, i)))
            return builder.fsub(total, builder.fmul(ir.Constant(_F32, 8.0), corr_next)) if four_bit else total
        return codegen

    def _row_dot(block_bytes, four_bit):
        @intrinsic
        def row_dot(typingctx, q, row, xq, xd, xs, r):
            """float32: row ``row`` of packed weights q (out, nb*block_bytes) u8 times activation row ``r``
            given as q8_0 codes xq (R, nb*32) i8, scales xd (R, nb) f32 and block sums xs (R, nb) i32."""
            return types.float32(q, row, xq, xd, xs, r), _row_dot_codegen(block_bytes, four_bit)
        return row_dot

    _dot_q8_0 = _row_dot(34, False)
    _dot_q4_0 = _row_dot(18, True)

    @njit(cache=True, parallel=True)
    def gemv_q8_0_q8(q, xq, xd, xs):
        R, O = xq.shape[0], q.shape[0]
        y = np.empty((R, O), dtype=np.float32)
        for o in prange(O):
            for r in range(R):
                y[r, o] = _dot_q8_0(q, o, xq, xd, xs, r)
        return y

    @njit(cache=True, parallel=True)
    def gemv_q4_0_q8(q, xq, xd, xs):
        R, O = xq.shape[0], q.shape[0]
        y = np.empty((R, O), dtype=np.float32)
        for o in prange(O):
            for r in range(R):
                y[r, o] = _dot_q4_0(q, o, xq, xd, xs, r)
        return y

    _KERNELS = {"q8_0": gemv_q8_0_q8, "q4_0": gemv_q4_0_q8}


def gemv_rounded(x2: np.ndarray, qweight: np.ndarray, scheme: str) -> np.ndarray | None:
    """x2 (R, in) float32 rounded to q8_0 blocks, times a q8_0 / q4_0 weight, as integer dot products;
    None when this host or shape has no kernel (the caller then takes the spec path)."""
    if not AVAILABLE or scheme not in SCHEMES or x2.shape[0] > GEMV_MAX_ROWS or x2.shape[1] % 32:
        return None
    xq, xd, xs = quantize_activations(np.ascontiguousarray(x2, dtype=np.float32))
    w = qweight.view()
    w.flags.writeable = False  # one Numba signature for mapped and in-memory weights
    return _KERNELS[scheme](w, xq, xd, xs)
