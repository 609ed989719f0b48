"""Prefill (issue 15): only the logits asked for, and chunked prefill equal to one pass.

The oracle of every chunked result is the same model with ``prefill_chunk_size=0`` (the whole prompt in
one pass, the path every other parity test checks against the spec and transformers)."""
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
@given(T=st.integers(2, 13), chunk=st.integers(1, 6), past=st.integers(0, 5), kind=st.sampled_from(["cohere", "cohere2"]),
       backend=st.sampled_from(BACKENDS), cache=st.sampled_from(["none", "dynamic", "static"]))
def test_chunked_prefill_equals_one_pass(models, T, chunk, past, kind, backend, cache):
    model = models[kind, backend]
    ids = prompt(past + T, seed=T * 7 + past)
    if cache == "none":
        past = 0
    results = []
    for size in (0, chunk):
        model.prefill_chunk_size = size
        kv = None
        if cache != "none":
            kv = pycohere.KVCache.for_model(model.config, max_cache_len=past + T + 1, static=cache == "static")
            if past:
                model(ids[:, :past], past_key_values=kv, use_cache=True)
        out = model(ids[:, past:], past_key_values=kv, use_cache=kv is not None)
        results.append((out.logits, kv))
    model.prefill_chunk_size = pycohere.model.modeling.PREFILL_CHUNK_SIZE
    (want, kv0), (got, kv1) = results
    close(got, want)
    if kv0 is not None:  # the same keys and values were appended, to the same absolute indices
        for a, b in zip(kv0.layers, kv1.layers):
            assert (a.start, a.length) == (b.start, b.length)
            close(b.k[:, :b.length], a.k[:, :a.length])
            close(b.v[:, :b.length], a.v[:, :a.length])


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_long_prompt_runs_in_chunks_and_a_short_one_in_one_pass(models, backend, monkeypatch):
    model = models["cohere2", backend]
    seen = count_layer_calls(monkeypatch)
    model.prefill_chunk_size = 4
    try:
        model(prompt(10))
        assert seen == [4] * 3 + [4] * 3 + [2] * 3                       # 3 layers per chunk of 4, 4, 2
        seen.clear()
        model(prompt(4))
        assert seen == [4] * 3
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
    want = model(ids, attention_mask=mask).logits
    seen = count_layer_calls(monkeypatch)
    model.prefill_chunk_size = 3
    try:
        got = model(ids, attention_mask=mask).logits
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
