"""Prefill (issue 15): only the logits asked for, and chunked prefill equal to one pass.

The oracle of every chunked result is the same model with ``prefill_chunk_size=0`` (the whole prompt in
one pass, the path every other parity test checks against the spec and transformers)."""
import functools
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import pycohere
from pycohere.errors import InputError
from pycohere.model import engine
from pycohere.spec import layers as L

from helpers import write_checkpoint

BACKENDS = ["numpy", "numba"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("prefill")
    return {
        "cohere": write_checkpoint(root / "c", seed=4, storage="BF16"),
        # window 4 < chunk boundaries at 3, 5, 7...: sliding layers see keys of the previous chunk(s)
        "cohere2": write_checkpoint(root / "c2", "cohere2", seed=4, storage="BF16", num_hidden_layers=3,
                                    sliding_window=4,
                                    layer_types=["sliding_attention", "full_attention", "sliding_attention"]),
    }


@pytest.fixture(scope="module")
def models(folders):
    return {(kind, b): pycohere.AutoModelForCausalLM.from_pretrained(f, backend=b)
            for kind, f in folders.items() for b in BACKENDS}


def prompt(T, B=2, seed=0, V=61):
    return np.random.default_rng(seed).integers(7, V, size=(B, T))


def close(got, want):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def count_layer_calls(monkeypatch):
    """Record the token count T of every decoder-layer call (spec and engine)."""
    seen = []
    for mod in (L, engine):
        real = mod.decoder_layer

        def spy(x, *a, _real=real, **k):
            seen.append(x.shape[1])
            return _real(x, *a, **k)
        monkeypatch.setattr(mod, "decoder_layer", spy)
    return seen


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["cohere", "cohere2"])
def test_logits_to_keep_one_is_the_last_row_of_the_full_forward(models, kind, backend):
    model = models[kind, backend]
    ids = prompt(9)
    full = model(ids).logits                                          # (B, T, V)
    last = model(ids, logits_to_keep=1).logits                        # (B, 1, V)
    assert full.shape == (2, 9, 61) and last.shape == (2, 1, 61)
    close(last, full[:, -1:])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["cohere", "cohere2"])
def test_generation_is_unchanged_by_chunking(models, kind, backend):
    model = models[kind, backend]
    ids = prompt(11, seed=1)
    mask = np.ones_like(ids)
    mask[1, :4] = 0                                                   # row 1 left-padded
    ids[1, :4] = 0
    outs = []
    for chunk in (0, 3):
        model.prefill_chunk_size = chunk
        outs.append(model.generate(ids, attention_mask=mask, max_new_tokens=6, output_logits=True,
                                      return_dict_in_generate=True))
    model.prefill_chunk_size = pycohere.model.modeling.PREFILL_CHUNK_SIZE
    np.testing.assert_array_equal(outs[1].sequences, outs[0].sequences)
    for a, b in zip(outs[1].logits, outs[0].logits):
        close(a, b)


@settings(max_examples=12, deadline=None)
@given(T=st.integers(2, 13), chunk=st.integers(1, 6), past=st.integers(0, 5),
       kind=st.sampled_from(["cohere", "cohere2"]), backend=st.sampled_from(BACKENDS),
       cache=st.sampled_from(["none", "use_cache", "dynamic", "static"]))
def test_chunked_prefill_equals_one_pass(models, T, chunk, past, kind, backend, cache):
    model = models[kind, backend]
    ids = prompt(past + T, seed=T * 7 + past)
    if cache in ("none", "use_cache"):  # no cache (a temporary one when chunked) / the forward makes its own
        ids, past = ids[:, past:], 0
    results = []
    for size in (0, chunk):
        model.prefill_chunk_size = size
        kv = None
        if cache in ("dynamic", "static"):
            kv = pycohere.KVCache.for_model(model.config, max_cache_len=past + T + 1, static=cache == "static")
            if past:
                model(ids[:, :past], past_key_values=kv, use_cache=True)
        out = model(ids[:, past:], past_key_values=kv, use_cache=cache != "none")
        results.append((out.logits, out.past_key_values))
    model.prefill_chunk_size = pycohere.model.modeling.PREFILL_CHUNK_SIZE
    (want, kv0), (got, kv1) = results
    close(got, want)
    if cache == "none":
        assert kv0 is None and kv1 is None                               # the temporary cache is not returned
        return
    # the same keys and values at the same absolute indices (a sliding layer compacts at other times when
    # chunked: compare what both still hold)
    for a, b in zip(kv0.layers, kv1.layers):
        assert a.seen == b.seen == past + T
        first = max(a.start, b.start)
        if a.window is not None:  # each keeps at least what a future query can see
            assert first <= max(0, a.seen - (a.window - 1))
        else:
            assert first == 0
        close(b.k[:, first - b.start:b.length], a.k[:, first - a.start:a.length])
        close(b.v[:, first - b.start:b.length], a.v[:, first - a.start:a.length])


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_long_prompt_runs_in_chunks_and_a_short_one_in_one_pass(models, backend, monkeypatch):
    model = models["cohere2", backend]
    seen = count_layer_calls(monkeypatch)
    model.prefill_chunk_size = 4
    try:
        model(prompt(10), use_cache=True)
        assert seen == [4] * 3 + [4] * 3 + [2] * 3                       # 3 layers per chunk of 4, 4, 2
        seen.clear()
        model(prompt(4), use_cache=True)
        assert seen == [4] * 3
        seen.clear()
        model(prompt(10))                                                # no cache: through a temporary one
        assert seen == [4] * 3 + [4] * 3 + [2] * 3
    finally:
        model.prefill_chunk_size = pycohere.model.modeling.PREFILL_CHUNK_SIZE


@pytest.mark.parametrize("backend", BACKENDS)
def test_padded_queries_in_a_public_forward_run_in_one_pass(models, backend, monkeypatch):
    """A fully masked (padded) query's output is the mean of V over every key, which a chunk cannot
    reproduce: the public forward of a padded batch keeps one pass and equals the unchunked result."""
    model = models["cohere", backend]
    ids = prompt(8, seed=2)
    mask = np.ones_like(ids)
    mask[0, :3] = 0
    model.prefill_chunk_size = 0
    want = model(ids, attention_mask=mask, use_cache=True).logits
    seen = count_layer_calls(monkeypatch)
    model.prefill_chunk_size = 3
    try:
        got = model(ids, attention_mask=mask, use_cache=True).logits
    finally:
        model.prefill_chunk_size = pycohere.model.modeling.PREFILL_CHUNK_SIZE
    assert seen == [8, 8]
    close(got, want)


def test_taps_and_hidden_states_see_the_whole_prompt(models, monkeypatch):
    model = models["cohere", "numpy"]
    model.prefill_chunk_size = 3
    try:
        out, taps = model.run_with_cache(prompt(7), names=["layers.0.output"])
        hidden = model(prompt(7), output_hidden_states=True).hidden_states
    finally:
        model.prefill_chunk_size = pycohere.model.modeling.PREFILL_CHUNK_SIZE
    assert taps["layers.0.output"].shape == (2, 7, 32)
    assert [h.shape for h in hidden] == [(2, 7, 32)] * 3


@pytest.mark.parametrize("bad", [-1, 2.5, True, "512"])
def test_bad_chunk_size_is_an_input_error(folders, models, bad):
    with pytest.raises(InputError, match="prefill_chunk_size"):
        models["cohere", "numpy"].prefill_chunk_size = bad
    with pytest.raises(InputError, match="prefill_chunk_size"):
        pycohere.AutoModelForCausalLM.from_pretrained(folders["cohere"], backend="numpy", prefill_chunk_size=bad)


def test_from_pretrained_takes_the_chunk_size(folders):
    model = pycohere.AutoModelForCausalLM.from_pretrained(folders["cohere"], backend="numpy", prefill_chunk_size=64)
    assert model.prefill_chunk_size == 64 == model.model.prefill_chunk_size


# --- the prefill kernels against their NumPy twins ------------------------------------------------------
from pycohere.kernels import attention as A, dense as KD, tiles  # noqa: E402
from pycohere.io.dtypes import bf16_bits, widen  # noqa: E402


@pytest.mark.parametrize("tile", [(), tiles.PANELS_AVX2, tiles.PANELS_AVX512], ids=["blas", "6x16", "12x32"])
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), B=st.integers(1, 2), T=st.integers(5, 20), past=st.integers(0, 40),
       kv_start=st.integers(0, 6), K=st.integers(1, 2), G=st.integers(1, 3), window=st.sampled_from([0, 1, 3, 7]),
       block=st.integers(1, 8), score_values=st.sampled_from([8, 64, 1 << 21]), padded=st.booleans(),
       Dh=st.sampled_from([8, 32, 48, 64]))
def test_blocked_attention_equals_the_spec(tile, seed, B, T, past, kv_start, K, G, window, block, score_values,
                                           padded, Dh):
    """kv_start > 0 is a sliding layer's cache after compaction; small score blocks shrink the query
    blocks (down to one query); padding makes fully masked rows (the spec: mean of V over all keys). The
    products by BLAS or by tiles.panel_matmul in either tile on any host (Dh of whole panels: V read in place;
    8 or 48: V packed, one or several panels; windows from a key inside a panel; partial tiles of queries and
    keys)."""
    rng = np.random.default_rng(seed)
    S = past + T
    q = rng.standard_normal((B, T, K * G, Dh)).astype(np.float32)
    k = rng.standard_normal((B, S, K, Dh)).astype(np.float32)
    v = rng.standard_normal((B, S, K, Dh)).astype(np.float32)
    kv_valid = np.ones((B, S), dtype=bool)
    if padded:
        kv_valid[0, :past + 2] = False                               # row 0: its first queries see nothing
    q_index = np.arange(kv_start + past, kv_start + S, dtype=np.int64)
    kv_index = np.arange(kv_start, kv_start + S)
    want = L.attention(q, k, v, L.attention_mask(q_index, kv_index, kv_valid, window or None))
    saved, A.SCORE_BLOCK_VALUES = A.SCORE_BLOCK_VALUES, score_values
    try:
        got = A.blocked_attention(q, k, v, q_index, kv_start, kv_valid, window, block=block, tile=tile)
    finally:
        A.SCORE_BLOCK_VALUES = saved
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_blocked_attention_shares_its_threads_between_callers():
    """The pool is started once and shared: callers on several threads at once (tensor-parallel ranks)
    each get their own answer, the spec's."""
    import threading
    rng = np.random.default_rng(7)
    cases, got = [], {}
    for i in range(4):
        T, K, G, Dh = 6 + i, 2, 2, 8
        q = rng.standard_normal((1, T, K * G, Dh)).astype(np.float32)
        k, v = (rng.standard_normal((1, T, K, Dh)).astype(np.float32) for _ in range(2))
        idx, valid = np.arange(T), np.ones((1, T), bool)
        cases.append((q, k, v, idx, valid, L.attention(q, k, v, L.attention_mask(idx, idx, valid, None))))

    def run(i):
        q, k, v, idx, valid, _ = cases[i]
        got[i] = [A.blocked_attention(q, k, v, idx, 0, valid, 0, block=2) for _ in range(5)]
    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, case in enumerate(cases):
        for out in got[i]:
            np.testing.assert_allclose(out, case[-1], rtol=1e-5, atol=1e-5)
    assert A._pool() is A._pool()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork (POSIX)")
def test_blocked_attention_runs_in_a_forked_child():
    """A child forked after the pool started gets its own threads (the parent's do not exist there)."""
    rng = np.random.default_rng(3)
    q = rng.standard_normal((1, 6, 4, 8)).astype(np.float32)
    k, v = (rng.standard_normal((1, 6, 2, 8)).astype(np.float32) for _ in range(2))
    idx, valid = np.arange(6), np.ones((1, 6), bool)
    want = A.blocked_attention(q, k, v, idx, 0, valid, 0, block=2)       # the parent's pool is started
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: answer through the pipe, never return into pytest
        try:
            got = A.blocked_attention(q, k, v, idx, 0, valid, 0, block=2)
            os.write(w, b"ok" if np.array_equal(got, want) else b"differs")
        finally:
            os._exit(0)
    os.close(w)
    done = [None]
    import threading
    reader = threading.Thread(target=lambda: done.__setitem__(0, os.read(r, 16)))
    reader.start()
    reader.join(60)
    os.waitpid(pid, 0) if done[0] is not None else os.kill(pid, 9)
    assert done[0] == b"ok", f"the forked child answered {done[0]!r} (None: it hung)"


_SHAPES = {"6x16": tiles.PANELS_AVX2, "12x32": tiles.PANELS_AVX512}


def _kernel(name):
    """A GEMM of ``tiles`` by test name, with the panel shape it runs (the host's for the 4 x 4 / 4 x 3 tiles)."""
    kind, _, shape = name.partition("-")
    if kind == "broadcast":
        return functools.partial(tiles.gemm_broadcast, shape=_SHAPES[shape]), _SHAPES[shape]
    if kind == "host":
        return tiles.gemm_host, _SHAPES[shape]
    return getattr(tiles, f"gemm_{kind}"), tiles.PANELS


@pytest.mark.parametrize("kernel", ["4x4", "4x3", "host-6x16", "host-12x32", "broadcast-6x16", "broadcast-12x32"])
@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), M=st.integers(2, 70), out_dim=st.integers(1, 50), in_dim=st.integers(1, 40),
       row_block=st.integers(1, 12), storage=st.sampled_from(["BF16", "F16", "F32"]))
def test_prefill_matmul_equals_the_spec(kernel, seed, M, out_dim, in_dim, row_block, storage):
    """tiles.gemm's kernels, every one on every host with either broadcast tile (AVX2's 6 x 16, AVX-512's
    12 x 32): the 4 x 4 and 4 x 3 tiles; gemm_host, the broadcast kernel on whole panels of x rows, in blocks,
    and dot-product tiles on the rest; the broadcast kernel alone on every row, the last panel partial; on
    the weights in place (bf16 bits shifted, f16 bits by vcvtph2ps, float32), with every remainder (M % 4, % 16
    or % 32, out % 3, % 4, % 6 or % 12, x row blocks of any size): all give the spec's x @ widen(W).T."""
    rng = np.random.default_rng(seed)
    w32 = rng.standard_normal((out_dim, in_dim)).astype(np.float32)
    raw = bf16_bits(w32) if storage == "BF16" else w32.astype(np.float16) if storage == "F16" else w32
    x = rng.standard_normal((M, in_dim)).astype(np.float32)
    saved = tiles.GEMM_ROW_BLOCK, tiles.gemm, tiles.BROADCAST_MIN_ROWS, tiles.BROADCAST_ROW_BLOCK, tiles.PANELS
    gemm, shape = _kernel(kernel)
    # the broadcast kernel from 1 row, x in blocks of row_block panels (1 to 12)
    tiles.GEMM_ROW_BLOCK, tiles.gemm, tiles.PANELS = row_block, gemm, shape
    tiles.BROADCAST_MIN_ROWS, tiles.BROADCAST_ROW_BLOCK = 1, shape[1] * row_block
    try:
        got = KD.dense_matmul(x, raw, storage)
        again = KD.dense_matmul(x[: M - 1], raw, storage)
    finally:
        tiles.GEMM_ROW_BLOCK, tiles.gemm, tiles.BROADCAST_MIN_ROWS, tiles.BROADCAST_ROW_BLOCK, tiles.PANELS = saved
    want = x @ widen(raw, storage).T
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(want).max())))
    np.testing.assert_allclose(again, want[: M - 1], rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(want).max())))


@pytest.mark.parametrize("shape", ["6x16", "12x32"])
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), M=st.integers(1, 90), out_dim=st.integers(1, 40), in_dim=st.integers(1, 40),
       tile=st.integers(1, 400))
def test_tiled_matmul_packs_x_once_for_every_tile(shape, seed, M, out_dim, in_dim, tile):
    """tiled_matmul (the quantized prefill: rows dequantized tile by tile) with gemm_host and either broadcast
    tile forced on any host: from BROADCAST_MIN_ROWS rows x is packed once and every tile multiplied by
    gemm_panels, with a partial last panel (M % 16 or % 32) and tile (out % rows); fewer rows take gemm_host
    per tile. All equal x @ W.T."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((out_dim, in_dim)).astype(np.float32)
    x = rng.standard_normal((M, in_dim)).astype(np.float32)
    saved = tiles.gemm, tiles.BROADCAST_MIN_ROWS, tiles.PANEL_TILE_ELEMENTS, tiles.PANELS
    tiles.gemm, tiles.BROADCAST_MIN_ROWS, tiles.PANEL_TILE_ELEMENTS, tiles.PANELS = (tiles.gemm_host, 33, tile,
                                                                                     _SHAPES[shape])
    try:
        got = tiles.tiled_matmul(x, out_dim, in_dim, lambda r0, r1, t: t.__setitem__(..., w[r0:r1]), 1 << 20)
    finally:
        tiles.gemm, tiles.BROADCAST_MIN_ROWS, tiles.PANEL_TILE_ELEMENTS, tiles.PANELS = saved
    want = x @ w.T
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * max(1.0, float(np.abs(want).max())))


def test_a_tile_shape_that_is_not_compiled_is_refused():
    """The compiled tile computes only PANEL_SHAPES (any other would leave its output unwritten)."""
    from pycohere.errors import BackendError
    x, w = np.ones((4, 8), np.float32), np.ones((3, 8), np.float32)
    with pytest.raises(BackendError, match="no broadcast tile"):
        tiles.gemm_broadcast(x, w, np.int64(4), np.empty((4, 3), np.float32), np.int64(0), shape=(4, 16, 8))
    q = np.ones((1, 6, 1, 8), np.float32)
    with pytest.raises(BackendError, match="no broadcast tile"):
        A.blocked_attention(q, q, q, np.arange(6), 0, np.ones((1, 6), bool), 0, tile=(8, 32, 16))


def test_blocked_attention_reads_only_float32_rows_in_place():
    """V read in place as panels needs float32 rows with a contiguous last axis; any other V is packed."""
    rng = np.random.default_rng(5)
    q = rng.standard_normal((1, 40, 2, 32)).astype(np.float32)
    k = rng.standard_normal((1, 40, 2, 32)).astype(np.float32)
    big = rng.standard_normal((1, 40, 2, 64)).astype(np.float32)
    idx = np.arange(40)
    want = L.attention(q, k, big[..., ::2], L.attention_mask(idx, idx, None, None))
    for tile in tiles.PANEL_SHAPES:
        got = A.blocked_attention(q, k, big[..., ::2], idx, 0, np.ones((1, 40), bool), 0, tile=tile)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_bf16_matmul_takes_the_broadcast_tiles_from_their_rows():
    """bf16_dot.matmul from PANEL_MIN_ROWS rows (the broadcast tiles, x in blocks) equals its 4 x 4 tiles; without
    AVX512-BF16 the dispatch never offers it (``supported`` is False)."""
    from pycohere.kernels import bf16_dot
    if not bf16_dot.AVAILABLE:
        assert not bf16_dot.supported(256)
        return
    rng = np.random.default_rng(6)
    x = rng.standard_normal((bf16_dot.PANEL_MIN_ROWS + 37, 256)).astype(np.float32)
    raw = bf16_bits(rng.standard_normal((29, 256)).astype(np.float32))
    xb = np.empty(x.shape, np.uint16)
    bf16_dot.bf16_bits(x, xb)
    tiles4 = np.empty((x.shape[0], 29), np.float32)
    bf16_dot.gemm(xb, raw, np.int64(bf16_dot.ROW_BLOCK), tiles4, np.int64(0))
    xr, wr = widen(xb, "BF16"), widen(raw, "BF16")
    bound = 4 * 264 * np.finfo(np.float32).eps * (np.abs(xr) @ np.abs(wr).T)
    got = bf16_dot.matmul(x, raw)
    assert (np.abs(got - tiles4) <= 2 * bound).all() and (np.abs(got - xr @ wr.T) <= bound).all()


def test_scratch_is_per_thread():
    import threading
    mine = tiles.scratch(16)
    theirs = []
    th = threading.Thread(target=lambda: theirs.append(tiles.scratch(16)))
    th.start()
    th.join()
    assert not np.shares_memory(mine, theirs[0])
    assert np.shares_memory(mine, tiles.scratch(8))                   # the same thread reuses its buffer


_exp = None


def _exp_kernel():
    global _exp
    if _exp is None:
        from pycohere.kernels.jit import njit

        @njit
        def f(x):
            out = np.empty_like(x)
            for i in range(x.shape[0]):
                out[i] = A.exp_nonpositive(x[i])
            return out
        _exp = f
    return _exp


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), scale=st.sampled_from([1e-6, 1e-2, 1.0, 10.0, 87.3]))
def test_softmax_exp_equals_numpy_exp(seed, scale):
    x = (-np.random.default_rng(seed).random(257) * scale).astype(np.float32)
    x[:3] = [0.0, -np.inf, np.nan]
    got, want = _exp_kernel()(x), np.exp(x)
    assert got[0] == 1.0 and got[1] == 0.0 and np.isnan(got[2])
    normal = want > np.finfo(np.float32).tiny * 2
    np.testing.assert_allclose(got[3:][normal[3:]], want[3:][normal[3:]], rtol=4e-7, atol=0)
    assert (np.abs(got[3:] - want[3:])[~normal[3:]] <= 2 * np.finfo(np.float32).tiny).all()  # cut to 0 below e^-87.3


# --- tools/bench.py's prefill FLOP/s (issue 15) -------------------------------------------------------
def test_fma_probe_runs_n_fmas_on_every_chain():
    import bench
    probe, lanes, _, engine = bench.compile_fma_probe()
    # a <- a * 1 + 0.5 from a = 1, n times per chain, then the chains summed: chains * (1 + n / 2)
    for n in (1, 10, 1000):
        assert probe(n, 1.0, 0.5) == bench.FMA_CHAINS * (1 + n / 2)
    assert lanes in (4, 8, 16)


def test_prefill_flops_counts_every_matmul_and_visible_pair(folders):
    import bench
    cfg = pycohere.AutoModelForCausalLM.from_pretrained(folders["cohere"], backend="numpy")
    c, p, T = cfg.config, cfg.params, 7
    layer = p.layers[0]
    weights = [layer.q_proj, layer.k_proj, layer.v_proj, layer.o_proj, layer.gate_proj, layer.up_proj, layer.down_proj]
    per_token = sum(w.shape[0] * w.shape[1] for w in weights)            # multiply-adds per token per layer
    pairs = L.attention_mask(np.arange(T), np.arange(T), None, None).sum()  # causal (query, key) pairs
    Dh = c.hidden_size // c.num_attention_heads
    want = c.num_hidden_layers * (2 * T * per_token + 2 * 2 * c.num_attention_heads * Dh * pairs) \
        + 2 * 1 * c.hidden_size * c.vocab_size
    got = bench.prefill_flops(c.hidden_size, c.intermediate_size, c.num_attention_heads, c.num_key_value_heads,
                              c.num_hidden_layers, c.vocab_size, T)
    assert got == want


def test_single_threaded_blas_restores_the_count_even_nested_and_on_error():
    from pycohere.kernels import blas
    before = blas.blas_threads()
    if before is None:
        pytest.skip("NumPy's BLAS here is not an OpenBLAS with a thread API")
    with pytest.raises(RuntimeError):
        with blas.single_threaded():
            assert blas.blas_threads() == 1
            with blas.single_threaded():
                assert blas.blas_threads() == 1
            assert blas.blas_threads() == 1                              # the inner block did not restore
            raise RuntimeError("inside")
    assert blas.blas_threads() == before


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), M=st.integers(1, 70), out_dim=st.integers(1, 50), blocks=st.integers(1, 4),
       row_block=st.integers(1, 12))
def test_bf16_dot_products_equal_the_rounded_spec(seed, M, out_dim, blocks, row_block):
    """activations="llama.cpp" on bf16 weights: x rounded to bf16 times the widened weight (the spec) against
    kernels.bf16_dot (vdpbf16ps 4 x 4 tiles, every M % 4 and out % 4 remainder, x row blocks of any size; the
    broadcast 12 x 32 tiles with partial panels and groups, M up to 70: panels in blocks),
    within float32 summation error; on a CPU without AVX512-BF16 the dispatch keeps the spec's path."""
    from pycohere.kernels import bf16_dot
    from pycohere.kernels.dispatch import fast_weight
    from pycohere.quant.activations import LlamaCppActivations, round_activations
    from pycohere.spec.weights import DenseWeight
    rng = np.random.default_rng(seed)
    K = 32 * blocks
    raw = bf16_bits(rng.standard_normal((out_dim, K)).astype(np.float32))
    x = rng.standard_normal((M, K)).astype(np.float32)
    if seed % 4 == 0:  # a non-finite activation poisons its row, as in the spec
        x[int(rng.integers(M)), int(rng.integers(K))] = [np.nan, np.inf, -np.inf, np.nan][seed % 16 // 4]
    xr = round_activations(x, "bf16")
    with np.errstate(invalid="ignore"):
        want = xr @ widen(raw, "BF16").T
        bound = 4 * (K + 8) * np.finfo(np.float32).eps * (np.abs(xr) @ np.abs(widen(raw, "BF16")).T) + 1e-30
    calls = []
    real = bf16_dot.matmul
    bf16_dot.matmul = lambda *a: calls.append(a[0].shape) or real(*a)  # (the dispatch looks it up per call)
    try:
        got = fast_weight(LlamaCppActivations(DenseWeight(raw, "BF16"))).matmul(x)
    finally:
        bf16_dot.matmul = real
    finite = np.isfinite(want)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(got[~finite & ~np.isnan(want)], want[~finite & ~np.isnan(want)])
    assert (np.abs(got[finite] - want[finite]) <= bound[finite]).all()
    # the bf16 dot products run exactly where the CPU has them and the rows are more than a decode's
    assert bool(calls) == (bf16_dot.AVAILABLE and M > KD.DENSE_GEMV_MAX_ROWS["BF16"])
    if not bf16_dot.AVAILABLE:
        assert not bf16_dot.supported(K)
        return
    xb = np.empty(x.shape, np.uint16)
    bf16_dot.bf16_bits(x, xb)
    np.testing.assert_array_equal(xb, bf16_bits(x))
    saved = bf16_dot.PANEL_ROW_BLOCK
    for gemm in (lambda o: bf16_dot.gemm(xb, raw, np.int64(row_block), o, np.int64(2)),  # into columns 2 ..
                 lambda o: bf16_dot.gemm_broadcast(xb, raw, o, 2)):                 # the broadcast tiles
        out = np.full((M, out_dim + 3), -7.0, np.float32)
        bf16_dot.PANEL_ROW_BLOCK = 32 * row_block                                  # x in blocks of panels
        try:
            gemm(out)
        finally:
            bf16_dot.PANEL_ROW_BLOCK = saved
        np.testing.assert_array_equal(np.isnan(out[:, 2:2 + out_dim]), np.isnan(want))
        assert (np.abs(out[:, 2:2 + out_dim][finite] - want[finite]) <= bound[finite]).all()
        assert (out[:, :2] == -7).all() and (out[:, 2 + out_dim:] == -7).all()
