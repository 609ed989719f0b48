"""Property tests of the layer functions (the spec), with hypothesis."""
import numpy as np
from hypothesis import given, settings, strategies as st

from pycohere.spec import layers as L
from pycohere.spec.cache import KVCache
from pycohere.config import CohereConfig
from pycohere.spec.rope import compute_inv_freq, rope_cos_sin

SETTINGS = settings(max_examples=40, deadline=None)


def _rng(seed):
    return np.random.default_rng(seed)


def _rope(pos, dh, theta=10000.0):
    cfg = CohereConfig(hidden_size=dh * 2, num_attention_heads=2, rope_theta=theta)
    inv, f = compute_inv_freq(cfg, dtype=np.float64)
    return rope_cos_sin(np.asarray(pos)[None], inv, f)


@SETTINGS
@given(st.integers(1, 8), st.sampled_from([2, 4, 8, 16]), st.integers(0, 5000), st.integers(0, 10**6))
def test_rope_preserves_pair_norms(n_heads, dh, pos, seed):
    x = _rng(seed).standard_normal((1, 1, n_heads, dh))
    cos, sin = _rope([pos], dh)
    y = L.apply_rope(x, cos, sin)
    # a rotation of every (2i, 2i+1) pair: each pair keeps its length, so the whole vector does
    np.testing.assert_allclose(np.hypot(y[..., 0::2], y[..., 1::2]), np.hypot(x[..., 0::2], x[..., 1::2]),
                               rtol=1e-12, atol=1e-12)


@SETTINGS
@given(st.sampled_from([2, 4, 8, 16]), st.integers(0, 3000), st.integers(0, 3000), st.integers(0, 500),
       st.integers(0, 10**6))
def test_rope_scores_depend_only_on_relative_position(dh, m, n, shift, seed):
    rng = _rng(seed)
    q, k = rng.standard_normal((2, 1, 1, 1, dh))
    cq, sq = _rope([m, m + shift], dh)
    ck, sk = _rope([n, n + shift], dh)
    s0 = (L.apply_rope(q, cq[:, :1], sq[:, :1]) * L.apply_rope(k, ck[:, :1], sk[:, :1])).sum()
    s1 = (L.apply_rope(q, cq[:, 1:], sq[:, 1:]) * L.apply_rope(k, ck[:, 1:], sk[:, 1:])).sum()
    assert abs(s0 - s1) < 1e-9 * max(1, abs(s0))


def test_rope_is_interleaved_not_split_half():
    # hand-derived: Dh = 4, pos = 1, theta = 1e4: angles (1, 1e-2); x = e_0 rotates within pair (0, 1)
    cos, sin = _rope([1], 4)
    y = L.apply_rope(np.array([1.0, 0, 0, 0]).reshape(1, 1, 1, 4), cos, sin).ravel()
    np.testing.assert_allclose(y, [np.cos(1), np.sin(1), 0, 0], atol=1e-15)


@SETTINGS
@given(st.integers(1, 3), st.integers(1, 9), st.sampled_from([(4, 4), (4, 2), (4, 1), (6, 3)]),
       st.sampled_from([2, 4, 8]), st.one_of(st.none(), st.integers(1, 6)), st.integers(0, 10**6))
def test_attention_is_causal_and_windowed(B, T, heads, dh, window, seed):
    H, K = heads
    rng = _rng(seed)
    q = rng.standard_normal((B, T, H, dh))
    k = rng.standard_normal((B, T, K, dh))
    v = rng.standard_normal((B, T, K, dh))
    idx = np.arange(T)
    out = L.attention(q, k, v, L.attention_mask(idx, idx, None, window))
    # changing keys/values at position j must not change any output at positions < j, nor at
    # positions >= j + window (outside the window)
    j = int(rng.integers(0, T))
    k2, v2 = k.copy(), v.copy()
    k2[:, j] += 1.0
    v2[:, j] -= 2.0
    out2 = L.attention(q, k2, v2, L.attention_mask(idx, idx, None, window))
    unaffected = idx < j
    if window is not None:
        unaffected |= idx >= j + window
    np.testing.assert_array_equal(out[:, unaffected], out2[:, unaffected])
    if (~unaffected).any():
        assert not np.allclose(out[:, ~unaffected], out2[:, ~unaffected])


@SETTINGS
@given(st.integers(1, 2), st.integers(1, 7), st.sampled_from([(4, 2), (6, 3), (4, 1), (8, 2)]),
       st.sampled_from([2, 4]), st.integers(0, 10**6))
def test_gqa_equals_mha_with_repeated_kv_heads(B, T, heads, dh, seed):
    H, K = heads
    rng = _rng(seed)
    q = rng.standard_normal((B, T, H, dh))
    k = rng.standard_normal((B, T, K, dh))
    v = rng.standard_normal((B, T, K, dh))
    allowed = L.attention_mask(np.arange(T), np.arange(T), None, None)
    # transformers repeat_kv: kv head j serves query heads j*G ... j*G + G-1
    rep = lambda a: np.repeat(a, H // K, axis=2)
    np.testing.assert_allclose(L.attention(q, k, v, allowed), L.attention(q, rep(k), rep(v), allowed),
                               rtol=1e-12, atol=1e-12)


def test_layer_norm_is_mean_centred_without_bias():
    x = np.array([[1.0, 2.0, 3.0, 6.0]])
    w = np.array([1.0, 2.0, 1.0, 0.5])
    # hand-derived: mean 3, centred (-2,-1,0,3), biased variance 14/4 = 3.5
    expected = np.array([-2, -1, 0, 3]) / np.sqrt(3.5 + 1e-5) * w
    np.testing.assert_allclose(L.layer_norm(x, w, 1e-5), expected[None], rtol=1e-14)


def test_activations():
    x = np.array([-2.0, -0.5, 0.0, 1.0, 3.0])
    np.testing.assert_allclose(L.silu(x), x / (1 + np.exp(-x)), rtol=1e-15)
    # exact GELU at hand-checked points: gelu(1) = 0.8413447460685429 (= Phi(1)), gelu(0) = 0
    g = L.gelu(x)
    assert g[2] == 0.0 and abs(g[3] - 0.8413447460685429) < 1e-15
    # and it is not the tanh approximation (which gives 0.8411919906082768 at 1)
    assert abs(g[3] - 0.8411919906082768) > 1e-4


# --- whole-model properties: cache-stepped == full forward, chunked prefill == one-shot ---------
from helpers import write_checkpoint  # noqa: E402
import pycohere  # noqa: E402


def _model(tmp_path_factory, model_type, backend, **kw):
    folder = tmp_path_factory.mktemp(model_type)
    return pycohere.AutoModelForCausalLM.from_pretrained(write_checkpoint(folder, model_type, **kw), backend=backend)


_MODELS = {}


def _get(tmp_path_factory, key, backend="numpy"):
    if (key, backend) not in _MODELS:
        if key == "cohere":
            _MODELS[key, backend] = _model(tmp_path_factory, "cohere", backend, use_qk_norm=True)
        else:
            _MODELS[key, backend] = _model(tmp_path_factory, "cohere2", backend, num_hidden_layers=4, sliding_window=3)
    return _MODELS[key, backend]


@settings(max_examples=25, deadline=None)
@given(kind=st.sampled_from(["cohere", "cohere2"]), backend=st.sampled_from(["numpy", "numba"]),
       T=st.integers(2, 14), data=st.data())
def test_chunked_prefill_and_cache_steps_equal_full_forward(tmp_path_factory, kind, backend, T, data):
    model = _get(tmp_path_factory, kind, backend)
    rng = _rng(data.draw(st.integers(0, 10**6)))
    ids = rng.integers(0, model.config.vocab_size, size=(2, T))
    full = model(ids).logits
    # split [0, T) into random chunks (chunk size 1 = decoding steps)
    cuts = sorted(set(data.draw(st.lists(st.integers(1, T - 1), max_size=4))))
    bounds = [0] + cuts + [T]
    cache = pycohere.KVCache.for_model(model.config)
    pieces = [model(ids[:, a:b], past_key_values=cache, use_cache=True).logits for a, b in zip(bounds, bounds[1:])]
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), full, rtol=1e-5, atol=1e-5)
    assert cache.get_seq_length() == T
    if kind == "cohere2":  # sliding layers' memory is bounded by the window, not the sequence
        chunk = max(b - a for a, b in zip(bounds, bounds[1:]))
        for layer, w in zip(cache.layers, pycohere.spec.cache.layer_windows(model.config)):
            if w is not None:
                assert layer.k.shape[1] <= max(16, 2 * (w - 1 + chunk))


def test_sliding_layers_keep_only_their_window_over_a_long_decode(tmp_path_factory):
    model = _get(tmp_path_factory, "cohere2")  # window 3, layers S,S,S,F
    ids = _rng(1).integers(0, model.config.vocab_size, size=(1, 120))
    cache = pycohere.KVCache.for_model(model.config)
    model(ids[:, :4], past_key_values=cache, use_cache=True)
    for t in range(4, 120):
        model(ids[:, t:t + 1], past_key_values=cache, use_cache=True)
    sliding = [l for l in cache.layers if l.window is not None]
    full = [l for l in cache.layers if l.window is None]
    assert len(sliding) == 3 and len(full) == 1
    assert all(l.k.shape[1] == 16 and l.start >= 120 - 16 for l in sliding)
    assert all(l.length == 120 and l.start == 0 for l in full)


def test_static_cache_matches_dynamic_and_refuses_overflow(tmp_path_factory):
    model = _get(tmp_path_factory, "cohere2")
    ids = _rng(0).integers(0, model.config.vocab_size, size=(1, 9))
    static = pycohere.KVCache.for_model(model.config, max_cache_len=9, static=True)
    dyn = pycohere.KVCache.for_model(model.config)
    a = [model(ids[:, :5], past_key_values=static, use_cache=True).logits]
    b = [model(ids[:, :5], past_key_values=dyn, use_cache=True).logits]
    for t in range(5, 9):
        a.append(model(ids[:, t:t + 1], past_key_values=static, use_cache=True).logits)
        b.append(model(ids[:, t:t + 1], past_key_values=dyn, use_cache=True).logits)
    # not bit-identical: the two caches compact at different times, so the (masked, zero-weight)
    # extra keys change the summation order of the float32 dot products
    np.testing.assert_allclose(np.concatenate(a, 1), np.concatenate(b, 1), rtol=1e-6, atol=1e-6)
    import pytest
    with pytest.raises(pycohere.errors.CacheError, match="static cache is full"):
        model(ids[:, :1], past_key_values=static, use_cache=True)
