"""The integer dot-product kernels (pycohere.quant.int8_dot) against their spec: round x, then x' @ W.T."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from pycohere.quant import QuantizedWeight, quantize
from pycohere.kernels import int8_dot
from pycohere.kernels.dispatch import fast_weight
from pycohere.quant.activations import VEC_DOT_TYPE, LlamaCppActivations, round_activations, round_q8_0, round_q8_k

pytestmark = pytest.mark.skipif(not int8_dot.AVAILABLE, reason="needs an x86-64 CPU with AVX2 and the JIT on")


def test_this_host_has_the_kernels():
    # The CI and development machines are AVX2 x86-64: the fast path must really be exercised there.
    import platform
    assert platform.machine() != "x86_64" or int8_dot.AVAILABLE


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 8), out=st.integers(1, 40), blocks=st.integers(1, 6), seed=st.integers(0, 2**31 - 1),
       scale=st.sampled_from([1e-3, 1.0, 50.0]))
def test_activation_codes_equal_the_spec_rounding(rows, out, blocks, seed, scale):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, 32 * blocks)) * scale).astype(np.float32)
    x[:, :32] *= (rng.random() < 0.3)  # sometimes an all-zero block
    q, d, sums = int8_dot.quantize_activations(x, "q8_0")
    np.testing.assert_array_equal((q.reshape(rows, blocks, 32) * d[:, :, None]).reshape(rows, -1), round_q8_0(x))
    np.testing.assert_array_equal(sums, q.reshape(rows, 2 * blocks, 16).astype(np.int32).sum(-1))


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 4), blocks=st.integers(1, 3), seed=st.integers(0, 2**31 - 1),
       scale=st.sampled_from([1e-3, 1.0, 50.0]))
def test_q8_k_codes_equal_the_spec_rounding(rows, blocks, seed, scale):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, 256 * blocks)) * scale).astype(np.float32)
    x[:, :256] *= (rng.random() < 0.3)  # sometimes an all-zero block
    q, d, sums = int8_dot.quantize_activations(x, "q8_k")
    np.testing.assert_array_equal((q.reshape(rows, blocks, 256) * d[:, :blocks, None]).reshape(rows, -1),
                                  round_q8_k(x))
    np.testing.assert_array_equal(sums, q.reshape(rows, 16 * blocks, 16).astype(np.int32).sum(-1))


@settings(max_examples=40, deadline=None)
@given(scheme=st.sampled_from(int8_dot.SCHEMES), rows=st.integers(1, 8), out=st.integers(1, 40),
       blocks=st.integers(1, 6), seed=st.integers(0, 2**31 - 1))
def test_kernels_equal_the_spec(scheme, rows, out, blocks, seed):
    rng = np.random.default_rng(seed)
    W = _weight(rng, scheme, out, blocks)
    x = rng.standard_normal((rows, W.shape[1])).astype(np.float32)
    got = int8_dot.gemv_rounded(x, W.arrays["qweight"], scheme)
    rounded = round_activations(x, VEC_DOT_TYPE[scheme])
    want = rounded @ W.dequantize().T
    # same exact products, float32 sums in another order: a few ulp of the row's magnitudes
    bound = 1e-5 * (np.abs(rounded) @ np.abs(W.dequantize()).T) + 1e-30
    assert got.shape == want.shape and np.all(np.abs(got - want) <= bound)


def _weight(rng, scheme, out, blocks):
    """A q8_0 / q4_0 weight quantized by pycohere, or random q4_k / q6_k blocks (dequantize-only schemes here)
    with small finite f16 scales."""
    if scheme in ("q8_0", "q4_0"):
        return QuantizedWeight.from_tensor(quantize(rng.standard_normal((out, 32 * blocks)).astype(np.float32),
                                                    scheme))
    nbytes, f16_at = {"q4_k": (144, (0, 2)), "q6_k": (210, (208,))}[scheme]
    raw = rng.integers(0, 256, size=(out, blocks, nbytes), dtype=np.uint8)
    for off in f16_at:
        raw[:, :, off:off + 2] = rng.uniform(1e-3, 1e-1, (out, blocks)).astype(np.float16).view(np.uint8).reshape(
            out, blocks, 2)
    return QuantizedWeight({"qweight": raw.reshape(out, -1)},
                           {"scheme": scheme, "group_size": 256, "shape": [out, 256 * blocks]})


def test_non_finite_activations_poison_their_row():
    rng = np.random.default_rng(0)
    for scheme in int8_dot.SCHEMES:
        W = _weight(rng, scheme, 5, 1)
        n = W.shape[1]
        x = np.ones((3, n), np.float32)
        x[0, n - 24], x[2, 3] = np.nan, np.inf
        y = int8_dot.gemv_rounded(x, W.arrays["qweight"], scheme)
        assert np.isnan(y[0]).all() and np.isnan(y[2]).all() and np.isfinite(y[1]).all()
        with np.errstate(invalid="ignore"):  # the spec agrees
            assert np.isnan(round_activations(x[[0, 2]], VEC_DOT_TYPE[scheme]) @ W.dequantize().T).all()


def test_wrapper_uses_the_kernel_for_decode_and_the_spec_beyond():
    rng = np.random.default_rng(1)
    W = fast_weight(QuantizedWeight.from_tensor(quantize(rng.standard_normal((16, 96)).astype(np.float32), "q4_0")))
    A = fast_weight(LlamaCppActivations(W.spec, "w"))
    decode = rng.standard_normal((2, 1, 96)).astype(np.float32)
    np.testing.assert_array_equal(A.matmul(decode), int8_dot.gemv_rounded(decode.reshape(2, 96), W.arrays["qweight"],
                                                                           "q4_0").reshape(2, 1, 16))
    prefill = rng.standard_normal((13, 96)).astype(np.float32)  # a prefill: rows four at a time
    got = A.matmul(prefill)
    codes = int8_dot.quantize_activations(prefill)
    kind = int8_dot.SCHEMES.index("q4_0")
    np.testing.assert_array_equal(got, int8_dot.matmul_codes(kind, W.arrays["qweight"], *codes))
    bound = 1e-5 * (np.abs(round_q8_0(prefill)) @ np.abs(W.dequantize()).T)
    assert np.all(np.abs(got - W.matmul(round_q8_0(prefill))) <= bound)
    Wk = _weight(rng, "q4_k", 4, 1)
    K = fast_weight(LlamaCppActivations(Wk, "w"))  # a k-quant's prefill: its GEMM too
    x = rng.standard_normal((13, 256)).astype(np.float32)
    rounded = round_activations(x, "q8_k")
    Wd = Wk.dequantize()
    assert np.all(np.abs(K.matmul(x) - rounded @ Wd.T) <= 1e-5 * (np.abs(rounded) @ np.abs(Wd).T))
    assert int8_dot.gemv_rounded(decode[0], W.arrays["qweight"], "q5_k") is None  # no integer kernel


@pytest.mark.parametrize("scheme", int8_dot.SCHEMES)
def test_the_float_prefill_starts_at_the_broadcast_kernels_rows(scheme):
    """Integer rows below tiles.BROADCAST_MIN_ROWS rows; from there the float GEMM where the broadcast kernel runs
    and the scheme has no integer tiles (AVX2 hosts: every scheme; AVX-512 VNNI hosts: q6_k), else the tiles."""
    from pycohere.kernels import dispatch, irows, tiles
    tiled = irows.TILES and int8_dot.SCHEMES.index(scheme) in int8_dot.TILE_KINDS
    assert not dispatch._float_prefill(tiles.BROADCAST_MIN_ROWS - 1, scheme)
    assert dispatch._float_prefill(tiles.BROADCAST_MIN_ROWS, scheme) is (tiles.gemm is tiles.gemm_host and not tiled)
    assert not (irows.TILES and tiles.AVX2_TILES)  # the 512-bit tiles need AVX-512, the AVX2 GEMM its absence


@pytest.mark.parametrize("scheme", int8_dot.SCHEMES)
def test_a_prefill_takes_the_float_gemm_where_that_measured_faster(scheme, monkeypatch):
    """Under activations="llama.cpp" a matmul of many rows runs the float GEMM on the rounded activations
    (the spec read literally) where dispatch says so (48 or 64+ rows, schemes without integer tiles), else the
    integer rows: both
    choices, forced, on every host. Below the row threshold the integer rows always run."""
    from pycohere.kernels import dispatch, tiles
    rng = np.random.default_rng(3)
    W = _weight(rng, scheme, 7, 1)
    A = fast_weight(LlamaCppActivations(W, "w"))
    x = rng.standard_normal((tiles.BROADCAST_MIN_ROWS + 5, W.shape[1])).astype(np.float32)
    rounded = round_activations(x, VEC_DOT_TYPE[scheme])
    codes = int8_dot.gemv_rounded(x, W.arrays["qweight"], scheme)
    monkeypatch.setattr(dispatch, "_float_prefill", lambda rows, storage: rows >= tiles.BROADCAST_MIN_ROWS)
    np.testing.assert_array_equal(A.matmul(x), fast_weight(W).matmul(rounded))
    np.testing.assert_array_equal(A.matmul(x[:9]), int8_dot.gemv_rounded(x[:9], W.arrays["qweight"], scheme))
    monkeypatch.setattr(dispatch, "_float_prefill", lambda rows, storage: False)
    np.testing.assert_array_equal(A.matmul(x), codes)
    Wd = W.dequantize()
    assert np.all(np.abs(codes - rounded @ Wd.T) <= 1e-5 * (np.abs(rounded) @ np.abs(Wd).T))  # the two agree


NARROW_CHECK = """
import numpy as np
from pycohere.kernels import int8_dot, irows
from pycohere.quant.activations import VEC_DOT_TYPE, round_activations
import test_int8_dot as t
assert (irows.VNNI, irows.WIDE) == ({vnni}, 8), (irows.VNNI, irows.WIDE)
rng = np.random.default_rng(7)
for scheme in int8_dot.SCHEMES:
    for out, blocks, rows in ((3, 1, 2), (5, 6, 13), (9, 9, 2)):  # remainder and four-block loops; a GEMM
        W = t._weight(rng, scheme, out, blocks)
        x = rng.standard_normal((rows, W.shape[1])).astype(np.float32)
        rounded = round_activations(x, VEC_DOT_TYPE[scheme])
        got = int8_dot.gemv_rounded(x, W.arrays["qweight"], scheme)
        bound = 1e-5 * (np.abs(rounded) @ np.abs(W.dequantize()).T) + 1e-30
        assert np.all(np.abs(got - rounded @ W.dequantize().T) <= bound), scheme
print("ok")
"""


@pytest.mark.parametrize("mask,vnni", [("avx512f,avx512vnni,avxvnni", False), ("avx512f,avx512vnni", True)],
                         ids=["avx2", "avx-vnni-256"])
def test_the_narrower_paths_equal_the_spec(mask, vnni):
    """On an AVX-512 host, the AVX2 (vpmaddubsw) and 256-bit VNNI paths other CPUs take, run by masking
    features (kernels.jit.MASK_VARIABLE); on a host without them the mask changes nothing and the check
    of the default path runs again."""
    import os
    import subprocess
    import sys
    from pathlib import Path
    from pycohere.kernels.jit import MASK_VARIABLE, cpu_features
    if vnni and not ({"avxvnni"} <= cpu_features() or {"avx512vnni", "avx512vl"} <= cpu_features()):
        vnni = False  # (this host has no VNNI at all: the 256-bit VNNI path cannot run here)
    here = Path(__file__).resolve().parent
    env = dict(os.environ, **{MASK_VARIABLE: mask, "PYTHONPATH": os.pathsep.join(
        [str(here), str(here.parent), os.environ.get("PYTHONPATH", "")])})
    run = subprocess.run([sys.executable, "-c", NARROW_CHECK.format(vnni=vnni)], env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]


@settings(max_examples=12, deadline=None)
@given(scheme=st.sampled_from(int8_dot.SCHEMES), rows=st.integers(16, 41), out=st.integers(1, 40),
       blocks=st.integers(1, 3), seed=st.integers(0, 2**31 - 1))
def test_a_prefill_equals_the_spec(scheme, rows, out, blocks, seed):
    """16 and more rows: on AVX-512 VNNI hosts the repacked 16-row tiles (irows.tile4, int8_dot.matmul_tiles;
    q8_0, q4_0, q4_k; partial tiles when out % 16, the last rows % 4 singly), elsewhere four rows per weight pass."""
    from pycohere.kernels import irows
    rng = np.random.default_rng(seed)
    W = _weight(rng, scheme, out, blocks * (8 if scheme in ("q8_0", "q4_0") else 1))
    x = rng.standard_normal((rows, W.shape[1])).astype(np.float32)
    rounded = round_activations(x, VEC_DOT_TYPE[scheme])
    bound = 1e-5 * (np.abs(rounded) @ np.abs(W.dequantize()).T) + 1e-30
    got = int8_dot.gemv_rounded(x, W.arrays["qweight"], scheme)
    assert np.all(np.abs(got - rounded @ W.dequantize().T) <= bound)
    kind = int8_dot.SCHEMES.index(scheme)
    if irows.TILES and kind in int8_dot.TILE_KINDS:  # the path taken was the tiles': the same as rows four at a time
        codes = int8_dot.quantize_activations(x, VEC_DOT_TYPE[scheme])
        np.testing.assert_allclose(got, int8_dot.matmul_codes(kind, W.arrays["qweight"], *codes), rtol=0,
                                   atol=float(bound.max()) * 2)
