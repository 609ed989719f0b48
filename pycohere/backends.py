"""Backend selection, in one place.

"numpy" is the specification and always works. "numba" will add compiled kernels (issue: fast path);
until they exist in this version, asking for it explicitly is an error rather than a silent fallback.
"auto" picks the fastest backend available.
"""
from __future__ import annotations

from .errors import BackendError

BACKENDS = ("numpy",)


def resolve_backend(name: str | None) -> str:
    if name in (None, "auto"):
        return BACKENDS[-1]
    if name not in BACKENDS:
        raise BackendError(f"backend {name!r} is not available in this version of pycohere; "
                           f"choose one of {', '.join(BACKENDS + ('auto',))}")
    return name
