"""One weight row times the decode inputs, per storage kind: the inner bodies every GEMV shares.

``row_<kind>(y, col, ..., o, ...)`` writes ``y[r, col] = dot(x[r], W[o])`` for every input row r, with
the weight row ``o`` read from memory once (the R input rows are the decode batch, re-read from L1).
The standalone GEMVs (``pycohere.kernels.dense`` / ``quant`` / ``kquant``) loop these over output rows
in parallel; the fused decode layer (``pycohere.kernels.decode``) loops them over the rows of several
matrices at once. All are inlined (``inline="always"``) into their callers.

The loops are plain on purpose: with reassociation allowed (fastmath ``reassoc``), LLVM vectorises them
and keeps several vector accumulators itself. Trip counts come from the arrays (a constant 32 or 16 is
fully unrolled by LLVM and then not vectorised); codes go through int32 before float32 (a vectorised
int64 -> float conversion does not exist on AVX2). The 4-bit kinds accumulate ``scale * x * code`` into
per-position "lanes" (a scratch row as wide as a group, reduced once per output row): group loops are
too short for the vectoriser to amortise a horizontal sum per group. Layouts: ``pycohere.quant.schemes``.
"""
from __future__ import annotations

import numpy as np

from .jit import FAST, JIT_DISABLED, f16_as_f32, f16_at, njit, u32_as_f32


@njit(cache=True, fastmath=FAST, inline="always")
def row_bf16(y, col, x, w, o):
    """bf16 bits W (out, in) uint16, x (R, in) f32: the bits shifted up are the float32 (exact)."""
    for r in range(x.shape[0]):
        s = np.float32(0.0)
        for j in range(w.shape[1]):
            s += x[r, j] * u32_as_f32(np.uint32(w[o, j]) << np.uint32(16))
        y[r, col] = s


@njit(cache=True, fastmath=FAST, inline="always")
def row_f16(y, col, x, w, o):
    """f16 bits W (out, in) uint16, widened in registers (``f16_as_f32``: a vector vcvtph2ps on x86-64;
    a gather from the 64K-entry ``F16_TABLE`` ran at a seventh of bf16's speed)."""
    for r in range(x.shape[0]):
        s = np.float32(0.0)
        for j in range(w.shape[1]):
            s += x[r, j] * f16_as_f32(w[o, j])
        y[r, col] = s


@njit(cache=True, fastmath=FAST, inline="always")
def row_f32(y, col, x, w, o):
    for r in range(x.shape[0]):
        s = np.float32(0.0)
        for j in range(w.shape[1]):
            s += x[r, j] * w[o, j]
        y[r, col] = s


@njit(cache=True, fastmath=FAST, inline="always")
def row_int8(y, col, x, q, scales, o):
    """pycohere int8 / LLM.int8: q (out, in) i8, scales (out, in/G). Per group an unscaled dot product,
    then one multiply by the scale (per channel: one group per row)."""
    n = x.shape[1]
    ng = scales.shape[1]
    G = n // ng
    for r in range(x.shape[0]):
        acc = np.float32(0.0)
        for g in range(ng):
            b = g * G
            t = np.float32(0.0)
            for j in range(G):  # (not range(b, b + G): that form defeats LLVM's vectoriser)
                t += x[r, b + j] * np.float32(np.int32(q[o, b + j]))
            acc += t * scales[o, g]
        y[r, col] = acc


@njit(cache=True, fastmath=FAST, inline="always")
def row_int4(y, col, xe, xo, xsum, q, scales, mins, symmetric, o, lanes):
    """int4 / int4-asym: xe/xo (R, in/2) even/odd elements of x, xsum (R, in/G) group sums, q (out, in/2)
    u8 with element 2j in the low nibble of byte j; w = (n - 8) s, or n s + m. Codes taken unsigned: the
    offset (or min) enters once per group through the group sum. lanes: H floats (bytes per group)."""
    h = xe.shape[1]
    ng = scales.shape[1]
    H = h // ng  # bytes per group
    for r in range(xe.shape[0]):
        lanes[:H] = 0.0
        corr = np.float32(0.0)
        for g in range(ng):
            b = g * H
            s = scales[o, g]
            corr += (np.float32(-8.0) * s if symmetric else mins[o, g]) * xsum[r, g]
            for j in range(H):
                v = np.int32(q[o, b + j])
                lanes[j] += s * (xe[r, b + j] * np.float32(np.int32(v & np.int32(15)))
                                 + xo[r, b + j] * np.float32(np.int32(v >> np.int32(4))))
        t = corr
        for j in range(H):
            t += lanes[j]
        y[r, col] = t


@njit(cache=True, fastmath=FAST, inline="always")
def row_nf4(y, col, xe, xo, q, scales, high, low, o, we, wo):
    """bitsandbytes nf4 / fp4 (element 2j in the HIGH nibble of byte j; w = table[n] * absmax). A code-book
    lookup inside the dot product becomes a vector gather (measured 0.27x bf16): the row is first
    dequantized into we/wo (h floats each) with scalar lookups in two 256-entry byte tables (``high``,
    ``low``: table[v >> 4], table[v & 15]), then multiplied by x in a plain vectorised loop."""
    h = xe.shape[1]
    ng = scales.shape[1]
    H = h // ng
    for g in range(ng):
        s = scales[o, g]
        b = g * H
        for j in range(H):
            v = q[o, b + j]
            we[b + j] = high[v] * s
            wo[b + j] = low[v] * s
    for r in range(xe.shape[0]):
        t = np.float32(0.0)
        for j in range(h):
            t += xe[r, j] * we[j] + xo[r, j] * wo[j]
        y[r, col] = t


@njit(cache=True, fastmath=FAST, inline="always")
def row_q8_0(y, col, x, q, qs, o, f16):
    """ggml block_q8_0 (34 B: f16 d, i8 qs[32]); q (out, blocks*34) u8 and qs its int8 view."""
    n = x.shape[1]
    nb = q.shape[1] // 34
    B = n // nb  # 32, at run time on purpose (see the module docstring)
    for r in range(x.shape[0]):
        acc = np.float32(0.0)
        for k in range(nb):
            b = k * 34 + 2
            e = k * B
            t = np.float32(0.0)
            for l in range(B):
                t += x[r, e + l] * np.float32(np.int32(qs[o, b + l]))
            acc += t * f16_at(q, o, b - 2, f16)
        y[r, col] = acc


@njit(cache=True, fastmath=FAST, inline="always")
def row_q4_0(y, col, x, xsum, q, o, f16, lanes):
    """ggml block_q4_0 (18 B: f16 d, u8 qs[16]): byte l of qs holds element l (low nibble) and
    element l + 16 (high); w = d (n - 8). xsum (R, in/32) are the block sums of x; lanes: 16 floats."""
    n = x.shape[1]
    nb = q.shape[1] // 18
    half = n // nb // 2  # 16, at run time
    for r in range(x.shape[0]):
        lanes[:half] = 0.0
        corr = np.float32(0.0)
        for k in range(nb):
            b = k * 18 + 2
            e = k * 2 * half
            d = f16_at(q, o, b - 2, f16)
            corr += d * xsum[r, k]
            for l in range(half):
                v = np.int32(q[o, b + l])
                lanes[l] += d * (x[r, e + l] * np.float32(np.int32(v & np.int32(15)))
                                 + x[r, e + half + l] * np.float32(np.int32(v >> np.int32(4))))
        t = np.float32(-8.0) * corr
        for l in range(half):
            t += lanes[l]
        y[r, col] = t


@njit(cache=True, fastmath=FAST, inline="always")
def row_q4_1(y, col, x, xsum, q, o, f16, lanes):
    """ggml block_q4_1 (20 B: f16 d, f16 m, u8 qs[16], split halves as q4_0); w = d n + m."""
    n = x.shape[1]
    nb = q.shape[1] // 20
    half = n // nb // 2
    for r in range(x.shape[0]):
        lanes[:half] = 0.0
        corr = np.float32(0.0)
        for k in range(nb):
            b = k * 20 + 4
            e = k * 2 * half
            d = f16_at(q, o, b - 4, f16)
            corr += f16_at(q, o, b - 2, f16) * xsum[r, k]
            for l in range(half):
                v = np.int32(q[o, b + l])
                lanes[l] += d * (x[r, e + l] * np.float32(np.int32(v & np.int32(15)))
                                 + x[r, e + half + l] * np.float32(np.int32(v >> np.int32(4))))
        t = corr
        for l in range(half):
            t += lanes[l]
        y[r, col] = t


Q4_K_BYTES = 144
Q6_K_BYTES = 210


@njit(cache=True, inline="always")
def q4_k_scales(q, o, b, f16, scale, mins):
    """Block b of row o: ``scale[j] = d * sc_j`` and ``mins[j] = dmin * m_j`` for its eight
    sub-blocks (float32 products, as the spec rounds them). The 6-bit pairs are unpacked as
    ggml-quants.c get_scale_min_k4: j < 4 takes the low 6 bits of bytes j and j+4; j >= 4 a nibble
    of byte j+4 plus the top two bits of bytes j-4 and j (two branch-free loops)."""
    d = f16_at(q, o, b, f16)
    dmin = f16_at(q, o, b + 2, f16)
    s = b + 4
    for j in range(4):
        scale[j] = d * np.float32(np.int32(q[o, s + j]) & np.int32(63))
        mins[j] = dmin * np.float32(np.int32(q[o, s + j + 4]) & np.int32(63))
    for j in range(4, 8):
        packed = np.int32(q[o, s + j + 4])
        scale[j] = d * np.float32((packed & np.int32(15)) | ((np.int32(q[o, s + j - 4]) >> np.int32(6)) << np.int32(4)))
        mins[j] = dmin * np.float32((packed >> np.int32(4)) | ((np.int32(q[o, s + j]) >> np.int32(6)) << np.int32(4)))


@njit(cache=True, inline="always")
def q6_k_code(ql, qh, nibble, pair):
    """A Q6_K value's signed code: 4 bits of ql (low nibble, or high with nibble=4) with bits
    pair..pair+1 of qh as bits 4-5, minus 32 (int32 throughout)."""
    low = (ql >> np.int32(nibble)) & np.int32(15)
    return (low | (((qh >> np.int32(pair)) & np.int32(3)) << np.int32(4))) - np.int32(32)


@njit(cache=True, fastmath=FAST, inline="always")
def row_q4_k(y, col, x, xsum, q, o, f16, lanes, scale, mins):
    """ggml block_q4_K (144 B per 256: f16 d, f16 dmin, 12 B of 6-bit (scale, min) pairs, 128 B qs);
    xsum (R, in/32) the sub-block sums of x (the mins enter through them); lanes: 32 floats, scale and
    mins: 8 floats each."""
    n = x.shape[1]
    nb = q.shape[1] // Q4_K_BYTES
    L = n // nb // 8  # 32: values per sub-block, at run time
    for r in range(x.shape[0]):
        lanes[:L] = 0.0
        corr = np.float32(0.0)
        for k in range(nb):
            b = k * Q4_K_BYTES
            q4_k_scales(q, o, b, f16, scale, mins)
            for j in range(8):
                corr += mins[j] * xsum[r, k * 8 + j]
            for i in range(4):
                s_lo = scale[2 * i]
                s_hi = scale[2 * i + 1]
                qb = b + 16 + i * L
                e = (k * 8 + 2 * i) * L
                for l in range(L):
                    v = np.int32(q[o, qb + l])
                    lanes[l] += (s_lo * (x[r, e + l] * np.float32(np.int32(v & np.int32(15))))
                                 + s_hi * (x[r, e + L + l] * np.float32(np.int32(v >> np.int32(4)))))
        t = -corr
        for l in range(L):
            t += lanes[l]
        y[r, col] = t


@njit(cache=True, fastmath=FAST, inline="always")
def row_q6_k(y, col, x, q, qs, o, f16, lanes):
    """ggml block_q6_K (210 B per 256: ql[128], qh[64], int8 sc[16], f16 d); qs the int8 view of q (the
    scales). Each 16-wide lane step consumes one byte of ql (low and high halves), one of ql+32 and one
    of qh: four values under four different scales. lanes: 16 floats."""
    n = x.shape[1]
    nb = q.shape[1] // Q6_K_BYTES
    H = n // nb // 16  # 16: values per scale, at run time
    for r in range(x.shape[0]):
        lanes[:H] = 0.0
        for k in range(nb):
            b = k * Q6_K_BYTES
            d = f16_at(q, o, b + 208, f16)
            for h in range(2):
                for g in range(2):
                    s = b + 192 + 8 * h + g
                    s1 = d * np.float32(qs[o, s])
                    s2 = d * np.float32(qs[o, s + 2])
                    s3 = d * np.float32(qs[o, s + 4])
                    s4 = d * np.float32(qs[o, s + 6])
                    lo = b + 64 * h + g * H
                    hb = b + 128 + 32 * h + g * H
                    e = k * 256 + 128 * h + g * H
                    for l in range(H):
                        a = np.int32(q[o, lo + l])
                        a2 = np.int32(q[o, lo + 32 + l])
                        hi = np.int32(q[o, hb + l])
                        lanes[l] += (s1 * (x[r, e + l] * np.float32(q6_k_code(a, hi, 0, 0)))
                                     + s2 * (x[r, e + 32 + l] * np.float32(q6_k_code(a2, hi, 0, 2)))
                                     + s3 * (x[r, e + 64 + l] * np.float32(q6_k_code(a, hi, 4, 4)))
                                     + s4 * (x[r, e + 96 + l] * np.float32(q6_k_code(a2, hi, 4, 6))))
        t = np.float32(0.0)
        for l in range(H):
            t += lanes[l]
        y[r, col] = t


# --- the block formats as vector IR (``pycohere.kernels.vrows``): the plain loops above are what runs under
# NUMBA_DISABLE_JIT (and the readable form of the same sums); compiled, these replace them. Rows whose
# arrays are not unit-stride (never in pycohere's own callers) keep the plain loop.
VECTOR_IR_KINDS: tuple = ()  # the storage kinds whose rows below are vrows' (reported by the decode engine)
if not JIT_DISABLED:
    from . import vrows
    VECTOR_IR_KINDS = ("q8_0", "q4_0", "q4_1", "q4_k", "q6_k")

    _plain_q4_0, _plain_q4_1, _plain_q8_0, _plain_q4_k, _plain_q6_k = row_q4_0, row_q4_1, row_q8_0, row_q4_k, row_q6_k

    @njit(cache=True, inline="always")
    def _unit(x, q, xsum):
        return x.strides[1] == 4 and q.strides[1] == 1 and xsum.strides[1] == 4

    @njit(cache=True, fastmath=FAST, inline="always")
    def row_q4_0(y, col, x, xsum, q, o, f16, lanes):  # noqa: F811
        if not _unit(x, q, xsum):
            return _plain_q4_0(y, col, x, xsum, q, o, f16, lanes)
        for r in range(x.shape[0]):
            y[r, col] = vrows.dot_q4_0(q, o, x, r, xsum)

    @njit(cache=True, fastmath=FAST, inline="always")
    def row_q4_1(y, col, x, xsum, q, o, f16, lanes):  # noqa: F811
        if not _unit(x, q, xsum):
            return _plain_q4_1(y, col, x, xsum, q, o, f16, lanes)
        for r in range(x.shape[0]):
            y[r, col] = vrows.dot_q4_1(q, o, x, r, xsum)

    @njit(cache=True, fastmath=FAST, inline="always")
    def row_q8_0(y, col, x, q, qs, o, f16):  # noqa: F811
        if not _unit(x, q, x):
            return _plain_q8_0(y, col, x, q, qs, o, f16)
        for r in range(x.shape[0]):
            y[r, col] = vrows.dot_q8_0(q, o, x, r, x)

    @njit(cache=True, fastmath=FAST, inline="always")
    def row_q4_k(y, col, x, xsum, q, o, f16, lanes, scale, mins):  # noqa: F811
        if not _unit(x, q, xsum):
            return _plain_q4_k(y, col, x, xsum, q, o, f16, lanes, scale, mins)
        for r in range(x.shape[0]):
            y[r, col] = vrows.dot_q4_k(q, o, x, r, xsum)

    @njit(cache=True, fastmath=FAST, inline="always")
    def row_q6_k(y, col, x, q, qs, o, f16, lanes):  # noqa: F811
        if not _unit(x, q, x):
            return _plain_q6_k(y, col, x, q, qs, o, f16, lanes)
        for r in range(x.shape[0]):
            y[r, col] = vrows.dot_q6_k(q, o, x, r, x)
