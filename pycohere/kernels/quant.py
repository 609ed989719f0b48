"""Numba kernels for quantized weights: the fast twins of ``QuantizedWeight``'s NumPy spec.

Two kernels per scheme, both tested against the spec in tests/test_quant_kernels.py:

* ``gemv_<scheme>``: decode (up to ``GEMV_MAX_ROWS`` input rows). Parallel over output rows; each
  packed row is read from memory once and unpacked in registers. Per group the kernel forms the
  *unscaled* dot product of the codes with x, then multiplies by the group's scale, which is
  ``x @ dequantize().T`` reassociated: ``sum_g s_g * sum_j x_j * code_j``. The inner loops are
  plain loops over the group's bytes so LLVM vectorises them (fastmath ``reassoc``); codes go
  through ``int32`` before ``float32`` because a vectorised int64 -> float conversion does not
  exist on AVX2 (measured 2-3x slower).
* ``dequant_<scheme>``: rows of packed data -> float32 rows, bit-identical to the spec's
  ``dequantize_blocks`` (no fastmath: no FMA contraction, so ``n * s + m`` rounds twice as
  NumPy does). Used for prefill tiles (multiplied by ``tiles.gemm``) and for embedding lookups.

Asymmetric schemes (``int4-asym``, ``q4_1``: ``w = n * s + m``) use ``sum_j x_j w_j =
s * sum_j x_j n_j + m * sum_j x_j`` with the group sums of x computed once per call.
The llama.cpp k-quants (``q4_k`` / ``q6_k``) have their kernels in ``pycohere.kernels.kquant``, the
non-linear ``iq4_nl`` / ``iq4_xs`` in ``pycohere.kernels.iquant`` and the bitsandbytes ones in
``pycohere.kernels.hf``; the tables at the end of this module list every scheme's
kernels. A scheme without any kernel runs through the same tile path with its NumPy dequantizer.

Layouts (see ``pycohere.quant.schemes``): every array is ``[out, (in / group) * width]``; int4 and
int4-asym keep element ``2j`` in the low nibble of byte ``j``, nf4 in the high nibble, so the
wrappers split x into its even and odd elements once per call and the inner loops stay
contiguous. llama.cpp blocks (ggml-common.h) are read in place: f16 scales are decoded through
``pycohere.kernels.jit.F16_TABLE`` (Numba has no float16 arithmetic on CPU).
"""
from __future__ import annotations

import numpy as np

from ..constants import TILE_ELEMENTS
from ..quant.schemes import FP4_TABLE, INV127, NF4_TABLE, QuantizedTensor
from . import hf, iquant, kquant
from .tiles import tiled_matmul
from .jit import F16_TABLE, FAST, GEMV_MAX_ROWS, ROWS_PER_JOB as CHUNK, f16_at, njit, prange
from .rows import row_int4, row_int8, row_nf4, row_q4_0, row_q4_1, row_q8_0


# --- decode GEMV: the row bodies of pycohere.kernels.rows, parallel over chunks of output rows ----------
@njit(cache=True, parallel=True, fastmath=FAST)
def gemv_int8(x, q, scales):
    """x (R, in) f32, q (out, in) i8, scales (out, in/G) f32 -> (R, out)."""
    y = np.empty((x.shape[0], q.shape[0]), dtype=np.float32)
    for o in prange(q.shape[0]):
        row_int8(y, o, x, q, scales, o)
    return y


# The input row loop of the 4-bit kinds is innermost per weight row (the packed row is re-read from L1,
# not memory) so that the correction stays a scalar: variants keeping (R,)-shaped accumulators measured
# 1.3-2.5x slower. Scratch is allocated once per chunk of CHUNK rows, not once per row.
@njit(cache=True, parallel=True, fastmath=FAST)
def gemv_int4(xe, xo, xsum, q, scales, mins, symmetric):
    """int4 / int4-asym. xe/xo (R, in/2): even/odd elements of x; xsum (R, in/G): group sums of x;
    q (out, in/2) u8 with element 2j in the low nibble of byte j. symmetric: w = (n - 8) s
    (``mins`` unused); else w = n s + m."""
    O = q.shape[0]
    y = np.empty((xe.shape[0], O), dtype=np.float32)
    for c in prange((O + CHUNK - 1) // CHUNK):
        lanes = np.empty(xe.shape[1] // scales.shape[1], dtype=np.float32)
        for o in range(c * CHUNK, min(O, c * CHUNK + CHUNK)):
            row_int4(y, o, xe, xo, xsum, q, scales, mins, symmetric, o, lanes)
    return y


@njit(cache=True, inline="always")
def nibble_tables(table):
    """Two 256-entry byte tables of a 4-bit code book: the value of the high nibble, of the low nibble."""
    high = np.empty(256, dtype=np.float32)
    low = np.empty(256, dtype=np.float32)
    for v in range(256):
        high[v] = table[v >> 4]
        low[v] = table[v & 15]
    return high, low


@njit(cache=True, parallel=True, fastmath=FAST)
def gemv_nf4(xe, xo, q, scales, table):
    """bitsandbytes order: element 2j is the HIGH nibble of byte j; w = table[n] * absmax (row_nf4:
    1.5-1.7x faster than a gather in the dot product, 0.42-0.46x bf16 on AVX2, bound by the lookups)."""
    h = xe.shape[1]
    O = q.shape[0]
    high, low = nibble_tables(table)
    y = np.empty((xe.shape[0], O), dtype=np.float32)
    for c in prange((O + CHUNK - 1) // CHUNK):
        we = np.empty(h, dtype=np.float32)  # row o's even / odd elements, dequantized
        wo = np.empty(h, dtype=np.float32)
        for o in range(c * CHUNK, min(O, c * CHUNK + CHUNK)):
            row_nf4(y, o, xe, xo, q, scales, high, low, o, we, wo)
    return y


@njit(cache=True, parallel=True, fastmath=FAST)
def gemv_q8_0(x, q, qs, f16):
    """ggml block_q8_0 (34 B: f16 d, i8 qs[32]); q (out, blocks*34) u8 and qs its int8 view."""
    y = np.empty((x.shape[0], q.shape[0]), dtype=np.float32)
    for o in prange(q.shape[0]):
        row_q8_0(y, o, x, q, qs, o, f16)
    return y


@njit(cache=True, parallel=True, fastmath=FAST)
def gemv_q4_0(x, xsum, q, f16):
    """ggml block_q4_0; xsum (R, in/32) are the block sums of x."""
    O = q.shape[0]
    y = np.empty((x.shape[0], O), dtype=np.float32)
    for c in prange((O + CHUNK - 1) // CHUNK):
        lanes = np.empty(16, dtype=np.float32)
        for o in range(c * CHUNK, min(O, c * CHUNK + CHUNK)):
            row_q4_0(y, o, x, xsum, q, o, f16, lanes)
    return y


@njit(cache=True, parallel=True, fastmath=FAST)
def gemv_q4_1(x, xsum, q, f16):
    """ggml block_q4_1 (w = d n + m)."""
    O = q.shape[0]
    y = np.empty((x.shape[0], O), dtype=np.float32)
    for c in prange((O + CHUNK - 1) // CHUNK):
        lanes = np.empty(16, dtype=np.float32)
        for o in range(c * CHUNK, min(O, c * CHUNK + CHUNK)):
            row_q4_1(y, o, x, xsum, q, o, f16, lanes)
    return y


# --- dequantization (prefill tiles, embedding rows): bit-identical to the spec ---------------------
@njit(cache=True, parallel=True)
def dequant_int8(q, scales, out):
    G = q.shape[1] // scales.shape[1]
    for o in prange(q.shape[0]):
        for j in range(q.shape[1]):
            out[o, j] = np.float32(q[o, j]) * scales[o, j // G]


@njit(cache=True, parallel=True)
def dequant_int4(q, scales, out):
    H = q.shape[1] // scales.shape[1]
    for o in prange(q.shape[0]):
        for j in range(q.shape[1]):
            v = np.int32(q[o, j])
            s = scales[o, j // H]
            out[o, 2 * j] = (np.float32(v & np.int32(15)) - np.float32(8.0)) * s
            out[o, 2 * j + 1] = (np.float32(v >> np.int32(4)) - np.float32(8.0)) * s


@njit(cache=True, parallel=True)
def dequant_int4_asym(q, scales, mins, out):
    H = q.shape[1] // scales.shape[1]
    for o in prange(q.shape[0]):
        for j in range(q.shape[1]):
            v = np.int32(q[o, j])
            s, m = scales[o, j // H], mins[o, j // H]
            out[o, 2 * j] = np.float32(v & np.int32(15)) * s + m
            out[o, 2 * j + 1] = np.float32(v >> np.int32(4)) * s + m


@njit(cache=True, parallel=True)
def dequant_nf4(q, scales, table, out):
    H = q.shape[1] // scales.shape[1]
    for o in prange(q.shape[0]):
        for j in range(q.shape[1]):
            v = np.int32(q[o, j])
            s = scales[o, j // H]
            out[o, 2 * j] = table[v >> np.int32(4)] * s
            out[o, 2 * j + 1] = table[v & np.int32(15)] * s


@njit(cache=True, parallel=True)
def dequant_q8_0(q, qs, f16, out):
    for o in prange(q.shape[0]):
        for k in range(q.shape[1] // 34):
            d = f16_at(q, o, k * 34, f16)
            for l in range(32):
                out[o, k * 32 + l] = np.float32(qs[o, k * 34 + 2 + l]) * d


@njit(cache=True, parallel=True)
def dequant_q4_0(q, f16, out):
    for o in prange(q.shape[0]):
        for k in range(q.shape[1] // 18):
            d = f16_at(q, o, k * 18, f16)
            for l in range(16):
                v = np.int32(q[o, k * 18 + 2 + l])
                out[o, k * 32 + l] = (np.float32(v & np.int32(15)) - np.float32(8.0)) * d
                out[o, k * 32 + 16 + l] = (np.float32(v >> np.int32(4)) - np.float32(8.0)) * d


@njit(cache=True, parallel=True)
def dequant_q4_1(q, f16, out):
    for o in prange(q.shape[0]):
        for k in range(q.shape[1] // 20):
            d, m = f16_at(q, o, k * 20, f16), f16_at(q, o, k * 20 + 2, f16)
            for l in range(16):
                v = np.int32(q[o, k * 20 + 4 + l])
                out[o, k * 32 + l] = np.float32(v & np.int32(15)) * d + m
                out[o, k * 32 + 16 + l] = np.float32(v >> np.int32(4)) * d + m


# --- dispatch --------------------------------------------------------------------------------------
def _split_even_odd(x2):
    return np.ascontiguousarray(x2[:, 0::2]), np.ascontiguousarray(x2[:, 1::2])


def _group_sums(x2, n_groups):
    return np.ascontiguousarray(x2.reshape(x2.shape[0], n_groups, -1).sum(axis=2, dtype=np.float32))


def _readonly(arrays: dict) -> dict:
    """Read-only views of the packed arrays: memory-mapped weights are read-only, so passing every
    array that way gives Numba one signature (one compilation) per kernel, not two."""
    out = {}
    for name, arr in arrays.items():
        v = arr.view()
        v.flags.writeable = False
        out[name] = v
    return out


def _gemv_int4(x2, a, symmetric):
    scales = a["scales"]
    mins = a.get("mins", scales)  # (unused by the symmetric kernel)
    return gemv_int4(*_split_even_odd(x2), _group_sums(x2, scales.shape[1]), a["qweight"], scales, mins, symmetric)


def _gemv_q4(kernel):
    return lambda x2, a: kernel(x2, _group_sums(x2, x2.shape[1] // 32), a["qweight"], F16_TABLE)


def _gemv_bnb_int8(x2, a):
    # sum_j x_j (q_j SCB) / 127 reassociated as (sum_j x_j q_j) (SCB / 127): the per-row int8 GEMV.
    scales = a["scales"] * INV127
    scales.flags.writeable = False  # one Numba signature with the read-only weight views
    return gemv_int8(x2, a["qweight"], scales)


# scheme -> decode kernel ``gemv(x2 (R, in) f32, arrays) -> (R, out)`` and dequantizer
# ``dequant(arrays, out (rows, in) f32)``, for every scheme that has one (listed here, not registered
# by importing a module). A scheme without a GEMV runs through dequantized tiles; one without a
# dequantizer uses its NumPy spec. fp4 reuses nf4's kernels with its table (they take the code book).
GEMV_KERNELS = {
    "int8": lambda x2, a: gemv_int8(x2, a["qweight"], a["scales"]),
    "int4": lambda x2, a: _gemv_int4(x2, a, True),
    "int4-asym": lambda x2, a: _gemv_int4(x2, a, False),
    "nf4": lambda x2, a: gemv_nf4(*_split_even_odd(x2), a["qweight"], a["scales"], NF4_TABLE),
    "fp4": lambda x2, a: gemv_nf4(*_split_even_odd(x2), a["qweight"], a["scales"], FP4_TABLE),
    "bnb-int8": _gemv_bnb_int8,
    "q8_0": lambda x2, a: gemv_q8_0(x2, a["qweight"], a["qweight"].view(np.int8), F16_TABLE),
    "q4_0": _gemv_q4(gemv_q4_0),
    "q4_1": _gemv_q4(gemv_q4_1),
    "q4_k": kquant.gemv_q4_k_arrays,
    "q6_k": kquant.gemv_q6_k_arrays,
    **iquant.GEMV_KERNELS,  # iq4_nl / iq4_xs (None without AVX2: then dequantized tiles)
}
DEQUANT_KERNELS = {
    "int8": lambda a, out: dequant_int8(a["qweight"], a["scales"], out),
    "int4": lambda a, out: dequant_int4(a["qweight"], a["scales"], out),
    "int4-asym": lambda a, out: dequant_int4_asym(a["qweight"], a["scales"], a["mins"], out),
    "nf4": lambda a, out: dequant_nf4(a["qweight"], a["scales"], NF4_TABLE, out),
    "fp4": lambda a, out: dequant_nf4(a["qweight"], a["scales"], FP4_TABLE, out),
    "bnb-int8": lambda a, out: hf.dequant_bnb_int8(a["qweight"], a["scales"], out),
    "q8_0": lambda a, out: dequant_q8_0(a["qweight"], a["qweight"].view(np.int8), F16_TABLE, out),
    "q4_0": lambda a, out: dequant_q4_0(a["qweight"], F16_TABLE, out),
    "q4_1": lambda a, out: dequant_q4_1(a["qweight"], F16_TABLE, out),
    "q4_k": kquant.dequant_q4_k_arrays,
    "q6_k": kquant.dequant_q6_k_arrays,
    **{scheme: kquant.dequant_blocks(kernel) for scheme, kernel in (
        ("q5_0", kquant.dequant_q5_0), ("q5_1", kquant.dequant_q5_1), ("q2_k", kquant.dequant_q2_k),
        ("q3_k", kquant.dequant_q3_k), ("q5_k", kquant.dequant_q5_k))},
    **iquant.DEQUANT_KERNELS,
}


def _gemv(x2: np.ndarray, a: dict, scheme: str) -> np.ndarray | None:
    """The decode kernel of ``scheme`` on x2 (R, in), or None when the scheme has none."""
    kernel = GEMV_KERNELS.get(scheme)
    return None if kernel is None else kernel(x2, _readonly(a))


def dequantize_rows(t: QuantizedTensor, index, out: np.ndarray | None = None) -> np.ndarray:
    """Rows ``index`` (a slice or int64 ids) of ``t`` as float32 [k, in], equal to the spec; written into
    ``out`` (k, in) when given (a prefill tile)."""
    a = _readonly({name: arr[index] for name, arr in t.arrays.items()})
    rows = next(iter(a.values())).shape[0]
    if out is None:
        out = np.empty((rows, t.shape[1]), dtype=np.float32)
    if rows == 0:
        return out
    kernel = DEQUANT_KERNELS.get(t.scheme)
    if kernel is not None:
        kernel(a, out)
    else:  # e.g. dequantize-only formats without a kernel yet: the NumPy spec
        out[...] = QuantizedTensor(t.scheme, t.group_size, (rows, t.shape[1]), a).dequantize()
    return out


def quantized_matmul(x: np.ndarray, t: QuantizedTensor) -> np.ndarray:
    """x (..., in) float32 @ dequantize(t).T -> (..., out) float32.

    Decode (few rows): the scheme's GEMV, reading the packed weights once. Prefill: tiles of rows
    dequantized in Numba into a reused buffer and multiplied by the register-tiled ``tiles.gemm``
    (compute bound, so the unpacking is amortised; ``pycohere.kernels.tiles``). Under
    ``activations="llama.cpp"`` q8_0 / q4_0 / q4_k / q6_k take ``int8_dot`` instead (integer GEMM).
    """
    lead = x.shape[:-1]
    x2 = np.ascontiguousarray(x.reshape(-1, x.shape[-1]), dtype=np.float32)
    out_dim = t.shape[0]
    if x2.shape[0] <= GEMV_MAX_ROWS:
        y = _gemv(x2, t.arrays, t.scheme)
        if y is not None:
            return y.reshape(lead + (out_dim,))
    def fill(r0, r1, tile):
        dequantize_rows(t, slice(r0, r1), tile)
    out = tiled_matmul(x2, out_dim, t.shape[1], fill, TILE_ELEMENTS)
    return out.reshape(lead + (out_dim,))


def quantized_rows(t: QuantizedTensor, ids: np.ndarray) -> np.ndarray:
    """Embedding lookup: only rows ``ids`` (any integer shape) are gathered and dequantized."""
    ids = np.asarray(ids)
    flat = ids.reshape(-1).astype(np.int64)  # 64-bit before any index arithmetic
    return dequantize_rows(t, flat).reshape(ids.shape + (t.shape[1],))

