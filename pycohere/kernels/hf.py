"""Numba kernels of formats read from Hugging Face quantized checkpoints: LLM.int8 dequantization and the
GPTQ act-order permutation of packed 4-bit codes (their NumPy twins: ``pycohere.quant.schemes.BnbInt8``
and :func:`permute_codes_spec`). bitsandbytes' nf4/fp4 reuse the nf4 kernels of ``pycohere.kernels.quant``.
"""
from __future__ import annotations

import numpy as np

from ..quant.schemes import INV127, pack_nibbles, unpack_nibbles
from .jit import njit, prange


@njit(cache=True, parallel=True)
def dequant_bnb_int8(q, scb, out):
    """Twin of ``BnbInt8.dequantize_blocks``: (q * SCB) * INV127, two float32 roundings (no
    fastmath, so LLVM neither reassociates nor contracts them)."""
    inv = np.float32(INV127)
    for o in prange(q.shape[0]):
        s = scb[o, 0]
        for j in range(q.shape[1]):
            out[o, j] = (np.float32(q[o, j]) * s) * inv


@njit(cache=True, parallel=True)
def permute_codes(q, perm, out):
    """Reorder the 4-bit codes of each row (element 2j in the low nibble of byte j): element i of
    ``out``'s row is element ``perm[i]`` of ``q``'s. NumPy twin: :func:`permute_codes_spec`."""
    for o in prange(q.shape[0]):
        for j in range(out.shape[1]):
            a, b = perm[2 * j], perm[2 * j + 1]
            lo = (np.int32(q[o, a >> 1]) >> np.int32(4 * (a & 1))) & np.int32(15)
            hi = (np.int32(q[o, b >> 1]) >> np.int32(4 * (b & 1))) & np.int32(15)
            out[o, j] = np.uint8(lo | (hi << np.int32(4)))


def permute_codes_spec(q: np.ndarray, perm: np.ndarray) -> np.ndarray:
    return pack_nibbles(unpack_nibbles(q)[:, perm])
