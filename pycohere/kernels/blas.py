"""OpenBLAS's thread count, through its C API (as threadpoolctl does; it is not a dependency).

Why: OpenBLAS's worker threads spin for a while after each multi-threaded call, and on a small machine
they then fight Numba's workers for the cores. A 2048-token bf16 prefill (Numba's GEMM, now
``tiles.gemm``, for the matmuls, BLAS for the attention products) took 37 s with OpenBLAS's 2 threads and 10 s with one
(BENCHMARKS.md "Prefill (issue 15)"). So the prefill attention calls BLAS single-threaded from its own
threads (``pycohere.kernels.attention.blocked_attention``), and OpenBLAS's pool stays idle; no matmul
calls BLAS (``pycohere.kernels.tiles``: a multi-threaded call also stalls under load).
"""
from __future__ import annotations

import ctypes
import threading
from contextlib import contextmanager

# (get, set) symbol pairs of the OpenBLAS builds NumPy ships or links: scipy-openblas (NumPy's wheels,
# 64-bit ints), a 64-bit-int system OpenBLAS, a plain one
_SYMBOLS = (("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
            ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),
            ("openblas_get_num_threads", "openblas_set_num_threads"))
_api: list = []          # [(get, set)] or [None] once looked up
_lock = threading.Lock()
_depth = 0               # nested / concurrent single_threaded() users
_saved = 0


def _openblas():
    if not _api:
        found = None
        try:
            with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
                paths = sorted({line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line})
        except OSError:  # not Linux: leave OpenBLAS alone
            paths = []
        for path in paths:
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            for get, set_ in _SYMBOLS:
                if hasattr(lib, get) and hasattr(lib, set_):
                    g, s = getattr(lib, get), getattr(lib, set_)
                    g.restype, s.argtypes = ctypes.c_int, [ctypes.c_int]
                    found = (g, s)
                    break
            if found:
                break
        _api.append(found)
    return _api[0]


def blas_threads() -> int | None:
    """OpenBLAS's current thread count (None when NumPy's BLAS is not an OpenBLAS this can reach)."""
    api = _openblas()
    return None if api is None else int(api[0]())


@contextmanager
def single_threaded():
    """OpenBLAS runs on the calling thread only inside the block (process-wide: other threads' NumPy
    calls in the meantime are single-threaded too); the previous count comes back after it."""
    global _depth, _saved
    api = _openblas()
    if api is None:
        yield
        return
    with _lock:
        if _depth == 0:
            _saved = int(api[0]())
            if _saved != 1:
                api[1](1)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _saved != 1:
                api[1](_saved)
