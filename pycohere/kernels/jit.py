"""Numba set-up shared by every kernel: the jit decorators and flags, bit casts, the f16 table, threads.

Threads: Numba's ``tbb`` layer first (the ``tbb`` wheel is a dependency on x86-64), else ``workqueue``; never
``omp`` by default (its threads spin after a region, against OpenBLAS's in a prefill). A parallel region
costs ~5 us to launch with tbb and ~100 us with workqueue, and a decode step runs three per layer: on the
demo model that is 0.56 against 2.3 ms per token; streaming a bf16 matrix reaches ~40 against ~22 GB/s
(BENCHMARKS.md, "threading layer"). The thread count follows the cores. A user's
``NUMBA_THREADING_LAYER`` wins.
"""
from __future__ import annotations

import os

import numpy as np

import numba  # noqa: E402
from numba import njit, prange  # noqa: E402,F401  (re-exported: every kernel module takes them from here)

if "NUMBA_THREADING_LAYER" not in os.environ:  # the user's choice wins; numba may be imported already
    numba.config.THREADING_LAYER_PRIORITY = ["tbb", "workqueue", "omp"]  # the first that loads
    numba.config.THREADING_LAYER = "default"

JIT_DISABLED = bool(numba.config.DISABLE_JIT)
if JIT_DISABLED:
    def u32_as_f32(x):
        """Reinterpret the bits of a uint32 as float32 (plain Python twin of the intrinsic)."""
        return np.array(x, dtype=np.uint32).view(np.float32)[()]

    def f16_as_f32(x):
        """The float32 value of f16 bits (plain Python twin of the intrinsic)."""
        return np.float32(np.array(x, dtype=np.uint16).view(np.float16)[()])

    def f32_as_u32(x):
        return np.array(x, dtype=np.float32).view(np.uint32)[()]

    def round_f16(x):
        """float32 -> nearest f16 (ties to even) -> float32 (plain Python twin of the intrinsic)."""
        return np.float32(np.float16(np.float32(x)))
else:
    from llvmlite import ir
    from numba.core import types
    from numba.extending import intrinsic

    @intrinsic
    def _bitcast_u32_f32(typingctx, x):
        sig = types.float32(types.uint32)

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir.FloatType())
        return sig, codegen

    @njit(inline="always")
    def u32_as_f32(x):
        return _bitcast_u32_f32(x)

    @intrinsic
    def _f16_bits_to_f32(typingctx, x):
        sig = types.float32(types.uint16)

        def codegen(context, builder, signature, args):  # exact widening; LLVM vectorises it (vcvtph2ps)
            return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())
        return sig, codegen

    @intrinsic
    def _bitcast_f32_u32(typingctx, x):
        sig = types.uint32(types.float32)

        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], ir.IntType(32))
        return sig, codegen

    @intrinsic
    def _round_f16(typingctx, x):
        sig = types.float32(types.float32)

        def codegen(context, builder, signature, args):  # IEEE round to nearest even, as NumPy's astype
            return builder.fpext(builder.fptrunc(args[0], ir.HalfType()), ir.FloatType())
        return sig, codegen

    @njit(inline="always")
    def f32_as_u32(x):
        return _bitcast_f32_u32(np.float32(x))

    @njit(inline="always")
    def round_f16(x):
        """float32 -> nearest f16 (ties to even, overflow to inf) -> float32."""
        return _round_f16(np.float32(x))

    @njit(inline="always")
    def f16_as_f32(x):
        """The float32 value of f16 bits x (uint16): IEEE half -> single is exact, subnormals included."""
        return _f16_bits_to_f32(np.uint16(x))

# f16 bit pattern -> float32 value, for every pattern (256 KiB, stays in L2)
F16_TABLE = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(np.float32)

# fastmath without "ninf"/"nnan": the attention kernels use -inf as "masked", and a NaN in the
# input must stay visible. Reassociation is what lets LLVM vectorise the dot products.
FAST = {"nsz", "arcp", "contract", "afn", "reassoc"}

# Rows are handed to the threads in jobs of ROWS_PER_JOB so that per-thread scratch ("lanes") is
# allocated once per job, not once per row (256000 allocations would cost ~10 ms per token).
ROWS_PER_JOB = 64

# Up to this many input rows a matmul streams the weights once (decode, memory bound); more rows
# are a prefill (compute bound: tiles for BLAS).
GEMV_MAX_ROWS = 8


@njit(cache=True, inline="always")
def f16_at(q, o, b, f16):
    """The little-endian f16 at bytes b, b+1 of row o, as float32 (through ``F16_TABLE``)."""
    return f16[np.int32(q[o, b]) | (np.int32(q[o, b + 1]) << np.int32(8))]
