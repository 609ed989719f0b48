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

from .jit import f32_as_u32, njit, round_f16, u32_as_f32

NONE, F16, BF16, Q8_0, Q8_K = range(5)
#: ``pycohere.quant.activations.VEC_DOT_TYPE`` values -> the codes of ``round_rows``
CODES = {None: NONE, "f16": F16, "bf16": BF16, "q8_0": Q8_0, "q8_k": Q8_K}


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
        elif mode == BF16:  # io.dtypes.bf16_bits: round to nearest even on the bits; NaN -> 0x7FC0
            for j in range(n):
                v = x[r, j]
                u = f32_as_u32(v)
                bits = np.uint32(0x7FC0) if v != v else (u + (((u >> np.uint32(16)) & np.uint32(1))
                                                              + np.uint32(0x7FFF))) >> np.uint32(16)
                x[r, j] = u32_as_f32(bits << np.uint32(16))
        elif mode == Q8_0:  # round_q8_0: d = fp16(amax / 127), q = rint(x * (127 / amax))
            for b in range(n // 32):
                e = b * 32
                amax = np.float32(0.0)
                for l in range(32):
                    a = abs(x[r, e + l])
                    if a > amax or a != a:  # NaN propagates, as NumPy's max
                        amax = a
                    if amax != amax:
                        break
                inv = np.float32(127.0) / amax if amax != 0 else np.float32(0.0)
                d = round_f16(amax / np.float32(127.0))
                for l in range(32):
                    x[r, e + l] = d * np.rint(x[r, e + l] * inv)
        else:  # Q8_K, round_q8_k: the signed element of largest magnitude (first on ties, NaN first)
            for b in range(n // 256):
                e = b * 256
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
                d = np.float32(1.0) / iscale if iscale != 0 else np.float32(0.0)
                for l in range(256):
                    q = np.rint(x[r, e + l] * iscale)
                    if q > 127:
                        q = np.float32(127.0)
                    x[r, e + l] = d * q
