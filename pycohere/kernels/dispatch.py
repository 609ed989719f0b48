"""Choosing the fast twins, in one place: the backend, the CPU's features, and a spec weight's kernels.

``backend="numpy"`` is the specification and always works. ``"numba"`` runs the compiled twins of this
package for float32 compute (weights read from the memory map, tiled attention); float64 (golden) runs
always use the NumPy spec. ``"auto"`` picks numba when it imports, else numpy.

:func:`fast_weight` wraps a spec ``Weight`` (dense, quantized, llama.cpp-rounded, permuted) in a
fast twin whose ``matmul`` / ``rows`` run the kernels chosen here for float32 inputs and fall back to the
spec otherwise; everything else (``dequantize``, the packed arrays) is the spec weight's own.
"""
from __future__ import annotations

import numpy as np

from ..errors import BackendError
from ..quant.activations import LlamaCppActivations
from ..quant.weight import PermutedWeight, QuantizedWeight
from ..spec.weights import DenseWeight, Weight
from .jit import cpu_features  # noqa: F401  (the one feature probe; re-exported)

BACKENDS = ("numpy", "numba")


def numba_available() -> bool:
    try:
        import numba  # noqa: F401  (importable is all this asks)
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


def vector_isa() -> str:
    """What the compiled kernels' vectors become on this CPU (LLVM targets the host: Numba's default)."""
    f = cpu_features()
    isa = ("AVX-512 (16 float lanes per register)" if "avx512f" in f
           else "AVX2 (8 float lanes; a 16-lane vector is two registers)" if "avx2" in f
           else "no AVX2: LLVM's generic vectors")
    extras = [name for name, key in (("F16C", "f16c"), ("AVX512-VNNI", "avx512vnni"), ("AVX-VNNI", "avxvnni"),
                                     ("AVX512-BF16", "avx512bf16")) if key in f]
    return isa + (f"; also {', '.join(extras)}" if extras else "")


def threading_layer() -> str:
    """Numba's threading layer in use (or the configured choice before the first parallel call)."""
    import numba
    try:
        return numba.threading_layer()
    except ValueError:  # no parallel region has run yet
        return f"{numba.config.THREADING_LAYER} (priority {', '.join(numba.config.THREADING_LAYER_PRIORITY)})"


def attention_kernel(backend: str, dtype):
    """The fused attention kernel to use, or None for the NumPy spec (``pycohere.spec.layers.attention``)."""
    if backend != "numba" or np.dtype(dtype) != np.float32:
        return None
    from .attention import fused_attention
    return fused_attention


def _bf16_dot_raw(w: "LlamaCppActivations"):
    """The mapped bf16 bits that ``kernels.bf16_dot`` can multiply for this llama.cpp-rounded weight, or None."""
    from . import bf16_dot
    raw = getattr(w.weight, "raw", None)
    if (w.storage == "BF16" and raw is not None and raw.dtype == np.uint16 and raw.strides[1] == 2
            and bf16_dot.supported(w.shape[1])):
        return raw
    return None


def _float_prefill(rows: int, storage: str) -> bool:
    """Whether a matmul of ``rows`` input rows under ``activations="llama.cpp"`` runs the float GEMM on the rounded
    activations (the spec read literally; quantized weights: dequantized tiles, then ``tiles.gemm``) rather
    than integer rows (``int8_dot``): from ``tiles.BROADCAST_MIN_ROWS`` rows where the broadcast GEMM runs
    (``tiles.gemm_host``) and ``storage`` has no integer tiles on this host (``int8_dot.TILE_KINDS`` with
    ``irows.TILES``: q8_0, q4_0, q4_k with AVX-512 VNNI), where the float GEMM measured faster than the integer
    rows (AVX2 hosts: every scheme, BENCHMARKS.md "Round 4"; AVX-512: q6_k, "Round 5")."""
    from . import int8_dot, irows, tiles
    tiled = (irows.TILES and storage in int8_dot.SCHEMES
             and int8_dot.SCHEMES.index(storage) in int8_dot.TILE_KINDS)
    return tiles.gemm is tiles.gemm_host and not tiled and rows >= tiles.BROADCAST_MIN_ROWS


def prefill_path(w: Weight) -> str:
    """Which kernel a matmul of many input rows (a prefill) runs for weight ``w`` on this host (the same
    choices as ``_kernels``), for ``model.kernel_report()``."""
    from . import int8_dot, iquant, irows, tiles
    w = getattr(w, "spec", w)
    if isinstance(w, PermutedWeight):
        return prefill_path(w.inner)
    if isinstance(w, LlamaCppActivations):
        if _bf16_dot_raw(w) is not None:
            from . import bf16_dot
            return (f"bf16 dot products (vdpbf16ps, kernels.bf16_dot: 4 x 4 tiles, broadcast 12 x 32 tiles from "
                    f"{bf16_dot.PANEL_MIN_ROWS} input rows)")
        has_codes = getattr(w.weight, "arrays", {}).get("qweight") is not None
        if w.storage in int8_dot.SCHEMES and int8_dot.AVAILABLE and has_codes:
            if _float_prefill(tiles.BROADCAST_MIN_ROWS, w.storage):
                return (f"dequantized tiles, then kernels.tiles.{tiles.gemm.__name__}, on the rounded activations "
                        f"from {tiles.BROADCAST_MIN_ROWS} input rows; integer rows, four activation rows per "
                        f"weight pass ({irows.isa()}), below")
            tiled = irows.TILES and int8_dot.SCHEMES.index(w.storage) in int8_dot.TILE_KINDS
            return (f"integer GEMM on repacked 16-row tiles from {int8_dot.TILE_MIN_ROWS} input rows (vpdpbusd, "
                    "kernels.int8_dot)" if tiled
                    else f"integer rows, four activation rows per weight pass ({irows.isa()})")
        if w.storage in iquant.SCHEMES and iquant.AVAILABLE and has_codes:
            return (f"integer rows on Q8 codes (kernels.iquant) up to {iquant.GEMV_MAX_ROWS} input rows, "
                    "float kernels on the rounded activations beyond")
        return "float kernels on the rounded activations"
    if isinstance(w, DenseWeight):
        if w.raw is None:
            return "BLAS on the materialized weight"
        return f"register-tiled GEMM, read in place (kernels.tiles.{tiles.gemm.__name__}" + (
            ", f16 widened by vcvtph2ps)" if w.storage == "F16" else ")")
    if isinstance(w, QuantizedWeight):
        return f"dequantized tiles, then kernels.tiles.{tiles.gemm.__name__}"
    return "the spec"


class FastWeight:
    """Mixed into a spec weight's own class by :func:`fast_weight`: ``matmul(x)`` / ``rows(ids)`` run the
    kernels bound at load for float32 and fall back to the spec class's methods otherwise, so a fast
    weight is still an instance of its spec class (``isinstance(w, QuantizedWeight)``, ``w.arrays``);
    ``w.spec`` is the plain spec weight it was made from."""

    _matmul = _rows = None

    def matmul(self, x: np.ndarray) -> np.ndarray:
        if self._matmul is not None and x.dtype == np.float32:
            return self._matmul(x)
        return super().matmul(x)

    def rows(self, ids, dtype=None) -> np.ndarray:
        dtype = self.compute_dtype if dtype is None else np.dtype(dtype)
        if self._rows is not None and dtype == np.float32 and np.asarray(ids).dtype.kind in "iu":
            return self._rows(np.asarray(ids))
        return super().rows(ids, dtype)

    def __repr__(self) -> str:
        return f"fast {self.spec!r}"


_FAST_CLASSES: dict[type, type] = {}


def fast_weight(w: Weight) -> Weight:
    """``w`` with the kernels of its storage bound (an instance of ``Fast<its class>``), or ``w`` itself
    when no kernel applies. The arrays are shared, never copied."""
    if isinstance(w, FastWeight):
        return w
    matmul, rows = _kernels(w)
    if matmul is None and rows is None:
        return w
    cls = type(w)
    fast_cls = _FAST_CLASSES.get(cls)
    if fast_cls is None:
        fast_cls = _FAST_CLASSES[cls] = type(f"Fast{cls.__name__}", (FastWeight, cls), {})
    fast = object.__new__(fast_cls)
    fast.__dict__.update(w.__dict__)
    fast.spec, fast._matmul, fast._rows = w, matmul, rows
    return fast


def _kernels(w: Weight):
    """(matmul(x float32) -> y, rows(int ids) -> float32 rows) of a spec weight; None where the spec runs."""
    from . import bf16_dot, dense, int8_dot, iquant, quant, rounding
    if isinstance(w, DenseWeight):
        if w.raw is None:  # materialized: the spec's one BLAS call is the fast path
            return None, None
        raw, storage = w.raw, w.storage
        return (lambda x: dense.dense_matmul(x, raw, storage)), (lambda ids: dense.gather_rows(raw, storage, ids))
    if isinstance(w, QuantizedWeight):
        t = w.tensor
        return (lambda x: quant.quantized_matmul(x, t)), (lambda ids: quant.quantized_rows(t, ids))
    if isinstance(w, LlamaCppActivations):
        inner = fast_weight(w.weight)
        vdt, qweight = w.vec_dot_type, getattr(w.weight, "arrays", {}).get("qweight")

        raw = _bf16_dot_raw(w)
        if raw is not None:
            # bf16 x bf16 dot products (vdpbf16ps) for a prefill, as llama.cpp's bf16 GEMM; decode rows as before
            def matmul_bf16(x):
                x2 = np.ascontiguousarray(x.reshape(-1, x.shape[-1]), dtype=np.float32)
                if x2.shape[0] <= dense.DENSE_GEMV_MAX_ROWS["BF16"] or x2.shape[1] != w.shape[1]:
                    return inner.matmul(rounding.rounded(x, vdt))  # (a wrong width: the spec's own error)
                return bf16_dot.matmul(x2, raw).reshape(x.shape[:-1] + (w.shape[0],))
            return matmul_bf16, (lambda ids: inner.rows(ids, np.float32))

        # integer dot products on the rounded blocks, where the host has them (q8_0, q4_0, q4_k, q6_k:
        # kernels.int8_dot; iq4_nl / iq4_xs: kernels.iquant)
        rounded = iquant.gemv_rounded if w.storage in iquant.SCHEMES else int8_dot.gemv_rounded

        def matmul(x):
            if ((w.storage in int8_dot.SCHEMES or w.storage in iquant.SCHEMES) and qweight is not None
                    and not _float_prefill(int(np.prod(x.shape[:-1])), w.storage)):
                y = rounded(x.reshape(-1, x.shape[-1]), qweight, w.storage)
                if y is not None:
                    return y.reshape(x.shape[:-1] + (w.shape[0],))
            return inner.matmul(rounding.rounded(x, vdt))
        return matmul, (lambda ids: inner.rows(ids, np.float32))
    if isinstance(w, PermutedWeight):
        inner, perm, inverse = fast_weight(w.inner), w.perm, w.inverse
        return ((lambda x: inner.matmul(np.take(x, perm, axis=-1))),
                (lambda ids: inner.rows(ids, np.float32)[..., inverse]))
    return None, None
