"""Stored values to floats and back: bf16 bits, f16, f32, f64 (the storage names of ``pycohere.constants``)."""
from __future__ import annotations

import numpy as np

from ..constants import FLOAT_STORAGE
from ..errors import UnsupportedFormatError


def widen(raw: np.ndarray, storage: str, dtype=np.float32) -> np.ndarray:
    """Raw stored values -> float array of ``dtype`` (always a new array unless already right)."""
    dtype = np.dtype(dtype)
    if storage == "BF16":
        # bf16 is the top half of an IEEE float32: shifting the bits up is exact.
        f32 = (raw.astype(np.uint32) << 16).view(np.float32)
        return f32 if dtype == np.float32 else f32.astype(dtype)
    if storage in FLOAT_STORAGE:
        return np.asarray(raw, dtype=dtype)
    raise UnsupportedFormatError(f"cannot widen storage dtype {storage!r}; expected one of {sorted(FLOAT_STORAGE)}")


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """float array -> bf16 bits (uint16) with round-to-nearest-even, as torch does."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounding = ((u >> 16) & 1) + np.uint32(0x7FFF)
    out = ((u + rounding) >> 16).astype(np.uint16)
    nan = np.isnan(x)
    if nan.any():
        out[nan] = 0x7FC0
    return out
