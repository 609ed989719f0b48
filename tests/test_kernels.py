"""Every Numba kernel against its NumPy twin (hypothesis over shapes). Also run with NUMBA_DISABLE_JIT=1."""
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from pycohere.kernels import attention as KA, dense as K
from pycohere.spec import layers as L
from pycohere.io.dtypes import bf16_bits, widen

NO_JIT = os.environ.get("NUMBA_DISABLE_JIT") == "1"
SETTINGS = settings(max_examples=8 if NO_JIT else 40, deadline=None)
small = st.integers(1, 3) if NO_JIT else st.integers(1, 40)


def _raw(rng, shape, storage):
    w = rng.standard_normal(shape).astype(np.float32)
    if storage == "BF16":
        return bf16_bits(w)
    if storage == "F16":
        return w.astype(np.float16)
    return w


@SETTINGS
@given(st.sampled_from(["BF16", "F16", "F32"]), small, st.integers(1, 70), st.integers(1, 90),
       st.integers(0, 10**6))
def test_dense_matmul_equals_widen_then_matmul(storage, rows, out_dim, in_dim, seed):
    rng = np.random.default_rng(seed)
    raw = _raw(rng, (out_dim, in_dim), storage)
    x = rng.standard_normal((rows, in_dim)).astype(np.float32)
    ref = x.astype(np.float64) @ widen(raw, storage, np.float64).T
    got = K.dense_matmul(x, raw, storage)
    assert got.shape == (rows, out_dim) and got.dtype == np.float32
    # float32 accumulation in another order than BLAS: bounded by in_dim * eps * |x||w|
    bound = 4 * in_dim * np.finfo(np.float32).eps * (np.abs(x) @ np.abs(widen(raw, storage, np.float64)).T) + 1e-30
    assert (np.abs(got - ref) <= bound).all()


def test_f16_prefill_multiplies_the_bits_in_place_and_equals_spec():
    rng = np.random.default_rng(0)
    raw = _raw(rng, (37, 20), "F16")
    x = rng.standard_normal((2, 9, 20)).astype(np.float32)  # 18 rows > the f16 GEMV's 8: tiles.gemm on int16 bits
    np.testing.assert_allclose(K.dense_matmul(x, raw, "F16"), x @ widen(raw, "F16").T, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("storage", ["BF16", "F16", "F32"])
def test_widen_and_gather_are_exact(storage):
    rng = np.random.default_rng(1)
    raw = _raw(rng, (11, 7), storage)
    ids = np.array([[3, 0, 10], [3, 3, 1]])
    np.testing.assert_array_equal(K.gather_rows(raw, storage, ids), widen(raw, storage)[ids])
    special = np.array([[0x7F80, 0xFF80, 0x0001, 0x8000, 0x7FC0]], dtype=np.uint16)  # inf, -inf, subnormal, -0, nan
    np.testing.assert_array_equal(K.widen_bf16(special).view(np.uint32), widen(special, "BF16").view(np.uint32))


@SETTINGS
@given(B=st.integers(1, 2), T=st.integers(1, 12), past=st.integers(0, 9),
       heads=st.sampled_from([(4, 4), (4, 2), (4, 1), (6, 3)]), Dh=st.sampled_from([2, 4, 8]),
       window=st.one_of(st.none(), st.integers(1, 8)), pad=st.integers(0, 5), data=st.data())
def test_attention_kernels_equal_spec(B, T, past, heads, Dh, window, pad, data):
    H, Kh = heads
    rng = np.random.default_rng(data.draw(st.integers(0, 10**6)))
    S = past + T
    start = data.draw(st.integers(0, past))        # a cache that dropped its oldest entries
    q = rng.standard_normal((B, T, H, Dh)).astype(np.float32)
    k = rng.standard_normal((B, S - start, Kh, Dh)).astype(np.float32)
    v = rng.standard_normal((B, S - start, Kh, Dh)).astype(np.float32)
    q_index = np.arange(past, past + T)
    kv_index = np.arange(start, S)
    valid = np.ones((B, S), dtype=bool)
    valid[-1, :min(pad, S)] = False                   # left padding in the last row (may mask whole rows)
    kv_valid = valid[:, kv_index]
    ref = L.attention(q, k, v, L.attention_mask(q_index, kv_index, kv_valid, window))
    for kernel in (KA.decode_attention, KA.flash_attention):
        args = (q, k, v, q_index, np.int64(start), kv_valid, np.int64(window or 0))
        got = kernel(*args, np.int64(data.draw(st.sampled_from([1, 3, 64])))) if kernel is KA.flash_attention \
            else kernel(*args)
        np.testing.assert_allclose(got, ref, rtol=2e-5, atol=2e-5)
    got = KA.blocked_attention(q, k, v, q_index, start, kv_valid, window or 0,
                               block=data.draw(st.sampled_from([1, 3, 64])))
    np.testing.assert_allclose(got, ref, rtol=2e-5, atol=2e-5)


@pytest.mark.skipif(NO_JIT, reason="this is the launcher of the NUMBA_DISABLE_JIT run itself")
def test_kernels_also_pass_as_plain_python():
    from conftest import assert_passes_without_jit
    assert_passes_without_jit(__file__)


@pytest.mark.parametrize("key", [0, 3])
def test_nan_scores_propagate_like_the_spec(key):
    """fastmath keeps NaN semantics here (no "nnan" flag): a NaN key poisons exactly the rows it poisons
    in the spec (key 0: every query; key 3: queries 3 on), instead of being treated as masked; the blocked
    attention with BLAS and with either panel tile."""
    from pycohere.kernels import tiles
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 6, 2, 4)).astype(np.float32)
    k = rng.standard_normal((1, 6, 1, 4)).astype(np.float32)
    v = rng.standard_normal((1, 6, 1, 4)).astype(np.float32)
    k[0, key] = np.nan
    idx = np.arange(6)
    ref = L.attention(q, k, v, L.attention_mask(idx, idx, None, None))
    args = (q, k, v, idx, np.int64(0), np.ones((1, 6), bool), np.int64(0))
    blocked = [KA.blocked_attention(q, k, v, idx, 0, np.ones((1, 6), bool), 0, block=4, tile=tile)
               for tile in ((), *tiles.PANEL_SHAPES)]
    for got in (KA.decode_attention(*args), KA.flash_attention(*args, np.int64(4)), *blocked):
        np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
        np.testing.assert_allclose(got[~np.isnan(ref)], ref[~np.isnan(ref)], rtol=1e-5, atol=1e-6)
    assert np.isnan(ref[0, key:]).all() and not np.isnan(ref[0, :key]).any()


def test_threading_layer_is_tbb_then_workqueue_unless_the_user_chose():
    """kernels/jit.py: Numba's tbb layer first, workqueue as the fallback, never omp by default; a user's
    NUMBA_THREADING_LAYER wins."""
    import numba
    if "NUMBA_THREADING_LAYER" in os.environ:
        assert numba.config.THREADING_LAYER == os.environ["NUMBA_THREADING_LAYER"]
        return
    assert numba.config.THREADING_LAYER == "default"
    assert numba.config.THREADING_LAYER_PRIORITY[:2] == ["tbb", "workqueue"]
    if not numba.config.DISABLE_JIT:  # a parallel region launched: the layer that loaded is one of those two
        K.widen_bf16(np.zeros((2, 3), np.uint16))
        assert numba.threading_layer() in ("tbb", "workqueue")
