"""Backend selection, in one place.

"numpy" is the specification and always works. "numba" runs the compiled twins of
``pycohere/kernels.py`` for float32 compute (weights read from the memory map, tiled attention);
float64 (golden) runs always use the NumPy spec. "auto" picks numba when it imports, else numpy.
"""
from __future__ import annotations

from .errors import BackendError

BACKENDS = ("numpy", "numba")


def numba_available() -> bool:
    try:
        import numba  # noqa: F401
    except Exception:  # pragma: no cover - depends on the environment
        return False
    return True


def resolve_backend(name: str | None) -> str:
    if name in (None, "auto"):
        return "numba" if numba_available() else "numpy"
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS + ('auto',))}")
    if name == "numba" and not numba_available():
        raise BackendError("backend 'numba' needs the numba package (pip install numba); "
                           "use backend='numpy' to run the spec")
    return name


def attention_kernel(backend: str, dtype):
    """The fused attention kernel to use, or None for the NumPy spec (``layers.attention``)."""
    import numpy as np
    if backend != "numba" or np.dtype(dtype) != np.float32:
        return None
    from .kernels import fused_attention
    return fused_attention
