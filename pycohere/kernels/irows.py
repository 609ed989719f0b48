"""Row dot products of the ggml block formats with 8-bit activation codes: llama.cpp's integer numerics.

Under ``activations="llama.cpp"`` a matmul's input is rounded first (``pycohere.quant.activations``):
to Q8_0 blocks of 32 for q8_0 / q4_0 weights (``x = d q``, d one fp16-valued float per block) and to
Q8_K blocks of 256 for q4_K / q6_K (d a float32 per block, plus the sums of q over each 16). The spec then
multiplies the rounded x by the dequantized weights in float32. Because the weight codes and q are small
integers, the same sum can be formed as llama.cpp forms it (ggml-cpu/arch/x86/quants.c
``ggml_vec_dot_q4_0_q8_0``, ``_q8_0_q8_0``, ``_q4_K_q8_K``, ``_q6_K_q8_K``): an exact integer dot product of
the codes per block (per 32 or 16 values under a sub-block scale), then one float multiply by the
blocks' scales. The plain loops ``ref_*`` below are the readable form of each sum; the ``dot_*`` intrinsics
are the same sums as LLVM vector IR:

* ``vpmaddubsw`` (unsigned x signed bytes, adjacent pairs summed to int16) then ``vpmaddwd`` (int16 pairs
  to int32, times ones or a sub-block scale). Exact: the largest pair sum is 2 * 128 * 127 < 2**15.
  Signed weights (q8_0, q4_0 after its offset of 8) move their sign onto the activation first
  (``|w| * sign(w) q``, quants.c ``mul_sum_i8_pairs``).
* ``vpdpbusd`` (AVX512-VNNI / AVX-VNNI: the u8 x s8 dot of 4 bytes accumulated into int32, one instruction)
  in place of the pair for q8_0 and q4_0 where the CPU has it.
* four float accumulators (independent chains, as ``kernels.vrows``), one horizontal sum per row.

Each intrinsic: ``dot(q, o, xq, r, xd, xb) -> float32``: row ``o`` of q (out, blocks * block_bytes) u8
times activation row ``r`` given as codes xq (R, in) int8, block scales xd (R, in / 32) float32 (Q8_K:
entry k is the scale of block k of 256) and 16-value code sums xb (R, in / 16) int16 (the q4_K mins and the
q6_K offset of 32 enter through them). Built only on x86-64 with AVX2 (``AVAILABLE``; the feature probe is
``kernels.jit.cpu_features``); elsewhere the engine runs the float kernels on the rounded x, which is the
spec read literally. Equal to the spec up to float32 summation order (tests/test_kernel_twins.py).
"""
from __future__ import annotations

import numpy as np

from .jit import JIT_DISABLED, cpu_features, f16_in, njit

_FEATURES = cpu_features()
AVAILABLE = not JIT_DISABLED and "avx2" in _FEATURES
VNNI = AVAILABLE and ("avxvnni" in _FEATURES or {"avx512vnni", "avx512vl"} <= _FEATURES)
# q8_0 / q4_0 two blocks per 512-bit vpdpbusd where the CPU has AVX-512 VNNI and byte ops (else 256-bit)
WIDE = 16 if AVAILABLE and {"avx512vnni", "avx512bw", "avx512f"} <= _FEATURES else 8
WIDE_CHAINS = 2 if WIDE == 16 else 4  # float accumulator chains of the four-block loop
TILES = WIDE == 16  # the prefill's repacked tiles (``tile4``) need 512-bit vpdpbusd
#: weight kinds with an integer row (``kernels.decode``), and the rounding their input needs; ``dot`` / ``dot4``
#: take a kind as its index here
KINDS = {"q8_0": "q8_0", "q4_0": "q8_0", "q4_k": "q8_k", "q6_k": "q8_k"}


def isa() -> str:
    """The instructions the integer rows use on this host (for the decode report)."""
    if not AVAILABLE:
        return "none (float kernels on the rounded activations)"
    return "vpdpbusd (VNNI) for q8_0/q4_0, vpmaddubsw+vpmaddwd for k-quants" if VNNI else "vpmaddubsw+vpmaddwd"


# --- the readable form: exact integer sums per block, one float scale each --------------------------------
@njit(cache=True)
def ref_q8_0(q, o, xq, r, xd, xb):
    """q8_0 (34 B: f16 d, int8 qs[32]) . Q8_0 codes: sum_b d_w d_x sum_l w_l q_l."""
    t = np.float32(0.0)
    for k in range(q.shape[1] // 34):
        s = 0
        for l in range(32):
            s += np.int32(np.int8(q[o, 34 * k + 2 + l])) * np.int32(xq[r, 32 * k + l])
        dw = f16_in(q, o, 34 * k)
        t += (dw * xd[r, k]) * np.float32(s)
    return t


@njit(cache=True)
def ref_q4_0(q, o, xq, r, xd, xb):
    """q4_0 (18 B: f16 d, qs[16]; byte l holds element l low, l + 16 high; w = d (n - 8)) . Q8_0 codes."""
    t = np.float32(0.0)
    for k in range(q.shape[1] // 18):
        s = 0
        for l in range(16):
            byte = np.int32(q[o, 18 * k + 2 + l])
            s += ((byte & 15) - 8) * np.int32(xq[r, 32 * k + l]) + ((byte >> 4) - 8) * np.int32(xq[r, 32 * k + 16 + l])
        dw = f16_in(q, o, 18 * k)
        t += (dw * xd[r, k]) * np.float32(s)
    return t


@njit(cache=True)
def scale_min_k4(q, o, blk, j):
    """get_scale_min_k4 (ggml-quants.c): sub-block j's 6-bit (scale, min) from the 12 bytes at blk + 4."""
    s = blk + 4
    if j < 4:
        return np.int32(q[o, s + j]) & 63, np.int32(q[o, s + j + 4]) & 63
    sc = (np.int32(q[o, s + j + 4]) & 15) | ((np.int32(q[o, s + j - 4]) >> 6) << 4)
    mn = (np.int32(q[o, s + j + 4]) >> 4) | ((np.int32(q[o, s + j]) >> 6) << 4)
    return sc, mn


@njit(cache=True)
def ref_q4_k(q, o, xq, r, xd, xb):
    """q4_K (144 B per 256: f16 d, f16 dmin, 12 B scales/mins, qs[128]; w = d sc_j n - dmin m_j) . Q8_K:
    d_x (d sum_j sc_j sum_l n_l q_l - dmin sum_j m_j sum_l q_l), the last sums from the 16-value sums xb."""
    t = np.float32(0.0)
    for k in range(q.shape[1] // 144):
        blk = 144 * k
        d = f16_in(q, o, blk)
        dmin = f16_in(q, o, blk + 2)
        s, m = 0, 0
        for j in range(8):
            sc, mn = scale_min_k4(q, o, blk, j)
            e = 256 * k + 32 * j
            sj = 0
            for l in range(32):  # sub-block j: the low nibbles of bytes 32 (j // 2).. (j even), else the high
                byte = np.int32(q[o, blk + 16 + 32 * (j // 2) + l])
                sj += ((byte >> 4) if j % 2 else (byte & 15)) * np.int32(xq[r, e + l])
            s += sc * sj
            m += mn * (np.int32(xb[r, 16 * k + 2 * j]) + np.int32(xb[r, 16 * k + 2 * j + 1]))
        t += xd[r, k] * (d * np.float32(s) - dmin * np.float32(m))
    return t


@njit(cache=True)
def ref_q6_k(q, o, xq, r, xd, xb):
    """q6_K (210 B per 256: ql[128], qh[64], int8 sc[16], f16 d; w = d sc_g (c - 32)) . Q8_K:
    d d_x sum_g sc_g (sum_l c_l q_l - 32 sum_l q_l)."""
    t = np.float32(0.0)
    for k in range(q.shape[1] // 210):
        blk = 210 * k
        s = 0
        for h in range(2):
            for l in range(32):
                hi = np.int32(q[o, blk + 128 + 32 * h + l])
                a, a2 = np.int32(q[o, blk + 64 * h + l]), np.int32(q[o, blk + 64 * h + 32 + l])
                codes = ((a & 15) | ((hi & 3) << 4), (a2 & 15) | (((hi >> 2) & 3) << 4),
                         (a >> 4) | (((hi >> 4) & 3) << 4), (a2 >> 4) | (((hi >> 6) & 3) << 4))
                for t4 in range(4):
                    v = 128 * h + 32 * t4 + l
                    sc = np.int32(np.int8(q[o, blk + 192 + v // 16]))
                    s += sc * (codes[t4] - 32) * np.int32(xq[r, 256 * k + v])
        d = f16_in(q, o, blk + 208)
        t += (d * xd[r, k]) * np.float32(s)
    return t


REFERENCE = {"q8_0": ref_q8_0, "q4_0": ref_q4_0, "q4_k": ref_q4_k, "q6_k": ref_q6_k}

if AVAILABLE:
    from llvmlite import ir
    from numba.core import types
    from numba.extending import intrinsic

    from .vrows import ACCUMULATORS, const, counted_loop, hsum, q4_k_scales_mins, replaced, splat, vec

    _I1, _I8, _I16, _I32, _I64, _F32 = (ir.IntType(1), ir.IntType(8), ir.IntType(16), ir.IntType(32),
                                        ir.IntType(64), ir.FloatType())
    _F8 = vec(_F32, 8)

    class _IRow:
        """Pointers and the integer operations for one (weight row, activation row) pair inside a codegen."""

        def __init__(self, context, builder, signature, args, tokens=1):
            qa, o, xqa, r, xda, xba = args
            qt, _, xqt, _, xdt, xbt = signature.args
            b = self.b = builder
            arr = lambda t, a: context.make_array(t)(context, builder, a)  # noqa: E731
            q, xq, xd, xb = arr(qt, qa), arr(xqt, xqa), arr(xdt, xda), arr(xbt, xba)
            i8p = _I8.as_pointer()
            row = lambda a, i: b.gep(b.bitcast(a.data, i8p), [b.mul(i, b.extract_value(a.strides, 0))])  # noqa
            self.w, self.row_bytes = row(q, o), b.extract_value(q.shape, 1)
            self.tokens = [(row(xq, rt), b.bitcast(row(xd, rt), _F32.as_pointer()), row(xb, rt))
                           for rt in (b.add(r, ir.Constant(_I64, t)) for t in range(tokens))]
            self.xq, self.xd, self.xb = self.tokens[0]
            mod = b.module
            fn = lambda name, ret, params: mod.declare_intrinsic(name, fnty=ir.FunctionType(ret, params))  # noqa
            self.maddubs = fn("llvm.x86.avx2.pmadd.ub.sw", vec(_I16, 16), [vec(_I8, 32), vec(_I8, 32)])
            self.maddwd = fn("llvm.x86.avx2.pmadd.wd", vec(_I32, 8), [vec(_I16, 16), vec(_I16, 16)])
            self.psign = fn("llvm.x86.avx2.psign.b", vec(_I8, 32), [vec(_I8, 32), vec(_I8, 32)])
            self.pabs = fn("llvm.abs.v32i8", vec(_I8, 32), [vec(_I8, 32), _I1])
            self.maddwd128 = fn("llvm.x86.sse2.pmadd.wd", vec(_I32, 4), [vec(_I16, 8), vec(_I16, 8)])
            if VNNI:
                self.dpbusd = fn("llvm.x86.avx512.vpdpbusd.256", vec(_I32, 8), [vec(_I32, 8)] * 3)
            if WIDE == 16:
                self.dpbusd512 = fn("llvm.x86.avx512.vpdpbusd.512", vec(_I32, 16), [vec(_I32, 16)] * 3)
                self.pabs64 = fn("llvm.abs.v64i8", vec(_I8, 64), [vec(_I8, 64), _I1])
                self.maddubs512 = fn("llvm.x86.avx512.pmaddubs.w.512", vec(_I16, 32), [vec(_I8, 64)] * 2)
                self.maddwd512 = fn("llvm.x86.avx512.pmaddw.d.512", vec(_I32, 16), [vec(_I16, 32)] * 2)
                self.dpwssd512 = fn("llvm.x86.avx512.vpdpwssd.512", vec(_I32, 16), [vec(_I32, 16)] * 3)

        def token(self, t):
            """This row against activation row r + t: the same weights and operations, token t's pointers."""
            view = object.__new__(_IRow)
            view.__dict__.update(self.__dict__)
            view.xq, view.xd, view.xb = self.tokens[t]
            return view

        def dot512(self, u, x):
            """vpdpbusd on 64 bytes: sum of u * x over each 4 (u unsigned, x signed), <16 x i32>."""
            b = self.b
            as32 = lambda v: b.bitcast(v, vec(_I32, 16))  # noqa: E731
            return b.call(self.dpbusd512, [ir.Constant(vec(_I32, 16), [0] * 16), as32(u), as32(x)])

        def at(self, ptr, off, vtype):
            return self.b.load(self.b.bitcast(self.b.gep(ptr, [off]), vtype.as_pointer()), align=1)

        def off(self, base, k):
            return self.b.add(base, ir.Constant(_I64, k))

        def f16(self, off):
            bits = self.at(self.w, off, _I16)
            return self.b.fpext(self.b.bitcast(bits, ir.HalfType()), _F32)

        def codes(self, e):  # 32 activation codes from value e
            return self.at(self.xq, e, vec(_I8, 32))

        def scale(self, k):  # d_x of block k
            return self.b.load(self.b.gep(self.xd, [k]))

        def sums16(self, k):  # the 16 sums of 16 codes of Q8_K block k, <16 x i16>
            return self.at(self.xb, self.b.mul(k, ir.Constant(_I64, 32)), vec(_I16, 16))

        def signed_dot(self, w, x):
            """sum of w * x over each 4 bytes of two <32 x i8> (w, x signed): <8 x i32>, exact."""
            b = self.b
            aw, sx = b.call(self.pabs, [w, ir.Constant(_I1, 0)]), b.call(self.psign, [x, w])
            if VNNI:
                as32 = lambda v: b.bitcast(v, vec(_I32, 8))  # noqa: E731
                return b.call(self.dpbusd, [ir.Constant(vec(_I32, 8), [0] * 8), as32(aw), as32(sx)])
            return b.call(self.maddwd, [b.call(self.maddubs, [aw, sx]), ir.Constant(vec(_I16, 16), [1] * 16)])

        def unsigned_dot(self, u, x):
            """sum of u * x over each 4 bytes (u unsigned < 128, x signed): <8 x i32>, exact."""
            b = self.b
            if VNNI:
                as32 = lambda v: b.bitcast(v, vec(_I32, 8))  # noqa: E731
                return b.call(self.dpbusd, [ir.Constant(vec(_I32, 8), [0] * 8), as32(u), as32(x)])
            return b.call(self.maddwd, [b.call(self.maddubs, [u, x]), ir.Constant(vec(_I16, 16), [1] * 16)])

        def scaled_dot(self, u, x, scales16):
            """sum of u * x * scale over pairs (u unsigned < 128, x signed, scales16 <16 x i16> per pair):
            vpmaddubsw then vpmaddwd with the scales, <8 x i32>, exact (k-quants' sub-block scales)."""
            return self.b.call(self.maddwd, [self.b.call(self.maddubs, [u, x]), scales16])

        def scaled_dot512(self, u, x, scales32, acc=None):
            """acc + the 512-bit ``scaled_dot`` of 64 bytes (scales32 <32 x i16> per pair): <16 x i32>; with
            VNNI the scaling and the accumulation are one vpdpwssd."""
            b = self.b
            pairs = b.call(self.maddubs512, [u, x])
            if VNNI:
                as32 = lambda v: b.bitcast(v, vec(_I32, 16))  # noqa: E731
                zero = ir.Constant(vec(_I32, 16), [0] * 16)
                return b.call(self.dpwssd512, [zero if acc is None else acc, as32(pairs), as32(scales32)])
            p = b.call(self.maddwd512, [pairs, scales32])
            return p if acc is None else b.add(acc, p)

        def halves(self, v):
            """<16 x i32> -> the sum of its halves, <8 x i32> (an <8 x i32> passes through)."""
            if v.type.count == 8:
                return v
            b = self.b
            half = lambda lo: b.shuffle_vector(v, v, ir.Constant(vec(_I32, 8), list(range(lo, lo + 8))))  # noqa
            return b.add(half(0), half(8))

        def fma(self, ints, scale, acc):  # acc + float(ints) * scale (scale a float32 scalar)
            b = self.b
            return b.fadd(b.fmul(b.sitofp(ints, _F8), splat(b, scale, 8), flags=["contract"]), acc,
                          flags=["contract"])

        def hsum(self, v):
            return hsum(self.b, v)

    def _block_loop(row, block_bytes, body, unroll):
        """sum over the row's blocks into ACCUMULATORS <8 x float> chains, ``unroll`` blocks per iteration
        (block u of an iteration feeds chain u), then the rest one at a time."""
        b = row.b
        nb = b.sdiv(row.row_bytes, ir.Constant(_I64, block_bytes))
        init = [ir.Constant(_F8, [0.0] * 8)] * ACCUMULATORS

        def blocks(count):
            def step(i, accs):
                for u in range(count):
                    k = b.add(b.mul(i, ir.Constant(_I64, count)), ir.Constant(_I64, u)) if count > 1 else i
                    accs = replaced(accs, u, body(row, k, b.mul(k, ir.Constant(_I64, block_bytes)), accs[u]))
                return accs
            return step

        groups = b.sdiv(nb, ir.Constant(_I64, unroll))
        accs = counted_loop(b, ir.Constant(_I64, 0), groups, init, blocks(unroll))
        accs = counted_loop(b, b.mul(groups, ir.Constant(_I64, unroll)), nb, accs, blocks(1))
        return b.fadd(b.fadd(accs[0], accs[1]), b.fadd(accs[2], accs[3]))

    def _nibbles32(row, off):
        """The 32 codes n - 8 of a q4_0 block's 16 bytes at off, in element order, <32 x i8>."""
        b = row.b
        qs = row.at(row.w, off, vec(_I8, 16))
        low, high = b.and_(qs, const(15, 16)), b.lshr(qs, const(4, 16))
        return b.sub(b.shuffle_vector(low, high, ir.Constant(vec(_I32, 32), list(range(32)))), const(8, 32))

    # --- q8_0 . Q8_0 and q4_0 . Q8_0: per block 32 codes, one integer dot, one scale d_w d_x. Four blocks at a
    # time: their scales d_w d_x as one <4 x float> (f16 -> f32 once per four), and q4_0's offset of 8 through
    # the code sums: sum (n - 8) q = n . q - 8 sum q, so the nibbles go to vpdpbusd unsigned, as they are, and
    # the offsets of four blocks cost one vector multiply-add. Each body is split in two: ``unpack`` reads the
    # four weight blocks once, ``apply`` multiplies them with one token's codes, so that several tokens (a
    # prefill's rows) share the weight loads and unpacking.
    def _dw4(row, blk, block_bytes):
        """d_w of blocks k..k+3 (f16 at the start of each) as <4 x float>."""
        b = row.b
        bits = ir.Constant(vec(_I16, 4), None)
        for u in range(4):
            bits = b.insert_element(bits, row.at(row.w, row.off(blk, block_bytes * u), _I16), ir.Constant(_I32, u))
        return b.fpext(b.bitcast(bits, vec(ir.HalfType(), 4)), vec(_F32, 4))

    def _dx4(row, k):
        return row.at(row.b.bitcast(row.xd, _I8.as_pointer()), row.b.mul(k, ir.Constant(_I64, 4)), vec(_F32, 4))

    def _lane(b, v, u):
        return b.extract_element(v, ir.Constant(_I32, u))

    def _codes_at(row, k, n):  # the codes of blocks k.. as <n x i8>
        return row.at(row.xq, row.b.mul(k, ir.Constant(_I64, 32)), vec(_I8, n))

    def _scaled(b, ints, scale, acc):  # acc + float(ints) * scale, vectors of one width
        return b.fadd(b.fmul(b.sitofp(ints, vec(_F32, ints.type.count)), scale, flags=["contract"]), acc,
                      flags=["contract"])

    def _offset_sums(row, k, s4, corr):
        """corr + s4 * (sum of the codes of blocks k..k+3): their two 16-sums, pairwise (vpmaddwd with ones)."""
        b = row.b
        sums = b.call(row.maddwd128, [row.at(row.xb, b.mul(k, ir.Constant(_I64, 4)), vec(_I16, 8)),
                                      ir.Constant(vec(_I16, 8), [1] * 8)])
        return b.fadd(b.fmul(s4, b.sitofp(sums, vec(_F32, 4)), flags=["contract"]), corr, flags=["contract"])

    def _pair_scales(b, s4, p):  # [s_2p x 8, s_2p+1 x 8]
        return b.shuffle_vector(s4, s4, ir.Constant(vec(_I32, 16), [2 * p] * 8 + [2 * p + 1] * 8))

    def _q4_0_unpack(row, blk):
        b = row.b
        if WIDE == 16:  # two blocks per 512-bit vector: [low_a | high_a | low_b | high_b] = x order
            nibs = []
            for p in range(2):
                qs = b.shuffle_vector(row.at(row.w, row.off(blk, 36 * p + 2), vec(_I8, 16)),
                                      row.at(row.w, row.off(blk, 36 * p + 20), vec(_I8, 16)),
                                      ir.Constant(vec(_I32, 32), list(range(32))))
                low, high = b.and_(qs, const(15, 32)), b.lshr(qs, const(4, 32))
                order = list(range(16)) + list(range(32, 48)) + list(range(16, 32)) + list(range(48, 64))
                nibs.append(b.shuffle_vector(low, high, ir.Constant(vec(_I32, 64), order)))
        else:
            nibs = []
            for u in range(4):
                qs = row.at(row.w, row.off(blk, 18 * u + 2), vec(_I8, 16))
                nibs.append(b.shuffle_vector(b.and_(qs, const(15, 16)), b.lshr(qs, const(4, 16)),
                                             ir.Constant(vec(_I32, 32), list(range(32)))))  # [low | high]
        return _dw4(row, blk, 18), nibs

    def _apply4(row, k, unpacked, accs, corr, wide_dot, narrow_dot, offset):
        """Four unpacked blocks times one token's codes: ``wide_dot(item, codes of 64)`` per pair of blocks
        or ``narrow_dot(item, codes of 32)`` per block, scaled by d_w d_x; q4_0's ``offset`` sums beside."""
        b = row.b
        dw4, items = unpacked
        s4 = b.fmul(dw4, _dx4(row, k))
        accs = list(accs)
        if WIDE == 16:
            for p in range(2):
                ints = wide_dot(row, items[p], _codes_at(row, row.off(k, 2 * p), 64))
                accs[p] = _scaled(b, ints, _pair_scales(b, s4, p), accs[p])
        else:
            for u in range(4):
                ints = narrow_dot(row, items[u], _codes_at(row, row.off(k, u), 32))
                accs[u] = _scaled(b, ints, splat(b, _lane(b, s4, u), 8), accs[u])
        return accs, (_offset_sums(row, k, s4, corr) if offset else corr)

    def _q4_0_apply(row, k, unpacked, accs, corr):
        return _apply4(row, k, unpacked, accs, corr, lambda r, nib, x: r.dot512(nib, x),
                       lambda r, nib, x: r.unsigned_dot(nib, x), True)

    def _q8_0_unpack(row, blk):
        b = row.b
        if WIDE == 16:  # |w| and w's sign of two blocks per 512-bit vector (no vpsignb on 512 bits: a select)
            out = []
            for p in range(2):
                w = b.shuffle_vector(row.at(row.w, row.off(blk, 68 * p + 2), vec(_I8, 32)),
                                     row.at(row.w, row.off(blk, 68 * p + 36), vec(_I8, 32)),
                                     ir.Constant(vec(_I32, 64), list(range(64))))
                out.append((b.call(row.pabs64, [w, ir.Constant(_I1, 0)]), b.icmp_signed("<", w, const(0, 64))))
        else:
            out = [row.at(row.w, row.off(blk, 34 * u + 2), vec(_I8, 32)) for u in range(4)]
        return _dw4(row, blk, 34), out

    def _q8_0_apply(row, k, unpacked, accs, corr):
        def wide(r, item, x):  # |w| . sign(w) x
            aw, negative = item
            return r.dot512(aw, r.b.select(negative, r.b.sub(const(0, 64), x), x))
        return _apply4(row, k, unpacked, accs, corr, wide, lambda r, w, x: r.signed_dot(w, x), False)

    def _block_loop4(row, block_bytes, unpack, apply, body, corr_sign, tokens):
        """Per token t < ``tokens``: the sum over the row's blocks against activation row r + t. Four blocks per
        iteration: ``unpack`` them once, ``apply`` them to each token (WIDE_CHAINS accumulators of WIDE floats
        and a <4 x float> correction per token, added times ``corr_sign``); then the rest one block at a time
        (``body``, into one <8 x float> per token). Returns the ``tokens`` float32 sums."""
        b = row.b
        nb = b.sdiv(row.row_bytes, ir.Constant(_I64, block_bytes))
        groups = b.sdiv(nb, ir.Constant(_I64, 4))
        views = [row.token(t) for t in range(tokens)]
        per = WIDE_CHAINS + 1

        def step(i, state):
            k = b.mul(i, ir.Constant(_I64, 4))
            unpacked = unpack(row, b.mul(k, ir.Constant(_I64, block_bytes)))
            out = []
            for t, view in enumerate(views):
                mine = state[per * t:per * (t + 1)]
                accs, corr = apply(view, k, unpacked, mine[:WIDE_CHAINS], mine[WIDE_CHAINS])
                out += list(accs) + [corr]
            return out

        one_token = [ir.Constant(vec(_F32, WIDE), [0.0] * WIDE)] * WIDE_CHAINS + [ir.Constant(vec(_F32, 4), [0.0] * 4)]
        state = counted_loop(b, ir.Constant(_I64, 0), groups, one_token * tokens, step)

        def one(k, accs):
            blk = b.mul(k, ir.Constant(_I64, block_bytes))
            return [body(view, k, blk, acc) for view, acc in zip(views, accs)]

        rest = counted_loop(b, b.mul(groups, ir.Constant(_I64, 4)), nb, [ir.Constant(_F8, [0.0] * 8)] * tokens, one)
        totals = []
        for t in range(tokens):
            chains = state[per * t:per * t + WIDE_CHAINS]
            main = chains[0]
            for a in chains[1:]:
                main = b.fadd(main, a)
            total = b.fadd(row.hsum(main), row.hsum(rest[t]))
            if corr_sign != 0:
                total = b.fadd(total, b.fmul(ir.Constant(_F32, corr_sign), row.hsum(state[per * t + WIDE_CHAINS])))
            totals.append(total)
        return totals

    def _q8_0_body(row, k, blk, acc):
        b = row.b
        w = row.at(row.w, row.off(blk, 2), vec(_I8, 32))
        ints = row.signed_dot(w, row.codes(b.mul(k, ir.Constant(_I64, 32))))
        return row.fma(ints, b.fmul(row.f16(blk), row.scale(k)), acc)

    def _q4_0_body(row, k, blk, acc):
        b = row.b
        ints = row.signed_dot(_nibbles32(row, row.off(blk, 2)), row.codes(b.mul(k, ir.Constant(_I64, 32))))
        return row.fma(ints, b.fmul(row.f16(blk), row.scale(k)), acc)

    # --- q4_K . Q8_K: per 256, sum_j sc_j (n . q)_j in int32, the mins through the 16-value sums
    def _q4_k_unpack(row, blk):
        """A q4_K block's codes as the multiply-adds take them, with their scales: (d, dmin, [(codes, scales)],
        mins <16 x i16> per 16-sum)."""
        b = row.b
        sc, mn = q4_k_scales_mins(_ScaleReader(row), blk)
        sc16, mn16 = b.trunc(sc, vec(_I16, 8)), b.trunc(mn, vec(_I16, 8))
        parts = []
        for i in range(4):  # 32 bytes: low nibbles = sub-block 2i, high = 2i + 1
            v = row.at(row.w, row.off(blk, 16 + 32 * i), vec(_I8, 32))
            low, high = b.and_(v, const(15, 32)), b.lshr(v, const(4, 32))
            if WIDE == 16:  # both sub-blocks in one 512-bit multiply-add: [low | high] = 64 values in x order
                s32 = b.shuffle_vector(sc16, sc16, ir.Constant(vec(_I32, 32), [2 * i] * 16 + [2 * i + 1] * 16))
                parts.append((b.shuffle_vector(low, high, ir.Constant(vec(_I32, 64), list(range(64)))), s32))
            else:
                parts += [(codes, b.shuffle_vector(sc16, sc16, ir.Constant(vec(_I32, 16), [2 * i + half] * 16)))
                          for half, codes in enumerate((low, high))]
        mins = b.shuffle_vector(mn16, mn16, ir.Constant(vec(_I32, 16), [j // 2 for j in range(16)]))  # m_j per 16
        return row.f16(blk), row.f16(row.off(blk, 2)), parts, mins

    def _q4_k_apply(row, k, unpacked, acc):
        b = row.b
        d, dmin, parts, mins16 = unpacked
        ints = _scaled_parts(row, b.mul(k, ir.Constant(_I64, 256)), parts)
        mins = b.call(row.maddwd, [row.sums16(k), mins16])  # m_j (B_2j + B_2j+1)
        dx = row.scale(k)
        acc = row.fma(ints, b.fmul(d, dx), acc)
        return row.fma(mins, b.fmul(b.fneg(dmin), dx), acc)

    def _scaled_parts(row, e0, parts):
        """sum over (codes, scales) parts, consecutive in x from value e0, of the scaled integer dots: <8 x i32>."""
        b = row.b
        ints, e = None, e0
        for codes, scales in parts:
            n = codes.type.count
            x = row.at(row.xq, e, vec(_I8, n))
            if n == 64:
                ints = row.scaled_dot512(codes, x, scales, ints)
            else:
                p = row.scaled_dot(codes, x, scales)
                ints = p if ints is None else b.add(ints, p)
            e = row.off(e, n)
        return row.halves(ints)

    class _ScaleReader:
        """The ``bytes`` reader vrows' Q4_K scale unpacking expects, over an integer row's weights."""

        def __init__(self, row):
            self.b, self._row = row.b, row

        def bytes(self, off, n=16):
            return self._row.at(self._row.w, off, vec(_I8, n))

    # --- q6_K . Q8_K: per 256, sum_g sc_g (c . q)_g - 32 sum_g sc_g B_g, all in int32
    def _q6_k_unpack(row, blk):
        """(d, [(codes, scales)] in x order, the 16 scales <16 x i16>) of a q6_K block."""
        b = row.b
        sc = row.at(row.w, row.off(blk, 192), vec(_I8, 16))
        m3 = const(3, 32)
        out = []
        for h in range(2):
            a = row.at(row.w, row.off(blk, 64 * h), vec(_I8, 32))
            a2 = row.at(row.w, row.off(blk, 64 * h + 32), vec(_I8, 32))
            hi = row.at(row.w, row.off(blk, 128 + 32 * h), vec(_I8, 32))
            top = lambda s: b.shl(b.and_(b.lshr(hi, const(s, 32)), m3), const(4, 32))  # noqa: E731
            parts = (b.or_(b.and_(a, const(15, 32)), top(0)), b.or_(b.and_(a2, const(15, 32)), top(2)),
                     b.or_(b.lshr(a, const(4, 32)), top(4)), b.or_(b.lshr(a2, const(4, 32)), top(6)))
            if WIDE == 16:  # parts (0, 1) and (2, 3) in one 512-bit multiply-add each: 64 values in x order
                for t in (0, 2):
                    idx = [8 * h + 2 * t + i for i in range(4) for _ in range(8)]
                    s32 = b.sext(b.shuffle_vector(sc, sc, ir.Constant(vec(_I32, 32), idx)), vec(_I16, 32))
                    out.append((b.shuffle_vector(parts[t], parts[t + 1], ir.Constant(vec(_I32, 64), list(range(64)))),
                                s32))
                continue
            for t, codes in enumerate(parts):  # values 128h + 32t ..: scales 8h + 2t (first 16), + 1
                g = 8 * h + 2 * t
                out.append((codes, b.sext(b.shuffle_vector(sc, sc, ir.Constant(vec(_I32, 16), [g] * 8 + [g + 1] * 8)),
                                          vec(_I16, 16))))
        return row.f16(row.off(blk, 208)), out, b.sext(sc, vec(_I16, 16))

    def _q6_k_apply(row, k, unpacked, acc):
        b = row.b
        d, parts, sc16 = unpacked
        ints = _scaled_parts(row, b.mul(k, ir.Constant(_I64, 256)), parts)
        offset = b.call(row.maddwd, [row.sums16(k), sc16])  # sum_g sc_g B_g
        ints = b.sub(ints, b.shl(offset, ir.Constant(vec(_I32, 8), [5] * 8)))
        return row.fma(ints, b.fmul(d, row.scale(k)), acc)

    def _q4_k_body(row, k, blk, acc):
        return _q4_k_apply(row, k, _q4_k_unpack(row, blk), acc)

    def _q6_k_body(row, k, blk, acc):
        return _q6_k_apply(row, k, _q6_k_unpack(row, blk), acc)

    def _multi_intrinsic(block_bytes, unpack, apply, tokens):
        """A tuple of ``tokens`` dots with rows r.. of x: each block unpacked once, applied to every token."""
        def codegen(context, builder, signature, args):
            row = _IRow(context, builder, signature, args, tokens)
            b = row.b
            views = [row.token(t) for t in range(tokens)]
            nb = b.sdiv(row.row_bytes, ir.Constant(_I64, block_bytes))

            def step(k, accs):
                unpacked = unpack(row, b.mul(k, ir.Constant(_I64, block_bytes)))
                return [apply(view, k, unpacked, acc) for view, acc in zip(views, accs)]
            accs = counted_loop(b, ir.Constant(_I64, 0), nb, [ir.Constant(_F8, [0.0] * 8)] * tokens, step)
            return context.make_tuple(builder, signature.return_type, [row.hsum(a) for a in accs])

        @intrinsic
        def dot(typingctx, q, o, xq, r, xd, xb):
            return types.UniTuple(types.float32, tokens)(q, o, xq, r, xd, xb), codegen
        return dot

    def _intrinsic(block_bytes, body, unroll):
        def codegen(context, builder, signature, args):
            row = _IRow(context, builder, signature, args)
            return row.hsum(_block_loop(row, block_bytes, body, unroll))

        @intrinsic
        def dot(typingctx, q, o, xq, r, xd, xb):
            return types.float32(q, o, xq, r, xd, xb), codegen
        return dot

    def _intrinsic4(block_bytes, unpack, apply, body, corr_sign, tokens=1):
        """dot(q, o, xq, r, xd, xb): float32, or with ``tokens`` > 1 a tuple of the dots with rows r..r+tokens-1
        of x (the caller keeps r + tokens <= R)."""
        def codegen(context, builder, signature, args):
            row = _IRow(context, builder, signature, args, tokens)
            totals = _block_loop4(row, block_bytes, unpack, apply, body, corr_sign, tokens)
            return totals[0] if tokens == 1 else context.make_tuple(builder, signature.return_type, totals)

        result = types.float32 if tokens == 1 else types.UniTuple(types.float32, tokens)

        @intrinsic
        def dot(typingctx, q, o, xq, r, xd, xb):
            return result(q, o, xq, r, xd, xb), codegen
        return dot

    dot_q8_0 = _intrinsic4(34, _q8_0_unpack, _q8_0_apply, _q8_0_body, 0.0)
    dot_q4_0 = _intrinsic4(18, _q4_0_unpack, _q4_0_apply, _q4_0_body, -8.0)
    #: the same rows against four activation rows at once (a prefill's GEMM: the weights unpacked once)
    dot4_q8_0 = _intrinsic4(34, _q8_0_unpack, _q8_0_apply, _q8_0_body, 0.0, tokens=4)
    dot4_q4_0 = _intrinsic4(18, _q4_0_unpack, _q4_0_apply, _q4_0_body, -8.0, tokens=4)
    dot_q4_k = _intrinsic(144, _q4_k_body, ACCUMULATORS)
    dot_q6_k = _intrinsic(210, _q6_k_body, ACCUMULATORS)
    dot4_q4_k = _multi_intrinsic(144, _q4_k_unpack, _q4_k_apply, 4)
    dot4_q6_k = _multi_intrinsic(210, _q6_k_unpack, _q6_k_apply, 4)

    # --- a prefill's tiles: 16 weight rows repacked (``int8_dot.repack_tile``) as u8 codes [block][group of 4
    # values][row][4], so that one vpdpbusd multiplies 4 values of 16 rows by the same 4 activation codes (a
    # broadcast): the lanes are rows, not parts of one row's sum, and a block's scale applies to all 16 at
    # once (repack.cpp's q4_0_8x8 idea, on tiles made per prefill). Per block and row: float scale s and
    # offset m, y += dx (s * (codes . q) + m * sum q) (q4_0: s = d, m = -8 d; q4_K: s = d sc_j, m = -dmin m_j).
    def _tile_codegen(context, builder, signature, args):
        ca, sa, ma, xqa, xda, xba, r, dshift, oa = args
        ct, st, mt, xqt, xdt, xbt, _, _, ot = signature.args
        b = builder
        arr = lambda t, a: context.make_array(t)(context, builder, a)  # noqa: E731
        codes, scales, offs, xq, xd, xb, out = (arr(t, a) for t, a in zip((ct, st, mt, xqt, xdt, xbt, ot),
                                                                         (ca, sa, ma, xqa, xda, xba, oa)))
        i8p, f16v = _I8.as_pointer(), vec(_F32, 16)
        mod = b.module
        dpbusd = mod.declare_intrinsic("llvm.x86.avx512.vpdpbusd.512",
                                       fnty=ir.FunctionType(vec(_I32, 16), [vec(_I32, 16)] * 3))
        nb = b.extract_value(scales.shape, 0)
        row = lambda a, i: b.gep(b.bitcast(a.data, i8p), [b.mul(i, b.extract_value(a.strides, 0))])  # noqa
        toks = [b.add(r, ir.Constant(_I64, t)) for t in range(4)]
        xqs = [row(xq, t) for t in toks]
        xds = [b.bitcast(row(xd, t), _F32.as_pointer()) for t in toks]
        xbs = [b.bitcast(row(xb, t), _I16.as_pointer()) for t in toks]
        cbase, sbase = b.bitcast(codes.data, i8p), b.bitcast(scales.data, i8p)
        mbase = b.bitcast(offs.data, i8p)
        load = lambda p, off, t: b.load(b.bitcast(b.gep(p, [off]), t.as_pointer()), align=1)  # noqa: E731

        def step(k, accs):
            blk = b.mul(k, ir.Constant(_I64, 512))
            ws = [b.bitcast(load(cbase, b.add(blk, ir.Constant(_I64, 64 * g)), vec(_I8, 64)), vec(_I32, 16))
                  for g in range(8)]
            sc = load(sbase, b.mul(k, ir.Constant(_I64, 64)), f16v)
            mn = load(mbase, b.mul(k, ir.Constant(_I64, 64)), f16v)
            e = b.mul(k, ir.Constant(_I64, 32))
            out_accs = []
            for t in range(4):
                ints = ir.Constant(vec(_I32, 16), [0] * 16)
                for g in range(8):
                    x4 = load(xqs[t], b.add(e, ir.Constant(_I64, 4 * g)), _I32)
                    ints = b.call(dpbusd, [ints, ws[g], splat(b, x4, 16)])
                dx = b.load(b.gep(xds[t], [b.ashr(k, dshift)]))  # Q8_0: block k; Q8_K: block k // 8
                sq = b.add(b.sext(b.load(b.gep(xbs[t], [b.mul(k, ir.Constant(_I64, 2))])), _I32),
                           b.sext(b.load(b.gep(xbs[t], [b.add(b.mul(k, ir.Constant(_I64, 2)), ir.Constant(_I64, 1))])),
                                  _I32))
                acc = b.fadd(b.fmul(b.sitofp(ints, f16v), b.fmul(sc, splat(b, dx, 16)), flags=["contract"]), accs[t],
                             flags=["contract"])
                acc = b.fadd(b.fmul(mn, splat(b, b.fmul(dx, b.sitofp(sq, _F32)), 16), flags=["contract"]), acc,
                             flags=["contract"])
                out_accs.append(acc)
            return out_accs

        zero = ir.Constant(f16v, [0.0] * 16)
        accs = counted_loop(b, ir.Constant(_I64, 0), nb, [zero] * 4, step)
        for t in range(4):
            dst = b.bitcast(row(out, ir.Constant(_I64, t)), f16v.as_pointer())
            b.store(accs[t], dst, align=4)
        return context.get_dummy_value()

    @intrinsic
    def tile4(typingctx, codes, scales, offs, xq, xd, xb, r, dshift, out):
        """out[t, :16] = rows of the repacked tile (codes (nb, 8, 16, 4) u8, scales / offs (nb, 16) f32) times
        activation rows r + t, t < 4 (codes xq, scales xd, 16-sums xb); ``dshift``: log2 of the 32-blocks per
        activation scale (0 for Q8_0, 3 for Q8_K)."""
        return types.void(codes, scales, offs, xq, xd, xb, r, dshift, out), _tile_codegen

    @njit(cache=True, inline="always")
    def dot4(kind, q, o, xq, r, xd, xb):
        """``dot`` with rows r..r+3 of x, the weight row unpacked once: a tuple of four."""
        if kind == 0:
            return dot4_q8_0(q, o, xq, r, xd, xb)
        if kind == 1:
            return dot4_q4_0(q, o, xq, r, xd, xb)
        if kind == 2:
            return dot4_q4_k(q, o, xq, r, xd, xb)
        return dot4_q6_k(q, o, xq, r, xd, xb)
else:
    dot_q8_0, dot_q4_0, dot_q4_k, dot_q6_k = ref_q8_0, ref_q4_0, ref_q4_k, ref_q6_k
    dot4_q8_0 = dot4_q4_0 = dot4_q4_k = dot4_q6_k = dot4 = tile4 = None  # (int8_dot uses them only where AVAILABLE)


@njit(cache=True, inline="always")
def dot(kind, q, o, xq, r, xd, xb):
    """Row o of weight ``kind`` (an index of KINDS: q8_0, q4_0, q4_k, q6_k) times activation row r (the
    readable loops where the IR is not built)."""
    if kind == 0:
        return dot_q8_0(q, o, xq, r, xd, xb)
    if kind == 1:
        return dot_q4_0(q, o, xq, r, xd, xb)
    if kind == 2:
        return dot_q4_k(q, o, xq, r, xd, xb)
    return dot_q6_k(q, o, xq, r, xd, xb)
