"""Row dot products of the ggml block formats with float32 activations, written as LLVM vector IR.

The exact-mode (``activations="float32"``) twins of ``pycohere.kernels.rows``' plain-loop bodies for
``q4_0``, ``q4_1``, ``q8_0``, ``q4_k`` and ``q6_k``: same maths (codes widened to float32, multiplied by
x, scaled per block), but a whole block's codes are one vector. LLVM does not vectorise the plain loops
well for these layouts (16- or 32-value groups under per-group scales: it ran at 3-6 GB/s per core
against 35 GB/s for bf16); here each block is a few vector loads, a nibble mask/shift, an int -> float
conversion and fused multiply-adds into a 16-lane accumulator reduced once per row. The IR is generic
(no x86 intrinsics): LLVM lowers ``<16 x float>`` to one AVX-512 register or two AVX2 ones, and
f16 -> f32 (``fpext half``) to ``vcvtph2ps``. Summation order differs from the spec's (float32 within
1e-5 relative, tests/test_kernel_twins.py); nothing here changes a weight or an activation.

Each intrinsic: ``dot(q, o, x, r, xsum) -> float32``: row ``o`` of q (out, blocks * block_bytes) u8 times
row ``r`` of x (R, in) f32; ``xsum`` (R, in / 32) are the 32-value block sums of x (the q4_0 offset of 8,
q4_1 and q4_K mins enter through them; unused by q8_0 and q6_k). Layouts: ``pycohere.kernels.kquant``
and ``pycohere.quant.schemes``.
"""
from __future__ import annotations

from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

_I1, _I8, _I16, _I32, _I64 = (ir.IntType(n) for n in (1, 8, 16, 32, 64))
_F32, _HALF = ir.FloatType(), ir.HalfType()
LANES = 16


def vec(t, n):
    return ir.VectorType(t, n)


def splat(builder, value, n=LANES):
    v = builder.insert_element(ir.Constant(vec(value.type, n), None), value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, ir.Constant(vec(value.type, n), None), ir.Constant(vec(_I32, n), [0] * n))


class _Row:
    """Pointers and small helpers for one (weight row, activation row) pair inside a codegen."""

    def __init__(self, context, builder, signature, args):
        qa, o, xa, r, sa = args
        qt, _, xt, _, st = signature.args
        self.b = builder
        q = context.make_array(qt)(context, builder, qa)
        x = context.make_array(xt)(context, builder, xa)
        s = context.make_array(st)(context, builder, sa)
        i8p = _I8.as_pointer()
        self.w = builder.gep(builder.bitcast(q.data, i8p), [builder.mul(o, builder.extract_value(q.strides, 0))])
        self.row_bytes = builder.extract_value(q.shape, 1)
        xrow = builder.gep(builder.bitcast(x.data, i8p), [builder.mul(r, builder.extract_value(x.strides, 0))])
        self.x = builder.bitcast(xrow, _F32.as_pointer())
        srow = builder.gep(builder.bitcast(s.data, i8p), [builder.mul(r, builder.extract_value(s.strides, 0))])
        self.xsum = builder.bitcast(srow, _F32.as_pointer())

    def byte_ptr(self, off):
        return self.b.gep(self.w, [off])

    def i8(self, off):  # one weight byte, signed, as float
        return self.b.sitofp(self.b.load(self.byte_ptr(off)), _F32)

    def f16(self, off):  # the little-endian f16 at byte off, as float32 (exact)
        bits = self.b.load(self.b.bitcast(self.byte_ptr(off), _I16.as_pointer()), align=1)
        return self.b.fpext(self.b.bitcast(bits, _HALF), _F32)

    def bytes(self, off, n=LANES):  # n weight bytes as <n x i8>
        return self.b.load(self.b.bitcast(self.byte_ptr(off), vec(_I8, n).as_pointer()), align=1)

    def xs(self, idx, n=LANES):  # x[idx : idx + n] as <n x float>
        return self.b.load(self.b.bitcast(self.b.gep(self.x, [idx]), vec(_F32, n).as_pointer()), align=4)

    def block_sum(self, idx):
        return self.b.load(self.b.gep(self.xsum, [idx]))

    def fma(self, a, b, c):  # a * b + c, contracted to one fused multiply-add
        return self.b.fadd(self.b.fmul(a, b, flags=["contract"]), c, flags=["contract"])

    def hsum(self, v):
        return hsum(self.b, v)


def hsum(b, v):
    """The horizontal sum of a float vector (a shuffle tree)."""
    n = v.type.count
    while n > 1:
        n //= 2
        lo = b.shuffle_vector(v, v, ir.Constant(vec(_I32, n), list(range(n))))
        hi = b.shuffle_vector(v, v, ir.Constant(vec(_I32, n), list(range(n, 2 * n))))
        v = b.fadd(lo, hi)
    return b.extract_element(v, ir.Constant(_I32, 0))


def counted_loop(b, start, stop, init: list, body, unroll: bool = True) -> list:
    """for k in range(start, stop): state = body(k, state); the final state (init when empty). ``unroll=False``
    forbids LLVM to unroll the loop (a body whose state fills the registers spills when two copies interleave)."""
    entry = b.block
    loop = b.append_basic_block("loop")
    done = b.append_basic_block("done")
    b.cbranch(b.icmp_signed("<", start, stop), loop, done)
    b.position_at_end(loop)
    k = b.phi(_I64)
    state = [b.phi(v.type) for v in init]
    nxt = body(k, list(state))
    k_next = b.add(k, ir.Constant(_I64, 1))
    end = b.block
    k.add_incoming(start, entry)
    k.add_incoming(k_next, end)
    for phi, v0, v1 in zip(state, init, nxt):
        phi.add_incoming(v0, entry)
        phi.add_incoming(v1, end)
    back = b.cbranch(b.icmp_signed("<", k_next, stop), loop, done)
    if not unroll:  # a loop ID: a node whose first operand is itself (LLVM LangRef, "'llvm.loop'")
        m = b.module
        node = m.add_metadata([m.add_metadata([ir.MetaDataString(m, "llvm.loop.unroll.disable")])])
        node.operands = (node,) + tuple(node.operands)
        back.set_metadata("llvm.loop", node)
    b.position_at_end(done)
    out = []
    for v0, v1 in zip(init, nxt):
        phi = b.phi(v0.type)
        phi.add_incoming(v0, entry)
        phi.add_incoming(v1, end)
        out.append(phi)
    return out


ACCUMULATORS = 4  # independent FMA chains: an FMA's 4-cycle latency would otherwise bound a block


def _block_loop(row: _Row, block_bytes: int, body, unroll: int):
    """Sum ``body`` over the row's blocks: (accs, corrs) = body(row, k, blk, accs, corrs, slot) with
    ACCUMULATORS vector accumulators and ACCUMULATORS scalar corrections. ``unroll`` blocks per iteration
    (slot 0..unroll-1, so a per-block chain can take accumulator ``slot``), then the remaining blocks one
    at a time. Returns (accs, corrs)."""
    b = row.b
    nb = b.sdiv(row.row_bytes, ir.Constant(_I64, block_bytes))
    init = ([ir.Constant(vec(_F32, LANES), [0.0] * LANES)] * ACCUMULATORS
            + [ir.Constant(_F32, 0.0)] * ACCUMULATORS)
    A = ACCUMULATORS

    def blocks(count):
        def step(i, state):
            accs, corrs = state[:A], state[A:]
            for u in range(count):
                k = b.add(b.mul(i, ir.Constant(_I64, count)), ir.Constant(_I64, u)) if count > 1 else i
                accs, corrs = body(row, k, b.mul(k, ir.Constant(_I64, block_bytes)), accs, corrs, u)
            return list(accs) + list(corrs)
        return step

    groups = b.sdiv(nb, ir.Constant(_I64, unroll))
    state = counted_loop(b, ir.Constant(_I64, 0), groups, init, blocks(unroll))
    if unroll > 1:
        state = counted_loop(b, b.mul(groups, ir.Constant(_I64, unroll)), nb, state, blocks(1))
    return state[:A], state[A:]


def const(v, n=LANES, t=_I8):
    return ir.Constant(vec(t, n), [v] * n)


def _nibbles(row: _Row, off, n=LANES):
    """(low, high) nibbles of n bytes at off, as <n x float> (codes 0..15)."""
    b = row.b
    v = row.bytes(off, n)
    low = b.uitofp(b.and_(v, const(15, n)), vec(_F32, n))
    high = b.uitofp(b.lshr(v, const(4, n)), vec(_F32, n))
    return low, high


def replaced(values: list, i: int, v) -> list:
    out = list(values)
    out[i] = v
    return out


# --- q4_0: 18 B = f16 d, 16 B qs: byte l holds element l (low nibble) and l + 16 (high); w = d (n - 8)
# --- q4_1: 20 B = f16 d, f16 m, 16 B qs as q4_0; w = d n + m
def _q4_body(with_min: bool):
    """The q4_0 (the offset -8 d enters per block through the block sum of x) or q4_1 (the min m) body."""
    def body(row, k, blk, accs, corrs, slot):
        b = row.b
        d = row.f16(blk)
        per_sum = row.f16(b.add(blk, ir.Constant(_I64, 2))) if with_min else d  # times sum(x): m, or d (x -8)
        low, high = _nibbles(row, b.add(blk, ir.Constant(_I64, 4 if with_min else 2)))
        e = b.mul(k, ir.Constant(_I64, 32))
        t = b.fmul(row.xs(e), low)
        t = row.fma(row.xs(b.add(e, ir.Constant(_I64, 16))), high, t)
        return (replaced(accs, slot, row.fma(t, splat(b, d), accs[slot])),
                replaced(corrs, slot, row.fma(per_sum, row.block_sum(k), corrs[slot])))
    return body


_q4_0_body, _q4_1_body = _q4_body(False), _q4_body(True)


# --- q8_0: 34 B = f16 d, int8 qs[32]; w = d q
def _q8_0_body(row, k, blk, accs, corrs, slot):
    b = row.b
    d = row.f16(blk)
    e = b.mul(k, ir.Constant(_I64, 32))
    t = None
    for h in range(2):
        codes = b.sitofp(row.bytes(b.add(blk, ir.Constant(_I64, 2 + 16 * h))), vec(_F32, LANES))
        xv = row.xs(b.add(e, ir.Constant(_I64, 16 * h)))
        t = b.fmul(xv, codes) if t is None else row.fma(xv, codes, t)
    return replaced(accs, slot, row.fma(t, splat(b, d), accs[slot])), corrs


# --- q4_K: 144 B per 256 = f16 d, f16 dmin, 12 B of 6-bit (scale, min), qs[128] (kquant.py's docstring)
def q4_k_scales_mins(row, blk):
    """The eight 6-bit scales and mins of a Q4_K block as two <8 x i32> (get_scale_min_k4, vectorised):
    j < 4: sc = s[j] & 63, m = s[j+4] & 63; j >= 4: sc = (s[j+4] & 15) | (s[j-4] >> 6) << 4,
    m = (s[j+4] >> 4) | (s[j] >> 6) << 4, with s the 12 scale bytes at byte 4 of the block."""
    b = row.b
    s = row.bytes(b.add(blk, ir.Constant(_I64, 4)))  # bytes 4..19: the 12 scale bytes, then 4 of qs (unused)
    pick = lambda idx: b.zext(b.shuffle_vector(s, s, ir.Constant(vec(_I32, 8), idx)), vec(_I32, 8))  # noqa: E731
    v = lambda vals: ir.Constant(vec(_I32, 8), vals)  # noqa: E731
    low4, high4 = [63] * 4 + [15] * 4, [0] * 4 + [0xFFFF] * 4
    top_bits = lambda x: b.and_(b.shl(b.lshr(x, v([6] * 8)), v([4] * 8)), v(high4))  # noqa: E731
    a = pick([0, 1, 2, 3, 8, 9, 10, 11])       # s[j] (j < 4), s[j+4] (j >= 4)
    c = pick([4, 5, 6, 7, 8, 9, 10, 11])       # s[j+4]
    sc = b.or_(b.and_(a, v(low4)), top_bits(pick([0, 0, 0, 0, 0, 1, 2, 3])))   # | (s[j-4] >> 6) << 4
    mn = b.or_(b.and_(b.lshr(c, v([0] * 4 + [4] * 4)), v(low4)), top_bits(pick([0, 0, 0, 0, 4, 5, 6, 7])))
    return sc, mn


def _q4_k_body(row, k, blk, accs, corrs, slot):
    b = row.b
    d, dmin = row.f16(blk), row.f16(b.add(blk, ir.Constant(_I64, 2)))
    e0 = b.mul(k, ir.Constant(_I64, 256))
    sc, mn = q4_k_scales_mins(row, blk)
    f8 = vec(_F32, 8)
    scales = b.fmul(splat(b, d, 8), b.uitofp(sc, f8))                    # d * sc_j, float32 as the spec
    mins = b.fmul(splat(b, dmin, 8), b.uitofp(mn, f8))                   # dmin * m_j
    # the mins through the sub-block sums of x: sum_l x_l (s n_l - m) = s x.n - m sum x
    xsum = b.load(b.bitcast(b.gep(row.xsum, [b.mul(k, ir.Constant(_I64, 8))]), f8.as_pointer()), align=4)
    corrs = replaced(corrs, slot, b.fadd(corrs[slot], row.hsum(b.fmul(mins, xsum))))
    for i in range(4):  # 32 bytes: low nibbles = sub-block 2i, high = 2i + 1; accumulator i
        s_lo = splat(b, b.extract_element(scales, ir.Constant(_I32, 2 * i)))
        s_hi = splat(b, b.extract_element(scales, ir.Constant(_I32, 2 * i + 1)))
        t_lo = t_hi = None  # x . codes of each sub-block, 16 of the 32 bytes at a time, then one scale
        for h in range(2):
            low, high = _nibbles(row, b.add(blk, ir.Constant(_I64, 16 + 32 * i + 16 * h)))
            e = b.add(e0, ir.Constant(_I64, 64 * i + 16 * h))
            x_lo, x_hi = row.xs(e), row.xs(b.add(e, ir.Constant(_I64, 32)))
            t_lo = b.fmul(x_lo, low) if t_lo is None else row.fma(x_lo, low, t_lo)
            t_hi = b.fmul(x_hi, high) if t_hi is None else row.fma(x_hi, high, t_hi)
        accs = replaced(accs, i, row.fma(t_hi, s_hi, row.fma(t_lo, s_lo, accs[i])))
    return accs, corrs


# --- q6_K: 210 B per 256 = ql[128], qh[64], int8 sc[16], f16 d (kquant.py's docstring); w = d sc (q - 32)
def _q6_k_body(row, k, blk, accs, corrs, slot):
    b = row.b
    d = row.f16(b.add(blk, ir.Constant(_I64, 208)))
    e0 = b.mul(k, ir.Constant(_I64, 256))
    off = lambda v: b.add(blk, ir.Constant(_I64, v))  # noqa: E731
    for h in range(2):
        for g in range(2):  # 16 values per scale
            a = row.bytes(off(64 * h + 16 * g))
            a2 = row.bytes(off(64 * h + 32 + 16 * g))
            hi = row.bytes(off(128 + 32 * h + 16 * g))
            parts = ((a, 0, 0), (a2, 0, 2), (a, 4, 4), (a2, 4, 6))  # (ql bytes, nibble shift, qh shift)
            for t, (lo_bytes, nib, pair) in enumerate(parts):  # accumulator t
                low = b.and_(b.lshr(lo_bytes, const(nib)), const(15))
                top = b.shl(b.and_(b.lshr(hi, const(pair)), const(3)), const(4))
                code = b.sub(b.or_(low, top), const(32))  # -32..31 fits i8
                scale = b.fmul(d, row.i8(off(192 + 8 * h + g + 2 * t)))
                xv = row.xs(b.add(e0, ir.Constant(_I64, 128 * h + 32 * t + 16 * g)))
                accs = replaced(accs, t, row.fma(b.fmul(xv, b.sitofp(code, vec(_F32, LANES))), splat(b, scale),
                                              accs[t]))
    return accs, corrs


def _intrinsic(block_bytes: int, body, corr_sign: float, unroll: int):
    def codegen(context, builder, signature, args):
        row = _Row(context, builder, signature, args)
        accs, corrs = _block_loop(row, block_bytes, body, unroll)
        acc = builder.fadd(builder.fadd(accs[0], accs[1]), builder.fadd(accs[2], accs[3]))
        total = row.hsum(acc)
        if corr_sign == 0:
            return total
        corr = builder.fadd(builder.fadd(corrs[0], corrs[1]), builder.fadd(corrs[2], corrs[3]))
        return builder.fadd(total, builder.fmul(ir.Constant(_F32, corr_sign), corr))

    @intrinsic
    def dot(typingctx, q, o, x, r, xsum):
        return types.float32(q, o, x, r, xsum), codegen
    return dot


# (unroll: blocks per loop iteration; the k-quant bodies already feed four chains from one block)
dot_q4_0 = _intrinsic(18, _q4_0_body, -8.0, ACCUMULATORS)
dot_q4_1 = _intrinsic(20, _q4_1_body, 1.0, ACCUMULATORS)
dot_q8_0 = _intrinsic(34, _q8_0_body, 0.0, ACCUMULATORS)
dot_q4_k = _intrinsic(144, _q4_k_body, -1.0, 1)
dot_q6_k = _intrinsic(210, _q6_k_body, 0.0, 1)
