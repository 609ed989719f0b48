"""The compiled decode step: one Numba call per layer for one new token per sequence, the fast twin of
``pycohere.spec.layers.decoder_layer`` at T = 1 (and ``decode_head`` for the final norm and the head).

One call runs the whole parallel block in three parallel regions over preallocated buffers:

1. LayerNorm, then ONE pass over the rows of [Wq; Wk; Wv; Wgate; Wup] (they all read the normed input);
   then, serially (K * Dh values), the k/v biases, k-norm, RoPE on k and the cache append;
2. per (sequence, query head): q bias, q-norm, RoPE, attention over the cache; beside them, in the same
   region, chunks of act(gate) * up;
3. ONE pass over the rows of Wo and Wdown together: out = x + Wo ctx + Wdown act (+ o bias): the parallel
   residual, no separate adds.

Every matrix is one of the storage kinds of ``pycohere.kernels.rows``, served by that kind's block
function (rows o0..o0+n of it) chosen at run time by ``kinds[m]``: the layer kernel is compiled once for
every format and mixture (Q4_K_M's Q4_K and Q6_K). Matrices are indexed 0 q, 1 k, 2 v, 3 o, 4 gate, 5 up, 6 down; arrays a kind does not use are 1 x 1
placeholders. A parallel region costs a thread-pool launch (1-5 us with the tbb or omp layers, about
100 us with workqueue: ``pycohere.kernels.jit``), which is why the block is fused this way.
``DecodeEngine`` packs a model's matrices once and runs the step; its twin is the spec's decoder layer
(``pycohere.kernels.registry``, tests/test_kernel_twins.py).
"""
from __future__ import annotations

import math

import numpy as np

from numba import config, get_thread_id

from ..quant.activations import LlamaCppActivations
from ..quant.schemes import FP4_TABLE, INV127, NF4_TABLE
from ..quant.weight import QuantizedWeight
from ..spec.params import Dims
from ..spec.weights import DenseWeight
from .jit import F16_TABLE, FAST, njit, prange
from . import irows
from .rounding import CODES as ROUNDING_CODES, NONE as NO_ROUNDING, code_buffers, quantize_rows
from .rows import (VECTOR_IR_KINDS, row_bf16, row_f16, row_f32, row_int4, row_int8, row_nf4, row_q4_0, row_q4_1,
                   row_q4_k, row_q6_k, row_q8_0)
from .iquant import KVALUES, block_iq4_nl, block_iq4_xs  # IQ4_NL / IQ4_XS rows (LLVM IR kernels)

# storage kinds of a decode matrix
F32, F16, BF16, INT8, INT4, INT4_ASYM, NF4, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K = range(12)
KIND_NAMES = ("F32", "F16", "BF16", "int8", "int4", "int4-asym", "nf4", "q8_0", "q4_0", "q4_1", "q4_k", "q6_k")
IQ4_NL, IQ4_XS = len(KIND_NAMES), len(KIND_NAMES) + 1  # their block functions are in pycohere.kernels.iquant
KIND_NAMES += ("iq4_nl", "iq4_xs")
# integer rows on the 8-bit activation codes (``kernels.irows``; activations="llama.cpp" on AVX2 hosts)
Q8_0_Q8, Q4_0_Q8, Q4_K_Q8K, Q6_K_Q8K = range(len(KIND_NAMES), len(KIND_NAMES) + 4)
KIND_NAMES += ("q8_0.q8_0", "q4_0.q8_0", "q4_k.q8_k", "q6_k.q8_k")
INTEGER_KINDS = {"q8_0": Q8_0_Q8, "q4_0": Q4_0_Q8, "q4_k": Q4_K_Q8K, "q6_k": Q6_K_Q8K}
assert tuple(INTEGER_KINDS) == tuple(irows.KINDS)  # block_codes passes kind - Q8_0_Q8 as irows' kind index
N_MATRICES = 7
# Weight bytes per job of a parallel pass: equal-cost jobs make Numba's static split of a pass over the
# threads balanced (with rows per job instead, the o_proj and down_proj rows of region 3, 2048 and 5632
# wide, fell to different threads: one thread read 3x the bytes of the other), and 128 KiB keeps the per-job
# call overhead under 1% of the bytes' time.
JOB_BYTES = 128 << 10
ACT_CHUNK = 512
SILU, GELU = 0, 1


# --- one block function per kind: y[:, col0 + i] = x @ W[o0 + i] for i < n --------------------------
@njit(cache=True, fastmath=FAST)
def block_bf16(y, col0, o0, n, x, xe, xo, xsum, xq, xd, xb, wu16, wf32, wu8, wi8, s1, s2, hi, lo, f16, lanes, scale,
               mins, we, wo):
    for i in range(n):
        row_bf16(y, col0 + i, x, wu16, o0 + i)


@njit(cache=True, fastmath=FAST)
def block_f16(y, col0, o0, n, x, xe, xo, xsum, xq, xd, xb, wu16, wf32, wu8, wi8, s1, s2, hi, lo, f16, lanes, scale,
              mins, we, wo):
    for i in range(n):
        row_f16(y, col0 + i, x, wu16, o0 + i)


@njit(cache=True, fastmath=FAST)
def block_f32(y, col0, o0, n, x, xe, xo, xsum, xq, xd, xb, wu16, wf32, wu8, wi8, s1, s2, hi, lo, f16, lanes, scale,
              mins, we, wo):
    for i in range(n):
        row_f32(y, col0 + i, x, wf32, o0 + i)


@njit(cache=True, fastmath=FAST)
def block_int8(y, col0, o0, n, x, xe, xo, xsum, xq, xd, xb, wu16, wf32, wu8, wi8, s1, s2, hi, lo, f16, lanes, scale,
               mins, we, wo):
    for i in range(n):
        row_int8(y, col0 + i, x, wi8, s1, o0 + i)


@njit(cache=True, fastmath=FAST)
def block_int4(y, col0, o0, n, x, xe, xo, xsum, xq, xd, xb, wu16, wf32, wu8, wi8, s1, s2, hi, lo, f16, lanes, scale,
               mins, we, wo):
    for i in range(n):
        row_int4(y, col0 + i, xe, xo, xsum, wu8, s1, s2, True, o0 + i, lanes)


@njit(cache=True, fastmath=FAST)
def block_int4_asym(y, col0, o0, n, x, xe, xo, xsum, xq, xd, xb, wu16, wf32, wu8, wi8, s1, s2, hi, lo, f16, lanes,
                    scale, mins, we, wo):
    for i in range(n):
        row_int4(y, col0 + i, xe, xo, xsum, wu8, s1, s2, False, o0 + i, lanes)


@njit(cache=True, fastmath=FAST)
def block_nf4(y, col0, o0, n, x, xe, xo, xsum, xq, xd, xb, wu16, wf32, wu8, wi8, s1, s2, hi, lo, f16, lanes, scale,
              mins, we, wo):
    for i in range(n):
        row_nf4(y, col0 + i, xe, xo, wu8, s1, hi, lo, o0 + i, we, wo)


@njit(cache=True, fastmath=FAST)
def block_q8_0(y, col0, o0, n, x, xe, xo, xsum, xq, xd, xb, wu16, wf32, wu8, wi8, s1, s2, hi, lo, f16, lanes, scale,
               mins, we, wo):
    for i in range(n):
        row_q8_0(y, col0 + i, x, wu8, wi8, o0 + i, f16)


@njit(cache=True, fastmath=FAST)
def block_q4_0(y, col0, o0, n, x, xe, xo, xsum, xq, xd, xb, wu16, wf32, wu8, wi8, s1, s2, hi, lo, f16, lanes, scale,
               mins, we, wo):
    for i in range(n):
        row_q4_0(y, col0 + i, x, xsum, wu8, o0 + i, f16, lanes)


@njit(cache=True, fastmath=FAST)
def block_q4_1(y, col0, o0, n, x, xe, xo, xsum, xq, xd, xb, wu16, wf32, wu8, wi8, s1, s2, hi, lo, f16, lanes, scale,
               mins, we, wo):
    for i in range(n):
        row_q4_1(y, col0 + i, x, xsum, wu8, o0 + i, f16, lanes)


@njit(cache=True, fastmath=FAST)
def block_q4_k(y, col0, o0, n, x, xe, xo, xsum, xq, xd, xb, wu16, wf32, wu8, wi8, s1, s2, hi, lo, f16, lanes, scale,
               mins, we, wo):
    for i in range(n):
        row_q4_k(y, col0 + i, x, xsum, wu8, o0 + i, f16, lanes, scale, mins)


@njit(cache=True, fastmath=FAST)
def block_q6_k(y, col0, o0, n, x, xe, xo, xsum, xq, xd, xb, wu16, wf32, wu8, wi8, s1, s2, hi, lo, f16, lanes, scale,
               mins, we, wo):
    for i in range(n):
        row_q6_k(y, col0 + i, x, wu8, wi8, o0 + i, f16, lanes)


@njit(cache=True, fastmath=FAST)
def block_codes(y, col0, o0, n, x, xe, xo, xsum, xq, xd, xb, wu16, wf32, wu8, wi8, s1, s2, hi, lo, f16, lanes,
                scale, mins, we, wo, kind):
    """The integer kinds (``irows``: q8_0.q8_0 .. q6_k.q8_k, ``kind`` the index among them): the rows times the
    activation codes."""
    for i in range(n):
        for r in range(xq.shape[0]):
            y[r, col0 + i] = irows.dot(kind, wu8, o0 + i, xq, r, xd, xb)


BLOCKS = (block_f32, block_f16, block_bf16, block_int8, block_int4, block_int4_asym, block_nf4, block_q8_0,
          block_q4_0, block_q4_1, block_q4_k, block_q6_k)  # indexed by kind
BLOCKS += (block_iq4_nl, block_iq4_xs)
BLOCKS += (block_codes,) * len(INTEGER_KINDS)


@njit(cache=True, inline="always")
def call_block(kind, y, col0, o0, n, x, xe, xo, xsum, xq, xd, xb, wu16, wf32, wu8, wi8, s1, s2, hi, lo, f16, lanes,
               scale, mins, we, wo):
    """Rows o0..o0+n of a matrix of ``kind``: a call of that kind's block function (each compiled on its own;
    a first-class function argument would compile the layer once per mixture too, but Numba cannot cache
    functions taking them: a cached one segfaults when loaded, numba#6251/#10280)."""
    args = (y, col0, o0, n, x, xe, xo, xsum, xq, xd, xb, wu16, wf32, wu8, wi8, s1, s2, hi, lo, f16, lanes, scale, mins,
            we, wo)
    if kind == BF16:
        block_bf16(*args)
    elif kind == F16:
        block_f16(*args)
    elif kind == F32:
        block_f32(*args)
    elif kind == INT8:
        block_int8(*args)
    elif kind == INT4:
        block_int4(*args)
    elif kind == INT4_ASYM:
        block_int4_asym(*args)
    elif kind == NF4:
        block_nf4(*args)
    elif kind == Q8_0:
        block_q8_0(*args)
    elif kind == Q4_0:
        block_q4_0(*args)
    elif kind == Q4_1:
        block_q4_1(*args)
    elif kind == Q4_K:
        block_q4_k(*args)
    elif kind == IQ4_NL:
        block_iq4_nl(*args)
    elif kind == IQ4_XS:
        block_iq4_xs(*args)
    elif kind >= Q8_0_Q8:
        block_codes(*args, kind - Q8_0_Q8)
    else:
        block_q6_k(*args)


@njit(cache=True, inline="always")
def split_even_odd(x, xe, xo):
    """xe/xo <- the even/odd elements of x (R, n): the 4-bit kinds' nibble pairs read them."""
    for r in range(x.shape[0]):
        for j in range(x.shape[1] // 2):
            xe[r, j] = x[r, 2 * j]
            xo[r, j] = x[r, 2 * j + 1]


@njit(cache=True, inline="always")
def group_sums(x, xsum, group):
    """xsum <- the sums of x (R, n) over groups of ``group`` values (0: none): the kinds with an offset or
    a min apply it once per group through them."""
    if group > 0:
        for r in range(x.shape[0]):
            for g in range(x.shape[1] // group):
                t = np.float32(0.0)
                for j in range(group):
                    t += x[r, g * group + j]
                xsum[r, g] = t


@njit(cache=True, inline="always")
def layer_norm_row(x, w, eps, out):
    """COHERE's mean-centred LayerNorm without bias (spec.layers.layer_norm) of one vector, in float32."""
    n = x.shape[0]
    mean = np.float32(0.0)
    for j in range(n):
        mean += x[j]
    mean = mean / np.float32(n)
    var = np.float32(0.0)
    for j in range(n):
        c = x[j] - mean
        var += c * c
    var = var / np.float32(n)
    inv = np.float32(1.0) / np.sqrt(var + eps)
    for j in range(n):
        out[j] = w[j] * ((x[j] - mean) * inv)


@njit(cache=True, inline="always")
def rope_row(v, cos, sin):
    """Interleaved RoPE of one head vector in place: pairs (2i, 2i+1) rotate by angle i."""
    for i in range(cos.shape[0]):
        a, b = v[2 * i], v[2 * i + 1]
        v[2 * i] = a * cos[i] - b * sin[i]
        v[2 * i + 1] = b * cos[i] + a * sin[i]


# compiled once and called by decode_layer and decode_head: inlined in three places, its switch over the
# kinds tripled the first-run compile time
@njit(cache=True, parallel=True, fastmath=FAST)
def run_plan(y, plan, kinds, xa, xae, xao, xb, xbe, xbo, codes_a, codes_b, xsums, wu16, wf32, wu8, wi8, s1, s2,
             hi, lo, f16, scratch):
    """One parallel pass over the jobs of ``plan`` (n_jobs, 5): job (m, o0, n, col, src) writes rows o0..o0+n
    of matrix m times its input (xa if src is 0, else xb; codes_a / codes_b: their (codes, scales, 16-sums)
    for the integer rows) into columns col..col+n of y. The jobs
    cost the same number of weight bytes (``job_plan``), so the static split of the loop over the threads
    is balanced even when matrices of different widths share a pass."""
    for job in prange(plan.shape[0]):
        m, o0, n, col = plan[job, 0], plan[job, 1], plan[job, 2], plan[job, 3]
        sc = scratch[get_thread_id()]
        if plan[job, 4]:
            x, xe, xo, (xq, xd, xs16) = xb, xbe, xbo, codes_b
        else:
            x, xe, xo, (xq, xd, xs16) = xa, xae, xao, codes_a
        h = xe.shape[1]
        call_block(kinds[m], y, col, o0, n, x, xe, xo, xsums[m], xq, xd, xs16, wu16[m], wf32[m], wu8[m], wi8[m], s1[m],
                   s2[m], hi[m], lo[m], f16,
                   sc[0:64], sc[64:72], sc[72:80], sc[80:80 + h], sc[80 + h:80 + 2 * h])


@njit(cache=True, parallel=True, fastmath=FAST)
def decode_layer(x, out, ln_w, eps, kinds, wu16, wf32, wu8, wi8, s1, s2, hi, lo, f16, groups, xsums, biases, has_bias,
                 q_norm, k_norm, has_qk_norm, use_rope, cos, sin, k_cache, v_cache, slot, start, valid, has_valid,
                 window, act_kind, H, K, Dh, F, bufs, codes, scratch, plan1, plan3, rounds):
    """One decoder layer for one token per sequence.

    x (B, D) the layer input, out (B, D) <- the layer output; ln_w (D,); kinds/wu16/.../s2: the 7 matrices
    (kinds and arrays); groups (7,): values per group sum each needs (0: none), xsums: their
    (B, n / group) buffers; biases: 4 vectors (q, k, v,
    o; used when has_bias); q_norm (H, Dh), k_norm (K, Dh); cos/sin (B, Dh/2) for this token's
    positions; k_cache/v_cache (B, cap, K, Dh): this token's keys go to ``slot``, the stored ones are
    slots 0..slot with absolute indices start + s; valid (B, >= start + slot + 1) padding by absolute
    index (has_valid); window: sliding window or 0. bufs: (h, y1, he, ho, ctx, ce, co, act, ae, ao, ya)
    from ``decode_buffers``; scratch (threads, ``scratch_rows``) per-thread rows; plan1: the jobs of region 1
    (matrices 0, 1, 2, 4, 5 into y1), plan3: of region 3 (3 and 6 into ya), from ``job_plan``. rounds (3,):
    how the inputs of region 1, of Wo and of Wdown are rounded first (``kernels.rounding``; with
    ``activations="llama.cpp"``, else NONE); codes: the (codes, scales, 16-sums) of those three inputs
    (``rounding.code_buffers``), filled when the rounding is Q8_0 / Q8_K, for the integer rows.
    """
    B, D = x.shape
    HD, KD = H * Dh, K * Dh
    S = slot + 1
    qi = start + slot
    h, y1, he, ho, ctx, ce, co, act, ae, ao, ya = bufs
    # --- region 1: LayerNorm, then the rows of q, k, v, gate, up in one pass
    for b in range(B):
        layer_norm_row(x[b], ln_w, eps, h[b])
    hc, cc, ac = codes
    quantize_rows(h, rounds[0], hc[0], hc[1], hc[2])
    split_even_odd(h, he, ho)
    for m in (0, 1, 2, 4, 5):
        group_sums(h, xsums[m], groups[m])
    run_plan(y1, plan1, kinds, h, he, ho, h, he, ho, hc, hc, xsums, wu16, wf32, wu8, wi8, s1, s2, hi, lo, f16,
             scratch)
    # --- serially: k/v biases, k-norm, RoPE on k, the cache append (K * Dh values per sequence)
    for b in range(B):
        for kh in range(K):
            base = HD + kh * Dh
            kv = y1[b, base:base + Dh]
            vv = y1[b, base + KD:base + KD + Dh]
            if has_bias:
                for d in range(Dh):
                    kv[d] += biases[1][kh * Dh + d]
                    vv[d] += biases[2][kh * Dh + d]
            if has_qk_norm:
                layer_norm_row(kv, k_norm[kh], eps, kv)
            if use_rope:
                rope_row(kv, cos[b], sin[b])
            for d in range(Dh):
                k_cache[b, slot, kh, d] = kv[d]
                v_cache[b, slot, kh, d] = vv[d]

    # --- region 2: attention per (sequence, query head); act(gate) * up in chunks beside it
    G = H // K
    scale_qk = np.float32(1.0 / math.sqrt(Dh))
    n_act = (F + ACT_CHUNK - 1) // ACT_CHUNK
    for job in prange(B * H + B * n_act):
        if job < B * H:
            b, hq = job // H, job % H
            kh = hq // G
            qv = np.empty(Dh, dtype=np.float32)
            for d in range(Dh):
                qv[d] = y1[b, hq * Dh + d] + (biases[0][hq * Dh + d] if has_bias else np.float32(0.0))
            if has_qk_norm:
                layer_norm_row(qv, q_norm[hq], eps, qv)
            if use_rope:
                rope_row(qv, cos[b], sin[b])
            scores = np.empty(S, dtype=np.float32)
            mx = np.float32(-np.inf)
            n_ok = 0
            for s in range(S):
                ki = start + s
                if (not has_valid or valid[b, ki]) and (window == 0 or qi - ki < window):
                    acc = np.float32(0.0)
                    for d in range(Dh):
                        acc += qv[d] * k_cache[b, s, kh, d]
                    sc = acc * scale_qk
                    scores[s] = sc
                    if sc > mx or sc != sc:  # NaN wins, as in the spec's max
                        mx = sc
                    n_ok += 1
                else:
                    scores[s] = -np.inf
            total = np.float32(0.0)
            for s in range(S):
                if n_ok == 0:  # fully masked: the spec's uniform softmax (finfo.min scores) -> mean of V
                    pr = np.float32(1.0)
                elif scores[s] == -np.inf:
                    pr = np.float32(0.0)
                else:
                    pr = np.exp(scores[s] - mx)
                scores[s] = pr
                total += pr
            c = ctx[b, hq * Dh:(hq + 1) * Dh]
            c[:] = 0.0
            for s in range(S):
                pr = scores[s] / total
                if pr != 0.0:
                    for d in range(Dh):
                        c[d] += pr * v_cache[b, s, kh, d]
        else:
            j = job - B * H
            b, c0 = j // n_act, (j % n_act) * ACT_CHUNK
            for f in range(c0, min(F, c0 + ACT_CHUNK)):
                gv = y1[b, HD + 2 * KD + f]
                uv = y1[b, HD + 2 * KD + F + f]
                if act_kind == SILU:
                    a = gv / (np.float32(1.0) + np.exp(-gv))
                else:  # exact erf GELU
                    a = gv * np.float32(0.5) * (np.float32(1.0) + np.float32(math.erf(gv / np.float32(math.sqrt(2.0)))))
                act[b, f] = a * uv

    # --- region 3: the rows of Wo and Wdown in one pass (into ya: o at columns 0..D-1, down at D..2D-1)
    quantize_rows(ctx, rounds[1], cc[0], cc[1], cc[2])
    quantize_rows(act, rounds[2], ac[0], ac[1], ac[2])
    split_even_odd(ctx, ce, co)
    group_sums(ctx, xsums[3], groups[3])
    split_even_odd(act, ae, ao)
    group_sums(act, xsums[6], groups[6])
    run_plan(ya, plan3, kinds, ctx, ce, co, act, ae, ao, cc, ac, xsums, wu16, wf32, wu8, wi8, s1, s2, hi, lo, f16,
             scratch)
    # the parallel residual: out = x + attn + mlp
    for b in range(B):
        for r in range(D):
            out[b, r] = x[b, r] + (ya[b, r] + (biases[3][r] if has_bias else np.float32(0.0))) + ya[b, D + r]


def decode_buffers(B: int, D: int, H: int, K: int, Dh: int, F: int) -> tuple:
    """The per-batch workspace of ``decode_layer``: (h, y1, he, ho, ctx, ce, co, act, ae, ao, ya)."""
    HD, KD = H * Dh, K * Dh
    f = lambda *shape: np.zeros(shape, np.float32)  # noqa: E731
    return (f(B, D), f(B, HD + 2 * KD + 2 * F), f(B, D // 2), f(B, D // 2), f(B, HD), f(B, HD // 2),
            f(B, HD // 2), f(B, F), f(B, F // 2), f(B, F // 2), f(B, 2 * D))


def scratch_rows(D: int, H: int, Dh: int, F: int) -> int:
    return 80 + 2 * max(D, H * Dh, F)


def job_plan(matrices) -> np.ndarray:
    """The jobs of one parallel pass: ``matrices`` lists (m, rows, bytes per row, first output column, input:
    0 or 1) -> (n_jobs, 5) int64 rows (m, o0, n, col, input) of about ``JOB_BYTES`` weight bytes each
    (``run_plan``; the input is data, not an argument, so that every pass shares one compiled run_plan)."""
    jobs = []
    for m, rows, row_bytes, col, src in matrices:
        step = max(1, JOB_BYTES // max(1, row_bytes))
        jobs += [(m, o0, min(step, rows - o0), col + o0, src) for o0 in range(0, rows, step)]
    return np.array(jobs, dtype=np.int64).reshape(-1, 5)


def row_bytes(arrays: tuple) -> int:
    """Weight bytes per output row of a matrix given as ``matrix_arrays`` (the placeholders count nothing)."""
    rows = max(a.shape[0] for a in arrays[1:7])
    return sum(a.nbytes // rows for a in arrays[1:7] if a.shape[0] == rows and a.size > 1)


@njit(cache=True, fastmath=FAST)  # (its parallel pass is run_plan's)
def decode_head(x, norm_w, eps, kinds, wu16, wf32, wu8, wi8, s1, s2, hi, lo, f16, groups, xsums, logit_scale, h, he,
                ho, codes, logits, scratch, plan, rounds):
    """The final LayerNorm and the head (matrix 0 of the 1-tuples) times logit_scale: x (B, D) -> logits
    (B, V) (written in place). h, he, ho: (B, D), (B, D/2) x2 scratch; codes: h's ``rounding.code_buffers``;
    rounds (1,): the head input's rounding."""
    B, D = x.shape
    for b in range(B):
        layer_norm_row(x[b], norm_w, eps, h[b])
    quantize_rows(h, rounds[0], codes[0], codes[1], codes[2])
    split_even_odd(h, he, ho)
    group_sums(h, xsums[0], groups[0])
    run_plan(logits, plan, kinds, h, he, ho, h, he, ho, codes, codes, xsums, wu16, wf32, wu8, wi8, s1, s2, hi, lo,
             f16, scratch)
    for b in range(B):
        for o in range(logits.shape[1]):
            logits[b, o] *= logit_scale


# --- the engine: a model's matrices packed once, one call per layer -------------------------------------
_PLACEHOLDERS = {dt: np.zeros((1, 1), dtype=dt) for dt in (np.uint16, np.float32, np.uint8, np.int8)}
for _a in _PLACEHOLDERS.values():
    _a.flags.writeable = False
_SCHEME_KINDS = {"int8": INT8, "bnb-int8": INT8, "int4": INT4, "int4-asym": INT4_ASYM, "nf4": NF4,
                 "fp4": NF4, "q8_0": Q8_0, "q4_0": Q4_0, "q4_1": Q4_1, "q4_k": Q4_K, "q6_k": Q6_K}
_SCHEME_KINDS.update({"iq4_nl": IQ4_NL, "iq4_xs": IQ4_XS})


def _readonly(a: np.ndarray) -> np.ndarray:
    """A read-only C-contiguous view (one Numba signature for mapped and in-memory arrays alike)."""
    v = np.ascontiguousarray(a).view()
    v.flags.writeable = False
    return v


def input_rounding(w) -> int:
    """How the decode step rounds this matrix's input: a ``kernels.rounding`` code (llama.cpp's
    ``vec_dot_type`` under ``activations="llama.cpp"``, else NONE)."""
    w = getattr(w, "spec", w)
    return ROUNDING_CODES[w.vec_dot_type] if isinstance(w, LlamaCppActivations) else NO_ROUNDING


def matrix_arrays(w) -> tuple | None:
    """(kind, u16, f32, u8, i8, s1, s2, table) of a weight for ``kernels.decode``, or None when the decode
    step has no kernel for it (then the model decodes through ``decoder_layer``). A llama.cpp-rounding
    wrapper gives its weight's arrays (the rounding is ``input_rounding``)."""
    w = getattr(w, "spec", w)  # a fast weight's plain spec weight
    integer = False
    if isinstance(w, LlamaCppActivations):
        w = getattr(w.weight, "spec", w.weight)
        integer = irows.AVAILABLE  # llama.cpp's integer dot products on the activation codes
    u16, f32, u8, i8 = (_PLACEHOLDERS[dt] for dt in (np.uint16, np.float32, np.uint8, np.int8))
    s1 = s2 = f32
    table = None
    if isinstance(w, DenseWeight):
        if w.raw is None or w.storage == "F32":
            return (F32, u16, _readonly(w.dequantize(np.float32)), u8, i8, s1, s2, table)
        if w.storage in ("BF16", "F16"):
            return (BF16 if w.storage == "BF16" else F16, _readonly(w.raw.view(np.uint16)), f32, u8, i8, s1, s2,
                    table)
        return None
    if not isinstance(w, QuantizedWeight) or w.storage not in _SCHEME_KINDS:
        return None
    a = w.arrays
    kind = _SCHEME_KINDS[w.storage]
    if kind == INT8:
        scales = a["scales"] * INV127 if w.storage == "bnb-int8" else a["scales"]  # (q SCB) / 127 reassociated
        return (kind, u16, f32, u8, _readonly(a["qweight"]), _readonly(scales.astype(np.float32)), s2, table)
    q = _readonly(a["qweight"])
    if integer and w.storage in INTEGER_KINDS:
        return (INTEGER_KINDS[w.storage], u16, f32, q, i8, s1, s2, table)
    if kind in (Q8_0, Q6_K):
        return (kind, u16, f32, q, q.view(np.int8), s1, s2, table)
    if kind in (INT4, INT4_ASYM, NF4):
        s1 = _readonly(a["scales"])
        s2 = _readonly(a["mins"]) if "mins" in a else f32
        table = FP4_TABLE if w.storage == "fp4" else NF4_TABLE if kind == NF4 else None
    if kind in (IQ4_NL, IQ4_XS):
        table = KVALUES  # -> the byte tables lo / hi of the plain (non-AVX2) block loops
    return (kind, u16, f32, q, i8, s1, s2, table)


class DecodeEngine:
    """The numba backend's one-token step: ``kernels.decode.decode_layer`` for every layer and
    ``decode_head``, over buffers allocated once per batch size. Built by the model when every matrix has
    a decode kernel (``DecodeEngine.build`` returns None otherwise)."""

    def __init__(self, layers: list, head: dict, params, dims: Dims):
        self.layers, self.head, self.params, self.dims = layers, head, params, dims
        self.norm = np.ascontiguousarray(params.norm, np.float32)
        self._buffers: dict[int, tuple] = {}
        self._scratch = np.zeros((config.NUMBA_NUM_THREADS, scratch_rows(dims.D, dims.H, dims.Dh, dims.F)),
                                 np.float32)

    @classmethod
    def build(cls, params, dims: Dims) -> "DecodeEngine | None":
        ins = (dims.D, dims.D, dims.D, dims.H * dims.Dh, dims.D, dims.D, dims.F)  # input size of each matrix
        layers = []
        for p in params.layers:
            mats = [matrix_arrays(w) for w in p.matrices()]
            if any(m is None for m in mats):
                return None
            r = [input_rounding(w) for w in p.matrices()]
            if len({r[0], r[1], r[2], r[4], r[5]}) > 1:  # region 1 rounds one shared input once
                return None
            layers.append(cls._pack(mats, ins, p))
            layers[-1]["rounds"] = np.array([r[0], r[3], r[6]], np.int64)
        head = matrix_arrays(params.lm_head)
        if head is None:
            return None
        # the head as matrix 0 of seven (placeholders after it): the same tuple types as a layer's, so one
        # compiled run_plan serves both
        none = (F32, *(_PLACEHOLDERS[dt] for dt in (np.uint16, np.float32, np.uint8, np.int8)),
                _PLACEHOLDERS[np.float32], _PLACEHOLDERS[np.float32], None)
        packed_head = cls._pack([head] + [none] * (N_MATRICES - 1), (dims.D,) + (1,) * (N_MATRICES - 1), None)
        packed_head["rounds"] = np.array([input_rounding(params.lm_head)], np.int64)
        return cls(layers, packed_head, params, dims)

    def describe(self) -> list[str]:
        """The paths this engine runs, for ``pycohere inspect`` and the benchmark: the storage kinds of its
        matrices (and how many), the activation rounding, the threads and what the vectors become."""
        from .dispatch import threading_layer, vector_isa
        from .rounding import CODES
        names = {code: name for name, code in CODES.items()}
        kinds: dict[str, int] = {}
        rounds: set[str] = set()
        for packed in [*self.layers, self.head]:
            for k in (packed["kinds"] if packed is not self.head else packed["kinds"][:1]):
                kinds[KIND_NAMES[k]] = kinds.get(KIND_NAMES[k], 0) + 1
            rounds |= {str(names[int(r)]) for r in packed["rounds"] if r != NO_ROUNDING}
        vector = [k for k in kinds if k in VECTOR_IR_KINDS]
        integer = [k for k in kinds if k in KIND_NAMES[Q8_0_Q8:]]
        notes = ([f"{', '.join(vector)}: vector-IR rows, kernels.vrows"] if vector else []) + (
            [f"{', '.join(integer)}: integer rows on the activation codes, kernels.irows: {irows.isa()}"]
            if integer else [])
        return [f"decode step: compiled, one call per layer ({len(self.layers)} layers + head), "
                f"{config.NUMBA_NUM_THREADS} threads, threading layer {threading_layer()}",
                "  matrices: " + ", ".join(f"{k} x{n}" for k, n in kinds.items())
                + (f" ({'; '.join(notes)})" if notes else ""),
                "  activations: " + (f"rounded as llama.cpp ({', '.join(sorted(rounds))}), then "
                                     + ("integer dot products where the weight has them, else " if integer else "")
                                     + "the float kernels on the rounded values" if rounds else "float32 (exact)"),
                f"  vectors: {vector_isa()}"]

    @staticmethod
    def _pack(mats: list, ins: tuple, p) -> dict:
        kinds = [m[0] for m in mats]
        hi = np.zeros((len(mats), 256), np.float32)
        lo = np.zeros((len(mats), 256), np.float32)
        groups = np.zeros(len(mats), np.int64)
        for m, arrays in enumerate(mats):
            if arrays[7] is not None:
                v = np.arange(256)
                hi[m], lo[m] = arrays[7][v >> 4], arrays[7][v & 15]
            if kinds[m] in (INT4, INT4_ASYM):
                groups[m] = ins[m] // arrays[5].shape[1]
            elif kinds[m] in (Q4_0, Q4_1, Q4_K):
                groups[m] = 32
        packed = {"kinds": np.array(kinds, np.int64), "w": tuple(tuple(m[i] for m in mats) for i in range(1, 7)),
                  "hi": hi, "lo": lo, "groups": groups, "ins": ins, "xsums": {}}
        rows = [max(a.shape[0] for a in m[1:7]) for m in mats]
        sizes = [row_bytes(m) for m in mats]
        if p is None:  # the head
            packed["plan"] = job_plan([(0, rows[0], sizes[0], 0, 0)])
        else:  # region 1: q, k, v, gate, up side by side in y1; region 3: o, down in ya
            cols = np.cumsum([0] + [rows[m] for m in (0, 1, 2, 4)])
            packed["plan1"] = job_plan([(m, rows[m], sizes[m], c, 0) for m, c in zip((0, 1, 2, 4, 5), cols)])
            packed["plan3"] = job_plan([(3, rows[3], sizes[3], 0, 0), (6, rows[6], sizes[6], rows[3], 1)])
        if p is not None:
            one = np.zeros(1, np.float32)
            has_bias = p.q_bias is not None
            packed["biases"] = tuple(np.ascontiguousarray(b, np.float32) if has_bias else one
                                     for b in (p.q_bias, p.k_bias, p.v_bias, p.o_bias))
            packed["has_bias"] = has_bias
            qk = p.q_norm is not None
            placeholder = np.zeros((1, 1), np.float32)
            packed["q_norm"] = np.ascontiguousarray(p.q_norm, np.float32) if qk else placeholder
            packed["k_norm"] = np.ascontiguousarray(p.k_norm, np.float32) if qk else placeholder
            packed["has_qk_norm"] = qk
            packed["ln"] = np.ascontiguousarray(p.input_layernorm, np.float32)
            packed["use_rope"] = bool(p.use_rope)
            packed["window"] = int(p.sliding_window or 0)
        return packed

    @staticmethod
    def _xsums(packed: dict, B: int) -> tuple:
        """The (B, n / group) group-sum buffers of a layer (placeholders where a matrix needs none)."""
        if B not in packed["xsums"]:
            packed["xsums"][B] = tuple(np.zeros((B, n // g if g else 1), np.float32)
                                       for n, g in zip(packed["ins"], packed["groups"]))
        return packed["xsums"][B]

    def _buffers_for(self, B: int):
        if B not in self._buffers:
            d = self.dims
            self._buffers[B] = (decode_buffers(B, d.D, d.H, d.K, d.Dh, d.F),
                                np.empty((B, d.D), np.float32), np.empty((B, d.D), np.float32),
                                (np.empty((B, d.D), np.float32), np.empty((B, d.D // 2), np.float32),
                                 np.empty((B, d.D // 2), np.float32)),
                                tuple(code_buffers(B, n) for n in (d.D, d.H * d.Dh, d.F)))
        return self._buffers[B]

    def logits(self, x: np.ndarray, cos: np.ndarray, sin: np.ndarray, kv_valid, cache) -> np.ndarray:
        """x (B, D) float32 embedded tokens, cos/sin (B, Dh/2), kv_valid (B, past + 1) bool or None ->
        logits (B, V); appends this token's keys and values to every layer of ``cache``."""
        d = self.dims
        B = x.shape[0]
        bufs, a, b, head_bufs, codes = self._buffers_for(B)
        a[...] = x
        valid = np.ascontiguousarray(kv_valid) if kv_valid is not None else np.ones((1, 1), dtype=np.bool_)
        act = SILU if d.act in ("silu", "swish") else GELU
        eps = np.float32(d.eps)
        cos, sin = np.ascontiguousarray(cos, np.float32), np.ascontiguousarray(sin, np.float32)
        for lp, lc in zip(self.layers, cache.layers):
            slot = lc.reserve(B, 1, d.K, d.Dh, np.float32)
            decode_layer(a, b, lp["ln"], eps, lp["kinds"], *lp["w"], lp["hi"], lp["lo"], F16_TABLE, lp["groups"],
                         self._xsums(lp, B), lp["biases"], lp["has_bias"], lp["q_norm"], lp["k_norm"],
                         lp["has_qk_norm"], lp["use_rope"], cos, sin, lc.k, lc.v, slot, lc.start, valid,
                         kv_valid is not None, lp["window"], act, d.H, d.K, d.Dh, d.F, bufs, codes, self._scratch,
                         lp["plan1"], lp["plan3"], lp["rounds"])
            lc.length = slot + 1
            a, b = b, a
        hp = self.head
        logits = np.empty((B, d.V), np.float32)
        decode_head(a, self.norm, eps, hp["kinds"], *hp["w"], hp["hi"], hp["lo"], F16_TABLE, hp["groups"],
                    self._xsums(hp, B), np.float32(d.logit_scale), *head_bufs, codes[0], logits, self._scratch,
                    hp["plan"], hp["rounds"])
        return logits
