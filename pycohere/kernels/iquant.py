"""Kernels for llama.cpp's non-linear 4-bit types IQ4_NL and IQ4_XS, read in place from ggml blocks.

The NumPy spec is ``pycohere.quant.schemes.IQ4_NL`` / ``IQ4_XS`` (bit-exact against gguf-py); here are its
fast twins (registered in ``pycohere.kernels.registry``, listed in ``pycohere.kernels.quant``'s tables):

* ``dequant_iq4_nl`` / ``dequant_iq4_xs``: rows of blocks -> float32 rows, bit-identical to
  ``dequantize_blocks`` (prefill tiles for BLAS, embedding rows). Plain Numba, every host.
* ``gemv_iq4`` (exact mode, ``activations="float32"``, up to ``GEMV_MAX_ROWS`` input
  rows): twin of ``x @ dequantize().T`` with float32 activations.
* ``gemv_iq4_q8`` (``activations="llama.cpp"``): the activations rounded as llama.cpp
  rounds them for these types (ggml-cpu.c ``type_traits_cpu``: IQ4_NL's ``vec_dot_type`` is Q8_0, IQ4_XS's
  is Q8_K) and integer dot products of the codes, the way ggml-cpu/arch/x86/quants.c
  ``ggml_vec_dot_iq4_nl_q8_0`` / ``ggml_vec_dot_iq4_xs_q8_K`` form them. Twin: ``round_q8_0(x) @ W.T`` /
  ``round_q8_k(x) @ W.T`` (``pycohere.quant.activations``). Both roundings to codes are
  ``pycohere.kernels.rounding.quantize_rows`` (through ``int8_dot.quantize_activations``).

Why LLVM IR. A 4-bit code indexes a 16-entry table of int8 values (ggml-common.h ``kvalues_iq4nl``), so a
plain Numba loop does a table lookup per weight: LLVM turns it into a vector gather or scalar loads
(``row_nf4`` in pycohere.kernels.rows measured that: 0.42x bf16). llama.cpp instead looks up 16 codes at
once with one byte shuffle (``_mm_shuffle_epi8(values128, codes)``: the table fits in one 128-bit
register). Numba cannot express ``pshufb``, so the row dot products are written once in LLVM IR (Numba
``@intrinsic``, the technique of ``pycohere.kernels.int8_dot``). Per block of 32 values:

    16 bytes qs -> low / high nibbles -> pshufb(kvalues, nibbles) -> 32 int8 values (element order: byte j
    holds element j low and element j + 16 high, so [low | high] is the x order)

then, exact mode: values -> float32, times x, accumulated as ``acc += d * (x * k)`` in a 32-lane float
vector (IQ4_XS: ``d * (ls - 32)`` per sub-block); llama.cpp mode: ``vpmaddubsw(|k|, sign(k) * q)`` (exact:
|127 * 127 * 2| < 2**15) and ``vpmaddwd`` with ones (IQ4_NL; then ``d_w * d_x`` per block) or with the
sub-block scale ``ls - 32`` (IQ4_XS: int32 sums over the whole super-block, then ``d_w * d_x`` once), as in
quants.c. One horizontal sum per row. The exact-mode IQ4_XS dot takes four weight rows per call, which share
every load of x (for long rows x lives in L2, and one row per call read 7x more bytes of x than of weights).

The IR kernels need AVX2 (``AVAILABLE``, as int8_dot); without it, or with ``NUMBA_DISABLE_JIT``, the
wrappers return None and matmuls take the dequantized-tile path (``dequant_*`` + BLAS) and the spec's
activation rounding.
"""
from __future__ import annotations

# Sources (llama.cpp as bundled with llama-cpp-python 0.3.36): ggml/src/ggml-cpu/ggml-cpu.c lines 380-391
# (type_traits_cpu of IQ4_NL / IQ4_XS: vec_dot_type Q8_0 / Q8_K); ggml/src/ggml-cpu/arch/x86/quants.c lines
# 69-73 (mul_add_epi8), 3920-4002 (ggml_vec_dot_iq4_nl_q8_0) and 4004-4108 (ggml_vec_dot_iq4_xs_q8_K).
import numpy as np

from ..quant.schemes import KVALUES_IQ4NL
from .int8_dot import AVAILABLE, quantize_activations
from .jit import F16_TABLE, GEMV_MAX_ROWS, njit, prange

IQ4_NL_BYTES, IQ4_XS_BYTES = 18, 136  # ggml-common.h block_iq4_nl, block_iq4_xs
SCHEMES = ("iq4_nl", "iq4_xs")
KVALUES = KVALUES_IQ4NL.astype(np.float32)  # the int8 table as float32 for the plain dequantizers


# --- dequantization: bit-identical to the spec (no fastmath) --------------------------------------------
@njit(cache=True, parallel=True)
def dequant_iq4_nl(q, f16, kv, out):
    """Rows of IQ4_NL blocks (f16 d, qs[16]) -> float32 rows: ``d * kvalues[n]`` (ggml-quants.c
    dequantize_row_iq4_nl: element j is the low nibble of qs[j], element j + 16 the high one)."""
    for o in prange(q.shape[0]):
        for k in range(q.shape[1] // IQ4_NL_BYTES):
            b = k * IQ4_NL_BYTES
            d = f16[np.int32(q[o, b]) | (np.int32(q[o, b + 1]) << np.int32(8))]
            for j in range(16):
                v = np.int32(q[o, b + 2 + j])
                out[o, k * 32 + j] = d * kv[v & np.int32(15)]
                out[o, k * 32 + 16 + j] = d * kv[v >> np.int32(4)]


@njit(cache=True, parallel=True)
def dequant_iq4_xs(q, f16, kv, out):
    """Rows of IQ4_XS blocks (f16 d, u16 scales_h, scales_l[4], qs[128]) -> float32 rows:
    ``(d * (ls - 32)) * kvalues[n]`` (ggml-quants.c dequantize_row_iq4_xs)."""
    for o in prange(q.shape[0]):
        for k in range(q.shape[1] // IQ4_XS_BYTES):
            b = k * IQ4_XS_BYTES
            d = f16[np.int32(q[o, b]) | (np.int32(q[o, b + 1]) << np.int32(8))]
            sh = np.int32(q[o, b + 2]) | (np.int32(q[o, b + 3]) << np.int32(8))
            for ib in range(8):
                low = (np.int32(q[o, b + 4 + ib // 2]) >> np.int32(4 * (ib % 2))) & np.int32(15)
                ls = low | (((sh >> np.int32(2 * ib)) & np.int32(3)) << np.int32(4))
                dl = d * np.float32(ls - np.int32(32))
                for j in range(16):
                    v = np.int32(q[o, b + 8 + 16 * ib + j])
                    out[o, k * 256 + 32 * ib + j] = dl * kv[v & np.int32(15)]
                    out[o, k * 256 + 32 * ib + 16 + j] = dl * kv[v >> np.int32(4)]


# --- the row dot products in LLVM IR ---------------------------------------------------------------------
if AVAILABLE:
    from llvmlite import ir
    from numba.core import types
    from numba.extending import intrinsic

    _I1, _I8, _I16, _I32, _I64, _F32 = (ir.IntType(1), ir.IntType(8), ir.IntType(16), ir.IntType(32),
                                        ir.IntType(64), ir.FloatType())

    def _v(t, n):
        return ir.VectorType(t, n)

    from .vrows import hsum as _hsum_ir, splat as _splat_ir

    def _splat(builder, value, t, n):  # (t: the lane type, implied by value)
        return _splat_ir(builder, value, n)

    def _hsum(builder, vec, n):
        """Sum of the n float lanes of vec, by halves (one per row: the order is immaterial)."""
        return _hsum_ir(builder, vec)

    class _Codegen:
        """Shared pieces of the four row kernels: intrinsics, pointers, the kvalues lookup."""

        def __init__(self, builder):
            self.b = builder
            mod = builder.module
            fn = lambda name, ret, params: mod.declare_intrinsic(name, fnty=ir.FunctionType(ret, params))
            self.pshufb = fn("llvm.x86.ssse3.pshuf.b.128", _v(_I8, 16), [_v(_I8, 16), _v(_I8, 16)])
            self.maddubs = fn("llvm.x86.avx2.pmadd.ub.sw", _v(_I16, 16), [_v(_I8, 32), _v(_I8, 32)])
            self.maddwd = fn("llvm.x86.avx2.pmadd.wd", _v(_I32, 8), [_v(_I16, 16), _v(_I16, 16)])
            self.psign = fn("llvm.x86.avx2.psign.b", _v(_I8, 32), [_v(_I8, 32), _v(_I8, 32)])
            self.pabs = fn("llvm.abs.v32i8", _v(_I8, 32), [_v(_I8, 32), _I1])
            # ggml-common.h kvalues_iq4nl in one 16-byte register (quants.c: values128)
            self.table = ir.Constant(_v(_I8, 16), [int(v) for v in KVALUES_IQ4NL])

        def row_ptr(self, arr, index):
            """i8* to row ``index`` of a 2-D array (strides in bytes)."""
            b = self.b
            return b.gep(b.bitcast(arr.data, _I8.as_pointer()), [b.mul(index, b.extract_value(arr.strides, 0))])

        def load(self, ptr, offset, vtype):
            b = self.b
            return b.load(b.bitcast(b.gep(ptr, [offset]), vtype.as_pointer()), align=1)

        def f16(self, ptr, offset):
            b = self.b
            bits = b.load(b.bitcast(b.gep(ptr, [offset]), _I16.as_pointer()), align=1)
            return b.fpext(b.bitcast(bits, ir.HalfType()), _F32)

        def kvalues(self, ptr, offset):
            """The 32 int8 values of the block of 16 code bytes at ptr + offset, in element order."""
            b = self.b
            qs = self.load(ptr, offset, _v(_I8, 16))
            low = b.and_(qs, ir.Constant(_v(_I8, 16), [15] * 16))
            high = b.lshr(qs, ir.Constant(_v(_I8, 16), [4] * 16))
            vlo = b.call(self.pshufb, [self.table, low])
            vhi = b.call(self.pshufb, [self.table, high])
            return b.shuffle_vector(vlo, vhi, ir.Constant(_v(_I32, 32), list(range(32))))

        def int_dot(self, k, xq, scale16=None):
            """vpmaddubsw(|k|, sign(k) q) then vpmaddwd with ones (or a splat i16 scale): <8 x i32>, exact
            (quants.c mul_add_epi8 + _mm256_madd_epi16)."""
            b = self.b
            pairs = b.call(self.maddubs, [b.call(self.pabs, [k, ir.Constant(_I1, 0)]), b.call(self.psign, [xq, k])])
            other = scale16 if scale16 is not None else ir.Constant(_v(_I16, 16), [1] * 16)
            return b.call(self.maddwd, [pairs, other])

        def sub_block_scale(self, blk, ib):
            """IQ4_XS sub-block ib's ``ls - 32`` as i32: nibble ib % 2 of scales_l[ib / 2] | bits 2 ib of scales_h."""
            b = self.b
            sh = b.zext(b.load(b.bitcast(b.gep(blk, [ir.Constant(_I64, 2)]), _I16.as_pointer()), align=1), _I32)
            sl = b.zext(b.load(b.gep(blk, [ir.Constant(_I64, 4 + ib // 2)])), _I32)
            low = b.and_(b.lshr(sl, ir.Constant(_I32, 4 * (ib % 2))), ir.Constant(_I32, 15))
            high = b.and_(b.lshr(sh, ir.Constant(_I32, 2 * ib)), ir.Constant(_I32, 3))
            return b.sub(b.or_(low, b.shl(high, ir.Constant(_I32, 4))), ir.Constant(_I32, 32))

    def _loop(builder, n_blocks, inits, body):
        """for blk in range(n_blocks) (n_blocks >= 1): accs = body(blk, accs); returns the final accs (a list)."""
        entry = builder.block
        loop = builder.append_basic_block("blocks")
        done = builder.append_basic_block("done")
        builder.branch(loop)
        builder.position_at_end(loop)
        i = builder.phi(_I64)
        accs = [builder.phi(a.type) for a in inits]
        nexts = body(i, list(accs))
        i_next = builder.add(i, ir.Constant(_I64, 1))
        i.add_incoming(ir.Constant(_I64, 0), entry)
        i.add_incoming(i_next, builder.block)
        for acc, init, nxt in zip(accs, inits, nexts):
            acc.add_incoming(init, entry)
            acc.add_incoming(nxt, builder.block)
        builder.cbranch(builder.icmp_signed("<", i_next, n_blocks), loop, done)
        builder.position_at_end(done)
        return nexts

    def _exact_codegen(xs: bool, tile: int):
        """float32 dots of ``tile`` consecutive weight rows row.. (IQ4_NL or IQ4_XS blocks) with x[r] (float32).

        The rows share each load of x: with one row per call a row of 8192 values reads 32 KiB of x (from L2
        once x outgrows L1) for 4.5 KiB of weights; four rows per call cut that traffic by four."""
        block_bytes, values = (IQ4_XS_BYTES, 256) if xs else (IQ4_NL_BYTES, 32)
        fast = ["contract", "reassoc"]

        def codegen(context, builder, signature, args):
            qa, row, xa, r = args
            qt, _, xt, _ = signature.args
            w = context.make_array(qt)(context, builder, qa)
            x = context.make_array(xt)(context, builder, xa)
            g = _Codegen(builder)
            wrows = [g.row_ptr(w, builder.add(row, ir.Constant(_I64, t))) for t in range(tile)]
            xrow = g.row_ptr(x, r)
            n_blocks = builder.sdiv(builder.extract_value(x.shape, 1), ir.Constant(_I64, values))

            def body(i, accs):
                blks = [builder.gep(wr, [builder.mul(i, ir.Constant(_I64, block_bytes))]) for wr in wrows]
                xblk = builder.mul(i, ir.Constant(_I64, 4 * values))  # byte offset of the block in x's row
                ds = [g.f16(blk, ir.Constant(_I64, 0)) for blk in blks]
                for ib in range(8 if xs else 1):
                    xv = g.load(xrow, builder.add(xblk, ir.Constant(_I64, 128 * ib)), _v(_F32, 32))
                    for t, blk in enumerate(blks):
                        k = builder.sitofp(g.kvalues(blk, ir.Constant(_I64, 8 + 16 * ib if xs else 2)), _v(_F32, 32))
                        scale = builder.fmul(ds[t], builder.sitofp(g.sub_block_scale(blk, ib), _F32)) if xs else ds[t]
                        prod = builder.fmul(xv, k, flags=fast)
                        scaled = builder.fmul(_splat(builder, scale, _F32, 32), prod, flags=fast)
                        accs[t] = builder.fadd(accs[t], scaled, flags=fast)
                return accs
            accs = _loop(builder, n_blocks, [ir.Constant(_v(_F32, 32), [0.0] * 32)] * tile, body)
            sums = [_hsum(builder, acc, 32) for acc in accs]
            return sums[0] if tile == 1 else context.make_tuple(builder, signature.return_type, sums)
        return codegen

    def _rounded_codegen(xs: bool):
        """float32 dot of weight row ``row`` with activation row r given as Q8_0 (IQ4_NL) or Q8_K (IQ4_XS)
        codes xq (R, n) int8 and block scales xd (R, n / block) float32."""
        block_bytes, values = (IQ4_XS_BYTES, 256) if xs else (IQ4_NL_BYTES, 32)

        def codegen(context, builder, signature, args):
            qa, row, xqa, xda, r = args
            qt, _, xqt, xdt, _ = signature.args
            w = context.make_array(qt)(context, builder, qa)
            xq = context.make_array(xqt)(context, builder, xqa)
            xd = context.make_array(xdt)(context, builder, xda)
            g = _Codegen(builder)
            wrow, xqrow = g.row_ptr(w, row), g.row_ptr(xq, r)
            n_blocks = builder.extract_value(xd.shape, 1)
            xdrow = builder.gep(xd.data, [builder.mul(r, n_blocks)])

            def body(i, acc):
                blk = builder.gep(wrow, [builder.mul(i, ir.Constant(_I64, block_bytes))])
                xoff = builder.mul(i, ir.Constant(_I64, values))
                dw = g.f16(blk, ir.Constant(_I64, 0))
                if xs:  # quants.c ggml_vec_dot_iq4_xs_q8_K: int32 sums of ls * dot over the super-block
                    isum = ir.Constant(_v(_I32, 8), [0] * 8)
                    for ib in range(8):
                        k = g.kvalues(blk, ir.Constant(_I64, 8 + 16 * ib))
                        xv = g.load(xqrow, builder.add(xoff, ir.Constant(_I64, 32 * ib)), _v(_I8, 32))
                        ls = builder.trunc(g.sub_block_scale(blk, ib), _I16)
                        isum = builder.add(isum, g.int_dot(k, xv, _splat(builder, ls, _I16, 16)))
                else:  # ggml_vec_dot_iq4_nl_q8_0
                    isum = g.int_dot(g.kvalues(blk, ir.Constant(_I64, 2)), g.load(xqrow, xoff, _v(_I8, 32)))
                scale = builder.fmul(dw, builder.load(builder.gep(xdrow, [i])))
                term = builder.fmul(builder.sitofp(isum, _v(_F32, 8)), _splat(builder, scale, _F32, 8),
                                    flags=["contract"])
                return builder.fadd(acc, term, flags=["contract"])
            [acc] = _loop(builder, n_blocks, [ir.Constant(_v(_F32, 8), [0.0] * 8)], lambda i, accs: [body(i, accs[0])])
            return _hsum(builder, acc, 8)
        return codegen

    def _exact_dot(xs, tile=1):
        @intrinsic
        def row_dot(typingctx, q, row, x, r):
            """float32 (a tile-tuple of them): packed rows row.. of q (out, blocks * bytes) u8 times x[r] (x (R, in)
            float32)."""
            ret = types.float32 if tile == 1 else types.UniTuple(types.float32, tile)
            return ret(q, row, x, r), _exact_codegen(xs, tile)
        return row_dot

    def _rounded_dot(xs):
        @intrinsic
        def row_dot(typingctx, q, row, xq, xd, r):
            """float32: packed row ``row`` of q times the rounded activation row r (codes xq, scales xd)."""
            return types.float32(q, row, xq, xd, r), _rounded_codegen(xs)
        return row_dot

    _dot_nl, _dot_xs = _exact_dot(False), _exact_dot(True)
    _dot_xs4 = _exact_dot(True, 4)
    _dot_nl_q8, _dot_xs_q8 = _rounded_dot(False), _rounded_dot(True)

    # Parallel over output rows, each weight row read from memory once and decoded per input row from L1
    # (R <= GEMV_MAX_ROWS), as int8_dot's GEMVs.
    @njit(cache=True, inline="always")
    def rows_iq4_nl(y, col0, q, o0, n, x):
        """y[:, col0 + i] = x @ W[o0 + i] for i < n, one weight row per call of the dot (four-row tiles measured
        slower for IQ4_NL: 4.6 against 4.0 ms on 8192 x 8192, its 32-value blocks reuse each x load little)."""
        for i in range(n):
            for r in range(x.shape[0]):
                y[r, col0 + i] = _dot_nl(q, o0 + i, x, r)

    @njit(cache=True, inline="always")
    def rows_iq4_xs(y, col0, q, o0, n, x):
        """y[:, col0 + i] = x @ W[o0 + i] for i < n, four weight rows per call of the dot (2.6 against 3.3-3.7 ms
        on 8192 x 8192: they share each x load of a 256-value super-block), then the rest."""
        n4 = n - n % 4
        for i in range(0, n4, 4):
            for r in range(x.shape[0]):
                y[r, col0 + i], y[r, col0 + i + 1], y[r, col0 + i + 2], y[r, col0 + i + 3] = _dot_xs4(q, o0 + i, x, r)
        for i in range(n4, n):
            for r in range(x.shape[0]):
                y[r, col0 + i] = _dot_xs(q, o0 + i, x, r)

    TILE_ROWS = 64  # output rows per parallel job (a multiple of 4)

    @njit(cache=True, parallel=True)
    def gemv_iq4(kind, q, x):
        """x (R, in) f32 @ the rows q of SCHEMES[kind] (IQ4_NL: (out, in/32*18), IQ4_XS: (out, in/256*136))
        -> (R, out). Twin: ``x @ W.dequantize().T``."""
        R, O = x.shape[0], q.shape[0]
        y = np.empty((R, O), dtype=np.float32)
        for c in prange((O + TILE_ROWS - 1) // TILE_ROWS):
            o0 = c * TILE_ROWS
            if kind == 0:
                rows_iq4_nl(y, o0, q, o0, min(TILE_ROWS, O - o0), x)
            else:
                rows_iq4_xs(y, o0, q, o0, min(TILE_ROWS, O - o0), x)
        return y

    @njit(cache=True, parallel=True)
    def gemv_iq4_q8(kind, q, xq, xd):
        """Rounded activations (codes xq, scales xd: Q8_0 for IQ4_NL, Q8_K for IQ4_XS) @ the rows of
        SCHEMES[kind]. Twin: ``round_q8_0(x) @ W.T`` / ``round_q8_k(x) @ W.T``."""
        R, O = xq.shape[0], q.shape[0]
        y = np.empty((R, O), dtype=np.float32)
        for o in prange(O):
            for r in range(R):
                y[r, o] = _dot_nl_q8(q, o, xq, xd, r) if kind == 0 else _dot_xs_q8(q, o, xq, xd, r)
        return y



# --- the fused decode step's block functions (pycohere.kernels.decode, kinds IQ4_NL / IQ4_XS) ----------------
# Same signature as decode.py's block_<kind>: rows o0..o0+n of the matrix (wu8: its blocks) times x into
# columns col0.. of y. ``lo`` / ``hi`` are the matrix's 256-entry byte tables of KVALUES (decode.matrix_arrays
# passes KVALUES as the code book): lo[v] = kvalues[v & 15], hi[v] = kvalues[v >> 4], used by the plain
# loops on hosts without the IR kernels.
if AVAILABLE:
    @njit(cache=True)
    def block_iq4_nl(y, col0, o0, n, x, xe, xo, xsum, xq, xd, xb, wu16, wf32, wu8, wi8, s1, s2, hi, lo, f16, lanes,
                     scale, mins, we, wo):
        rows_iq4_nl(y, col0, wu8, o0, n, x)

    @njit(cache=True)
    def block_iq4_xs(y, col0, o0, n, x, xe, xo, xsum, xq, xd, xb, wu16, wf32, wu8, wi8, s1, s2, hi, lo, f16, lanes,
                     scale, mins, we, wo):
        rows_iq4_xs(y, col0, wu8, o0, n, x)
else:
    @njit(cache=True)
    def block_iq4_nl(y, col0, o0, n, x, xe, xo, xsum, xq, xd, xb, wu16, wf32, wu8, wi8, s1, s2, hi, lo, f16, lanes,
                     scale, mins, we, wo):
        nb = x.shape[1] // 32
        for i in range(n):
            o = o0 + i
            for r in range(x.shape[0]):
                acc = np.float32(0.0)
                for k in range(nb):
                    b = k * IQ4_NL_BYTES
                    t = np.float32(0.0)
                    for j in range(16):
                        v = wu8[o, b + 2 + j]
                        t += x[r, k * 32 + j] * lo[v] + x[r, k * 32 + 16 + j] * hi[v]
                    acc += f16[np.int32(wu8[o, b]) | (np.int32(wu8[o, b + 1]) << np.int32(8))] * t
                y[r, col0 + i] = acc

    @njit(cache=True)
    def block_iq4_xs(y, col0, o0, n, x, xe, xo, xsum, xq, xd, xb, wu16, wf32, wu8, wi8, s1, s2, hi, lo, f16, lanes,
                     scale, mins, we, wo):
        nb = x.shape[1] // 256
        for i in range(n):
            o = o0 + i
            for r in range(x.shape[0]):
                acc = np.float32(0.0)
                for k in range(nb):
                    b = k * IQ4_XS_BYTES
                    d = f16[np.int32(wu8[o, b]) | (np.int32(wu8[o, b + 1]) << np.int32(8))]
                    sh = np.int32(wu8[o, b + 2]) | (np.int32(wu8[o, b + 3]) << np.int32(8))
                    for ib in range(8):
                        low = (np.int32(wu8[o, b + 4 + ib // 2]) >> np.int32(4 * (ib % 2))) & np.int32(15)
                        ls = low | (((sh >> np.int32(2 * ib)) & np.int32(3)) << np.int32(4))
                        t = np.float32(0.0)
                        e = k * 256 + 32 * ib
                        for j in range(16):
                            v = wu8[o, b + 8 + 16 * ib + j]
                            t += x[r, e + j] * lo[v] + x[r, e + 16 + j] * hi[v]
                        acc += (d * np.float32(ls - np.int32(32))) * t
                y[r, col0 + i] = acc


# --- wrappers (the tables of pycohere.kernels.quant, the llama.cpp-activation dispatch) --------------------
def _readonly(a: np.ndarray) -> np.ndarray:
    v = np.ascontiguousarray(a).view()
    v.flags.writeable = False  # one Numba signature for memory-mapped and in-memory weights
    return v


def _exact(scheme):
    def gemv(x2, a):
        """x2 (R, in) float32 @ W.T, or None without the IR kernels (the caller then takes dequantized tiles)."""
        if not AVAILABLE:
            return None
        return gemv_iq4(SCHEMES.index(scheme), _readonly(a["qweight"]), np.ascontiguousarray(x2, dtype=np.float32))
    return gemv


def gemv_rounded(x2: np.ndarray, qweight: np.ndarray, scheme: str) -> np.ndarray | None:
    """x2 (R, in) float32 rounded as llama.cpp rounds it for ``scheme`` (Q8_0 for iq4_nl, Q8_K for iq4_xs),
    times the weight, as integer dot products; None when this host or shape has no kernel (the caller then
    takes the spec path: round, then the exact matmul)."""
    if not AVAILABLE or scheme not in SCHEMES or x2.shape[0] > GEMV_MAX_ROWS:
        return None
    xq, xd, _ = quantize_activations(x2, "q8_0" if scheme == "iq4_nl" else "q8_k")
    if scheme == "iq4_xs":  # one scale per block of 256 (the rows read xd's width as the block count)
        xd = np.ascontiguousarray(xd[:, :x2.shape[1] // 256])
    return gemv_iq4_q8(SCHEMES.index(scheme), _readonly(qweight), xq, xd)


GEMV_KERNELS = {"iq4_nl": _exact("iq4_nl"), "iq4_xs": _exact("iq4_xs")}
DEQUANT_KERNELS = {"iq4_nl": lambda a, out: dequant_iq4_nl(a["qweight"], F16_TABLE, KVALUES, out),
                   "iq4_xs": lambda a, out: dequant_iq4_xs(a["qweight"], F16_TABLE, KVALUES, out)}
