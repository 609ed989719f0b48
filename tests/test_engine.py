"""The numba backend's decoder layer (pycohere.model.engine) against the spec's (pycohere.spec.layers), on
random layers: GQA, qk-norm, biases, sliding windows, NoPE, padding, a cache with a past."""
import numpy as np
from hypothesis import given, settings, strategies as st

from pycohere.kernels.dispatch import fast_weight
from pycohere.model import engine
from pycohere.spec import layers as L
from pycohere.spec.cache import LayerCache
from pycohere.spec.params import Dims, ForwardState, LayerParams
from pycohere.spec.rope import rope_cos_sin
from pycohere.spec.weights import DenseWeight
from pycohere.io.dtypes import bf16_bits


def random_layer(rng, dims: Dims, qk_norm: bool, bias: bool, window, rope: bool) -> LayerParams:
    def w(out, inp):
        return DenseWeight(bf16_bits(rng.standard_normal((out, inp)).astype(np.float32) / np.sqrt(inp)), "BF16")

    def vec(*shape):
        return (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    H, K, Dh, D, F = dims.H, dims.K, dims.Dh, dims.D, dims.F
    return LayerParams(
        input_layernorm=vec(D), q_proj=w(H * Dh, D), k_proj=w(K * Dh, D), v_proj=w(K * Dh, D), o_proj=w(D, H * Dh),
        gate_proj=w(F, D), up_proj=w(F, D), down_proj=w(D, F),
        q_bias=vec(H * Dh) if bias else None, k_bias=vec(K * Dh) if bias else None,
        v_bias=vec(K * Dh) if bias else None, o_bias=vec(D) if bias else None,
        q_norm=vec(H, Dh) if qk_norm else None, k_norm=vec(K, Dh) if qk_norm else None,
        sliding_window=window, use_rope=rope)


def fast(p: LayerParams) -> LayerParams:
    return LayerParams(**{k: (fast_weight(v) if isinstance(v, DenseWeight) else v) for k, v in vars(p).items()})


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), B=st.integers(1, 2), T=st.integers(1, 9), past=st.integers(0, 7),
       K=st.sampled_from([1, 2]), G=st.sampled_from([1, 2]), qk_norm=st.booleans(), bias=st.booleans(),
       window=st.sampled_from([None, 1, 3]), rope=st.booleans(), padded=st.booleans())
def test_engine_layer_equals_the_spec_layer(seed, B, T, past, K, G, qk_norm, bias, window, rope, padded):
    rng = np.random.default_rng(seed)
    dims = Dims(D=32, H=K * G, K=K, Dh=8, F=48, V=10, L=1, eps=1e-5, act="silu", logit_scale=1.0)
    p = random_layer(rng, dims, qk_norm, bias, window, rope)
    x_past = rng.standard_normal((B, past, dims.D)).astype(np.float32)
    x = rng.standard_normal((B, T, dims.D)).astype(np.float32)
    kv_valid = None
    if padded:
        kv_valid = np.ones((B, past + T), dtype=bool)
        kv_valid[0, :max(1, past // 2)] = False  # row 0 left-padded
    pos = np.broadcast_to(np.arange(past + T), (B, past + T))
    inv = (1.0 / 10000 ** (np.arange(0, 8, 2) / 8)).astype(np.float32)
    outs = []
    for layer, run in ((p, lambda *a: L.decoder_layer(*a)), (fast(p), engine.decoder_layer)):
        cache = LayerCache(window)
        for lo, hi, xs in ((0, past, x_past), (past, past + T, x)):  # a prefill of the past, then this call
            if hi == lo:
                continue
            cos, sin = rope_cos_sin(pos[:, lo:hi], inv)
            state = ForwardState(cos, sin, np.arange(lo, hi), None if kv_valid is None else kv_valid[:, :hi])
            y = run(xs, layer, dims, state, cache.update)
        outs.append(y)
    spec, got = outs
    np.testing.assert_allclose(got, spec, rtol=1e-5, atol=1e-5 * np.abs(spec).max())
