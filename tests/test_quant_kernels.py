"""The Numba kernels of pycohere.quant.kernels against the NumPy spec (``x @ dequantize().T``).

Hypothesis draws schemes, group sizes and shapes; the file re-runs itself with NUMBA_DISABLE_JIT=1
so the kernels are also checked as plain Python (copying the pattern of tests/test_kernels.py).
"""
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from pycohere.quant import QuantizedWeight, get_scheme, quantize
from pycohere.kernels import quant as QK
from pycohere.kernels.dispatch import fast_weight
from pycohere.spec import weights as QW
from pycohere.quant.schemes import QuantizedTensor

NO_JIT = os.environ.get("NUMBA_DISABLE_JIT") == "1"
SETTINGS = settings(max_examples=3 if NO_JIT else 12, deadline=None)  # per scheme and group size
EPS = float(np.finfo(np.float32).eps)

# (scheme, group size); None = the scheme's default (per output channel for int8)
CASES = [("int8", None), ("int8", 32), ("int8", 64), ("int8", 128), ("int4", 32), ("int4", 64),
         ("int4", 128), ("int4-asym", 32), ("int4-asym", 64), ("int4-asym", 128), ("nf4", 32), ("nf4", 64),
         ("nf4", 128), ("q8_0", None), ("q4_0", None), ("q4_1", None)]
max_out = 3 if NO_JIT else 40
max_groups = 2 if NO_JIT else 4


def weights(rng, shape, group):
    """Gaussian weights with a different magnitude per group, some groups all zero and some
    single-value outliers: every scale path (zero scale, large range) is exercised."""
    w = rng.standard_normal(shape).astype(np.float32)
    g = w.reshape(shape[0], -1, group)
    g *= np.exp(rng.uniform(-6, 2, size=g.shape[:2] + (1,))).astype(np.float32)
    g[rng.random(g.shape[:2]) < 0.1] = 0
    return w


def magnitude_bound(q: QuantizedTensor, x: np.ndarray) -> np.ndarray:
    """Error bound of a float32 kernel: every term it adds (scale * x * code, offset * sum(x)) is
    at most 4x the largest |weight| of its group times |x_j| (int4: 15 s + 8 s = 23/7 absmax;
    int4-asym / q4_1: n s <= range <= 2 absmax, |m| <= absmax; the others <= absmax); the
    accumulation error is bounded by (terms + 8) * eps * sum of the magnitudes."""
    w = q.dequantize().astype(np.float64)
    group = q.group_size
    groupmax = np.abs(w).reshape(w.shape[0], -1, group).max(axis=2, keepdims=True)
    m = np.broadcast_to(4 * groupmax, (w.shape[0], w.shape[1] // group, group)).reshape(w.shape)
    return 4 * (w.shape[1] + 8) * EPS * (np.abs(x).astype(np.float64) @ m.T) + 1e-37


@pytest.mark.parametrize("scheme,group", CASES)
@SETTINGS
@given(rows=st.integers(1, QK.GEMV_MAX_ROWS), out_dim=st.integers(1, max_out),
       n_groups=st.integers(1, max_groups), seed=st.integers(0, 2**32 - 1))
def test_decode_gemv_equals_spec(scheme, group, rows, out_dim, n_groups, seed):
    rng = np.random.default_rng(seed)
    block = group or get_scheme(scheme).block_size or 32
    in_dim = block * n_groups
    q = quantize(weights(rng, (out_dim, in_dim), block), scheme, group)
    x = (rng.standard_normal((rows, in_dim)) * np.exp(rng.uniform(-3, 3))).astype(np.float32)
    ref = x.astype(np.float64) @ q.dequantize().astype(np.float64).T
    got = QK.quantized_matmul(x, q)
    assert got.shape == (rows, out_dim) and got.dtype == np.float32
    assert QK._gemv(x, q.arrays, scheme) is not None  # the decode kernel, not the tile fallback
    assert (np.abs(got - ref) <= magnitude_bound(q, x)).all()


@pytest.mark.parametrize("scheme,group", CASES)
@SETTINGS
@given(rows=st.integers(QK.GEMV_MAX_ROWS + 1, 20), out_dim=st.integers(1, max_out),
       n_groups=st.integers(1, max_groups), tile=st.sampled_from([64, 200, 1 << 22]), seed=st.integers(0, 2**32 - 1))
def test_prefill_tiles_equal_spec(scheme, group, rows, out_dim, n_groups, tile, seed):
    rng = np.random.default_rng(seed)
    block = group or get_scheme(scheme).block_size or 32
    in_dim = block * n_groups
    q = quantize(weights(rng, (out_dim, in_dim), block), scheme, group)
    x = rng.standard_normal((1, rows, in_dim)).astype(np.float32)
    saved, QK.TILE_ELEMENTS = QK.TILE_ELEMENTS, tile  # small tiles: several BLAS calls
    try:
        got = QK.quantized_matmul(x, q)
    finally:
        QK.TILE_ELEMENTS = saved
    ref = x.astype(np.float64) @ q.dequantize().astype(np.float64).T
    assert got.shape == (1, rows, out_dim)
    assert (np.abs(got - ref) <= magnitude_bound(q, x[0])).all()


@pytest.mark.parametrize("scheme", ["int8", "int4", "int4-asym", "nf4", "q8_0", "q4_0", "q4_1"])
def test_dequantize_rows_is_bit_identical_to_the_spec(scheme):
    rng = np.random.default_rng(3)
    q = quantize(weights(rng, (7, 128), 32), scheme, 32 if scheme not in ("q8_0", "q4_0", "q4_1") else None)
    spec = q.dequantize()
    np.testing.assert_array_equal(QK.dequantize_rows(q, slice(0, 7)).view(np.uint32), spec.view(np.uint32))
    ids = np.array([[6, 0], [6, 3]], dtype=np.int32)
    got = QK.quantized_rows(q, ids)
    assert got.shape == (2, 2, 128)
    np.testing.assert_array_equal(got.view(np.uint32), spec[ids].view(np.uint32))


def test_nan_and_inf_in_x_propagate():
    # fastmath here excludes nnan/ninf: a NaN activation must poison every output, as in NumPy.
    rng = np.random.default_rng(5)
    for scheme in ("int8", "int4", "int4-asym", "nf4", "q8_0", "q4_0", "q4_1"):
        q = quantize(weights(rng, (4, 64), 32), scheme, 32 if scheme not in ("q8_0", "q4_0", "q4_1") else None)
        x = rng.standard_normal((2, 64)).astype(np.float32)
        x[1, 17] = np.nan
        got = QK.quantized_matmul(x, q)
        assert np.isnan(got[1]).all() and np.isfinite(got[0]).all(), scheme


def test_quantized_weight_dispatches_on_backend(monkeypatch):
    rng = np.random.default_rng(6)
    q = quantize(weights(rng, (33, 64), 64), "int4", 64)
    x = rng.standard_normal((3, 64)).astype(np.float32)
    fast = fast_weight(QuantizedWeight.from_tensor(q))
    spec = QuantizedWeight.from_tensor(q)
    np.testing.assert_array_equal(fast.matmul(x), QK.quantized_matmul(x, q))
    # numpy backend: the spec, computed over row chunks (forced small here) == one big matmul
    monkeypatch.setattr(QW, "CHUNK_ELEMENTS", 64 * 5)
    np.testing.assert_allclose(spec.matmul(x), x @ q.dequantize().T, rtol=1e-6, atol=1e-7)
    x64 = x.astype(np.float64)  # float64 (golden) input: always the spec, in float64
    assert fast.matmul(x64).dtype == np.float64
    np.testing.assert_allclose(fast.matmul(x64), x64 @ q.dequantize(np.float64).T, rtol=1e-12)
    ids = np.array([32, 0, 5])
    np.testing.assert_array_equal(fast.rows(ids), spec.rows(ids))


@pytest.mark.skipif(NO_JIT, reason="this is the launcher of the NUMBA_DISABLE_JIT run itself")
def test_kernels_also_pass_as_plain_python():
    from conftest import assert_passes_without_jit
    assert_passes_without_jit(__file__)
