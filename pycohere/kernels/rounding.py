"""llama.cpp's activation rounding in place, for the compiled decode step: the twin of
``pycohere.quant.activations.round_activations`` (bit for bit: tests/test_kernel_twins.py, "round/*").

``activations="llama.cpp"`` rounds each matmul's input as llama.cpp's dot product for the weight's type
does (f16, bf16, Q8_0 blocks of 32, Q8_K blocks of 256), then multiplies exactly; the decode step rounds
its three matmul inputs (the normed x, the attention context, act(gate) * up) once each with
``round_rows`` and runs its ordinary kernels on the result, which is that definition read literally.
Compiled without fastmath: ``127 / amax`` and ``-127 / max`` must round as NumPy's divisions do.
"""
from __future__ import annotations

import numpy as np

from .jit import f32_as_u32, njit, prange, round_f16, u32_as_f32

NONE, F16, BF16, Q8_0, Q8_K = range(5)
#: ``pycohere.quant.activations.VEC_DOT_TYPE`` values -> the codes of ``round_rows``
CODES = {None: NONE, "f16": F16, "bf16": BF16, "q8_0": Q8_0, "q8_k": Q8_K}


@njit(cache=True, inline="always")
def bf16_round_bits(v):
    """The bf16 bits (as uint32) of float32 v: io.dtypes.bf16_bits, round to nearest even; NaN -> 0x7FC0."""
    if v != v:
        return np.uint32(0x7FC0)
    u = f32_as_u32(v)
    return (u + (((u >> np.uint32(16)) & np.uint32(1)) + np.uint32(0x7FFF))) >> np.uint32(16)


@njit(cache=True)
def round_rows(x, mode):
    """x (R, n) float32 <- x rounded as ``mode`` (one of the codes above); n % 32 (Q8_0) or % 256 (Q8_K)."""
    if mode == NONE:
        return
    R, n = x.shape
    for r in range(R):
        if mode == F16:
            for j in range(n):
                x[r, j] = round_f16(x[r, j])
        elif mode == BF16:
            for j in range(n):
                x[r, j] = u32_as_f32(bf16_round_bits(x[r, j]) << np.uint32(16))
        elif mode == Q8_0:
            for b in range(n // 32):
                d, inv = _q8_0_scale(x, r, b * 32)
                for l in range(b * 32, b * 32 + 32):
                    x[r, l] = d * np.rint(x[r, l] * inv)
        else:
            for b in range(n // 256):
                d, iscale = _q8_k_scale(x, r, b * 256)
                for l in range(b * 256, b * 256 + 256):
                    q = np.rint(x[r, l] * iscale)
                    if q > 127:  # (not min(): a NaN must stay NaN)
                        q = np.float32(127.0)
                    x[r, l] = d * q


@njit(cache=True, parallel=True)
def round_rows_parallel(x, mode):
    """``round_rows`` with the rows shared by the threads (a prefill's matmul input)."""
    for r in prange(x.shape[0]):
        round_rows(x[r:r + 1], mode)


#: values per rounded block of each vec_dot type (a row's width must be a multiple)
BLOCK = {"f16": 1, "bf16": 1, "q8_0": 32, "q8_k": 256}


def rounded(x: np.ndarray, vec_dot_type: str) -> np.ndarray:
    """``pycohere.quant.activations.round_activations(x, vec_dot_type)`` for float32 x, compiled and bit for bit
    (twins ``round-rows/*``); the spec itself where the width does not divide into blocks (its own error)."""
    from ..quant.activations import round_activations
    if vec_dot_type not in BLOCK or x.dtype != np.float32 or x.ndim == 0 or x.shape[-1] % BLOCK[vec_dot_type]:
        return round_activations(x, vec_dot_type)  # (None: F32 weights, x as it is)
    out = np.array(x, dtype=np.float32, copy=True)
    round_rows_parallel(out.reshape(-1, x.shape[-1]), CODES[vec_dot_type])
    return out


@njit(cache=True, inline="always")
def _q8_0_scale(x, r, e):
    """round_q8_0's (d, 1 / scale) of the block at x[r, e:e+32]: d = fp16(amax / 127), q = rint(x 127 / amax)."""
    amax = np.float32(0.0)
    for l in range(32):
        a = abs(x[r, e + l])
        if a > amax or a != a:  # NaN propagates, as NumPy's max
            amax = a
        if amax != amax:
            break
    inv = np.float32(127.0) / amax if amax != 0 else np.float32(0.0)
    return round_f16(amax / np.float32(127.0)), inv


@njit(cache=True, inline="always")
def _q8_k_scale(x, r, e):
    """round_q8_k's (d, iscale) of the block at x[r, e:e+256]: the signed element of largest magnitude m
    (first on ties, NaN first), iscale = -127 / m, q = min(127, rint(x iscale)), d = 1 / iscale."""
    best = np.float32(-1.0)
    at = 0
    for l in range(256):
        a = abs(x[r, e + l])
        if a != a:
            at = l
            break
        if a > best:
            best, at = a, l
    m = x[r, e + at]
    iscale = np.float32(-127.0) / m if m != 0 else np.float32(0.0)
    return (np.float32(1.0) / iscale if iscale != 0 else np.float32(0.0)), iscale


def code_buffers(R: int, n: int) -> tuple:
    """``quantize_rows``' outputs for R rows of n values: codes int8 (R, n), block scales float32 (R, n / 32),
    sums of 16 codes int16 (R, n / 16)."""
    return (np.zeros((R, n), np.int8), np.zeros((R, max(1, n // 32)), np.float32),
            np.zeros((R, max(1, n // 16)), np.int16))


@njit(cache=True)
def quantize_rows(x, mode, xq, xd, xb):
    """``round_rows(x, mode)``, and for Q8_0 / Q8_K also the codes, for ``kernels.irows``: xq (R, n) int8
    <- q, xd (R, n / 32) float32 <- d of each block (Q8_K: entry k for block k of 256), xb (R, n / 16)
    int16 <- the sums of q over each 16. A block holding NaN or inf gets d = NaN and codes 0, so the
    integer rows give NaN where the spec does."""
    if mode != Q8_0 and mode != Q8_K:
        round_rows(x, mode)
        return
    R, n = x.shape
    size = 32 if mode == Q8_0 else 256
    for r in range(R):
        for b in range(n // size):
            e = b * size
            if mode == Q8_0:
                d, inv = _q8_0_scale(x, r, e)
            else:
                d, inv = _q8_k_scale(x, r, e)
            finite = True
            for l in range(e, e + size):
                finite = finite and abs(x[r, l]) < np.inf
            xd[r, b] = d if finite else np.float32(np.nan)
            for l in range(e, e + size):
                c = np.rint(x[r, l] * inv) if finite else np.float32(0.0)
                if c > 127:
                    c = np.float32(127.0)
                xq[r, l] = np.int8(c)
                x[r, l] = d * c if finite else np.float32(np.nan)
        for g in range(n // 16):
            t = np.int16(0)
            for l in range(16 * g, 16 * g + 16):
                t += np.int16(xq[r, l])
            xb[r, g] = t
